"""QA pictures (issue 5): the numbers they show (residual statistics, tile statuses, catalogue
figures) checked with known inputs, and the pictures of a real run checked for size and content."""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from jointphot import qa
from test_bad_input import four_tile_field

pytest.importorskip("matplotlib")


def jp(*args, cwd, python_args=()):
    return subprocess.run([sys.executable, *python_args, "-m", "jointphot.cli", *args], cwd=cwd, capture_output=True,
                          text=True)


def png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


# --------------------------------------------------------------------------- numbers
def test_residual_statistics_of_known_noise():
    rng = np.random.default_rng(5)
    sigma = 2.0
    residual = rng.normal(0.3 * sigma, sigma, (300, 300))
    weight = np.full(residual.shape, 1.0 / sigma ** 2)
    weight[:50] = 0.0                                 # ignored pixels
    residual[:50] = 1e6                               # whatever they hold
    residual[100, :30] = 50 * sigma                   # 30 outliers
    s = qa.residual_statistics(residual, weight)
    assert s["n"] == 250 * 300
    assert abs(s["median"] - 0.3) < 0.02
    assert abs(s["sigma"] - 1.0) < 0.02
    assert s["outlier_frac"] == pytest.approx(30 / (250 * 300), abs=2 / (250 * 300))   # noise: P(|chi| > 5) ~ 1e-6
    sel = np.zeros(residual.shape, bool)
    sel[200:210, 200:210] = True
    assert qa.residual_statistics(residual, weight, sel)["n"] == 100
    empty = qa.residual_statistics(residual, np.zeros_like(weight))
    assert empty["n"] == 0 and np.isnan(empty["sigma"])


def test_tile_statuses_from_the_tile_directories(tmp_path):
    """ok: catalogue of this job; failed: last run failed; missing: never run, or made for another job."""
    plan = {"job": {"workdir": str(tmp_path)}, "job_hash": "abc", "tiles": [{"tile_id": t} for t in range(5)],
            "bands": {"lr": {}}}

    def tile(t, status=None, catalogue=False, marker_hash=None):
        d = tmp_path / "tiles" / f"{t:04d}"
        d.mkdir(parents=True)
        if status is not None:
            (d / f"t{t:04d}_status.json").write_text(json.dumps(status))
        if catalogue:
            (d / f"t{t:04d}_lr_fit.fits").write_bytes(b"")
        if marker_hash:
            (d / f".t{t:04d}_fit-lr.lr.done").write_text(json.dumps({"job_hash": marker_hash, "engine": "native"}))

    tile(0, {"ok": True, "job_hash": "abc"}, catalogue=True, marker_hash="abc")
    tile(1, {"ok": False, "job_hash": "abc", "error": "boom"})
    tile(2)
    tile(3, {"ok": True, "job_hash": "old"}, catalogue=True, marker_hash="old")     # another job's
    # tile 4: no directory at all
    assert qa.tile_statuses(plan) == {0: "ok", 1: "failed", 2: "missing", 3: "missing", 4: "missing"}
    assert qa.tile_statuses(plan, [1, 0]) == {1: "failed", 0: "ok"}


def test_catalogue_summary_numbers():
    t = Table({"hr_mag": [20.0, 21.0, 22.0, np.nan], "lr_mag": [20.5, 21.3, np.nan, 23.0],
               "hr_flux": [100.0, 40.0, 16.0, -1.0], "hr_flux_err": [1.0, 2.0, 4.0, 1.0],
               "lr_flux": [50.0, 20.0, -3.0, 2.0], "lr_flux_err": [5.0, 5.0, 5.0, 1.0],
               "type": ["psf", "ser", "ser", "psf"], "flags": [0, 64, 0, 8]})
    s = qa.catalogue_summary(t, "lr")
    assert s["n"] == 4 and s["n_point"] == 2 and s["n_lr"] == 3
    assert s["n_flagged"] == 1                  # LR_OFF_IMAGE (64) counts; HR_EDGE (8) is informational
    assert s["median_lr_minus_hr"] == pytest.approx(0.4)          # median of 0.5 and 0.3
    assert s["hr_mag_range"] == [20.0, 22.0] and s["lr_mag_range"] == [20.5, 23.0]
    assert s["median_hr_frac_err"] == pytest.approx(0.05)         # 0.01, 0.05, 0.25
    assert s["median_lr_frac_err"] == pytest.approx(0.25)         # 0.1, 0.25, 0.5
    assert qa.catalogue_summary(t[:0], "lr")["n"] == 0


# --------------------------------------------------------------------------- pictures of a real run
@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    """The small field in 4 tiles of which 0, 1, 2 are run (with the QA pictures); tile 3 is not."""
    d = four_tile_field(tmp_path_factory, "qa_run")
    proc = jp("run", "job.json", "--tiles", "0,1,2", "-j", "2", cwd=str(d))
    assert proc.returncode == 0, proc.stderr
    return str(d), proc


def test_run_draws_tile_pictures_and_a_summary(qa_run):
    d, proc = qa_run
    out = os.path.join(d, "work", "qa")
    assert "QA pictures:" in proc.stderr and "summary.html" in proc.stderr
    for t in (0, 1, 2):
        path = os.path.join(out, f"tile_{t:04d}.png")
        assert png_size(path) == (1500, 1000)
        import matplotlib.image
        img = matplotlib.image.imread(path)
        assert img.std() > 0.05                     # not a blank page
    assert not os.path.exists(os.path.join(out, "tile_0003.png"))      # tile 3 was not run
    assert png_size(os.path.join(out, "summary.png")) == (1400, 1150)


def test_summary_page_is_computed_from_the_catalogue(qa_run):
    d, _ = qa_run
    plan = json.load(open(os.path.join(d, "work", "plan.json")))
    page = open(os.path.join(d, "work", "qa", "summary.html")).read()
    with fits.open(os.path.join(d, "work", "catalog.fits")) as hdul:
        cat = Table(hdul[1].data)
    s = qa.catalogue_summary(cat)
    assert f"sources: {len(cat)} ({s['n_point']} point, {s['n_flagged']} flagged, {s['n_lr']} with an LR" in page
    assert f"{s['median_lr_minus_hr']:+.3f}" in page
    assert "3 ok, 0 failed, 1 missing (of 4)" in page
    rows = re.findall(r'<tr class="(\w+)"><td>(\d+)</td><td>\w+</td><td>(\d*)</td><td>([-\d.]*)</td><td>([-\d.]*)</td>'
                      r'<td>([-\d.]*)</td><td>([-\d.]*)</td>', page)
    assert [(r[0], r[1]) for r in rows] == [("ok", "0"), ("ok", "1"), ("ok", "2"), ("missing", "3")]
    for status, t, n, hr_med, hr_sig, lr_med, lr_sig in rows[:3]:
        t = int(t)
        res = qa.tile_residuals(plan, t)
        assert float(hr_sig) == pytest.approx(res["hr"]["sigma"], abs=0.006)
        assert float(lr_sig) == pytest.approx(res["lr"]["sigma"], abs=0.006)
        assert float(hr_med) == pytest.approx(res["hr"]["median"], abs=0.006)
        # a good fit: residuals look like noise
        assert 0.85 < res["hr"]["sigma"] < 1.15 and 0.85 < res["lr"]["sigma"] < 1.15
        with fits.open(os.path.join(d, "work", "tiles", f"{t:04d}", f"t{t:04d}_lr_fit.fits")) as hdul:
            assert int(n) == len(hdul["LR_FIT"].data)
        assert f'href="tile_{t:04d}.png"' in page and f"t{t:04d}.log" in page


def test_qa_command_redraws_and_marks_failed_tiles(qa_run, tmp_path):
    """`jointphot qa`: a failed tile shows as failed with its error; pictures go where -o says."""
    d, _ = qa_run
    status_file = os.path.join(d, "work", "tiles", "0003", "t0003_status.json")
    os.makedirs(os.path.dirname(status_file), exist_ok=True)
    plan = json.load(open(os.path.join(d, "work", "plan.json")))
    json.dump({"tile_id": 3, "ok": False, "error": "SExtractor failed: test", "job_hash": plan["job_hash"],
               "seconds": 1.0}, open(status_file, "w"))
    try:
        proc = jp("qa", "job.json", "-o", str(tmp_path / "qa"), "--tiles", "1", cwd=d)
        assert proc.returncode == 0, proc.stderr
        assert sorted(os.listdir(tmp_path / "qa")) == ["summary.html", "summary.png", "tile_0001.png"]
        page = (tmp_path / "qa" / "summary.html").read_text()
        assert "3 ok, 1 failed, 0 missing" in page and "SExtractor failed: test" in page
        assert qa.tile_statuses(plan)[3] == "failed"
    finally:
        os.remove(status_file)


def test_without_matplotlib(qa_run):
    """`run` skips the pictures with one line; `jointphot qa` fails with how to install it."""
    d, _ = qa_run
    block = ("-c", "import sys, runpy; sys.modules['matplotlib'] = None; sys.argv[0] = 'jointphot'; "
                   "runpy.run_module('jointphot.cli', run_name='__main__')")
    proc = subprocess.run([sys.executable, *block, "qa", "job.json"], cwd=d, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "jointphot: error: the QA pictures need matplotlib: pip install 'jointphot[qa]'" in proc.stderr
    proc = subprocess.run([sys.executable, *block, "run", "job.json", "--tiles", "0", "-o", "cat0.fits"], cwd=d,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sum("QA pictures skipped" in line for line in proc.stderr.splitlines()) == 1
