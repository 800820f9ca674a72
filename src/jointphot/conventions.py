"""The numbers that matter, written once: flux units, astrometric signs, mask bits, output flags.

Every other module imports these; `tests/test_conventions.py` pins them.
"""
from __future__ import annotations

import numpy as np

# --- Fluxes -------------------------------------------------------------------------------
#: AB magnitude of 1 microjansky: m_AB = 23.9 - 2.5 log10(f / uJy).
UJY_AB_ZEROPOINT = 23.9
#: 2.5 / ln(10): magnitude error = MAG_ERR_FACTOR * flux_err / flux.
MAG_ERR_FACTOR = 2.5 / np.log(10.0)


def counts_to_mag(flux, zeropoint):
    """AB magnitude of a flux in image counts, ``zp - 2.5 log10(flux)``; NaN where flux <= 0."""
    flux = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, zeropoint - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)


def mag_error(flux, flux_err):
    """Magnitude error ``1.0857 * err / flux`` (mag); NaN where flux <= 0."""
    flux = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, MAG_ERR_FACTOR * np.asarray(flux_err, float) / np.where(flux > 0, flux, 1.0), np.nan)


def counts_to_ujy_factor(zeropoint):
    """Microjanskys per image count for an AB zeropoint: ``10**(-0.4 (zp - 23.9))``.

    Fluxes *and* their errors scale by this factor; variances by its square (the original
    tool scaled variances by the factor itself, which is wrong).
    """
    return 10.0 ** (-0.4 * (zeropoint - UJY_AB_ZEROPOINT))


def flux_scale(zp_from, zp_to):
    """Factor converting counts at zeropoint `zp_from` to counts at `zp_to` (same AB flux)."""
    return 10.0 ** (0.4 * (zp_to - zp_from))


# --- Astrometry -----------------------------------------------------------------------------
# Offset files give, per reference star, (dRA, dDec) in milliarcseconds with the sense
# IMAGE minus REFERENCE (e.g. image - Gaia).  dRA is an on-sky offset, i.e. it already
# contains cos(dec): dRA = (ra_image - ra_ref) * cos(dec).
MAS_PER_DEG = 3.6e6


def image_to_reference(ra, dec, offset_mas):
    """Move positions measured on an image into the reference frame (degrees in, degrees out).

    `offset_mas` = (dRA*cos(dec), dDec) of image - reference, in mas.
    """
    ra = np.asarray(ra, float)
    dec = np.asarray(dec, float)
    d_ra, d_dec = offset_mas
    return (ra - d_ra / MAS_PER_DEG / np.cos(np.radians(dec)), dec - d_dec / MAS_PER_DEG)


def reference_to_image(ra, dec, offset_mas):
    """Inverse of :func:`image_to_reference`: where a reference-frame position lands on the image."""
    ra = np.asarray(ra, float)
    dec = np.asarray(dec, float)
    d_ra, d_dec = offset_mas
    dec_img = dec + d_dec / MAS_PER_DEG
    return (ra + d_ra / MAS_PER_DEG / np.cos(np.radians(dec)), dec_img)


# --- Pixels ---------------------------------------------------------------------------------
# Internally every pixel coordinate is 0-based with (0, 0) at the centre of the first pixel
# (numpy / astropy `pixel` convention).  Catalogue columns that say `_image` are 1-based
# (FITS / SExtractor convention): x_image = x + 1.
FITS_PIXEL_ORIGIN = 1

# --- LR mask planes (HSC / LSST pipelines convention) ----------------------------------------
#: Bit numbers used when the MASK header carries no MP_<PLANE> keywords.
HSC_DEFAULT_MASK_BITS = {
    "BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5,
    "DETECTED_NEGATIVE": 6, "SUSPECT": 7, "NO_DATA": 8, "BRIGHT_OBJECT": 9,
    "CROSSTALK": 10, "NOT_DEBLENDED": 11, "UNMASKEDNAN": 12,
}
#: Planes whose pixels are left out of the LR fit unless the job says otherwise.
DEFAULT_LR_IGNORED_PLANES = ("BAD", "SAT", "NO_DATA", "EDGE", "CR")


def mask_bits_from_header(header):
    """Map plane name -> bit number from MP_<NAME> keywords; HSC defaults when there are none.

    Returns (bits, from_header) where from_header says whether the header defined the planes.
    """
    bits = {k[3:]: int(v) for k, v in header.items() if k.startswith("MP_")}
    if bits:
        return bits, True
    return dict(HSC_DEFAULT_MASK_BITS), False


def mask_value(planes, bits):
    """Integer with the bits of `planes` set (unknown plane names raise KeyError)."""
    value = 0
    for name in planes:
        value |= 1 << bits[name]
    return value


# --- Output flags (the `flags` column of every catalogue) -------------------------------------
FLAGS = {
    "HR_FIT_FAILED": 1 << 0,
    "HR_NOT_CONVERGED": 1 << 1,
    "SPURIOUS": 1 << 2,
    "HR_EDGE": 1 << 3,
    "SEXTRACTOR_FLAGGED": 1 << 4,
    "LR_MASKED": 1 << 5,
    "LR_OFF_IMAGE": 1 << 6,
    "LR_BLENDED": 1 << 7,
    "PARAM_AT_BOUND": 1 << 8,
    "HR_RESIDUAL_DETECTION": 1 << 9,
    "LR_ONLY": 1 << 10,
    "LR_NOT_DETECTED": 1 << 11,
}
FLAG_MEANINGS = {
    "HR_FIT_FAILED": "the HR fit raised or produced non-finite numbers",
    "HR_NOT_CONVERGED": "the HR fit stopped at the iteration limit (dlnp still >= 1e-3)",
    "SPURIOUS": "FLUX_RADIUS below spurious_pixel_cut (kept, only flagged)",
    "HR_EDGE": "centre within 2 PSF FWHM of the HR coverage edge (no data or image border)",
    "SEXTRACTOR_FLAGGED": "SExtractor flagged the detection saturated (4) or its deblending/extraction "
                          "overflowed (64, 128): SEXTRACTOR_FLAG_BITS",
    "LR_MASKED": "more than 20 % of the LR model falls on ignored (masked) pixels",
    "LR_OFF_IMAGE": "less than 10 % of the source's LR model on usable pixels (off the image, masked): no LR flux (NaN)",
    "LR_BLENDED": "|flux correlation| > 0.5 with a neighbour in the LR fit",
    "PARAM_AT_BOUND": "an HR shape parameter ended on its bound",
    "HR_RESIDUAL_DETECTION": "found on the residual of the first HR fit (second detection pass; informational)",
    "LR_ONLY": "found in an LR band's residual, no HR counterpart (its model chosen in LR; HR columns NaN; "
               "informational)",
    "LR_NOT_DETECTED": "an LR-only source that this band's residual search did not find: no flux in it (NaN)",
}


#: The SExtractor FLAGS bits that make a fit-based source SEXTRACTOR_FLAGGED: saturated (4) and memory
#: overflow in deblending (64) or extraction (128).  The others describe SExtractor's own aperture and
#: isophotal photometry, which jointphot does not report: 1 (neighbours bias MAG_AUTO), 2 (blended; the
#: joint fit handles blends), 8 (truncated at the image border: HR_EDGE), 16/32 (aperture/isophotal data
#: incomplete).  On the HFF data every flagged source had bit 16 (a 3" aperture off the image edge, or a
#: cD's Kron ellipse across a tile edge, which made the flag depend on the tiling).
SEXTRACTOR_FLAG_BITS = 4 | 64 | 128

#: Flags that describe where a source is or how it was found, not that its measurement failed.
INFORMATIONAL_FLAGS = ("HR_EDGE", "LR_BLENDED", "HR_RESIDUAL_DETECTION", "LR_ONLY")
#: The bits of the other flags: a source with any of them is "flagged" (QA pictures, reports).
MEASUREMENT_FLAG_BITS = sum(bit for name, bit in FLAGS.items() if name not in INFORMATIONAL_FLAGS)


def is_flagged(flags):
    """Bool array: the sources of `flags` (the catalogue column) with a flag other than INFORMATIONAL_FLAGS."""
    return (np.asarray(flags, np.int64) & MEASUREMENT_FLAG_BITS) != 0


def describe_flags(value):
    """Names of the flags set in `value`."""
    return [name for name, bit in FLAGS.items() if int(value) & bit]
