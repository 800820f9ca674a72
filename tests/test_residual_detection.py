"""The second HR detection pass (fit_hr.residual_detections) against known truth (issue 12).

Scene: 12" of COSMOS-correlated noise (jointphot simulate's HR sampling, 0.03"/px, Gaussian PSF
FWHM 0.10"), a bright de Vaucouleurs galaxy (r_e 0.8", 2000 counts) and a point source of 3 counts
(PSF matched-filter S/N 64 on white noise of the same per-pixel sigma, ~30 with the correlation)
on its halo 0.8" from its centre.  SExtractor merges the point source into the galaxy's segment;
the residual of the first fit shows it.
"""
from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from jointphot.conventions import FLAGS
from jointphot.cutout import make_cutouts
from jointphot.detect import detect_tile
from jointphot.engines import get_engine
from jointphot.fit_hr import fit_tile, residual_detections
from jointphot.noise import measure_noise
from jointphot.plan import load as load_plan
from jointphot.plan import tile_dir, tile_path, tile_psf
from jointphot.simulate import HR_SCALE, cosmos_noise, simulate_field

galsim = pytest.importorskip("galsim")

GALAXY_FLUX, POINT_FLUX = 2000.0, 3.0            # counts
POINT_OFFSET_ARCSEC = 0.8                        # from the galaxy's centre, along +x


def _write_scene(directory, hr_models):
    """Simulate a 12" field, replace its HR image by the scene; returns the point source's
    0-based pixel position in the HR image."""
    simulate_field(directory, seed=5, size_arcsec=12.0)
    job_path = directory / "job.json"
    job_path.write_text(json.dumps(dict(json.loads(job_path.read_text()), hr_models=hr_models)))
    with fits.open(directory / "hr.fits", mode="update") as hdul:
        sigma = 1.0 / np.sqrt(np.median(fits.getdata(directory / "hr_wht.fits")))
        ny, nx = hdul[0].data.shape
        image = galsim.ImageD(nx, ny, scale=HR_SCALE)
        psf = galsim.Gaussian(fwhm=0.10)
        galaxy = galsim.Sersic(4, half_light_radius=0.8, trunc=6.4, flux_untruncated=True).shear(
            q=0.8, beta=20 * galsim.degrees).withFlux(GALAXY_FLUX)
        centre = np.array([(nx - 1) / 2 + 0.3, (ny - 1) / 2 - 0.2])      # 0-based
        galsim.Convolve(galaxy, psf).drawImage(image, add_to_image=True, offset=centre - [(nx - 1) / 2, (ny - 1) / 2])
        point = centre + [POINT_OFFSET_ARCSEC / HR_SCALE, 0.4]
        psf.withFlux(POINT_FLUX).drawImage(image, add_to_image=True, offset=point - [(nx - 1) / 2, (ny - 1) / 2])
        rng = np.random.default_rng(1)
        hdul[0].data = (image.array + sigma * cosmos_noise(galsim, (ny, nx), rng)).astype(np.float32)
    return point


@pytest.mark.parametrize("hr_models", ["sersic", "legacy"])
def test_a_point_source_on_a_halo_is_found_by_the_residual_pass(tmp_path, monkeypatch, hr_models):
    """SExtractor gives one detection (the galaxy) within 1" of the point source; the residual pass
    adds exactly one source, the point source: within 0.02" (0.2 FWHM) of its true position, its flux
    within 3 sigma and 10 % of the truth, a point source (sersic) or a REX below 1 px (legacy).
    Measured: sersic psf at 0.07 px, 3.12 +- 0.10; legacy rex (r_e 0.6 px) at 0.47 px, 3.28 +- 1.52
    (model-choice spread).  The former rules (S/N from FLUX_AUTO with the ACF sum, a 7x7 maximum of
    the smoothed data at the peak pixel) added nothing here."""
    point = _write_scene(tmp_path, hr_models)
    monkeypatch.chdir(tmp_path)                                  # the job's workdir is relative
    plan = load_plan("job.json")
    assert len(plan["tiles"]) == 1
    directory = tile_dir(plan, 0)
    make_cutouts(plan, 0, directory)
    detect_tile(plan, 0, directory)
    fit_tile(plan, 0, directory, get_engine("native"))
    header = fits.getheader(tile_path(directory, 0, "hr_fit"), "HR_FIT")
    cutout = fits.getheader(tile_path(directory, 0, "hr_cutout"))
    point = point - [cutout["JP_X0"], cutout["JP_Y0"]]            # cutout pixels
    det = Table(fits.getdata(tile_path(directory, 0, "hr_detections"), "CATALOG"))
    det_dist = np.hypot(det["X_IMAGE"] - 1 - point[0], det["Y_IMAGE"] - 1 - point[1]) * HR_SCALE
    assert det_dist.min() > 0.5 and np.sum(det_dist < 1.0) == 1        # merged into the galaxy
    fit = Table.read(tile_path(directory, 0, "hr_fit"), "HR_FIT")
    added = fit[(fit["flags"] & FLAGS["HR_RESIDUAL_DETECTION"]) != 0]
    assert header["JP_NRESD"] == 1 and len(added) == 1
    src = added[0]
    assert np.hypot(src["x"] - point[0], src["y"] - point[1]) * HR_SCALE < 0.02
    assert abs(src["hr_flux"] - POINT_FLUX) < min(3 * src["hr_flux_err"], 0.1 * POINT_FLUX)
    if hr_models == "sersic":
        assert src["type"] == "psf"
    else:
        assert src["type"] in ("psf", "rex") and src["re_pix"] < 1.0


def test_pure_correlated_noise_gives_no_residual_detection(tmp_path, monkeypatch, caplog):
    """30" of COSMOS noise as the residual of a fit with no sources, SExtractor's thresholds lowered
    to 0.7 sigma (noise-scaled) so that it finds many noise peaks: none reaches PSF matched-filter
    S/N RESIDUAL_MIN_SNR (10) with the correlation's variance factor (3.7 for this PSF)."""
    simulate_field(tmp_path, seed=5, size_arcsec=12.0)
    monkeypatch.chdir(tmp_path)
    plan = load_plan("job.json")
    plan["job"]["sextractor_settings"] = {"DETECT_THRESH": 0.7, "ANALYSIS_THRESH": 0.7}
    psf = tile_psf(plan, 0, "hr")
    rng = np.random.default_rng(3)
    image = cosmos_noise(galsim, (1000, 1000), rng)
    invvar = np.ones_like(image)
    noise = measure_noise(image, invvar, np.zeros(image.shape, bool))
    with caplog.at_level(logging.INFO, logger="jointphot.fit_hr"):
        cat, seg, starts = residual_detections(image, image, invvar, [], psf, plan, str(tmp_path), None, noise, 1)
    assert len(cat) == 0 and not seg.any() and starts == []
    added, candidates = map(int, re.search(r"(\d+) of (\d+) detections on the residual", caplog.text).groups())
    assert added == 0 and candidates > 50
