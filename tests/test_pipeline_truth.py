"""The whole chain on the simulated field, compared with the truth catalogue (issue 2's thresholds)."""
import os

import numpy as np
import pytest
from astropy.io import fits

import truthcheck


def test_run_succeeds_and_writes_a_self_describing_catalogue(native_run):
    directory, proc = native_run
    assert proc.returncode == 0, proc.stderr
    path = os.path.join(directory, "work", "catalog.fits")
    with fits.open(path) as hdul:
        hdr = hdul[1].header
        cols = hdul[1].columns
        assert hdr["JP_NMISS"] == 0 and hdr["JP_MISS"] == "none"
        assert "native" in hdr["JP_ENGV"]
        units = {c.name: c.unit for c in cols}
        assert units["ra"] == "deg" and units["hr_flux"] == "count" and units["lr_flux_ujy"] == "uJy"
        for name in ("id", "tile_id", "ra", "dec", "type", "hr_flux", "hr_flux_err", "lr_flux", "lr_flux_err",
                     "hr_mag", "hr_mag_err", "lr_mag", "lr_mag_err", "hr_flux_ujy", "lr_flux_ujy", "re_arcsec",
                     "ab", "pa_deg", "sersic_n", "hr_chi2_dof", "hr_converged", "flags"):
            assert name in units, name
    assert os.path.exists(os.path.join(directory, "work", "catalog_README.txt"))
    for product in ("hr_images", "lr_images"):
        with fits.open(os.path.join(directory, "work", "tiles", "0000", f"t0000_{product}.fits")) as hdul:
            assert [h.name for h in hdul[1:]] == ["IMAGE", "MODEL", "RESIDUAL"]


def test_completeness_astrometry_and_no_duplicates(native_run):
    directory, _ = native_run
    f = truthcheck.catalog_figures(os.path.join(directory, "work", "catalog.fits"), os.path.join(directory, "truth.fits"))
    print(f)
    assert f["completeness_snr10"] > 0.95
    assert f["median_offset_mas"] < 5.0
    assert f["duplicate_ids"] == 0 and f["duplicate_positions"] == 0 and f["n_truth_matched_twice"] == 0


def test_hr_fluxes_against_truth(native_run):
    directory, _ = native_run
    f = truthcheck.catalog_figures(os.path.join(directory, "work", "catalog.fits"), os.path.join(directory, "truth.fits"))
    med, sig, n = f["hr_chi"]
    print(f)
    assert n >= 150
    assert 0.8 < sig < 1.25


def test_hr_flux_median_against_truth(native_run):
    directory, _ = native_run
    f = truthcheck.catalog_figures(os.path.join(directory, "work", "catalog.fits"), os.path.join(directory, "truth.fits"))
    assert abs(f["hr_chi"][0]) < 0.15, f["hr_chi"]


def test_lr_fluxes_against_truth(native_run):
    directory, _ = native_run
    f = truthcheck.catalog_figures(os.path.join(directory, "work", "catalog.fits"), os.path.join(directory, "truth.fits"))
    med, sig, n = f["lr_chi"]
    print(f)
    assert n >= 150
    assert abs(med) < 0.15 and 0.8 < sig < 1.25


def test_lr_point_sources_against_truth(native_run):
    """Stars have no shape uncertainty: their LR fluxes must already meet the thresholds' spirit."""
    directory, _ = native_run
    cat, _ = truthcheck.load(os.path.join(directory, "work", "catalog.fits"))
    truth, _ = truthcheck.load(os.path.join(directory, "truth.fits"))
    idx, _ = truthcheck.match(cat, truth)
    sel = (idx >= 0) & np.asarray(truth["isolated"]) & (np.asarray(truth["kind"]) == "point")
    m = idx[sel]
    ok = np.asarray(cat["lr_masked_frac"])[m] < 0.2
    chi = ((np.asarray(cat["lr_flux"])[m] - np.asarray(truth["lr_flux"])[sel]) / np.asarray(cat["lr_flux_err"])[m])[ok]
    med, sig, n = truthcheck.robust_stats(chi)
    assert n >= 30
    # 40-odd stars: the median is uncertain by ~1.25/sqrt(n) ~ 0.2
    assert abs(med) < 0.4 and 0.7 < sig < 1.4
