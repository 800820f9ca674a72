"""Running the chain for tiles: step order, re-use of finished steps, parallel tiles, faults.

Guarantees (issue 5):

- every product is written atomically (a temporary name in the same directory, then a
  rename), so a killed run leaves no half-written product; stale temporary files of a killed
  run are removed when the tile runs again;
- a step that runs first drops its own .done marker and every later step's products and
  markers, and a step that fails removes what it wrote: a tile directory never mixes products
  of two runs, and `jointphot merge` never picks up a stale catalogue;
- a step is re-used only when its .done marker names the same job (hash of the job and its
  input files) and engine;
- a worker process that dies (out of memory, killed) fails only its own tile: the tiles it
  took down with it are run again, one at a time, each in its own process;
- a worker whose parent `jointphot run` died (kill -9) exits within a second, and one
  `jointphot run` at a time works in a work directory (a lock file), so an interrupted run can
  be re-run at once.

Logs: each tile appends to <tile dir>/tNNNN.log (every message, DEBUG included, with time
stamps and tracebacks of unexpected errors); the console shows progress, warnings and errors
(see :func:`jointphot.logs.setup_console_logging`).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import json
import logging
import os
import shutil
import signal
import threading
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Dict, List, Optional

import numpy as np

from .errors import Interrupted, JointphotError
from .images import write_text_atomic
from .logs import QUIET, console_args, set_current_tile, setup_console_logging
from .plan import band_product, tile_dir, tile_path

log = logging.getLogger("jointphot.pipeline")
#: The steps of a tile, in order; fit-lr runs once per LR band.
STEPS = ("cutout", "detect", "fit-hr", "fit-lr")
#: Lock file of a work directory (holds the pid of the `jointphot run` using it).
LOCK_NAME = ".jointphot.lock"
#: Seconds a run waits for another run's lock (e.g. the workers of a killed run exiting).
LOCK_WAIT_SECONDS = 15.0
#: Message of a tile whose worker process died.
DIED = "the process running this tile died (killed by a signal, e.g. out of memory)"

# --------------------------------------------------------------------------- steps
#: The steps that can run for one LR band alone (`band`): its cutout, its forced fit.
BAND_STEPS = ("cutout", "fit-lr")


def step_products(plan, step: str, band: Optional[str] = None) -> List[str]:
    """Product names (tile_path) a step writes; cutout and fit-lr: those of `band` (None: HR and every band)."""
    bands = list(plan["bands"])
    if step == "cutout":
        return [band_product(band, "cutout")] if band else ["hr_cutout"] + [band_product(b, "cutout") for b in bands]
    if step == "detect":
        return ["hr_detections"]
    if step == "fit-hr":
        return ["hr_fit", "hr_images"]
    return [band_product(b, what) for b in ([band] if band else bands) for what in ("fit", "images")]


def step_bands(plan, step: str) -> List[Optional[str]]:
    """The units a step runs in for a tile: every LR band for fit-lr, else [None] (once)."""
    return list(plan["bands"]) if step == "fit-lr" else [None]


def _marker(directory: str, tile_id: int, step: str, band: Optional[str] = None) -> str:
    return os.path.join(directory, f".t{tile_id:04d}_{step}{'.' + band if band else ''}.done")


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def run_step(step: str, plan, tile_id: int, directory: str, engine_name: str = "native",
             band: Optional[str] = None) -> None:
    """Run one step of one tile (cutout and fit-lr: of LR band `band` alone when given; fit-lr without a band:
    every band, one after the other), then record that it finished for this job (a .done marker).

    Before it runs, its own and every later step's products and markers are removed (they
    would be stale; a step of one band touches that band's only); when it fails, what it wrote is
    removed too.  So a product without its marker is never older than the job.
    """
    if step not in STEPS:
        raise JointphotError(f"unknown step {step!r}")
    if band is not None and step not in BAND_STEPS:
        raise JointphotError(f"step {step!r} runs for the HR image, not for one band ({band!r})")
    if band is not None and band not in plan["bands"]:
        raise JointphotError(f"band {band!r} is not in this job (bands: {', '.join(plan['bands'])})")
    if step == "fit-lr" and band is None:
        for b in plan["bands"]:
            run_step(step, plan, tile_id, directory, engine_name, b)
        return
    os.makedirs(directory, exist_ok=True)
    for later in STEPS[STEPS.index(step):]:
        if band is not None and later not in BAND_STEPS:
            continue
        for b in ([band] if later == step or band is not None else step_bands(plan, later)):
            _remove(_marker(directory, tile_id, later, b))
            for product in step_products(plan, later, b):
                _remove(tile_path(directory, tile_id, product))
    log.info("tile %d: %s%s", tile_id, step, f" {band}" if band else "")
    try:   # each step imports only its own modules: a step's process starts faster (Nextflow runs one per step)
        if step == "cutout":
            from .cutout import make_cutouts
            make_cutouts(plan, tile_id, directory, band)
        elif step == "detect":
            from .detect import detect_tile
            detect_tile(plan, tile_id, directory)
        else:
            from .engines import get_engine
            if step == "fit-hr":
                from .fit_hr import fit_tile
                fit_tile(plan, tile_id, directory, get_engine(engine_name))
            else:
                from .fit_lr import fit_tile
                fit_tile(plan, tile_id, directory, get_engine(engine_name), band)
    except BaseException:
        for product in step_products(plan, step, band):
            _remove(tile_path(directory, tile_id, product))
        raise
    write_text_atomic(json.dumps({"job_hash": plan["job_hash"], "engine": engine_name}),
                      _marker(directory, tile_id, step, band))


def step_is_done(step: str, plan, tile_id: int, directory: str, engine_name: str, band: Optional[str] = None) -> bool:
    """True when the step's outputs (fit-lr: of `band`) exist and were made for this very job and engine."""
    marker = read_marker(directory, tile_id, step, band)
    return (marker is not None and marker.get("job_hash") == plan["job_hash"] and marker.get("engine") == engine_name
            and all(os.path.exists(tile_path(directory, tile_id, p)) for p in step_products(plan, step, band)))


def read_marker(directory: str, tile_id: int, step: str, band: Optional[str] = None) -> Optional[Dict]:
    """The .done marker of a step (fit-lr: of `band`) ({job_hash, engine}), None when there is none."""
    try:
        with open(_marker(directory, tile_id, step, band)) as fh:
            marker = json.load(fh)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def tile_is_done(plan, tile_id: int) -> bool:
    """Every band's fit-lr of the tile has its marker (the tile's last step finished)."""
    directory = tile_dir(plan, tile_id)
    return all(os.path.exists(_marker(directory, tile_id, "fit-lr", b)) for b in plan["bands"])


def status_path(directory: str, tile_id: int) -> str:
    """tNNNN_status.json: the outcome of the tile's last run (read by `jointphot qa`)."""
    return os.path.join(directory, f"t{tile_id:04d}_status.json")


def clean_stale_files(directory: str, sextractor_dirs: bool = True) -> List[str]:
    """Remove temporary files (.tmp-*) and SExtractor run directories (sextractor_*/) a killed run left."""
    removed = []
    paths = glob.glob(os.path.join(directory, ".tmp-*"))
    if sextractor_dirs:
        paths += [p for p in glob.glob(os.path.join(directory, "sextractor_*")) if os.path.isdir(p)]
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            _remove(path)
        removed.append(path)
    return removed


# --------------------------------------------------------------------------- one tile
def run_tile(plan, tile_id: int, engine_name: str, force: bool) -> Dict:
    """All steps of one tile (finished ones re-used unless `force`); returns a status dict.

    status: tile_id, ok, error (one line), reused (steps), seconds, n_sources, log (file).
    Every message goes to <tile dir>/tNNNN.log; the status is also written to tNNNN_status.json.
    """
    directory = tile_dir(plan, tile_id)
    os.makedirs(directory, exist_ok=True)
    log_path = os.path.join(directory, f"t{tile_id:04d}.log")
    handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("jointphot")
    old_level = root.level
    if root.getEffectiveLevel() > logging.DEBUG:
        root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    set_current_tile(tile_id)
    start = time.time()
    status = {"tile_id": tile_id, "ok": True, "error": "", "reused": [], "seconds": 0.0, "n_sources": 0,
              "log": log_path, "job_hash": plan["job_hash"], "engine": engine_name}
    try:
        log.debug("tile %d: start (job %s, engine %s, force %s, pid %d)", tile_id, plan["job_hash"], engine_name,
                  force, os.getpid())
        for path in clean_stale_files(directory):
            log.info("tile %d: removed %s left by an interrupted run", tile_id, os.path.basename(path))
        redo = force
        for step in STEPS:
            rerun = False
            for band in step_bands(plan, step):
                name = step + (f" {band}" if band else "")
                if not redo and step_is_done(step, plan, tile_id, directory, engine_name, band):
                    status["reused"].append(name)
                    log.debug("tile %d: %s re-used", tile_id, name)
                    continue
                rerun = True
                run_step(step, plan, tile_id, directory, engine_name, band)
            redo = redo or rerun   # everything after a re-run step is re-run too
        for band in plan["bands"]:
            path = tile_path(directory, tile_id, band_product(band, "fit"))
            status["n_sources"] = _count_rows(path)
            _warn_without_lr(path, tile_id, band)
    except JointphotError as exc:
        status.update(ok=False, error=str(exc))
        log.error("tile %d failed: %s", tile_id, exc, extra=QUIET)
    except Exception as exc:  # a bug or an unexpected fault: keep the other tiles going
        status.update(ok=False, error=f"{type(exc).__name__}: {exc} (traceback in {log_path})")
        log.error("tile %d failed: %s: %s (traceback in %s)", tile_id, type(exc).__name__, exc, log_path, extra=QUIET)
        log.debug("tile %d: traceback:\n%s", tile_id, traceback.format_exc())
    except BaseException as exc:   # Interrupted, KeyboardInterrupt: record it, then let it stop the run
        status.update(ok=False, error=f"{exc or type(exc).__name__}")
        log.error("tile %d: %s", tile_id, exc or type(exc).__name__, extra=QUIET)
        raise
    finally:
        status["seconds"] = time.time() - start
        log.info("tile %d: %s in %.1f s%s", tile_id, "done" if status["ok"] else "FAILED", status["seconds"],
                 f", {status['n_sources']} sources" if status["ok"] else "")
        with contextlib.suppress(OSError):
            write_text_atomic(json.dumps(status, sort_keys=True) + "\n", status_path(directory, tile_id))
        set_current_tile(None)
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    return status


def _warn_without_lr(path: str, tile_id: int, band: str) -> None:
    """A warning when no source of the tile got a flux in LR band `band` (all its pixels unusable or off
    its image)."""
    from astropy.io import fits
    from .conventions import FLAGS
    try:
        flags = np.asarray(fits.getdata(path, "LR_FIT")[f"{band}_flags"])
    except (OSError, KeyError, TypeError):
        return
    if flags.size and np.all(flags & FLAGS["LR_OFF_IMAGE"]):
        log.warning("tile %d: none of its %d sources got a %s flux: its %s pixels are all masked, NaN, with "
                    "VARIANCE <= 0, or off the %s image (%s fluxes NaN, flag LR_OFF_IMAGE)", tile_id, flags.size,
                    band, band, band, band)


def _count_rows(path: str) -> int:
    from astropy.io import fits
    try:
        return int(fits.getheader(path, "LR_FIT").get("NAXIS2", 0))
    except (OSError, KeyError):
        return 0


# --------------------------------------------------------------------------- many tiles
def _worker_init(parent_console) -> None:
    """In each worker: Ctrl-C is the parent's business; die with the parent; console as the parent's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if parent_console is not None and console_args() is None:   # spawned, not forked: set the console up
        setup_console_logging(*parent_console)
    # the process that started this worker (the run itself, or a fork server that dies with it)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True, name="jointphot-parent-watch").start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:   # the parent died (kill -9): do not write on behind its back
            os._exit(70)


def _kill_workers(pool) -> None:
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        with contextlib.suppress(Exception):
            p.terminate()
    for p in processes:
        with contextlib.suppress(Exception):
            p.join(5)


def _run_pool(plan, tile_ids, engine_name, force, jobs, done) -> List[int]:
    """Run tiles in a process pool; returns the tiles whose worker died (BrokenProcessPool)."""
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=jobs, initializer=_worker_init,
                                                  initargs=(console_args(),))
    broken = []
    try:
        futures = {pool.submit(run_tile, plan, t, engine_name, force): t for t in tile_ids}
        for fut in concurrent.futures.as_completed(futures):
            try:
                status = fut.result()
            except BrokenProcessPool:
                broken.append(futures[fut])
                continue
            done(status)
    except BaseException:
        _kill_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return sorted(broken)


def run_tiles(plan, tile_ids: List[int], engine_name: str, jobs: int, force: bool,
              report: Optional[Callable[[Dict, int, int], None]] = None) -> List[Dict]:
    """Run tiles, `jobs` at a time (processes); `report(status, done, total)` after each tile.

    Returns the statuses sorted by tile id.  Interrupts (see :func:`interruptible`) stop the
    workers and raise :class:`Interrupted`; finished tiles stay on disk for the next run.
    """
    results: Dict[int, Dict] = {}

    def done(status):
        results[status["tile_id"]] = status
        if report:
            report(status, len(results), len(tile_ids))

    if jobs <= 1 or len(tile_ids) <= 1:
        for t in tile_ids:
            done(run_tile(plan, t, engine_name, force))
    else:
        broken = _run_pool(plan, tile_ids, engine_name, force, jobs, done)
        if broken:
            log.warning("a worker process died; running tiles %s again, one at a time",
                        ",".join(map(str, broken)))
        for t in broken:      # each in its own process: a second death fails only this tile
            if _run_pool(plan, [t], engine_name, force, 1, done):
                done({"tile_id": t, "ok": False, "error": DIED, "reused": [], "seconds": 0.0, "n_sources": 0,
                      "log": os.path.join(tile_dir(plan, t), f"t{t:04d}.log")})
    return [results[t] for t in sorted(results)]


@contextlib.contextmanager
def interruptible():
    """SIGTERM, SIGINT (Ctrl-C) and SIGHUP raise :class:`Interrupted` in the main thread while active."""
    def handler(signum, frame):
        raise Interrupted(signum)

    names = ["SIGTERM", "SIGINT", "SIGHUP"]
    old = {}
    if threading.current_thread() is threading.main_thread():
        for name in names:
            if hasattr(signal, name):
                sig = getattr(signal, name)
                old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def workdir_lock(workdir: str, wait: float = LOCK_WAIT_SECONDS):
    """Hold <workdir>/.jointphot.lock: one `jointphot run` at a time per work directory."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    fh = open(path, "a+")
    deadline = time.time() + wait
    locked = False
    try:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
                break
            except BlockingIOError:
                if time.time() > deadline:
                    fh.seek(0)
                    other = fh.read().strip() or "?"
                    raise JointphotError(f"another jointphot run (pid {other}) is working in {workdir!r}: wait for "
                                         f"it to finish or stop it, then run again") from None
                time.sleep(0.2)
            except OSError as exc:   # e.g. no lock support on a network file system
                log.debug("no lock on %s (%s); carrying on without", path, exc)
                break
        if locked:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
        yield
    finally:
        if locked:
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
