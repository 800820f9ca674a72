"""LR-only sources (issue 14): what a band's forced-fit residual shows that no HR source explains.

A source in an HR chip gap or under a masked HR region, or too faint or red for the HR detection, has
no HR model, so the forced LR fit leaves its light in the residual.  After the forced fit of a band,
the residual is searched with the LR PSF's matched filter (S/N from the weights and the measured noise
correlation); a peak is kept when its S/N >= LR_ONLY_MIN_SNR, the PSF's weight around it lies mostly
on usable pixels (not a mask edge), it is farther than LR_ONLY_MIN_SEPARATION_FWHM from every known
source and the known sources' model there is below LR_ONLY_MODEL_RATIO times its own peak (a colour
gradient or a PSF mismatch under a bright source is not a new object).  Each kept peak is fitted on
the residual, its model chosen as the Legacy Surveys choose every source's (modelselect.fit_candidates:
a point source, a round exponential (REX), or an exponential, de Vaucouleurs or Sersic galaxy where the
LR data resolve it); the band's fluxes are then solved again jointly with them (fit_lr).  Their rows
carry the flag LR_ONLY, their candidates' dchisq, and no HR measurement (NaN).

Bands are searched separately; merge.join_bands takes LR-only rows of different bands within
LR_ONLY_MATCH_ARCSEC for one source.  The original tool's residual pass and T-PHOT's second pass add
point sources only: a resolved galaxy fitted as one has too low a flux (10-20 % for r_e ~ 0.3").
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
from astropy.table import Table
from scipy import ndimage
from scipy.spatial import cKDTree

from . import conventions as cv
from .convolution import fftconvolve
from .engines.base import FIXED_SERSIC_N, TYPE_OF_KIND, Source
from .images import ellipse_on_sky, pixel_angle
from .modelselect import candidates_flux_variance, dchisq_vector, fit_candidates
from .noise import variance_factor
from .plan import get_tile

#: Matched-filter S/N a residual peak needs to become an LR-only source.
LR_ONLY_MIN_SNR = 6.0
#: ... its distance to every known source, in LR PSF FWHM.
LR_ONLY_MIN_SEPARATION_FWHM = 1.5
#: ... the known sources' model at the peak below this times the candidate's own peak value.
LR_ONLY_MODEL_RATIO = 1.0
#: ... the share of its PSF-squared weight on usable pixels.
LR_ONLY_MIN_COVERAGE = 0.8
#: LR-only sources are fitted on a box of this many PSF FWHM (half-size) around their peak ...
LR_ONLY_BOX_FWHM = 3.0
#: ... their REX candidate starting from this r_e [LR PSF FWHM].
LR_ONLY_REX_START_FWHM = 0.5
#: LR-only rows of different bands within this distance [arcsec] are one source.
LR_ONLY_MATCH_ARCSEC = 0.5
#: Tile-local numbers of LR-only sources start here (HR detections are numbered from 1).
LR_ONLY_NUMBER_START = 90000


def matched_filter(residual, invvar, psf_image, correlation):
    """(S/N map, flux map [counts]) of a point source centred on every pixel of `residual` [counts]:
    flux = sum(r P w) / sum(P^2 w), its variance 1 / sum(P^2 w) times the variance factor of the PSF
    weights under `correlation` (noise.NoiseModel with scale 1; 1 for white noise)."""
    p = np.asarray(psf_image, float)
    flipped = p[::-1, ::-1]
    num = fftconvolve(residual * invvar, flipped, mode="same")
    den = fftconvolve(invvar, flipped ** 2, mode="same")
    factor = variance_factor(correlation, p) if correlation.max_lag > 0 else 1.0
    ok = den > 0
    flux = np.where(ok, num / np.where(ok, den, 1.0), 0.0)
    snr = np.where(ok, num / np.sqrt(np.where(ok, den, 1.0) * factor), 0.0)
    return snr, flux


def find_lr_only(residual, invvar, model, psf, correlation, known_xy) -> List[Source]:
    """Point sources (LR pixel positions, start fluxes [counts]) at the residual peaks that pass the
    module's criteria; `model` is the known sources' model, `known_xy` their (x, y) LR positions."""
    snr, flux = matched_filter(residual, invvar, psf.image, correlation)
    p = np.asarray(psf.image, float)
    coverage = fftconvolve((invvar > 0).astype(float), p[::-1, ::-1] ** 2, mode="same") / np.sum(p ** 2)
    size = 2 * int(np.ceil(psf.fwhm_pix)) + 1
    peaks = (snr >= LR_ONLY_MIN_SNR) & (snr == ndimage.maximum_filter(snr, size=size)) & \
        (coverage >= LR_ONLY_MIN_COVERAGE) & (invvar > 0)
    ys, xs = np.nonzero(peaks)
    if len(known_xy) and len(xs):
        dist = cKDTree(np.asarray(known_xy, float)).query(np.column_stack([xs, ys]))[0]
        far = dist > LR_ONLY_MIN_SEPARATION_FWHM * psf.fwhm_pix
    else:
        far = np.ones(len(xs), bool)
    own_peak = flux[ys, xs] * p.max()
    explained = np.abs(model[ys, xs]) > LR_ONLY_MODEL_RATIO * own_peak
    keep = far & ~explained
    return [Source("point", float(x), float(y), float(f)) for x, y, f in zip(xs[keep], ys[keep], flux[ys, xs][keep])]


def fit_positions(residual, invvar, psf, engine, correlation, sources: List[Source]):
    """Each LR-only source fitted on `residual` within LR_ONLY_BOX_FWHM PSF FWHM of its start, brightest
    first, the other LR-only sources' current models subtracted (the peaks' point sources, then their fits;
    as legacypipe fits a blob's sources), its model chosen by the Legacy Surveys' candidate ladder as for
    HR sources (modelselect.fit_candidates: PSF, REX, then DEV, EXP and SER where the data resolve it; REX
    from r_e = LR_ONLY_REX_START_FWHM PSF FWHM); the joint flux solve follows in fit_lr.  Returns (the
    fitted sources, the variance [counts^2, for the pixel weights given] that their position and shape
    uncertainty adds to their flux (shape_flux_variance of the chosen fit's covariance), the variance
    [counts^2] of the candidates' fluxes about the chosen one's (modelselect.candidates_flux_variance),
    {source index: dchisq of its candidates})."""
    half = int(np.ceil(LR_ONLY_BOX_FWHM * psf.fwhm_pix)) + 2
    ny, nx = residual.shape
    factor = variance_factor(correlation, psf.image) if correlation.max_lag > 0 else 1.0
    current = list(sources)
    model = engine.render(residual.shape, psf, current)
    shape_var, model_var, choices = np.zeros(len(sources)), np.zeros(len(sources)), {}
    for i in np.argsort([-s.flux for s in sources], kind="stable"):
        src = sources[i]
        others = model - engine.render(residual.shape, psf, [current[i]])
        x0, y0 = max(int(round(src.x)) - half, 0), max(int(round(src.y)) - half, 0)
        x1, y1 = min(int(round(src.x)) + half + 1, nx), min(int(round(src.y)) + half + 1, ny)
        img, ivar = (residual - others)[y0:y1, x0:x1], invvar[y0:y1, x0:x1]
        good = ivar > 0

        def fit(candidate):
            return engine.fit_group(img, ivar, psf, [candidate], pos_bound=0.5 * psf.fwhm_pix,
                                    re_max=[half] if candidate.is_galaxy else None)

        start = src.copy(x=src.x - x0, y=src.y - y0, re=LR_ONLY_REX_START_FWHM * psf.fwhm_pix)
        kind, fits, dchisq = fit_candidates(fit, start, start, float(np.sum(ivar[good] * img[good] ** 2)),
                                            lambda point: factor)
        best = fits[kind]
        s = best.sources[0]
        choices[i] = dchisq
        if np.isfinite(s.flux):
            current[i] = s.copy(x=s.x + x0, y=s.y + y0)
            shape_var[i] = shape_flux_variance(best.covariances[0]) if best.covariances else 0.0
            model_var[i] = candidates_flux_variance(kind, fits, dchisq)
        model = others + engine.render(residual.shape, psf, [current[i]])
    return current, shape_var, model_var, choices


def shape_flux_variance(cov) -> float:
    """The part [counts^2] of the flux variance that comes from the other parameters' uncertainty: the
    marginal variance cov[2, 2] (STANDARD_PARAMS order, flux third) minus the variance with them fixed,
    1 / (cov^-1)[2, 2]; 0 where the covariance is not finite."""
    cov = np.asarray(cov, float)
    if cov.shape[0] < 3 or not np.all(np.isfinite(cov)):
        return 0.0
    try:
        fixed = 1.0 / np.linalg.inv(cov)[2, 2]
    except np.linalg.LinAlgError:
        return 0.0
    return float(max(cov[2, 2] - fixed, 0.0))


def blank_rows(template: Table, m: int) -> Table:
    """`m` rows with the columns of `template`: NaN, 0, False or ''."""
    rows = Table()
    for name in template.colnames:
        col = template[name]
        kind = col.dtype.kind
        fill = np.nan if kind == "f" else False if kind == "b" else "" if kind in "US" else 0
        rows[name] = np.full((m,) + col.shape[1:], fill, dtype=col.dtype)
    return rows


def lr_only_rows(template: Table, sources: List[Source], dchisq: Dict[int, Dict[str, float]], lr_wcs, hr_wcs, hr_header,
                 plan, tile_id: int) -> Table:
    """Rows of a tile's catalogue (the columns of `template`) for LR-only sources in LR pixels (`dchisq`:
    {source index: dchisq of its candidates}, fit_positions): numbered from LR_ONLY_NUMBER_START, positions
    in every frame (the HR pixel frame through the astrometric offsets), the galaxies' ellipse on the sky
    and in the HR pixel frame, owned by the tile whose core holds them, flag LR_ONLY; the HR measurements
    NaN (0 / False / '' for integers, booleans and strings)."""
    m = len(sources)
    rows = blank_rows(template, m)
    if not m:
        return rows
    offsets = plan["astrometry_offsets_mas"]
    world = lr_wcs.all_pix2world([[s.x, s.y] for s in sources], 0)
    ra, dec = cv.image_to_reference(world[:, 0], world[:, 1], offsets["lr"])
    ra_hr, dec_hr = cv.reference_to_image(ra, dec, offsets["hr"])
    hx, hy = hr_wcs.all_world2pix(np.column_stack([ra_hr, dec_hr]), 0).T
    gx, gy = hx + hr_header["JP_X0"], hy + hr_header["JP_Y0"]
    rows["tile_id"] = tile_id
    rows["number"] = LR_ONLY_NUMBER_START + np.arange(m)
    rows["type"] = [TYPE_OF_KIND[s.kind] for s in sources]
    rows["x"], rows["y"] = hx, hy
    rows["x_large"], rows["y_large"] = gx, gy
    rows["x_det_large"], rows["y_det_large"] = gx, gy
    rows["ra_hr"], rows["dec_hr"] = ra_hr, dec_hr
    rows["ra"], rows["dec"] = ra, dec
    rows["in_core"] = get_tile(plan, tile_id).owns(gx, gy)
    for k, s in enumerate(sources):
        rows["ab"][k] = s.ab if s.is_galaxy else 1.0
        rows["sersic_n"][k] = s.n if s.kind == "sersic" else FIXED_SERSIC_N.get(s.kind, np.nan)
        rows["dchisq"][k] = dchisq_vector(dchisq.get(k, {}))
        if s.is_galaxy:
            rows["re_arcsec"][k], rows["pa_deg"][k] = ellipse_on_sky(lr_wcs, s.x, s.y, s.re, s.phi)
            rows["phi_pix"][k] = pixel_angle(hr_wcs, hx[k], hy[k], rows["pa_deg"][k])
        else:
            rows["re_arcsec"][k], rows["phi_pix"][k] = 0.0, 0.0
    rows["re_pix"] = rows["re_arcsec"] / plan["hr"]["pixel_scale_arcsec"]
    rows["flags"] = cv.FLAGS["LR_ONLY"]
    return rows
