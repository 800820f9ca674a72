"""A smooth local background from a fit's residual (SExtractor-style mesh).

The residual (data - model) of a first fit pass holds the sky, light no model explains (the
halo of a big galaxy beyond its single-profile model, intra-cluster light, scattered light) and
noise.  Its sigma-clipped median in square cells, interpolated bicubically, is a background
that varies on the cell scale (no median filter over cells: the sources are modelled, and a
filter would flatten a halo's peak by ~10 %): faint sources on a halo are then fitted against their local level instead of taking the halo's light (or a hole
in it) into their fluxes, while a well-fitted isolated source, whose residual is noise, is
left unbiased.
"""
from __future__ import annotations

import numpy as np
from astropy.stats import sigma_clipped_stats
from scipy import ndimage
from scipy.interpolate import RectBivariateSpline

#: A cell needs this fraction of its pixels with data (weight > 0) to measure the background.
MIN_CELL_COVERAGE = 0.3
#: sextractor_sky: above this skewness ((mean - median) / sigma of the clipped values) the median, else the mode.
MODE_SKEW_LIMIT = 0.3


def clipped_mean_median(values: np.ndarray, sigma: float = 3.0, maxiters: int = 10):
    """(mean, median) of `values` sigma-clipped about the median, as astropy's
    sigma_clipped_stats(values, sigma=sigma, maxiters=maxiters)[:2] gives them, to the bit; NaN for no
    finite value.  The values are sorted once: the values kept by every pass so far are a range of them, whose
    median is its middle (astropy partitions the kept values every pass, ~3x the time on a 2000 x 2000 tile)."""
    kept = np.asarray(values, float).ravel()
    kept = kept[np.isfinite(kept)]
    if kept.size == 0:
        return np.nan, np.nan
    ordered = np.sort(kept)
    i0, i1 = 0, ordered.size

    def median():
        mid = i0 + (i1 - i0) // 2
        return ordered[mid] if (i1 - i0) % 2 else np.mean(ordered[mid - 1:mid + 1])

    for _ in range(maxiters):
        centre, std = median(), np.std(kept)       # (kept is finite: np.nanstd's value to the bit, 2x faster)
        lo, hi = centre - std * sigma, centre + std * sigma
        size = kept.size
        kept = kept[(kept >= lo) & (kept <= hi)]
        i0, i1 = max(i0, int(np.searchsorted(ordered, lo, "left"))), min(i1, int(np.searchsorted(ordered, hi, "right")))
        if kept.size == size:
            break
    return np.mean(kept), median()


def sextractor_sky(values: np.ndarray) -> float:
    """SExtractor's background estimator of `values` [counts]: clipped at 3 sigma around the median
    until stable, then the mode 2.5 median - 1.5 mean, or the median when (mean - median) / sigma >
    MODE_SKEW_LIMIT (E. Bertin, SExtractor back.c; photutils SExtractorBackground).  Faint light that no
    model holds skews the residual's distribution positive and lifts its median; the mode follows the
    noise peak."""
    mean, median, sigma = sigma_clipped_stats(values, sigma=3.0, maxiters=10)
    if not sigma > 0 or (mean - median) / sigma > MODE_SKEW_LIMIT:
        return float(median)
    return float(2.5 * median - 1.5 * mean)


def mesh_background(resid: np.ndarray, invvar: np.ndarray, cell_pix: int) -> np.ndarray:
    """Background [counts] on the image grid from the residual `resid` [counts] (pixels with
    invvar == 0 ignored) in square cells of `cell_pix` pixels; a constant (the clipped median
    of all pixels) when the image holds fewer than 2 x 2 cells."""
    good = invvar > 0
    if not good.any():
        return np.zeros(resid.shape)
    ny, nx = resid.shape
    my, mx = max(1, int(round(ny / cell_pix))), max(1, int(round(nx / cell_pix)))
    if my < 2 or mx < 2:
        return np.full(resid.shape, float(clipped_mean_median(resid[good])[1]))
    ye = np.linspace(0, ny, my + 1).astype(int)
    xe = np.linspace(0, nx, mx + 1).astype(int)
    cells = np.full((my, mx), np.nan)
    for j in range(my):
        for i in range(mx):
            sl = (slice(ye[j], ye[j + 1]), slice(xe[i], xe[i + 1]))
            g = good[sl]
            if g.mean() >= MIN_CELL_COVERAGE:
                cells[j, i] = clipped_mean_median(resid[sl][g])[1]
    if np.isnan(cells).all():
        return np.zeros(resid.shape)
    # empty cells take the value of the nearest measured cell
    missing = np.isnan(cells)
    if missing.any():
        nearest = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
        cells = cells[tuple(nearest)]
    yc = 0.5 * (ye[:-1] + ye[1:]) - 0.5
    xc = 0.5 * (xe[:-1] + xe[1:]) - 0.5
    spline = RectBivariateSpline(yc, xc, cells, kx=min(3, my - 1), ky=min(3, mx - 1))
    # beyond the outer cell centres the background stays at the edge's value (no extrapolation)
    return spline(np.clip(np.arange(ny), yc[0], yc[-1]), np.clip(np.arange(nx), xc[0], xc[-1]))
