"""Progress and logs of `jointphot run` (issue 5): a line per tile and a final summary; a complete log
file per tile and a run log; --quiet shows only warnings and errors, --verbose everything."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from test_bad_input import edit_job, four_tile_field


def jp(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jointphot.cli", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    d = four_tile_field(tmp_path_factory, "progress")
    return str(d)


def test_progress_lines_summary_and_logs(field):
    proc = jp("run", "job.json", "--tiles", "0,1", "-j", "2", "--no-qa", cwd=field)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    progress = [l for l in lines if re.match(r"\[\d/2\] tile \d ok, \d+ sources \(\d+\.\d s\)$", l)]
    assert len(progress) == 2 and {l.split()[2] for l in progress} == {"0", "1"}, proc.stderr
    assert lines[0].startswith("jointphot ") and "2 tiles" in lines[0] and "2 at a time" in lines[0]
    assert not [l for l in lines if "debug" in l or "pipeline" in l], proc.stderr       # no step chatter
    summary = proc.stdout.strip().splitlines()
    assert len(summary) == 1
    assert re.match(r"2/2 tiles done \(0 re-used\), 0 failed, \d+ sources, \d+\.\d s -> .*catalog\.fits$", summary[0])
    for t in (0, 1):
        log = open(os.path.join(field, "work", "tiles", f"{t:04d}", f"t{t:04d}.log")).read()
        for step in ("cutout", "detect", "fit-hr", "fit-lr"):
            assert f"INFO jointphot.pipeline: tile {t}: {step}" in log
        assert "DEBUG jointphot.detect: running" in log and "source-extractor" in log    # the SExtractor command
        assert f"tile {t}: done in" in log
    run_log = open(os.path.join(field, "work", "run.log")).read()
    assert "[1/2] tile" in run_log and "[2/2] tile" in run_log and "2/2 tiles done" in run_log
    # a second run re-uses everything and says so
    again = jp("run", "job.json", "--tiles", "0,1", "--no-qa", cwd=field)
    assert again.returncode == 0
    assert len(re.findall(r"re-used \(\d+\.\d s\)", again.stderr)) == 2 and "(2 re-used)" in again.stdout


def test_quiet_shows_only_problems_but_logs_everything(field):
    for args in (("run", "job.json", "--tiles", "2", "--force", "--no-qa", "--quiet"),
                 ("-q", "run", "job.json", "--tiles", "2", "--force", "--no-qa")):
        proc = jp(*args, cwd=field)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "" and proc.stderr == "", (proc.stdout, proc.stderr)
    log = open(os.path.join(field, "work", "tiles", "0002", "t0002.log")).read()
    assert log.count("tile 2: detect") >= 2 and "DEBUG" in log          # the tile log stays complete
    # problems still show
    edit_job(field, sextractor_settings={"BACK_SIZE": 0})
    try:
        proc = jp("run", "job.json", "--tiles", "2", "--no-qa", "--quiet", cwd=field)
    finally:
        edit_job(field, sextractor_settings=None)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "tile 2 FAILED" in proc.stderr and "BACK_SIZE keyword out of range" in proc.stderr
    assert "1 of 1 tiles failed (2)" in proc.stderr


def test_verbose_shows_every_step(field):
    proc = jp("run", "job.json", "--tiles", "3", "--force", "--no-qa", "--verbose", cwd=field)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    for step in ("cutout", "detect", "fit-hr", "fit-lr"):
        assert f"jointphot: info: jointphot.pipeline: tile 3: {step}" in err, err
    assert "jointphot: debug: jointphot.detect: tile 3: running" in err
    assert "[1/1] tile 3 ok" in err and "1/1 tiles done" in proc.stdout


def test_failed_tile_in_the_summary(field):
    """A tile that fails is named in its progress line and in the summary; the others are merged."""
    bad = os.path.join(field, "work", "tiles", "0001")
    os.makedirs(bad, exist_ok=True)
    # break tile 1 only: its detect step sees a damaged cutout (the cutout step is re-used)
    jp("run", "job.json", "--tiles", "0,1", "--no-qa", cwd=field)
    cut = os.path.join(bad, "t0001_hr_cutout.fits")
    for name in os.listdir(bad):
        if name.startswith(".t0001_") and not name.startswith(".t0001_cutout"):
            os.remove(os.path.join(bad, name))
    open(cut, "wb").write(b"damaged")
    try:
        proc = jp("run", "job.json", "--tiles", "0,1", "--no-qa", cwd=field)
    finally:
        os.remove(os.path.join(bad, ".t0001_cutout.done"))          # let the next test run it again
    assert proc.returncode == 1
    assert re.search(r"\[\d/2\] tile 1 FAILED \(\d+\.\d s\): tile 1: .*t0001_hr_cutout.fits.* is damaged", proc.stderr), \
        proc.stderr
    assert re.search(r"\[\d/2\] tile 0 ok", proc.stderr)
    assert "1/2 tiles done" in proc.stdout and "1 failed" in proc.stdout and "INCOMPLETE: tiles 1 missing" in proc.stdout
    assert "Traceback" not in proc.stderr
