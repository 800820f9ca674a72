"""Faults (issue 5): a `jointphot run --jobs 2` killed midway (SIGTERM, SIGKILL, a worker killed)
loses nothing and duplicates nothing; a re-run re-uses the finished tiles and gives the
byte-identical catalogue of an uninterrupted run; re-running a step overwrites cleanly; the same
inputs give byte-identical catalogues.  Real processes, real signals, a 20" field in 4 tiles.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from astropy.io import fits

from test_bad_input import files_under, four_tile_field

RUN = ["run", "job.json", "--tiles", "all", "-j", "2", "--no-qa"]


def jp(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jointphot.cli", *args], cwd=cwd, capture_output=True, text=True)


def start(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "jointphot.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """The small field with 10.5" tiles (2 x 2), native engine; and the bytes of an uninterrupted run's catalogue."""
    d = four_tile_field(tmp_path_factory, "four_tiles")
    proc = jp(*RUN, cwd=str(d))
    assert proc.returncode == 0, proc.stderr
    assert "4/4 tiles done" in proc.stdout
    reference = open(d / "work" / "catalog.fits", "rb").read()
    tiles = {p: open(p, "rb").read() for p in glob.glob(str(d / "work" / "tiles" / "*" / "t*_lr_fit.fits"))}
    shutil.copytree(d / "work", d / "reference_work")
    return str(d), reference, tiles


def fresh(four):
    d, reference, _ = four
    shutil.rmtree(os.path.join(d, "work"), ignore_errors=True)
    return d, reference


def children(pid):
    try:
        return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def wait_for_first_tile(proc, d, timeout=120):
    """Poll until a tile has finished (and the run is still going); returns the worker pids."""
    deadline = time.time() + timeout
    workers = []
    while time.time() < deadline:
        workers = children(proc.pid) or workers
        if finished_tiles(d):
            return workers
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("no tile finished in time")


def finished_tiles(d):
    """Tiles whose last step (fit-lr of the one band, lr) finished: its tNNNN_lr_fit.fits and .done marker exist."""
    done = glob.glob(os.path.join(d, "work", "tiles", "*", ".t*_fit-lr.lr.done"))
    return sorted(int(os.path.basename(p)[2:6]) for p in done
                  if os.path.exists(p.replace(".lr.done", "").replace("/.t", "/t").replace("_fit-lr", "_lr_fit.fits")))


def check_like_reference(d, reference, rerun):
    assert rerun.returncode == 0, rerun.stderr
    data = open(os.path.join(d, "work", "catalog.fits"), "rb").read()
    with fits.open(os.path.join(d, "work", "catalog.fits")) as hdul:
        ids = np.asarray(hdul[1].data["id"])
        assert hdul[1].header["JP_NMISS"] == 0
    assert len(np.unique(ids)) == len(ids) and np.all(np.diff(ids) > 0)
    with fits.open(os.path.join(d, "reference_work", "catalog.fits")) as hdul:
        assert list(ids) == list(hdul[1].data["id"])          # nothing lost, nothing duplicated
    assert data == reference                                   # byte-identical
    assert not [f for f in files_under(os.path.join(d, "work")) if "/.tmp-" in f or "sextractor_" in f]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_run_continues_where_it_stopped(four, sig):
    d, reference = fresh(four)
    proc = start(*RUN, cwd=d)
    workers = wait_for_first_tile(proc, d)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "interrupted by SIGTERM" in err and "run the same command again" in err, err
        assert "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    # the workers stop with their parent (they must not write behind the re-run's back)
    deadline = time.time() + 10
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers), workers
    assert not os.path.exists(os.path.join(d, "work", "catalog.fits"))
    finished = finished_tiles(d)
    assert 1 <= len(finished) < 4
    rerun = jp(*RUN, cwd=d)
    for t in finished:     # fully re-used: nothing of a finished tile runs again
        assert re.search(rf"\] tile {t} ok, \d+ sources, re-used \(", rerun.stderr), rerun.stderr
    assert f"({len(finished)} re-used)" in rerun.stdout, rerun.stdout
    check_like_reference(d, reference, rerun)


def test_killed_worker_costs_nothing(four):
    """A worker process killed (as by the out-of-memory killer): its tile runs again, the run succeeds."""
    d, reference = fresh(four)
    proc = start(*RUN, cwd=d)
    workers = wait_for_first_tile(proc, d)
    busy = [w for w in children(proc.pid) if alive(w)] or workers
    os.kill(busy[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "a worker process died" in err, err
    check_like_reference(d, reference, subprocess.CompletedProcess(proc.args, 0, out, err))


def test_rerunning_a_step_overwrites_cleanly(four):
    """`jointphot cutout` again: the later products of that tile go (no stale file can be merged); the next
    run redoes them and gives the same catalogue; --force gives the same bytes too (determinism)."""
    d, reference = fresh(four)
    shutil.copytree(os.path.join(d, "reference_work"), os.path.join(d, "work"))
    tile = os.path.join(d, "work", "tiles", "0002")
    assert jp("cutout", "job.json", "--tile", "2", cwd=d).returncode == 0
    left = files_under(tile)
    for product in ("hr_detections", "hr_fit", "hr_images", "lr_fit", "lr_images"):
        assert f"t0002_{product}.fits" not in left, left
    for step in ("detect", "fit-hr", "fit-lr.lr"):
        assert f".t0002_{step}.done" not in left
    assert ".t0002_cutout.done" in left
    merged = jp("merge", "job.json", cwd=d)                    # tile 2 is now missing, not stale
    assert merged.returncode == 0 and "missing tiles: 2" in merged.stdout, merged.stdout + merged.stderr
    rerun = jp(*RUN, cwd=d)
    assert "re-used cutout" in rerun.stderr or "tile 2 ok" in rerun.stderr
    check_like_reference(d, reference, rerun)
    forced = jp(*RUN, "--force", cwd=d)
    assert "(0 re-used)" in forced.stdout
    check_like_reference(d, reference, forced)


def test_outputs_are_deterministic_and_checksummed(four):
    """Same inputs, same bytes: every tile catalogue of a --force re-run equals the first run's; the FITS
    CHECKSUM/DATASUM cards are valid and carry no time stamp."""
    d, _, tiles = four
    if not os.path.exists(os.path.join(d, "work")):
        shutil.copytree(os.path.join(d, "reference_work"), os.path.join(d, "work"))
    proc = jp(*RUN, "--force", cwd=d)
    assert proc.returncode == 0, proc.stderr
    for path, data in tiles.items():
        assert open(path, "rb").read() == data, path
    for path in glob.glob(os.path.join(d, "work", "tiles", "*", "*.fits")) + [os.path.join(d, "work", "catalog.fits")]:
        with fits.open(path, checksum=True) as hdul:
            for hdu in hdul:
                assert hdu.verify_checksum() == 1 and hdu.verify_datasum() == 1, (path, hdu.name)
                assert hdu.header.comments["CHECKSUM"] == "jointphot"
        assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)   # not private to the owner (umask honoured)


def test_second_run_on_the_same_workdir_is_refused(four):
    """One run per work directory: while a lock holder lives, another run waits, then fails clearly."""
    from jointphot.pipeline import workdir_lock
    from jointphot.errors import JointphotError
    d, _, _ = four
    work = os.path.join(d, "lockdir")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from jointphot.pipeline import workdir_lock\n"
                               f"with workdir_lock({work!r}):\n    print('locked', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(JointphotError, match=f"another jointphot run \\(pid {holder.pid}\\) is working in"):
            with workdir_lock(work, wait=0.5):
                pass
    finally:
        holder.kill()
        holder.wait()
    with workdir_lock(work, wait=5):      # free again once the holder is gone
        pass


def test_merge_skips_catalogues_of_another_job(four):
    """After the job changed, `jointphot merge` does not pick up the old tile catalogues."""
    d, _, _ = four
    other = os.path.join(d, "other_job.json")
    job = json.load(open(os.path.join(d, "job.json")))
    job["psfex_mag"] = 22.0
    json.dump(job, open(other, "w"))
    if not os.path.exists(os.path.join(d, "work", "tiles")):
        shutil.copytree(os.path.join(d, "reference_work"), os.path.join(d, "work"))
    proc = jp("merge", "other_job.json", "-o", os.path.join(d, "other.fits"), cwd=d)
    assert proc.returncode == 1, proc.stderr
    assert "made for another version of the job" in proc.stderr and "no tile catalogues" in proc.stderr
    assert not os.path.exists(os.path.join(d, "other.fits"))
