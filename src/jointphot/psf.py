"""PSF loading: a Gaussian FWHM, a FITS image or a PSFEx model, always returned on the image's pixel grid.

Every PSF comes back as :class:`jointphot.engines.base.PSF`: an odd x odd effective
(pixel-convolved) PSF with unit sum, centred on the middle pixel.

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
from math import comb

import numpy as np
from astropy.io import fits
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


def load_psf(spec, psf_type, pixel_scale_arcsec, *, position=None, psfex_mag=21.0, what="hr") -> PSF:
    """Load the PSF of the `what` ('hr' or 'lr') image with pixel scale `pixel_scale_arcsec` (arcsec/px).

    spec: the FWHM in arcsec (number or numeric string) for psf_type 'fwhm', else a file path.
    position: (x_image, y_image), 1-based pixel coordinates in the large image where a
    position-dependent PSFEx model is evaluated (the tile centre).
    psfex_mag: value of MAG_AUTO for a magnitude-dependent PSFEx model (mag).
    """
    key = f"{what}_image_psf"
    if psf_type not in PSF_TYPES:
        raise JointphotError(f"{what}_psf_type: unknown PSF type {psf_type!r} (expected one of {', '.join(PSF_TYPES)})")
    if not (pixel_scale_arcsec > 0):
        raise JointphotError(f"{key}: pixel scale must be positive, got {pixel_scale_arcsec!r}")
    if psf_type == "fwhm":
        try:
            fwhm = float(spec)
        except (TypeError, ValueError):
            raise JointphotError(f"{key}: psf type 'fwhm' needs the FWHM in arcsec as a number, got {spec!r}") from None
        if not (fwhm > 0 and math.isfinite(fwhm)):
            raise JointphotError(f"{key}: FWHM must be a positive number of arcsec, got {spec!r}")
        sigma = fwhm / FWHM_PER_SIGMA / pixel_scale_arcsec
        return PSF(image=gaussian_epsf(sigma), kind="fwhm", sigma_pix=sigma)
    path = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else None
    if path is None:
        raise JointphotError(f"{key}: psf type {psf_type!r} needs a file name, got {spec!r}")
    if not os.path.isfile(path):
        raise JointphotError(f"{key}: PSF file {path} does not exist")
    try:
        with fits.open(path, memmap=False) as hdul:
            hdul.verify("silentfix")
            if psf_type == "fits":
                image = _fits_psf(hdul, pixel_scale_arcsec, f"{key} {path}")
            else:
                image = _psfex_psf(hdul, position, psfex_mag, f"{key} {path}")
    except JointphotError:
        raise
    except Exception as exc:  # astropy raises OSError/ValueError/TypeError on damaged files
        raise JointphotError(f"{key}: cannot read PSF file {path} as FITS: {exc}") from None
    return PSF(image=image, kind=psf_type)


def gaussian_epsf(sigma_pix) -> np.ndarray:
    """Pixel-integrated circular Gaussian of width `sigma_pix` (pixels): odd size (>= +-5 sigma), unit sum."""
    half = max(int(math.ceil(5.0 * sigma_pix)), 2)
    edges = (np.arange(-half, half + 2) - 0.5) / (math.sqrt(2.0) * sigma_pix)
    line = np.diff(erf(edges))
    image = np.outer(line, line)
    return image / image.sum()


def _fits_psf(hdul, pixel_scale, label) -> np.ndarray:
    """PSF image from the primary (or first image) HDU, recentred and rescaled to `pixel_scale` if needed.

    A finer file PSF is integrated over the missing part of the image pixel; a coarser one is
    only interpolated (its own, larger pixel cannot be removed).
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
    file_scale = _header_pixel_scale(hdu.header)
    ratio = 1.0 if file_scale is None or abs(file_scale / pixel_scale - 1.0) <= SCALE_TOLERANCE \
        else pixel_scale / file_scale
    ny, nx = data.shape
    cx, cy = _centroid(data)
    if ratio == 1.0 and nx % 2 == 1 and ny % 2 == 1 \
            and math.hypot(cx - nx // 2, cy - ny // 2) <= CENTRE_TOLERANCE_PIX:
        return data
    half_in = min(cx, nx - 1 - cx, cy, ny - 1 - cy)
    half = max(int(math.floor(half_in / ratio)), 1)
    # The file's ePSF already holds its own pixel: add only the missing box width (in file pixels).
    box = math.sqrt(max(ratio ** 2 - 1.0, 0.0))
    return _resample(data, (cx, cy), ratio, half, box)


def _header_pixel_scale(header):
    """Pixel scale (arcsec/px) from PIXSCALE, a CD matrix or CDELT; None when the header has none."""
    if "PIXSCALE" in header:
        return abs(float(header["PIXSCALE"]))
    if "CD1_1" in header or "CD2_2" in header:
        cd = [[float(header.get(f"CD{i}_{j}", 0.0)) for j in (1, 2)] for i in (1, 2)]
        det = abs(np.linalg.det(cd))
        return math.sqrt(det) * 3600.0 if det > 0 else None
    if "CDELT1" in header and "CDELT2" in header:
        value = math.sqrt(abs(float(header["CDELT1"]) * float(header["CDELT2"]))) * 3600.0
        return value if value > 0 else None
    return None


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
