"""Pure helpers of the real-data test set (scripts/hff-data) and its report (scripts/real-data-report).

Images are numpy arrays (y, x) with 0-based pixels; WCS are astropy TAN WCS with a CD matrix.
Fluxes are in image counts; an LR image made with :func:`resample_flux` keeps the counts of the
HR image, so a source's true LR flux equals its HR flux.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.wcs.utils import proj_plane_pixel_area
from scipy import ndimage, signal
from scipy.spatial import cKDTree

from jointphot.psf import FWHM_PER_SIGMA, gaussian_epsf
from jointphot.simulate import _tan_wcs

#: 1.4826 MAD is the sigma of a Gaussian.
MAD_TO_SIGMA = 1.4826


# --- geometry ---------------------------------------------------------------------------------
def tan_wcs(crval, scale_arcsec, rot_deg, shape, crpix):
    """TAN WCS with a CD matrix: `scale_arcsec` "/px, north up / east left turned by `rot_deg` (deg).

    crval: (RA, Dec) in deg at the 1-based pixel `crpix` (x, y); shape: (ny, nx).
    """
    wcs = _tan_wcs(shape[1], shape[0], scale_arcsec, rot_deg, crpix)
    wcs.wcs.crval = list(crval)
    wcs.wcs.set()
    return wcs


def lr_grid(hr_wcs, hr_shape, scale_arcsec, rot_deg, margin_arcsec):
    """(WCS, shape) of a square LR grid turned by `rot_deg` that holds the whole HR image plus
    `margin_arcsec` on every side; its reference pixel sits off the pixel centres (no aligned grids)."""
    ny, nx = hr_shape
    hr_scale = math.sqrt(proj_plane_pixel_area(hr_wcs)) * 3600.0
    theta = math.radians(rot_deg)
    side = max(nx, ny) * hr_scale * (abs(math.cos(theta)) + abs(math.sin(theta)))
    n = int(math.ceil((side + 2.0 * margin_arcsec) / scale_arcsec)) + 1
    centre = hr_wcs.wcs_pix2world([[(nx - 1) / 2.0, (ny - 1) / 2.0]], 0)[0]
    return tan_wcs(centre, scale_arcsec, rot_deg, (n, n), ((n + 1) / 2.0 + 0.37, (n + 1) / 2.0 - 0.21)), (n, n)


def area_ratio(wcs_in, wcs_out):
    """Pixel area of `wcs_out` over that of `wcs_in` (at their reference points)."""
    return proj_plane_pixel_area(wcs_out) / proj_plane_pixel_area(wcs_in)


# --- PSF matching and flux-conserving resampling ---------------------------------------------------
def matching_kernel(fwhm_from_arcsec, fwhm_to_arcsec, scale_arcsec):
    """Pixel-integrated Gaussian (unit sum, odd size) that takes a PSF of FWHM `fwhm_from_arcsec`
    to `fwhm_to_arcsec`: sigma^2 = sigma_to^2 - sigma_from^2.  Returns (kernel, sigma in arcsec)."""
    if not fwhm_to_arcsec > fwhm_from_arcsec > 0:
        raise ValueError(f"matching kernel: need 0 < FWHM from ({fwhm_from_arcsec}) < FWHM to ({fwhm_to_arcsec})")
    sigma = math.sqrt(fwhm_to_arcsec ** 2 - fwhm_from_arcsec ** 2) / FWHM_PER_SIGMA
    return gaussian_epsf(sigma / scale_arcsec), sigma


def convolve_same(image, kernel):
    """`image` convolved with a centred odd `kernel`, same shape, zero outside the image."""
    return signal.fftconvolve(image, kernel, mode="same")


def resample_flux(image, wcs_in, wcs_out, shape_out):
    """Regrid `image` onto `wcs_out` conserving counts: (counts per output pixel, covered fraction).

    reproject_exact gives the mean over the covered part of each output pixel; times the covered
    fraction and the pixel-area ratio that is the count landing in the pixel, so the sum over
    the output equals the sum over the input (when the output holds the whole input).
    """
    from reproject import reproject_exact   # extra 'test': only the real-data test set needs it

    mean, covered = reproject_exact((image, wcs_in), wcs_out, shape_out=shape_out)
    covered = np.clip(np.nan_to_num(covered), 0.0, 1.0)
    return np.where(covered > 0, np.nan_to_num(mean) * covered, 0.0) * area_ratio(wcs_in, wcs_out), covered


def lr_psf(hr_psf, kernel, hr_scale, lr_scale, rot_deg, crval):
    """The LR PSF: `hr_psf` convolved with `kernel` and regridded like the image onto an odd LR grid
    turned by `rot_deg`, centred on the middle pixel.  Returns (unit-sum image, share of the
    convolved light the stamp holds)."""
    full = signal.fftconvolve(hr_psf, kernel, mode="full")
    c = (full.shape[0] - 1) / 2.0
    half = int(math.floor(c * hr_scale / lr_scale))
    wcs_in = tan_wcs(crval, hr_scale, 0.0, full.shape, (c + 1.0, c + 1.0))
    wcs_out = tan_wcs(crval, lr_scale, rot_deg, (2 * half + 1,) * 2, (half + 1.0, half + 1.0))
    image, _ = resample_flux(full, wcs_in, wcs_out, (2 * half + 1,) * 2)
    held = image.sum() / full.sum()
    return image / image.sum(), held


# --- noise and detections ---------------------------------------------------------------------
@dataclasses.dataclass
class SkyNoise:
    mask: np.ndarray            # True on pixels with source light (grown detections)
    background: np.ndarray      # mesh background [counts/px]
    sigma: float                # clipped std of image - background on unmasked pixels [counts/px]
    smoothed: np.ndarray        # image convolved with the PSF
    smoothed_sky: float         # clipped median of `smoothed` on unmasked pixels [counts]
    sigma_smoothed: float       # clipped std of the PSF-smoothed residual on unmasked pixels [counts]


def mesh_background(image, mask, box):
    """Background map: sigma-clipped medians of the unmasked pixels in box x box cells (cells with
    < 25 % unmasked pixels take their nearest good cell), 3x3-cell median filtered, cubic-spline
    interpolated to every pixel."""
    ny, nx = image.shape
    gy, gx = int(math.ceil(ny / box)), int(math.ceil(nx / box))
    grid = np.full((gy, gx), np.nan)
    for j in range(gy):
        for i in range(gx):
            cell = np.s_[j * box:(j + 1) * box, i * box:(i + 1) * box]
            good = image[cell][~mask[cell]]
            if good.size >= 0.25 * image[cell].size:
                grid[j, i] = sigma_clipped_stats(good, sigma=3.0)[1]
    if np.isnan(grid).all():
        raise ValueError("mesh background: every cell is masked")
    nearest = ndimage.distance_transform_edt(np.isnan(grid), return_distances=False, return_indices=True)
    grid = ndimage.median_filter(grid[tuple(nearest)], size=3, mode="nearest")
    yy, xx = np.mgrid[:ny, :nx]
    return ndimage.map_coordinates(grid, [(yy + 0.5) / box - 0.5, (xx + 0.5) / box - 0.5], order=3, mode="nearest")


def blank_sky(image, psf, *, nsigma=3.0, grow=4, box=50, niter=5):
    """Noise of an image from its source-free pixels (NaN pixels count as masked).

    Iterated `niter` times: mesh background of the unmasked pixels; sigma-clipped std of
    image - background and of its PSF-smoothed version; mask = smoothed residual above
    `nsigma` smoothed sigmas, grown by `grow` pixels.
    """
    bad = ~np.isfinite(image)
    data = np.where(bad, 0.0, image)
    smoothed = convolve_same(data, psf)
    mask = bad.copy()
    background = np.zeros_like(data)
    for _ in range(niter):
        background = mesh_background(data, mask, box)
        sigma = sigma_clipped_stats(data - background, mask=mask, sigma=3.0)[2]
        residual = smoothed - convolve_same(background, psf)
        sigma_smoothed = sigma_clipped_stats(residual, mask=mask, sigma=3.0)[2]
        mask = ndimage.binary_dilation(residual > nsigma * sigma_smoothed, iterations=grow) | bad
    sky = sigma_clipped_stats(smoothed, mask=mask, sigma=3.0)[1]
    return SkyNoise(mask, background, float(sigma), smoothed, float(sky), float(sigma_smoothed))


# --- catalogue metrics ---------------------------------------------------------------------------
def local_peaks(image, threshold):
    """(x, y) of the pixels above `threshold` that are maxima of their 3x3 neighbourhood,
    brightest first."""
    peak = (image == ndimage.maximum_filter(image, size=3, mode="nearest")) & (image > threshold)
    y, x = np.nonzero(peak)
    order = np.argsort(-image[y, x], kind="stable")
    return x[order], y[order]


def close_pairs(x, y, radius):
    """Pairs (i, j, distance) of points closer than `radius` (same units as x, y), i < j."""
    xy = np.column_stack([x, y])
    pairs = sorted(cKDTree(xy).query_pairs(radius))
    return [(i, j, float(np.hypot(*(xy[i] - xy[j])))) for i, j in pairs]


def nearest(x, y, x0, y0):
    """For each point (x0, y0): (index of the nearest (x, y), its distance); (-1, inf) if there is none."""
    x0, y0 = np.atleast_1d(x0), np.atleast_1d(y0)
    if len(x) == 0:
        return np.full(len(x0), -1), np.full(len(x0), np.inf)
    dist, index = cKDTree(np.column_stack([x, y])).query(np.column_stack([x0, y0]))
    return index, dist


def robust_sigma(values):
    """1.4826 x median absolute deviation (NaN for no values)."""
    values = np.asarray(values, float)
    if values.size == 0:
        return float("nan")
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


# --- the figures of issue 12 for a catalogue (scripts/real-data-report, tests/test_real_data.py) ---
MATCH_RADIUS = 0.3        # arcsec: a peak is found / two sources are duplicates within this
PEAK_NSIGMA = 35.0        # peaks of the PSF-smoothed HR image above this many blank-sky sigmas
MIN_HR_SNR = 20.0         # HR S/N of the sources in the LR/HR flux comparison
CROSS_TILE_RADIUS = 1.0   # arcsec: sources of different tiles this close are likely one source cut by a tile edge
BOUND_TOLERANCE = 1e-3    # relative: re_pix this close to an RE_RANGE bound is on it


def catalogue_figures(job, table):
    """Issue 12's figures of a catalogue `table` of the real image of `job` (a validated job dict):
    duplicates and cross-tile pairs [(i, j, distance px)], the peaks of the PSF-smoothed HR image above
    PEAK_NSIGMA and which have a source within MATCH_RADIUS, sources with r_e at a bound, sources with a
    counted flag (not conventions.INFORMATIONAL_FLAGS), and for HR S/N > MIN_HR_SNR, 'unflagged' and
    'all': (n, median lr/hr, robust sigma and median of (lr - hr) / sqrt(err_lr^2 + err_hr^2), median LR
    S/N).  Also the per-source arrays the report prints."""
    from astropy.io import fits
    from astropy.wcs import WCS
    from jointphot.conventions import FLAGS, is_flagged
    from jointphot.engines.base import RE_RANGE
    from jointphot.images import pixel_scale_arcsec
    from jointphot.psf import load_psf
    with fits.open(job["hr_large_image_name"]) as hdul:
        image = np.array(hdul[0].data, dtype=float)
        wcs = WCS(hdul[0].header).celestial
    scale = pixel_scale_arcsec(wcs)
    ny, nx = image.shape
    psf = load_psf(job["hr_image_psf"], job["hr_psf_type"], scale, position=((nx + 1) / 2.0, (ny + 1) / 2.0),
                   psfex_mag=job["psfex_mag"]).image
    noise = blank_sky(image, psf)
    px, py = local_peaks(noise.smoothed - noise.smoothed_sky, PEAK_NSIGMA * noise.sigma_smoothed)
    x, y = np.asarray(table["x_large"], float), np.asarray(table["y_large"], float)
    kind = np.asarray(table["type"]).astype(str)
    flags = np.asarray(table["flags"], int)
    tile = np.asarray(table["tile_id"])
    index, dist = nearest(x, y, px, py)
    re_pix = np.asarray(table["re_pix"], float)
    on_range = (kind != "psf") & ((re_pix <= RE_RANGE[0] * (1 + BOUND_TOLERANCE))
                                  | (re_pix >= RE_RANGE[1] * (1 - BOUND_TOLERANCE)))
    counted = is_flagged(flags)
    band = job["lr_band"]
    hr, hr_err = np.asarray(table["hr_flux"], float), np.asarray(table["hr_flux_err"], float)
    lr, lr_err = np.asarray(table[f"{band}_flux"], float), np.asarray(table[f"{band}_flux_err"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        bright = (hr / hr_err > MIN_HR_SNR) & np.isfinite(lr) & np.isfinite(lr_err)
        pull = (lr - hr) / np.sqrt(lr_err ** 2 + hr_err ** 2)
    comparison = {}
    for key, sample in (("unflagged", bright & ~counted), ("all", bright)):
        comparison[key] = ((int(sample.sum()), float(np.median(lr[sample] / hr[sample])), robust_sigma(pull[sample]),
                            float(np.median(pull[sample])), float(np.median(lr[sample] / lr_err[sample])))
                           if sample.any() else (0, math.nan, math.nan, math.nan, math.nan))
    return dict(
        comparison, scale=scale, wcs=wcs, x=x, y=y, ids=np.asarray(table["id"]), kind=kind, flags=flags,
        re_pix=re_pix, duplicates=close_pairs(x, y, MATCH_RADIUS / scale),
        cross_tile=[(i, j, d) for i, j, d in close_pairs(x, y, CROSS_TILE_RADIUS / scale) if tile[i] != tile[j]],
        px=px, py=py, peak_snr=(noise.smoothed[py, px] - noise.smoothed_sky) / noise.sigma_smoothed,
        sigma=noise.sigma, sigma_smoothed=noise.sigma_smoothed, peak_index=index, peak_dist=dist,
        found=dist <= MATCH_RADIUS / scale, on_range=on_range,
        at_bound=((flags & FLAGS["PARAM_AT_BOUND"]) != 0) | on_range, counted=counted)
