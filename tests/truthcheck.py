"""Comparison of a jointphot catalogue with the simulation's truth catalogue (shared by all tests).

Thresholds (issue 2): for isolated sources with HR S/N > 20, the median of
(measured - true) / error within +-0.15 and the robust sigma (1.4826 MAD) within
0.8-1.25, for HR and LR fluxes; completeness > 95 % at HR S/N > 10; median astrometric
offset < 5 mas; no duplicates.
"""
from __future__ import annotations

import math

import numpy as np
from astropy.io import fits
from astropy.table import Table
from scipy.spatial import cKDTree

MATCH_RADIUS_ARCSEC = 0.1


def load(path, ext=1):
    with fits.open(path) as hdul:
        return Table(hdul[ext].data), hdul[ext].header


def match(cat, truth, radius_arcsec=MATCH_RADIUS_ARCSEC):
    """Index into `cat` of each truth row's nearest match within the radius, -1 if none; and distances (mas)."""
    dec0 = np.radians(np.mean(truth["dec"]))

    def xy(t):
        return np.column_stack([np.asarray(t["ra"]) * np.cos(dec0), np.asarray(t["dec"])]) * 3600.0

    if len(cat) == 0:
        return np.full(len(truth), -1), np.full(len(truth), np.inf)
    dist, idx = cKDTree(xy(cat)).query(xy(truth), distance_upper_bound=radius_arcsec)
    idx = np.where(np.isfinite(dist), idx, -1)
    return idx, dist * 1000.0


def robust_stats(chi):
    chi = np.asarray(chi, float)
    chi = chi[np.isfinite(chi)]
    med = float(np.median(chi))
    return med, float(1.4826 * np.median(np.abs(chi - med))), chi.size


def catalog_figures(catalog_path, truth_path, band="lr"):
    """Dict of the figures the thresholds are about."""
    cat, _ = load(catalog_path)
    truth, _ = load(truth_path)
    idx, dist = match(cat, truth)
    found = idx >= 0
    sel = found & np.asarray(truth["isolated"], bool) & (np.asarray(truth["hr_snr"]) > 20)
    m = idx[sel]
    t = truth[sel]
    chi_hr = (np.asarray(cat["hr_flux"])[m] - np.asarray(t["hr_flux"])) / np.asarray(cat["hr_flux_err"])[m]
    chi_lr = (np.asarray(cat[f"{band}_flux"])[m] - np.asarray(t["lr_flux"])) / np.asarray(cat[f"{band}_flux_err"])[m]
    # the LR test excludes sources whose LR model is partly on masked pixels (they are flagged)
    lr_ok = np.asarray(cat[f"{band}_masked_frac"])[m] < 0.2
    snr10 = np.asarray(truth["hr_snr"]) > 10
    ids = np.asarray(cat["id"])
    pair_d = cKDTree(np.column_stack([cat["x_large"], cat["y_large"]])).query_pairs(0.1 / 0.03) if len(cat) else set()
    return {
        "n_sources": len(cat),
        "n_selected": int(sel.sum()),
        "hr_chi": robust_stats(chi_hr),
        "lr_chi": robust_stats(chi_lr[lr_ok]),
        "completeness_snr10": float(found[snr10].mean()),
        "median_offset_mas": float(np.median(dist[sel])),
        "duplicate_ids": int(len(ids) - len(np.unique(ids))),
        "duplicate_positions": len(pair_d),
        "n_truth_matched_twice": int(len(idx[found]) - len(np.unique(idx[found]))),
    }


def check_catalog_against_truth(catalog_path, truth_path, band="lr"):
    """Assert the issue-2 thresholds; returns the figures (for printing)."""
    f = catalog_figures(catalog_path, truth_path, band)
    assert f["n_selected"] >= 150, f
    for key in ("hr_chi", "lr_chi"):
        med, sig, n = f[key]
        assert n >= 150, (key, f)
        assert abs(med) < 0.15, (key, f)
        assert 0.8 < sig < 1.25, (key, f)
    assert f["completeness_snr10"] > 0.95, f
    assert f["median_offset_mas"] < 5.0, f
    assert f["duplicate_ids"] == 0 and f["duplicate_positions"] == 0 and f["n_truth_matched_twice"] == 0, f
    return f


def galsim_image(shape, sources, psf_sigma):
    """Noiseless GalSim image of `sources` (base.Source, pixel frame, fluxes in counts)
    through a Gaussian PSF of `psf_sigma` [px], pixel-integrated by GalSim."""
    import galsim
    im = galsim.ImageD(shape[1], shape[0], scale=1.0)
    cx, cy = (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0
    for s in sources:
        if s.kind == "point":
            prof = galsim.DeltaFunction(flux=s.flux)
        else:
            n = {"exp": 1.0, "dev": 4.0}.get(s.kind, s.n)
            prof = galsim.Sersic(n, half_light_radius=s.re * math.sqrt(s.ab), flux=s.flux).shear(
                q=s.ab, beta=s.phi * galsim.degrees)
        prof = galsim.Convolve(prof, galsim.Gaussian(sigma=psf_sigma))
        prof.drawImage(im, offset=(s.x - cx, s.y - cy), add_to_image=True, method="auto")
    return im.array.copy()
