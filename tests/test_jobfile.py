"""Job files: the original format runs unchanged; bad keys give one clear line and exit 1."""
import json
import os
import subprocess
import sys

import pytest
from astropy.io import fits

from jointphot.jobfile import KEYS, load_job


def jp(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jointphot.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_every_original_key_is_known():
    original = ["workdir", "sexinputdir", "out_prefix", "cutoutsize_arcsec", "cutoutoverlap_arcsec", "cutout_output_dir",
                "hr_compl_niter", "lr_compl_niter", "hr_zp", "lr_zp", "sex_command", "hr_large_image_name",
                "lr_large_image_name", "hr_image_psf", "hr_psf_type", "lr_image_psf", "lr_psf_type",
                "lr_astrometry_correction_name", "hr_astrometry_correction_name", "hr_psf_fwhm_arcsec", "tile_id",
                "spurious_pixel_cut", "hr_wht_image_type", "hr_large_image_wht_name", "hr_ps_niter", "show_plots",
                "ncores", "output_logfile_name", "mainpath", "userinputdir", "run_on_mock"]
    assert set(original) <= set(KEYS)


def test_pre_2020_job_without_late_keys_infers_psf_types(field_copy):
    job = json.load(open(os.path.join(field_copy, "job_seed.json")))
    for key in ("hr_psf_type", "lr_psf_type", "hr_psf_fwhm_arcsec", "spurious_pixel_cut"):
        job.pop(key, None)
    job["lr_image_psf"] = 0.6          # a number meant a Gaussian FWHM
    path = os.path.join(field_copy, "old_job.json")
    json.dump(job, open(path, "w"))
    loaded = load_job(path)
    assert loaded["lr_psf_type"] == "fwhm" and loaded["hr_psf_type"] == "fits" and loaded["spurious_pixel_cut"] == 0


@pytest.mark.parametrize("change,message", [
    ({"nonsense_key": 1}, "unknown key 'nonsense_key'"),
    ({"hr_zp": "25"}, "key 'hr_zp' must be a number"),
    ({"hr_psf_type": "gauss"}, "key 'hr_psf_type' must be one of fits, fwhm, psfex"),
    ({"cutoutsize_arcsec": [30]}, "key 'cutoutsize_arcsec' must be two numbers"),
    ({"hr_large_image_name": "missing.fits"}, "'hr_large_image_name': file 'missing.fits' not found"),
    ({"lr_zp": None}, "required key 'lr_zp' is missing"),
])
def test_bad_job_files_give_one_clear_line(field_copy, change, message, tmp_path):
    job = json.load(open(os.path.join(field_copy, "job.json")))
    job.update(change)
    if change.get("lr_zp", 0) is None:
        del job["lr_zp"]
    path = tmp_path / "bad.json"
    json.dump(job, open(path, "w"))
    proc = jp("plan", str(path), "-o", str(tmp_path / "plan.json"), cwd=field_copy)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "plan.json").exists()


def test_seed_format_job_runs_unchanged(field_copy, tmp_path):
    """job_seed.json has the original's keys, '/usr/bin/sextractor' and a missing sexinputdir: it still runs
    (its tile_id, 0) and writes a catalogue whose sources lie in tile 0's core."""
    proc = jp("run", "job_seed.json", "-o", str(tmp_path / "seed_catalog.fits"), cwd=field_copy)
    assert proc.returncode == 0, proc.stderr
    with fits.open(tmp_path / "seed_catalog.fits") as hdul:
        cat = hdul[1].data
        assert len(cat) > 40 and set(cat["tile_id"]) == {0}
