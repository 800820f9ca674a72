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
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import FITSFixedWarning, WCS

from .errors import JointphotError

LR_EXTENSIONS = ("IMAGE", "MASK", "VARIANCE")


def open_fits(path: str, what: str):
    """Open a FITS file memory-mapped; errors name the file and its role (`what`)."""
    if not os.path.exists(path):
        raise JointphotError(f"{what}: file {path!r} does not exist")
    if os.path.isdir(path):
        raise JointphotError(f"{what}: {path!r} is a directory, not a FITS file")
    if not os.access(path, os.R_OK):
        raise JointphotError(f"{what}: file {path!r} is not readable (permissions)")
    try:
        with warnings.catch_warnings():   # "File may have been truncated": check_complete says it better
            warnings.simplefilter("ignore", AstropyUserWarning)
            hdul = fits.open(path, memmap=True, lazy_load_hdus=True)
            hdul[0].header  # force the first header
        return hdul
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise JointphotError(f"{what}: {path!r} is not a readable FITS file ({exc})") from None


def image_hdu(hdul, path: str, what: str, extname: Optional[str] = None):
    """The HDU holding the image: by EXTNAME, or the first HDU with 2-D data.

    The HDU must be a 2-D image whose data are all in the file (not truncated).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            hdus = list(hdul)
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise JointphotError(f"{what}: {path!r} is damaged: its HDUs cannot be read ({exc})") from None
    if extname is not None:
        for hdu in hdus:
            if str(hdu.header.get("EXTNAME", "")).strip().upper() == extname:
                if hdu.header.get("NAXIS", 0) != 2 or not hdu.is_image:
                    raise JointphotError(f"{what}: {path!r}: the {extname} extension is not a 2-D image "
                                         f"(NAXIS = {hdu.header.get('NAXIS', 0)})")
                check_complete(hdu, path, what)
                return hdu
        names = [str(h.header.get("EXTNAME", "(none)")) for h in hdus]
        raise JointphotError(f"{what}: {path!r} has no {extname} extension (extensions: {', '.join(names)}); "
                             f"the LR image must have IMAGE, MASK and VARIANCE extensions")
    for hdu in hdus:
        if hdu.header.get("NAXIS", 0) == 2 and hdu.is_image:
            check_complete(hdu, path, what)
            return hdu
    raise JointphotError(f"{what}: {path!r} has no 2-D image HDU")


def check_complete(hdu, path: str, what: str) -> None:
    """Error when the file is shorter than the data its header announces (a truncated copy)."""
    if isinstance(hdu, fits.CompImageHDU) or getattr(hdu, "_data_offset", None) is None:
        return
    h = hdu.header
    nbytes = abs(int(h.get("BITPIX", 8))) // 8 * int(np.prod([int(h.get(f"NAXIS{i}", 0))
                                                             for i in range(1, int(h.get("NAXIS", 0)) + 1)]))
    size = os.path.getsize(path)
    if hdu._data_offset + nbytes > size:
        name = str(h.get("EXTNAME", "")).strip() or "primary HDU"
        raise JointphotError(f"{what}: {path!r} is truncated: the {name} needs {hdu._data_offset + nbytes} bytes, "
                             f"the file has {size} (an incomplete copy or download?)")


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
    try:
        det = float(np.linalg.det(wcs.pixel_scale_matrix))
    except Exception:  # noqa: BLE001 - any failure here means an unusable WCS
        det = float("nan")
    if not np.isfinite(det) or det == 0.0:
        raise JointphotError(f"{what}: {path!r} has a singular WCS (the CD/PC/CDELT matrix has determinant "
                             f"{det:g}): check the CD1_1..CD2_2 or CDELT keywords")
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


def ellipse_on_sky(wcs: WCS, x: float, y: float, re_pix: float, phi_deg: float):
    """(r_e [arcsec], position angle [deg, east of north, in [0, 180)]) of an ellipse of semi-major axis
    re_pix [px] at angle phi_deg [deg, counter-clockwise from +x] centred on pixel (x, y) of `wcs`."""
    jac = local_jacobian(wcs, x, y)
    d = jac @ np.array([np.cos(np.radians(phi_deg)), np.sin(np.radians(phi_deg))])
    return re_pix * np.sqrt(abs(np.linalg.det(jac))), (np.degrees(np.arctan2(d[0], d[1])) + 180.0) % 180.0


def pixel_angle(wcs: WCS, x: float, y: float, pa_deg: float) -> float:
    """The angle [deg, counter-clockwise from +x, in [0, 180)] in the pixel frame of `wcs` at pixel (x, y)
    of the position angle pa_deg [deg, east of north] (ellipse_on_sky's inverse)."""
    v = np.linalg.solve(local_jacobian(wcs, x, y), [np.sin(np.radians(pa_deg)), np.cos(np.radians(pa_deg))])
    return float(np.degrees(np.arctan2(v[1], v[0])) % 180.0)


def read_section(hdu, y0: int, y1: int, x0: int, x1: int, dtype=np.float32, path: str = "", what: str = "") -> np.ndarray:
    """Pixels [y0:y1, x0:x1] of an image HDU, read without loading the whole image."""
    try:
        return np.asarray(hdu.section[y0:y1, x0:x1], dtype=dtype)
    except (OSError, ValueError, TypeError, IndexError) as exc:
        name = str(hdu.header.get("EXTNAME", "")).strip() or "image"
        raise JointphotError(f"{what or 'image'}: cannot read pixels [{y0}:{y1}, {x0}:{x1}] of the {name} in "
                             f"{path!r} (damaged or truncated file?): {exc}") from None


def sliced_header(header, wcs: WCS, x0: int, y0: int) -> fits.Header:
    """A header for a cutout starting at (x0, y0): the WCS shifted, other keywords kept."""
    out = fits.Header()
    for card in wcs[y0:, x0:].to_header(relax=True).cards:
        out.append(card)
    for key in ("BUNIT", "FILTER", "EXPTIME", "PHOTFLAM", "PHOTZP", "MAGZERO"):
        if key in header:
            out[key] = header[key]
    return out


#: Comment of the CHECKSUM/DATASUM cards (astropy's default is the time of writing, which would
#: make identical catalogues differ byte by byte).
CHECKSUM_COMMENT = "jointphot"


def write_fits_atomic(hdul: fits.HDUList, path: str) -> None:
    """Write `hdul` to a temporary file in the same directory, then rename it onto `path`.

    Reproducible: CHECKSUM/DATASUM cards carry no time stamp, so the same content gives the
    same bytes.  A reader never sees a half-written file; a failure leaves no temporary file.
    """
    def write(tmp):
        with warnings.catch_warnings():   # long column descriptions are cut in TTYPEn comments; the README has them
            warnings.filterwarnings("ignore", message="Card is too long", category=fits.verify.VerifyWarning)
            for hdu in hdul:
                hdu.add_checksum(when=CHECKSUM_COMMENT)
            hdul.writeto(tmp, overwrite=True, checksum=False)

    _write_atomic(path, write, ".fits")


def _write_atomic(path: str, write, suffix: str = "") -> None:
    """Call write(temporary path) in the target's directory, then give it umask permissions and rename it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The process umask, read once (os.umask can only be read by setting it).
_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


def write_text_atomic(text: str, path: str) -> None:
    """Write a text file via a temporary file and rename."""
    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)

    _write_atomic(path, write)


def read_tile_file(path: str, what: str) -> fits.HDUList:
    """Open a per-tile product written by an earlier step; a clear error if it is missing."""
    if not os.path.exists(path):
        raise JointphotError(f"{what}: {path!r} is missing: run the previous step for this tile first")
    try:
        return fits.open(path, memmap=False)
    except (OSError, ValueError, TypeError) as exc:
        raise JointphotError(f"{what}: {path!r} is damaged ({exc}): re-run the step that writes it (--force)") from None
