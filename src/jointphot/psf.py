"""PSF loading: a Gaussian FWHM, a FITS image or a PSFEx model, always returned on the image's pixel grid.

Every PSF comes back as :class:`jointphot.engines.base.PSF`: a square, odd-sized effective
(pixel-convolved) PSF centred on the middle pixel, whose sum is the job's light fraction
(`hr_/lr_psf_light_fraction`, 1 by default: the share of a point source's total light that the
stamp holds), so that a fitted flux is the total flux.

A FITS PSF's pixel scale comes from the job (`hr_/lr_psf_pixscale_arcsec`), else its header: the
CD matrix, else PC x CDELT, else CDELT (CUNITi, default deg), else a PIXSCALE card (arcsec), else
it is taken to be the image's.  Non-square, even-sized and off-centre stamps are recentred on
their light centroid and padded with zeros to the square.

PSFEx models are evaluated like PSFEx itself: the PSF_MASK planes are the coefficients of
the polynomial basis of ``poly_func`` (PSFEx src/wcs/poly.c) in the context variables
``(value - POLZEROi) / POLSCALi``.  For one group of two variables of degree d the plane order is
1, x, x^2 .. x^d, y, x y .. x^(d-1) y, .., y^d (powers of the first variable run fastest),
not ordered by total degree.  The tabulated model is an effective PSF sampled every
PSF_SAMP image pixels, centred on element (PSFAXIS1 // 2, PSFAXIS2 // 2) (0-based).
"""
from __future__ import annotations

import math
import os
import re
import warnings
from math import comb

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import ndimage
from scipy.special import erf

from .engines.base import PSF
from .errors import JointphotError

#: FWHM / sigma of a Gaussian, 2 sqrt(2 ln 2) (the original tool used 2.35).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
PSF_TYPES = ("fits", "fwhm", "psfex")
#: Context variable names understood in PSFEx models, and what they are evaluated at.
_POSITION_NAMES = {"X_IMAGE": 0, "XWIN_IMAGE": 0, "Y_IMAGE": 1, "YWIN_IMAGE": 1}
_MAG_NAMES = ("MAG_AUTO",)
#: Largest centroid offset (pixels) from the middle pixel accepted without recentring.
CENTRE_TOLERANCE_PIX = 0.05
#: Largest relative pixel-scale mismatch accepted without resampling.
SCALE_TOLERANCE = 0.01
#: Plausible pixel scales of a PSF file ["/px]; outside them its header (or the job's override) is wrong.
PSF_PIXSCALE_RANGE_ARCSEC = (0.001, 10.0)
#: Largest side (pixels) of a FITS PSF stamp once resampled to the image's pixels.
MAX_PSF_SIDE = 2001
#: Accepted light fractions of a PSF stamp: lower bound (excluded) and upper bound (included).
LIGHT_FRACTION_RANGE = (0.5, 1.0)
#: WCS keywords that give a FITS PSF its pixel scale, in order of precedence, and their names.
_SCALE_KEYWORDS = ((r"CD[12]_[12]$", "CD matrix"), (r"PC[12]_[12]$", "PC x CDELT"), (r"CDELT[12]$", "CDELT"))


def load_psf(spec, psf_type, pixel_scale_arcsec, *, position=None, psfex_mag=21.0, what="hr",
             file_pixscale_arcsec=None, light_fraction=1.0) -> PSF:
    """Load the PSF of the `what` ('hr' or 'lr') image with pixel scale `pixel_scale_arcsec` (arcsec/px).

    spec: the FWHM in arcsec (number or numeric string) for psf_type 'fwhm', else a file path.
    position: (x_image, y_image), 1-based pixel coordinates in the large image where a
    position-dependent PSFEx model is evaluated (the tile centre).
    psfex_mag: value of MAG_AUTO for a magnitude-dependent PSFEx model (mag).
    file_pixscale_arcsec: pixel scale of a 'fits' PSF file ["/px] (job key <what>_psf_pixscale_arcsec);
    None = from its header.
    light_fraction: share of a point source's total light inside the PSF stamp (job key
    <what>_psf_light_fraction); the returned image sums to it.
    """
    key = f"{what}_image_psf"
    if psf_type not in PSF_TYPES:
        raise JointphotError(f"{what}_psf_type: unknown PSF type {psf_type!r} (expected one of {', '.join(PSF_TYPES)})")
    if not (pixel_scale_arcsec > 0):
        raise JointphotError(f"{key}: pixel scale must be positive, got {pixel_scale_arcsec!r}")
    low, high = LIGHT_FRACTION_RANGE
    if not (low < light_fraction <= high):
        raise JointphotError(f"{what}_psf_light_fraction: must be in ({low:g}, {high:g}], got {light_fraction!r}")
    if file_pixscale_arcsec is not None and psf_type != "fits":
        raise JointphotError(f"{what}_psf_pixscale_arcsec: applies to FITS image PSFs only, but {what}_psf_type "
                             f"is {psf_type!r}")
    if psf_type == "fwhm":
        try:
            fwhm = float(spec)
        except (TypeError, ValueError):
            raise JointphotError(f"{key}: psf type 'fwhm' needs the FWHM in arcsec as a number, got {spec!r}") from None
        if not (fwhm > 0 and math.isfinite(fwhm)):
            raise JointphotError(f"{key}: FWHM must be a positive number of arcsec, got {spec!r}")
        sigma = fwhm / FWHM_PER_SIGMA / pixel_scale_arcsec
        return PSF(image=light_fraction * gaussian_epsf(sigma), kind="fwhm", sigma_pix=sigma)
    path = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else None
    if path is None:
        raise JointphotError(f"{key}: psf type {psf_type!r} needs a file name, got {spec!r}")
    if not os.path.isfile(path):
        raise JointphotError(f"{key}: PSF file {path} does not exist")
    try:
        with fits.open(path, memmap=False) as hdul:
            hdul.verify("silentfix")
            if psf_type == "fits":
                image = _fits_psf(hdul, pixel_scale_arcsec, file_pixscale_arcsec, f"{key} {path}",
                                  f"{what}_psf_pixscale_arcsec")
            else:
                image = _psfex_psf(hdul, position, psfex_mag, f"{key} {path}")
    except JointphotError:
        raise
    except Exception as exc:  # astropy raises OSError/ValueError/TypeError on damaged files
        raise JointphotError(f"{key}: cannot read PSF file {path} as FITS: {exc}") from None
    return PSF(image=light_fraction * image, kind=psf_type)


def gaussian_epsf(sigma_pix) -> np.ndarray:
    """Pixel-integrated circular Gaussian of width `sigma_pix` (pixels): odd size (>= +-5 sigma), unit sum."""
    half = max(int(math.ceil(5.0 * sigma_pix)), 2)
    edges = (np.arange(-half, half + 2) - 0.5) / (math.sqrt(2.0) * sigma_pix)
    line = np.diff(erf(edges))
    image = np.outer(line, line)
    return image / image.sum()


def _fits_psf(hdul, pixel_scale, file_scale, label, scale_key) -> np.ndarray:
    """Unit-sum PSF image from the primary (or first image) HDU on the image's pixels: square, odd-sized,
    centred on the middle pixel.

    file_scale: the file's pixel scale ["/px] (job key `scale_key`), None = from the header.
    A finer file PSF is integrated over the missing part of the image pixel; a coarser one is
    only interpolated (its own, larger pixel cannot be removed).  A stamp on the image's scale
    whose light centroid is (within CENTRE_TOLERANCE_PIX) on a pixel centre is only padded.
    """
    hdu = next((h for h in hdul if h.is_image and h.data is not None), None)
    if hdu is None:
        raise JointphotError(f"{label}: no image HDU with data")
    data = np.array(hdu.data, dtype=float)
    if data.ndim != 2:
        raise JointphotError(f"{label}: PSF image must be 2-D, got shape {data.shape}")
    data = np.where(np.isnan(data), 0.0, data)
    if not np.all(np.isfinite(data)):
        raise JointphotError(f"{label}: PSF image contains infinite values")
    total = data.sum()
    if not total > 0:
        raise JointphotError(f"{label}: PSF image has a non-positive sum ({total:g})")
    data /= total
    source = f"{scale_key} = {file_scale!r}"
    if file_scale is None:
        file_scale, source = _header_pixel_scale(hdu.header, label, scale_key)
    if file_scale is None:
        file_scale, source = pixel_scale, "the image's pixel scale (no scale in the header)"
    low, high = PSF_PIXSCALE_RANGE_ARCSEC
    if not (low <= file_scale <= high):
        raise JointphotError(f"{label}: a pixel scale of {file_scale:.6g}\"/px (from {source}) is not plausible "
                             f"for a PSF ({low:g}-{high:g}\"/px): set {scale_key} to the PSF file's pixel scale")
    ratio = 1.0 if abs(file_scale / pixel_scale - 1.0) <= SCALE_TOLERANCE else pixel_scale / file_scale
    ny, nx = data.shape
    cx, cy = _centroid(data)
    # half-size on the image grid that holds the whole stamp around its centroid (zeros padded)
    half = max(int(math.ceil(max(cx, nx - 1 - cx, cy, ny - 1 - cy) / ratio - 1e-6)), 1)
    if 2 * half + 1 > MAX_PSF_SIDE:
        raise JointphotError(f"{label}: at {file_scale:.6g}\"/px (from {source}) the {nx}x{ny} PSF would become "
                             f"{2 * half + 1}x{2 * half + 1} pixels of {pixel_scale:.6g}\" (at most {MAX_PSF_SIDE}): "
                             f"check {scale_key} (the PSF file's pixel scale) and the image's pixel scale")
    ix, iy = int(round(cx)), int(round(cy))
    if ratio == 1.0 and math.hypot(cx - ix, cy - iy) <= CENTRE_TOLERANCE_PIX:
        half = max(ix, nx - 1 - ix, iy, ny - 1 - iy)
        out = np.zeros((2 * half + 1, 2 * half + 1))
        out[half - iy:half - iy + ny, half - ix:half - ix + nx] = data
        return out
    # The file's ePSF already holds its own pixel: add only the missing box width (in file pixels).
    box = math.sqrt(max(ratio ** 2 - 1.0, 0.0))
    return _resample(data, (cx, cy), ratio, half, box)


def _header_pixel_scale(header, label, scale_key):
    """(pixel scale ["/px], the keywords it came from) of a FITS PSF header; (None, None) without any.

    Precedence: the CD matrix, PC x CDELT, CDELT alone (astropy.wcs; CUNITi default to deg),
    then a PIXSCALE card in arcsec.  Non-square pixels are an error naming `scale_key`.
    """
    found = [name for pattern, name in _SCALE_KEYWORDS if any(re.match(pattern, k) for k in header)]
    if found:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wcs = WCS(header, naxis=2)
                scales = [s * (u.deg if unit == u.dimensionless_unscaled else unit).to(u.arcsec)
                          for s, unit in zip(proj_plane_pixel_scales(wcs), wcs.wcs.cunit)]
        except Exception as exc:  # astropy raises many types for broken WCS keywords or units
            reason = " ".join(str(exc).split())    # wcslib's messages span lines
            raise JointphotError(f"{label}: cannot read a pixel scale from its {found[0]} keywords ({reason}): "
                                 f"set {scale_key} to the PSF file's pixel scale") from None
        if not all(s > 0 and math.isfinite(s) for s in scales):
            raise JointphotError(f"{label}: its {found[0]} keywords give pixel scales {scales[0]:.6g} x "
                                 f"{scales[1]:.6g}\"/px: set {scale_key} to the PSF file's pixel scale")
        if abs(scales[0] / scales[1] - 1.0) > SCALE_TOLERANCE:
            raise JointphotError(f"{label}: its {found[0]} keywords give non-square pixels ({scales[0]:.6g} x "
                                 f"{scales[1]:.6g}\"): resample the PSF to square pixels, or set {scale_key} "
                                 f"to use one scale for both axes")
        return math.sqrt(scales[0] * scales[1]), f"the {found[0]} keywords"
    if "PIXSCALE" in header:
        try:
            return abs(float(header["PIXSCALE"])), "PIXSCALE"
        except (TypeError, ValueError):
            raise JointphotError(f"{label}: PIXSCALE = {header['PIXSCALE']!r} is not a number: "
                                 f"set {scale_key} to the PSF file's pixel scale") from None
    return None, None


def _centroid(image):
    """Iterated Gaussian-weighted centroid (x, y) in 0-based pixels (exact for a symmetric PSF)."""
    ny, nx = image.shape
    yy, xx = np.mgrid[:ny, :nx]
    peak = image.max()
    sigma_w = max(math.sqrt(np.count_nonzero(image > 0.5 * peak) / math.pi) * 2.0 / FWHM_PER_SIGMA, 0.5)
    cy, cx = np.unravel_index(np.argmax(image), image.shape)
    cx, cy = float(cx), float(cy)
    for _ in range(50):
        w = image * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2.0 * sigma_w ** 2))
        s = w.sum()
        nxc, nyc = (w * xx).sum() / s, (w * yy).sum() / s
        done = math.hypot(nxc - cx, nyc - cy) < 1e-6
        cx, cy = nxc, nyc
        if done:
            break
    return cx, cy


def _resample(image, centre, step, half, box):
    """Resample `image` onto a (2 half + 1)^2 grid centred on `centre` (x, y in input pixels).

    step: input pixels per output pixel.  box: width (input pixels) of a square top-hat the
    result is integrated over (0 = plain quintic-spline sampling).  Returns a unit-sum array.
    """
    nsub = 1 if box <= 0 else 2 * int(math.ceil(box)) + 1
    sub = (np.arange(nsub) - (nsub - 1) / 2.0) * (box / nsub if nsub > 1 else 0.0)
    offsets = np.arange(-half, half + 1) * step
    coeffs = ndimage.spline_filter(image, order=5, mode="constant")
    out = np.zeros((2 * half + 1, 2 * half + 1))
    for sy in sub:
        for sx in sub:
            ys, xs = np.meshgrid(centre[1] + offsets + sy, centre[0] + offsets + sx, indexing="ij")
            out += ndimage.map_coordinates(coeffs, [ys, xs], order=5, mode="constant", cval=0.0, prefilter=False)
    total = out.sum()
    if not total > 0:
        raise JointphotError("PSF resampling produced a non-positive sum")
    return out / total


def psfex_exponents(groups, degrees):
    """Exponents of each PSFEx basis term, in PSF_MASK plane order (a port of PSFEx's poly_func).

    groups: 0-based group of each context variable.  degrees: polynomial degree of each group.
    Returns a list of tuples, one exponent per variable.
    """
    ndim = len(groups)
    counts = [groups.count(g) for g in range(len(degrees))]
    ncoeff = 1
    for n, d in zip(counts, degrees):
        ncoeff *= comb(n + d, d)
    terms = [(0,) * ndim]
    if ndim == 0:
        return terms
    expo = [0] * ndim
    gexpo = list(degrees)
    if gexpo[groups[0]]:
        gexpo[groups[0]] -= 1
    expo[0] = 1
    for _ in range(ncoeff - 1):
        terms.append(tuple(expo))
        for d in range(ndim):
            g = groups[d]
            left = gexpo[g]
            gexpo[g] -= 1
            if left:
                expo[d] += 1
                break
            gexpo[g] = expo[d]
            expo[d] = 0
    return terms


def _psfex_psf(hdul, position, mag, label) -> np.ndarray:
    """Evaluate a PSFEx model at `position` / `mag` and resample it to image pixels."""
    if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
        raise JointphotError(f"{label}: not a PSFEx file (HDU 1 must be a binary table)")
    header, table = hdul[1].header, hdul[1].data
    if table is None or "PSF_MASK" not in table.columns.names or len(table) < 1:
        raise JointphotError(f"{label}: not a PSFEx file (no PSF_MASK column in HDU 1)")

    def get(name, kind):
        if name not in header:
            raise JointphotError(f"{label}: PSFEx header keyword {name} is missing")
        try:
            return kind(header[name])
        except (TypeError, ValueError):
            raise JointphotError(f"{label}: PSFEx header keyword {name} = {header[name]!r} is not a {kind.__name__}") from None

    nvar = get("POLNAXIS", int)
    names = [get(f"POLNAME{i}", str).strip().upper() for i in range(1, nvar + 1)]
    zeros = [get(f"POLZERO{i}", float) for i in range(1, nvar + 1)]
    scales = [get(f"POLSCAL{i}", float) for i in range(1, nvar + 1)]
    groups = [get(f"POLGRP{i}", int) - 1 for i in range(1, nvar + 1)]
    ngroup = get("POLNGRP", int) if nvar else 0
    degrees = [get(f"POLDEG{i}", int) for i in range(1, ngroup + 1)]
    samp = get("PSF_SAMP", float)
    if not samp > 0:
        raise JointphotError(f"{label}: PSF_SAMP must be positive, got {samp}")
    if any(g < 0 or g >= ngroup for g in groups) or any(d < 0 for d in degrees):
        raise JointphotError(f"{label}: inconsistent POLGRPi / POLNGRP / POLDEGi keywords")
    if any(s == 0 for s in scales):
        raise JointphotError(f"{label}: a POLSCALi keyword is zero")
    terms = psfex_exponents(groups, degrees)

    cube = np.array(table["PSF_MASK"][0], dtype=float)
    naxis = get("PSFNAXIS", int)
    shape = tuple(get(f"PSFAXIS{i}", int) for i in range(naxis, 0, -1))
    if cube.size != int(np.prod(shape)) or naxis not in (2, 3):
        raise JointphotError(f"{label}: PSF_MASK has {cube.size} values, PSFNAXIS/PSFAXISi say {shape[::-1]}")
    cube = cube.reshape((1,) * (3 - naxis) + shape)
    if cube.shape[0] != len(terms):
        raise JointphotError(f"{label}: PSF_MASK has {cube.shape[0]} planes, the polynomial "
                             f"(POLNAXIS={nvar}, degrees {degrees}) needs {len(terms)}")

    values = []
    for name, zero, scale in zip(names, zeros, scales):
        if name in _POSITION_NAMES:
            if position is None:
                raise JointphotError(f"{label}: the model depends on {name}: a position is needed")
            values.append((float(position[_POSITION_NAMES[name]]) - zero) / scale)
        elif name in _MAG_NAMES:
            values.append((float(mag) - zero) / scale)
        else:
            raise JointphotError(f"{label}: unsupported PSFEx context variable POLNAME = {name!r} "
                                 f"(supported: {', '.join(list(_POSITION_NAMES) + list(_MAG_NAMES))})")
    basis = np.array([np.prod([v ** e for v, e in zip(values, t)]) for t in terms])
    model = np.tensordot(basis, cube, axes=1)
    model = np.where(np.isfinite(model), model, 0.0)
    if not model.sum() > 0:
        raise JointphotError(f"{label}: the PSFEx model has a non-positive sum at this position")
    ny, nx = model.shape
    centre = (float(nx // 2), float(ny // 2))
    half = max(int(math.floor(min(centre) * samp)), 1)
    return _resample(model, centre, 1.0 / samp, half, 0.0)


def write_psfex(path, planes, *, psf_samp, polnames, polzero, polscal, poldeg, fwhm_pix):
    """Write a PSFEx model file (HDU 1 'PSF_DATA' with a PSF_MASK cube), as PSFEx writes it.

    planes: (nterms, ny, nx) basis planes in PSFEx order (see :func:`psfex_exponents`); all
    context variables `polnames` share one group of degree `poldeg`.
    psf_samp: model pixel size in image pixels.  polzero/polscal: context offsets and scales.
    fwhm_pix: the PSF FWHM in image pixels (PSF_FWHM keyword).
    """
    planes = np.asarray(planes, dtype=np.float32)
    if planes.ndim == 2:
        planes = planes[None]
    nvar = len(polnames)
    nterms = len(psfex_exponents([0] * nvar, [poldeg] if nvar else []))
    if planes.shape[0] != nterms:
        raise JointphotError(f"write_psfex {path}: {planes.shape[0]} planes given, {nterms} needed")
    nt, ny, nx = planes.shape
    col = fits.Column(name="PSF_MASK", format=f"{planes.size}E", dim=f"({nx}, {ny}, {nt})", array=planes[None])
    hdu = fits.BinTableHDU.from_columns([col])
    h = hdu.header
    h["EXTNAME"] = ("PSF_DATA", "TABLE NAME")
    h["LOADED"] = (0, "Number of loaded sources")
    h["ACCEPTED"] = (0, "Number of accepted sources")
    h["CHI2"] = (0.0, "Final reduced chi2")
    h["POLNAXIS"] = (nvar, "Number of context parameters")
    for i, (name, zero, scale) in enumerate(zip(polnames, polzero, polscal), start=1):
        h[f"POLGRP{i}"] = (1, "Polynom group for this context parameter")
        h[f"POLNAME{i}"] = (name, "Name of this context parameter")
        h[f"POLZERO{i}"] = (float(zero), "Offset value for this context parameter")
        h[f"POLSCAL{i}"] = (float(scale), "Scale value for this context parameter")
    h["POLNGRP"] = (1 if nvar else 0, "Number of context groups")
    if nvar:
        h["POLDEG1"] = (int(poldeg), "Polynom degree for this context group")
    h["PSF_FWHM"] = (float(fwhm_pix), "PSF FWHM in image pixels")
    h["PSF_SAMP"] = (float(psf_samp), "Sampling step of the PSF data in image pixels")
    h["PSFNAXIS"] = (3, "Dimensionality of the PSF data")
    for i, n in enumerate((nx, ny, nt), start=1):
        h[f"PSFAXIS{i}"] = (n, "Number of element along this axis")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
