"""FITS I/O at the edges: memory-mapped section reads, cutouts with WCS, atomic writes.

Only the pixels of a tile are read from the large images (astropy `.section`, which
reads just the needed rows of an uncompressed or tile-compressed HDU).
"""
from __future__ import annotations

import os
import tempfile
import warnings
from typing import Optional

import numpy as np
from astropy.io import fits
from astropy.wcs import FITSFixedWarning, WCS

from .errors import JointphotError

LR_EXTENSIONS = ("IMAGE", "MASK", "VARIANCE")


def open_fits(path: str, what: str):
    """Open a FITS file memory-mapped; errors name the file and its role (`what`)."""
    if not os.path.exists(path):
        raise JointphotError(f"{what}: file {path!r} does not exist")
    try:
        hdul = fits.open(path, memmap=True, lazy_load_hdus=True)
        hdul[0].header  # force the first header
        return hdul
    except (OSError, ValueError, TypeError) as exc:
        raise JointphotError(f"{what}: {path!r} is not a readable FITS file ({exc})") from None


def image_hdu(hdul, path: str, what: str, extname: Optional[str] = None):
    """The HDU holding the image: by EXTNAME, or the first HDU with 2-D data."""
    if extname is not None:
        for hdu in hdul:
            if hdu.header.get("EXTNAME", "").strip().upper() == extname:
                return hdu
        names = [h.header.get("EXTNAME", "(none)") for h in hdul]
        raise JointphotError(f"{what}: {path!r} has no {extname} extension (extensions: {', '.join(names)})")
    for hdu in hdul:
        if hdu.header.get("NAXIS", 0) == 2:
            return hdu
    raise JointphotError(f"{what}: {path!r} has no 2-D image HDU")


def celestial_wcs(header, path: str, what: str) -> WCS:
    """Celestial WCS of a header; error if there is none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header).celestial
        except Exception as exc:  # astropy raises many types for broken WCS keywords
            raise JointphotError(f"{what}: {path!r} has an invalid WCS ({exc})") from None
    if not wcs.has_celestial or wcs.naxis != 2 or not wcs.wcs.ctype[0]:
        raise JointphotError(f"{what}: {path!r} has no celestial WCS (CTYPE/CRVAL/CD keywords)")
    return wcs


def pixel_scale_arcsec(wcs: WCS) -> float:
    """Mean pixel scale sqrt(|det CD|) in arcsec."""
    return float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0)


def local_jacobian(wcs: WCS, x: float, y: float) -> np.ndarray:
    """d(xi, eta)/d(x, y) in arcsec per pixel at pixel (x, y); xi points east, eta north."""
    ra0, dec0 = wcs.all_pix2world([[x, y]], 0)[0]
    jac = np.zeros((2, 2))
    for k, (dx, dy) in enumerate(((0.5, 0.0), (0.0, 0.5))):
        ra1, dec1 = wcs.all_pix2world([[x + dx, y + dy]], 0)[0]
        ra2, dec2 = wcs.all_pix2world([[x - dx, y - dy]], 0)[0]
        d_ra = ((ra1 - ra2 + 180.0) % 360.0) - 180.0
        jac[0, k] = d_ra * np.cos(np.radians(dec0)) * 3600.0
        jac[1, k] = (dec1 - dec2) * 3600.0
    return jac


def read_section(hdu, y0: int, y1: int, x0: int, x1: int, dtype=np.float32) -> np.ndarray:
    """Pixels [y0:y1, x0:x1] of an image HDU, read without loading the whole image."""
    return np.asarray(hdu.section[y0:y1, x0:x1], dtype=dtype)


def sliced_header(header, wcs: WCS, x0: int, y0: int) -> fits.Header:
    """A header for a cutout starting at (x0, y0): the WCS shifted, other keywords kept."""
    out = fits.Header()
    for card in wcs[y0:, x0:].to_header(relax=True).cards:
        out.append(card)
    for key in ("BUNIT", "FILTER", "EXPTIME", "PHOTFLAM", "PHOTZP", "MAGZERO"):
        if key in header:
            out[key] = header[key]
    return out


def write_fits_atomic(hdul: fits.HDUList, path: str) -> None:
    """Write `hdul` to a temporary file in the same directory, then rename it onto `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".fits", dir=directory)
    os.close(fd)
    try:
        with warnings.catch_warnings():   # long column descriptions are cut in TTYPEn comments; the README has them
            warnings.filterwarnings("ignore", message="Card is too long", category=fits.verify.VerifyWarning)
            hdul.writeto(tmp, overwrite=True, checksum=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(text: str, path: str) -> None:
    """Write a text file via a temporary file and rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_tile_file(path: str, what: str) -> fits.HDUList:
    """Open a per-tile product written by an earlier step; a clear error if it is missing."""
    if not os.path.exists(path):
        raise JointphotError(f"{what}: {path!r} is missing — run the previous step for this tile first")
    return fits.open(path, memmap=False)
