"""The noise of an image measured from its blank sky: per-pixel scale and pixel-to-pixel correlation.

Weight maps (HR inverse variance, the LR VARIANCE plane) give each pixel's variance, never the
covariance of neighbouring pixels; drizzled and warped images have correlated noise, so a sum over
many pixels (a flux fit, SExtractor's detection filter) is noisier than the weight map implies.
On source-free pixels the normalised noise z = (image - sky) sqrt(invvar) has a robust sigma
`scale` (1 when the weight map is right) and an autocorrelation function rho(dx, dy) (1 at lag 0).

For a linear estimator F = sum_i w_i x_i of pixel values x_i with sigma_i = scale / sqrt(invvar_i),
Var F = sum_ij w_i w_j sigma_i sigma_j rho(i - j), while the weight map implies
sum_i w_i^2 / invvar_i.  With u_i = w_i / sqrt(invvar_i) their ratio is

    variance_factor = scale^2 sum_lag rho(lag) (u * u)(lag) / sum_i u_i^2,

(u * u) the autocorrelation of u: 1 for white noise with a right weight map, sum(rho) for an
aperture much larger than the correlation length.  Correlations are measured (and used) up to
the lag `max_lag` in x and y.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from scipy import fft, ndimage

from .background import clipped_mean_median
from .convolution import fftconvolve
from .errors import JointphotError

#: Robust sigma of a normal sample = this x its median absolute deviation.
MAD_TO_SIGMA = 1.4826
#: Fewest source-free pixels per correlation lag measured ((2 max_lag + 1)^2 lags).
MIN_PIXELS_PER_LAG = 20
#: The sky box's correction of a measured autocorrelation (_box_mean_corrected) needs this many blank
#: pixels per box for each of its measured lags (weighted by 2 - overlap): a first-order correction.
MIN_BOX_PIXELS_PER_LAG = 4.0
#: ... and the box's share of the variance, c = sum(rho) / pixels, at most this: drizzle or warp noise
#: has sum(rho) ~ 1.5-6 (c ~ 0.002 in a 64 px box); a sum of ~100 (a 12" HFF tile on the cD's halo) is
#: light no mask holds, not noise, and is left as measured.
MAX_BOX_SHARE = 0.01
#: A source's variance factor becomes its residual's (residual_variance_factor) where that exceeds
#: this many times the noise's own: 99.5 % of pure-noise residuals stay below 2.7 (1-6 px sources).
MISMATCH_LIMIT = 3.0


@dataclass(frozen=True)
class NoiseModel:
    """Measured noise of an image.

    scale : robust sigma of z = (image - sky) sqrt(invvar) on blank sky (the factor by which the
        weight map underestimates the per-pixel noise sigma; 1 if it is right).
    acf : (2K+1, 2K+1) autocorrelation of z, ``acf[K + dy, K + dx] = rho(dx, dy)``, ``acf[K, K] = 1``.
    npix : number of source-free pixels it was measured on.
    """
    scale: float
    acf: np.ndarray
    npix: int

    @property
    def max_lag(self) -> int:
        """Largest lag K [px] in x and y."""
        return self.acf.shape[0] // 2

    @property
    def correlation_sum(self) -> float:
        """Sum of rho over all measured lags: the variance factor of a large aperture (scale 1)."""
        return float(self.acf.sum())


def white_noise(scale=1.0) -> NoiseModel:
    """NoiseModel of uncorrelated noise with per-pixel sigma `scale` x the weight map's."""
    return NoiseModel(float(scale), np.ones((1, 1)), 0)


def measure_noise(image, invvar, source_mask, max_lag=8, background_box=64, clip_sigma=4.0) -> NoiseModel:
    """NoiseModel of `image` from its pixels with invvar > 0 and not in `source_mask`.

    image : 2-D array [counts]; invvar : inverse variance of each pixel [counts^-2], same shape.
    source_mask : bool array, True on sources (pass a dilated segmentation or :func:`source_mask`).
    max_lag : K [px]; rho is measured for |dx|, |dy| <= K.
    background_box : side [px] of the running box whose mean of the blank pixels is the sky
        (follows gradients and halos); None: one constant, the sigma-clipped median.  The box's
        mean takes part of the correlated noise with it; rho and the scale are corrected for that
        (:func:`_box_mean_corrected`).
    clip_sigma : blank pixels with |z| > clip_sigma x scale (source pixels the mask missed)
        are left out of the sky and of rho.

    rho is the FFT autocorrelation of z over the kept pixels divided by that of the mask itself
    (the number of pixel pairs at each lag), so holes and edges do not bias it.
    """
    image = np.asarray(image, float)
    if image.ndim != 2 or image.shape != np.shape(invvar) or np.shape(source_mask) != image.shape:
        raise JointphotError(f"noise measurement: image {image.shape}, invvar {np.shape(invvar)} and source mask "
                             f"{np.shape(source_mask)} must be 2-D arrays of one shape")
    max_lag = int(max_lag)
    good, sigma = _good_and_sigma(image, invvar, ~np.asarray(source_mask, bool))
    needed = MIN_PIXELS_PER_LAG * (2 * max_lag + 1) ** 2
    if good.sum() < needed:
        raise JointphotError(f"noise measurement: {int(good.sum())} source-free pixels, fewer than the {needed} "
                             f"needed for correlations up to {max_lag} px")
    keep = good
    for _ in range(2):   # sky and scale from the blank pixels, then again without the clipped ones
        sky = _sky(image, keep, background_box)
        sky_pixels = keep
        z = image - sky
        del sky
        z *= sigma
        scale = MAD_TO_SIGMA * float(np.median(np.abs(z[good]), overwrite_input=True))
        if scale == 0:
            raise JointphotError("noise measurement: the source-free pixels have no noise (all equal)")
        keep = good & (np.abs(z) < clip_sigma * scale)
    del sigma
    box_pixels = _box_pixels(sky_pixels, background_box)
    z /= scale
    z[~keep] = 0.0
    shape = [fft.next_fast_len(n + max_lag, real=True) for n in z.shape]
    pairs = _autocorrelation(keep.astype(float), shape, max_lag)
    acf = _autocorrelation(z, shape, max_lag) / np.maximum(pairs, 1.0)
    acf, factor = _box_mean_corrected(acf / acf[max_lag, max_lag], box_pixels, background_box)
    return NoiseModel(scale * factor, acf, int(keep.sum()))


def _box_mean_corrected(acf, box_pixels, box):
    """(rho, scale factor) of noise measured after subtracting the mean of `box_pixels` blank pixels in a
    running box of `box` px (None: one mean over all of them).

    With S the sum of rho, z' = z - box mean has variance 1 - S/N and, at lag l, covariance
    rho(l) - (2 - o(l)) S/N (N = box_pixels, o(l) = (1 - |dx|/box)(1 - |dy|/box) the overlap of the two
    pixels' boxes), so the measured rho' = (rho - (2 - o) c) / (1 - c) with c = S/N; summing over the
    measured lags gives S = S' / (1 + (S' - sum(2 - o)) / N).  ACS-like noise in a 64 px box lowers the
    sum of rho up to lag 8 by 8 %; corrected, it is 1.5-2.6 % below a constant sky's (the box also takes
    rho beyond lag 8, which reaches lag ~30: 5.11 up to lag 8, 6.10 in all).  First order in
    sum(2 - o) / N: where the boxes hold fewer than MIN_BOX_PIXELS_PER_LAG x sum(2 - o) blank pixels, or
    c exceeds MAX_BOX_SHARE, the measurement is returned as it is.  Returns the corrected rho and
    1 / sqrt(1 - c), the factor of the measured scale."""
    k = acf.shape[0] // 2
    if box is None:
        overlap = np.ones_like(acf)
    else:
        lag = np.abs(np.arange(-k, k + 1)) / float(box)
        overlap = np.outer(1.0 - lag, 1.0 - lag)
    lag_weight = float(np.sum(2.0 - overlap))
    if box_pixels < MIN_BOX_PIXELS_PER_LAG * lag_weight:
        return acf, 1.0
    measured_sum = float(acf.sum())
    true_sum = measured_sum / (1.0 + (measured_sum - lag_weight) / box_pixels)
    c = true_sum / box_pixels
    if not 0.0 <= c <= MAX_BOX_SHARE:
        return acf, 1.0
    return acf * (1.0 - c) + c * (2.0 - overlap), 1.0 / np.sqrt(1.0 - c)


def source_mask(image, invvar, kernel, nsigma=4.0, dilate_pix=10, background_box=64, niter=3):
    """Bool mask of sources: where the `kernel`-filtered normalised image exceeds `nsigma` times its
    own robust sigma on the unmasked pixels (measured, so right whatever the noise correlation),
    dilated by `dilate_pix` [px].  Repeated `niter` times, each time with the sky (as in
    :func:`measure_noise`) and the sigma from the pixels left unmasked by the previous pass, so
    that faint wings and halos lift neither."""
    image = np.asarray(image, float)
    good, sigma = _good_and_sigma(image, invvar)
    kernel = np.asarray(kernel, float) / np.sum(kernel)
    mask = np.zeros(image.shape, bool)
    for _ in range(niter):
        free = good & ~mask
        if not free.any():
            break
        z = _normalised(image, _sky(image, free, background_box), sigma, good)
        filtered = fftconvolve(z, kernel, mode="same")
        del z
        values = filtered[free]
        centre = np.median(values, overwrite_input=True)       # reorders `values`, keeps its elements
        values -= centre
        level = MAD_TO_SIGMA * np.median(np.abs(values, out=values), overwrite_input=True)
        del values
        mask = good & (filtered > centre + nsigma * level)
        del filtered
        if dilate_pix > 0:
            mask = ndimage.binary_dilation(mask, iterations=int(dilate_pix))
    return mask


def residual_variance_factor(model, residual, invvar, lag: int) -> float:
    """Variance of a source's flux estimated from its fit's `residual` [counts], over the weight map's:
    sum over pixel pairs closer than `lag` px (each axis) of q_i q_j, q = model x invvar x residual, over
    sum(model^2 invvar) (`model`: the source's unit-flux model).  lag 0 is the sandwich estimator; a few
    px (about half the PSF FWHM) also take the coherence of structure the model lacks (a galaxy's clumps,
    a colour gradient between the HR shape and the LR image): on sources with random clumps it restores
    unit chi scatter where the nominal errors are 5-20x too small, and the sandwich estimator alone
    leaves 2x.  About 1 on noise (less for sources of a few pixels: the fit absorbs their part);
    NaN where the source has no weighted pixel."""
    m = np.asarray(model, float)
    norm = float(np.sum(m ** 2 * invvar))
    if not norm > 0:
        return float("nan")
    q = m * invvar * residual
    box = np.ones((2 * lag + 1, 2 * lag + 1))
    return float(np.sum(q * fftconvolve(q, box, mode="same"))) / norm


def mismatch_lag(fwhm_pix: float) -> int:
    """Largest pixel lag [px] of residual_variance_factor for a PSF of `fwhm_pix`: half the FWHM, >= 1."""
    return max(1, int(round(0.5 * fwhm_pix)))


def with_mismatch(noise_factor: float, residual_factor: float) -> float:
    """A source's variance factor: the noise's, or its residual's (residual_variance_factor) where
    that exceeds MISMATCH_LIMIT times the noise's (a model that does not describe the data)."""
    if np.isfinite(residual_factor) and residual_factor > MISMATCH_LIMIT * noise_factor:
        return float(residual_factor)
    return float(noise_factor)


def variance_factor(noise_model: NoiseModel, weights, invvar=None) -> float:
    """True variance / weight-map variance of F = sum(weights x image) (see the module docstring).

    weights : 2-D array of pixel weights w (e.g. a flux fit's model x invvar / sum(model^2 invvar),
        or a detection filter kernel); only their shape matters (the ratio is scale-free).
    invvar : inverse variance of the same pixels, or None for pixels of equal variance.
    Includes scale^2; for the correlation alone use ``dataclasses.replace(model, scale=1.0)``
    (e.g. when the inverse variance was already rescaled by 1 / scale^2).
    """
    u = np.asarray(weights, float)
    if invvar is not None:
        invvar = np.asarray(invvar, float)
        u = np.where(invvar > 0, u / np.sqrt(np.where(invvar > 0, invvar, 1.0)), 0.0)
    white = float(np.sum(u ** 2))
    if white == 0:
        raise JointphotError("variance_factor: the weights are all zero")
    correlated = float(np.sum(u * fftconvolve(u, noise_model.acf, mode="same")))
    return noise_model.scale ** 2 * correlated / white


def noise_model_hdu(noise_model: NoiseModel, name="NOISE_ACF"):
    """FITS image HDU of a NoiseModel: the ACF as data, scale and pixel count in the header."""
    hdu = fits.ImageHDU(np.asarray(noise_model.acf, np.float32), name=name)
    hdu.header["JP_NSCAL"] = (noise_model.scale, "noise sigma / weight-map sigma, blank sky")
    hdu.header["JP_NPIX"] = (noise_model.npix, "source-free pixels measured")
    hdu.header["COMMENT"] = "rho(dx, dy) at 0-based pixel [K + dy, K + dx], K = NAXIS1 // 2"
    return hdu


def noise_model_from_hdu(hdu) -> NoiseModel:
    """NoiseModel back from :func:`noise_model_hdu` (e.g. ``hdul["NOISE_ACF"]`` of a detections file)."""
    acf = np.asarray(hdu.data, float)
    if acf.ndim != 2 or acf.shape[0] != acf.shape[1] or acf.shape[0] % 2 == 0:
        raise JointphotError(f"{hdu.name}: noise ACF must be a square array of odd size, got {acf.shape}")
    return NoiseModel(float(hdu.header["JP_NSCAL"]), acf, int(hdu.header["JP_NPIX"]))


def _good_and_sigma(image, invvar, usable=None):
    """(good, sigma): pixels with a finite value and a positive finite inverse variance (and `usable`),
    and sqrt(invvar) there, 0 elsewhere (float64; tile-sized temporaries freed as they go)."""
    invvar = np.asarray(invvar)
    good = np.isfinite(image) & np.isfinite(invvar) & (invvar > 0)
    if usable is not None:
        good &= usable
    sigma = invvar.astype(float)
    sigma[~good] = 0.0
    return good, np.sqrt(sigma, out=sigma)


def _normalised(image, sky, sigma, good):
    """(image - sky) x sigma on the `good` pixels, 0 elsewhere, in one new array."""
    z = image - sky
    z *= sigma
    z[~good] = 0.0
    return z


def _sky(image, good, box):
    """Sky [counts]: the mean of the `good` pixels in a running box of `box` px, or their clipped median."""
    if box is None:
        return float(clipped_mean_median(image[good])[1])
    weight = ndimage.uniform_filter(good.astype(float), box, mode="constant")
    total = ndimage.uniform_filter(np.where(good, image, 0.0), box, mode="constant")
    total /= np.maximum(weight, 1e-12, out=weight)       # in place: tile-sized arrays add up
    return total


def _box_pixels(good, box):
    """Median number of `good` pixels in the running boxes of `box` px around the good pixels (the
    number of good pixels when `box` is None): the pixels each sky value of :func:`_sky` averages."""
    if box is None:
        return float(good.sum())
    weight = ndimage.uniform_filter(good.astype(float), box, mode="constant")
    return float(np.median(weight[good], overwrite_input=True)) * box * box


def _autocorrelation(values, shape, max_lag):
    """sum_x values(x) values(x + lag) for |lag| <= max_lag in x and y, zero-padded to `shape` (no wrap)."""
    power = np.abs(fft.rfft2(values, shape)) ** 2
    full = fft.irfft2(power, shape)
    lags = np.arange(-max_lag, max_lag + 1)
    return full[np.ix_(lags % shape[0], lags % shape[1])]
