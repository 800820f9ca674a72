"""Aperture correction: the light a PSF stamp misses, measured on bright isolated stars.

A PSF stamp normalised to `hr_/lr_psf_light_fraction` = 1 that really holds a fraction f < 1 of
a star's light makes every fitted flux low by f.  On each chosen star (`chosen_stars`: type psf,
S/N >= MIN_SNR in the band, no flag, owned by the tile; `measure`: the other sources' models in
its aperture below MAX_NEIGHBOUR_LIGHT of its flux, less than MAX_NO_DATA of the aperture and of
its model light on pixels without data) the sum of (image - the other sources' models - the local
sky) in a circle of radius `aperture_radius` around its fitted centre, over its fitted flux, is
1/f.  The local sky is the median of the annulus from 1 to ANNULUS_OUTER aperture radii: the
fit's sky is one level per tile (the clipped median of the residual, which faint undetected
light and the wings the stamp misses of every star raise); on the simulated LR tiles it lies 3 %
of the pixel noise above the level around the stars, 0.1 % of a 7000-count star's flux in a 4.5"
aperture.  The stars' ratios are combined by `combine` (inverse-variance weighted mean, outliers
clipped), per tile in fit-hr / fit-lr and over the tiles in merge, and recorded in the header
cards CARDS; the job keys hr_/lr_aperture_correction = 'apply' multiply the merged fluxes by it.

Radius: all but STAMP_TAIL of the stamp's light lies within `stamp_radius`, so the light the stamp
misses lies beyond it, in wings that fall at least as fast as a Moffat beta = 3 seeing profile's
(missing light ~ r^-4).  RADIUS_PER_STAMP_RADIUS = 2 stamp radii catch most of it while the
aperture's sky noise (~ its radius) and its neighbours stay few: for the simulated LR PSF (Moffat
beta = 3, FWHM 3.6 px, stamp cut at 0.997 of its light: stamp radius 13.5 px) a noiseless star
gives 1.00261 for the true 1.00302 (1.5 radii 1.00174, 2.5 radii 1.00285); a Gaussian's wings
hold nothing there.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .engines.base import TYPE_OF_KIND, Source
from .models import overlap_slices

#: Share of the PSF stamp's light allowed outside its `stamp_radius`.
STAMP_TAIL = 1e-3
#: The aperture radius, in stamp radii (module doc).
RADIUS_PER_STAMP_RADIUS = 2.0
#: Outer radius of the local sky annulus, in aperture radii (its inner radius is the aperture's).
ANNULUS_OUTER = 1.5
#: Stars need at least this S/N (band flux / its error) ...
MIN_SNR = 200.0
#: ... at most their own flux from other sources' models in the aperture (each star's error adds
#: NEIGHBOUR_MODEL_ERROR of that light: the models' errors) ...
MAX_NEIGHBOUR_LIGHT = 1.0
NEIGHBOUR_MODEL_ERROR = 0.005
#: ... and less than this share of the aperture's area and of their model light on pixels without data
#: (masked, off the image; they count as the star's model there), with at least half the annulus on data.
MAX_NO_DATA = 0.02
#: Ratios farther than this many (scatter-scaled) errors from the weighted mean are left out.
CLIP_SIGMA = 3.0
#: Sub-pixels per pixel side of the aperture's pixel weights (its area to 0.1 %).
SUBSAMPLE = 8
#: 'apply' multiplies the fluxes only by a correction known to this (1 sigma): the issue's 0.3 % goal.
MAX_APPLIED_ERROR = 0.003
#: Header card of each quantity, for the HR image and the LR band (tile and merged catalogues).
CARDS = {
    "hr": {"value": "JP_APCOR", "error": "JP_APCER", "n": "JP_APCNS", "radius": "JP_APCRA", "applied": "JP_APCAP"},
    "lr": {"value": "JP_APCOL", "error": "JP_APCEL", "n": "JP_APCNL", "radius": "JP_APCRL", "applied": "JP_APCAL"},
}
#: Comment of each card ({band}: HR or LR).
CARD_COMMENTS = {
    "value": "{band} aperture correction (total / fitted flux)",
    "error": "{band} aperture correction 1-sigma error (-1: none)",
    "n": "{band} aperture correction: stars used",
    "radius": "[arcsec] {band} aperture correction radius",
    "applied": "{band} fluxes multiplied by the aperture correction",
}


@dataclasses.dataclass(frozen=True)
class Correction:
    """An aperture correction: `value` (total / fitted flux), its 1-sigma `error`, the number of
    stars `n` it comes from (value 1 and error NaN when n = 0) and the aperture `radius` [arcsec]."""
    value: float = 1.0
    error: float = math.nan
    n: int = 0
    radius: float = math.nan


def stamp_radius(psf_image) -> float:
    """Radius [px] around the stamp's middle pixel within which its pixel centres hold all but
    STAMP_TAIL of its light."""
    psf = np.asarray(psf_image, float)
    ny, nx = psf.shape
    yy, xx = np.mgrid[:ny, :nx]
    r = np.hypot(xx - (nx - 1) / 2.0, yy - (ny - 1) / 2.0).ravel()
    order = np.argsort(r, kind="stable")
    enclosed = np.cumsum(psf.ravel()[order]) / psf.sum()
    return float(r[order][np.searchsorted(enclosed, 1.0 - STAMP_TAIL)])


def aperture_radius(psf_image) -> float:
    """Aperture radius [px] of the correction: RADIUS_PER_STAMP_RADIUS stamp radii (module doc)."""
    return RADIUS_PER_STAMP_RADIUS * stamp_radius(psf_image)


def aperture_weights(shape, x, y, radius) -> np.ndarray:
    """Share of each pixel of an array of `shape` inside the circle of `radius` [px] around (x, y)
    (0-based pixel centres), from SUBSAMPLE^2 sub-pixels per pixel."""
    ny, nx = shape
    sub = (np.arange(SUBSAMPLE) + 0.5) / SUBSAMPLE - 0.5
    dy = (np.arange(ny) - y)[:, None, None, None] + sub[None, None, :, None]
    dx = (np.arange(nx) - x)[None, :, None, None] + sub[None, None, None, :]
    return (dy ** 2 + dx ** 2 <= radius ** 2).mean(axis=(2, 3))


def star_ratio(data, invvar, x, y, flux, radius, variance_factor=1.0):
    """(ratio, error) of one star: the sum of `data` (image - the other sources' models) minus the
    local sky (median of `data` in the annulus from `radius` to ANNULUS_OUTER `radius` [px]) in the
    circle of `radius` around (x, y), over the fitted `flux`.  Pixels with `invvar` 0 (no data) hold
    the star's model, without sky; NaN when less than half the annulus has data.  The error is
    from the inverse variance [counts^-2] times `variance_factor` (the noise correlation's: true /
    per-pixel variance of a large aperture's sum), the local sky's (a median's) included."""
    ny, nx = np.shape(data)
    w = aperture_weights((ny, nx), x, y, radius)
    good = invvar > 0
    r = np.hypot(*np.mgrid[:ny, :nx] - np.array([y, x])[:, None, None])
    ring = (r > radius) & (r <= ANNULUS_OUTER * radius)
    if np.count_nonzero(ring & good) < 0.5 * np.count_nonzero(ring):
        return math.nan, math.nan
    sky = float(np.median(data[ring & good]))
    variance = np.where(good, 1.0 / np.where(good, invvar, 1.0), 0.0)
    total = float(np.sum(w * (data - np.where(good, sky, 0.0))))
    sky_var = (np.pi / 2.0) * float(np.mean(variance[ring & good])) / np.count_nonzero(ring & good)
    var = (float(np.sum(w ** 2 * variance)) + float(np.sum(w * good)) ** 2 * sky_var) * variance_factor
    return total / flux, math.sqrt(var) / abs(flux)


def usable(corr: Correction) -> bool:
    """Whether 'apply' may use `corr`: measured from stars and known to MAX_APPLIED_ERROR."""
    return corr.n > 0 and corr.error <= MAX_APPLIED_ERROR


def combine(values, errors, n_stars=None, radius=math.nan) -> Correction:
    """Inverse-variance weighted mean of ratios (of stars, or of tiles' corrections), leaving out
    those more than CLIP_SIGMA errors (scaled up by the robust scatter of the normalised
    residuals when it exceeds 1) from it, until nothing changes.  The error is the weighted mean's,
    scaled up by sqrt(chi^2 / dof) of the ratios kept when that exceeds 1.  n_stars: stars behind
    each value (1 each by default); the result's n sums those kept."""
    v = np.asarray(values, float)
    e = np.asarray(errors, float)
    counts = np.ones(v.size, int) if n_stars is None else np.asarray(n_stars, int)
    good = np.isfinite(v) & np.isfinite(e) & (e > 0) & (counts > 0)
    if not good.any():
        return Correction(radius=radius)
    keep = good.copy()
    for _ in range(v.size):
        w = 1.0 / e[keep] ** 2
        mean = float(np.sum(w * v[keep]) / np.sum(w))
        z = (v - mean) / e
        scale = max(1.0, 1.4826 * float(np.median(np.abs(z[keep] - np.median(z[keep]))))) if keep.sum() > 2 else 1.0
        new = good & (np.abs(z) <= CLIP_SIGMA * scale)
        if not new.any() or np.array_equal(new, keep):
            break
        keep = new
    w = 1.0 / e[keep] ** 2
    mean = float(np.sum(w * v[keep]) / np.sum(w))
    chi2 = float(np.sum(w * (v[keep] - mean) ** 2))
    inflation = math.sqrt(max(1.0, chi2 / (keep.sum() - 1))) if keep.sum() > 1 else 1.0
    return Correction(mean, inflation / math.sqrt(float(np.sum(w))), int(counts[keep].sum()), radius)


def chosen_stars(table, flux_col, err_col) -> np.ndarray:
    """Rows of a tile catalogue that may measure the correction: type psf, owned by the tile
    (in_core: no star counts in two tiles), S/N (flux_col / err_col) >= MIN_SNR, no flag."""
    flux = np.asarray(table[flux_col], float)
    err = np.asarray(table[err_col], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(err > 0, flux / err, 0.0)
    return ((np.asarray(table["type"]) == TYPE_OF_KIND["point"]) & np.asarray(table["in_core"], bool)
            & (snr >= MIN_SNR) & (np.asarray(table["flags"]) == 0))


def measure(image, invvar, model, x, y, flux, engine, psf, pixel_scale, variance_factor=1.0) -> Correction:
    """The aperture correction of one image from its chosen stars.

    image: sky-subtracted image [counts]; invvar: its inverse variance (0 = no data); model: every
    fitted source's model (engine.render with `psf`); x, y, flux: the stars' fitted centres [px,
    0-based] and fluxes [counts]; pixel_scale [arcsec/px] for the recorded radius; variance_factor:
    as in star_ratio.  The aperture radius is aperture_radius(psf.image); stars are left out as
    the module doc says.
    """
    radius = aperture_radius(psf.image)
    half = int(math.ceil(ANNULUS_OUTER * radius)) + 1
    shape = (2 * half + 1, 2 * half + 1)
    ratios, errors = [], []
    for sx, sy, f in zip(np.asarray(x, float), np.asarray(y, float), np.asarray(flux, float)):
        if not f > 0:
            continue
        x0, y0 = int(round(sx)) - half, int(round(sy)) - half
        own = engine.render(shape, psf, [Source("point", sx - x0, sy - y0, f)])
        img, ivar, mod = (_cutout(a, x0, y0, shape) for a in (image, invvar, model))
        w = aperture_weights(shape, sx - x0, sy - y0, radius)
        no_data = ivar <= 0
        others = mod - own
        neighbours = float(np.sum(w * others))
        if (np.sum(w * no_data) >= MAX_NO_DATA * np.sum(w) or np.sum((w > 0) * no_data * own) >= MAX_NO_DATA * f
                or neighbours > MAX_NEIGHBOUR_LIGHT * f):
            continue
        r, e = star_ratio(np.where(no_data, own, img - others), ivar, sx - x0, sy - y0, f, radius, variance_factor)
        ratios.append(r)
        errors.append(math.hypot(e, NEIGHBOUR_MODEL_ERROR * neighbours / f))
    return combine(ratios, errors, radius=radius * pixel_scale)


def _cutout(array, x0, y0, shape):
    """array[y0:y0 + ny, x0:x0 + nx], zero where that lies beyond the array."""
    out = np.zeros(shape)
    sl_img, sl_cut = overlap_slices(array.shape, shape, x0, y0)
    if sl_img is not None:
        out[sl_cut] = array[sl_img]
    return out


def header_cards(band: str, corr: Correction, applied=None):
    """[(card, value, comment)] (for Header.update) of a correction for the band 'hr' or 'lr' (error -1
    and radius 0 when not measured); `applied` (merged catalogue) adds the card saying whether it was."""
    names = CARDS[band]
    values = {"value": corr.value, "error": corr.error if corr.n else -1.0, "n": corr.n,
              "radius": corr.radius if np.isfinite(corr.radius) else 0.0}
    if applied is not None:
        values["applied"] = bool(applied)
    return [(names[k], v, CARD_COMMENTS[k].format(band=band.upper())) for k, v in values.items()]


def from_header(header, band: str) -> Correction:
    """The correction recorded in a header for band 'hr' or 'lr' (not measured: Correction())."""
    names = CARDS[band]
    n = int(header.get(names["n"], 0))
    if n == 0:
        return Correction()
    return Correction(float(header[names["value"]]), float(header[names["error"]]), n, float(header[names["radius"]]))


def combine_tiles(corrections) -> Correction:
    """One correction from the tiles' (combine over their values, each weighted by its error);
    its radius the median of the tiles' that measured one."""
    measured = [c for c in corrections if c.n > 0]
    radius = float(np.median([c.radius for c in measured])) if measured else math.nan
    return combine([c.value for c in measured], [c.error for c in measured], [c.n for c in measured], radius)
