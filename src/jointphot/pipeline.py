"""Running the chain for tiles: step order, re-use of finished steps, parallel tiles, merge."""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import time
import traceback
from typing import Callable, Dict, List, Optional

from .errors import JointphotError
from .images import write_text_atomic
from .plan import tile_dir, tile_path

log = logging.getLogger("jointphot.pipeline")

#: step name -> products it writes (tile_path product names)
STEP_OUTPUTS = {
    "cutout": ("hr_cutout", "lr_cutout"),
    "detect": ("hr_detections",),
    "fit-hr": ("hr_fit", "hr_images"),
    "fit-lr": ("lr_fit", "lr_images"),
}


def run_step(step: str, plan, tile_id: int, directory: str, engine_name: str = "auto") -> None:
    """Run one step of one tile, then record that it finished for this job (a .done marker)."""
    from . import cutout, detect, fit_hr, fit_lr
    from .engines import get_engine

    os.makedirs(directory, exist_ok=True)
    if step == "cutout":
        cutout.make_cutouts(plan, tile_id, directory)
    elif step == "detect":
        detect.detect_tile(plan, tile_id, directory)
    elif step == "fit-hr":
        fit_hr.fit_tile(plan, tile_id, directory, get_engine(engine_name))
    elif step == "fit-lr":
        fit_lr.fit_tile(plan, tile_id, directory, get_engine(engine_name))
    else:
        raise JointphotError(f"unknown step {step!r}")
    write_text_atomic(json.dumps({"job_hash": plan["job_hash"], "engine": engine_name}), _marker(directory, tile_id, step))


def step_is_done(step: str, plan, tile_id: int, directory: str, engine_name: str) -> bool:
    """True when the step's outputs exist and were made for this very job and engine."""
    try:
        with open(_marker(directory, tile_id, step)) as fh:
            marker = json.load(fh)
    except (OSError, ValueError):
        return False
    return (marker.get("job_hash") == plan["job_hash"] and marker.get("engine") == engine_name
            and all(os.path.exists(tile_path(directory, tile_id, p)) for p in STEP_OUTPUTS[step]))


def _marker(directory: str, tile_id: int, step: str) -> str:
    return os.path.join(directory, f".t{tile_id:04d}_{step}.done")


def run_tile(plan, tile_id: int, engine_name: str, force: bool) -> Dict:
    """All steps of one tile (finished ones re-used unless `force`); returns a status dict."""
    directory = tile_dir(plan, tile_id)
    os.makedirs(directory, exist_ok=True)
    handler = logging.FileHandler(os.path.join(directory, f"t{tile_id:04d}.log"), mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("jointphot")
    root.addHandler(handler)
    start = time.time()
    status = {"tile_id": tile_id, "ok": True, "error": "", "reused": [], "seconds": 0.0}
    try:
        redo = force
        for step in STEP_OUTPUTS:
            if not redo and step_is_done(step, plan, tile_id, directory, engine_name):
                status["reused"].append(step)
                continue
            redo = True   # everything after a re-run step is re-run too
            log.info("tile %d: %s", tile_id, step)
            run_step(step, plan, tile_id, directory, engine_name)
    except JointphotError as exc:
        status.update(ok=False, error=str(exc))
        log.error("tile %d failed: %s", tile_id, exc)
    except Exception as exc:  # a bug or an unexpected fault: keep the other tiles going, log the traceback
        status.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        log.error("tile %d failed:\n%s", tile_id, traceback.format_exc())
    finally:
        status["seconds"] = time.time() - start
        root.removeHandler(handler)
        handler.close()
    return status


def run_tiles(plan, tile_ids: List[int], engine_name: str, jobs: int, force: bool,
              report: Optional[Callable[[Dict, int, int], None]] = None) -> List[Dict]:
    """Run tiles, `jobs` at a time (processes); `report(status, done, total)` after each tile."""
    results = []
    if jobs <= 1 or len(tile_ids) <= 1:
        for k, t in enumerate(tile_ids):
            results.append(run_tile(plan, t, engine_name, force))
            if report:
                report(results[-1], k + 1, len(tile_ids))
        return results
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_tile, plan, t, engine_name, force) for t in tile_ids]
        for k, fut in enumerate(concurrent.futures.as_completed(futures)):
            results.append(fut.result())
            if report:
                report(results[-1], k + 1, len(tile_ids))
    return sorted(results, key=lambda s: s["tile_id"])
