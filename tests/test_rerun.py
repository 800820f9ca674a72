"""Issue 16: a merged catalogue holds its whole job and every tool's version, and `jointphot rerun`
reproduces it from them."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from jointphot.jobfile import KEYS


def jp(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jointphot.cli", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A 20" simulated field (one tile) run with the native engine; returns its directory."""
    from jointphot.simulate import simulate_field
    d = tmp_path_factory.mktemp("rerun")
    simulate_field(str(d / "field"), seed=4, size_arcsec=20.0)
    proc = jp("-q", "run", "job.json", "--tiles", "all", "--engine", "native", "--no-qa", "-o", "cat.fits",
              cwd=d / "field")
    assert proc.returncode == 0, proc.stderr
    return d


def test_catalogue_holds_the_whole_job_and_the_versions(small_run):
    with fits.open(small_run / "field" / "cat.fits") as hdul:
        hdr = hdul["CATALOG"].header
        row = hdul[hdr["JP_JOBHD"]].data[0]
        job, versions = json.loads(row["job"]), json.loads(row["versions"])
    assert set(job) == set(KEYS)                             # every key, defaults filled
    assert job["hr_large_image_name"].startswith("/") and job["hr_zp"] == pytest.approx(25.94734)
    words = subprocess.run(["source-extractor", "--version"], capture_output=True, text=True).stdout.split()
    assert versions["sextractor"] == hdr["JP_SEXV"] == words[words.index("version") + 1]
    assert versions["engine"].startswith("jointphot-native") and versions["numpy"] == np.__version__
    assert {"python", "scipy", "astropy", "jointphot"} <= set(versions)


def test_rerun_reproduces_the_catalogue(small_run):
    proc = jp("-q", "rerun", str(small_run / "field" / "cat.fits"), "--dir", "again", cwd=small_run)
    assert proc.returncode == 0, proc.stderr
    old = fits.getdata(small_run / "field" / "cat.fits", "CATALOG")
    new = fits.getdata(small_run / "again" / "work" / "catalog.fits", "CATALOG")
    assert len(old) == len(new) > 10
    for col in ("id", "hr_flux", "hr_flux_err", "lr_flux", "lr_flux_err", "flags"):
        assert np.array_equal(old[col], new[col], equal_nan=True), col


def test_rerun_of_a_file_without_a_job_fails_clearly(tmp_path):
    fits.HDUList([fits.PrimaryHDU()]).writeto(tmp_path / "plain.fits")
    proc = jp("rerun", "plain.fits", "--dir", "x", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "'plain.fits' is not a jointphot catalogue with a JOB extension" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_pipeline_tasks_report_the_catalogues_versions(tmp_path, small_run):
    """`jointphot versions PROCESS --tool source-extractor` (every module's versions.yml) names the same
    versions as the catalogue's JOB extension and its detections' JP_SEXV card."""
    from jointphot import __version__
    from jointphot.merge import job_from_catalogue
    proc = jp("versions", "JOINTPHOT:DETECT", "--tool", "source-extractor", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == '"JOINTPHOT:DETECT":'
    reported = dict(line.strip().split(": ", 1) for line in lines[1:])
    _, stored = job_from_catalogue(str(small_run / "field" / "cat.fits"))
    assert reported["jointphot"] == __version__
    for name in ("python", "numpy", "scipy", "astropy"):
        assert reported[name] == stored[name], name
    detections = next((small_run / "field").rglob("t0000_hr_detections.fits"))
    assert reported["source-extractor"] == fits.getheader(detections, "CATALOG")["JP_SEXV"] != "unknown"
