"""Source detection on the HR cutout with SExtractor (the packaged config is in ``data/``).

The detection numbers are those of the original tool (seed spec section 6, HR column) except
DETECT_MINAREA 5 px and DETECT_THRESH 1.0 sigma (the original's 20 px / 2.0 sigma find nothing
below matched-filter S/N ~12 on an ACS-like image; these reach > 95 % completeness at S/N 10
with no false detections in blank sky) and DEBLEND_MINCONT 0.005 (the original's 0.1 keeps a
cluster's central galaxy, a bright star and a dozen galaxies in one segment on the HFF data; 0.005
splits no single-Sersic simulated galaxy); `sextractor_settings` restores the old values.  The
seeing comes from the real PSF, weights and NaN pixels are honoured, and every SExtractor failure
raises :class:`~jointphot.errors.JointphotError` with SExtractor's own message.

Correlated noise (drizzled, warped images): SExtractor thresholds the *filtered* image at
DETECT_THRESH x the *unfiltered* per-pixel sigma of the weight map (rescaled by SExtractor to the
image's background RMS), which is right only for white noise.  :func:`detect_tile` measures the
tile's noise correlation and raises the thresholds by the filtered noise's excess
(:func:`detection_noise_factor`) and a small correction for its smoother blobs
(:func:`detection_threshold_factor`): on GalSim COSMOS noise (1.87 x 1.026 for g2.8.conv) the
false detections per arcmin^2 then match white noise's (within 30 % at DETECT_THRESH 0.7).
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from scipy.optimize import brentq

from .convolution import fftconvolve
from .errors import JointphotError
from .noise import measure_noise, noise_model_hdu, source_mask, variance_factor, white_noise

logger = logging.getLogger("jointphot.detect")

#: Packaged SExtractor files: detect.sex (fixed I/O config), detect.param, g2.8.conv.
DATA_DIR = Path(__file__).resolve().parent / "data"
#: Executables tried, in order, when the job's ``sex_command`` is not executable.
FALLBACK_COMMANDS = ("source-extractor", "sex", "sextractor")
#: Catalogue columns written by SExtractor (detect.param, "(1)" vector suffixes removed).
CATALOG_COLUMNS = tuple(
    name.split("(")[0] for name in (DATA_DIR / "detect.param").read_text().split()
)
#: Keywords jointphot sets itself (files it writes and reads back); settings may not change them.
RESERVED_KEYWORDS = frozenset({
    "CATALOG_NAME", "CATALOG_TYPE", "PARAMETERS_NAME", "CHECKIMAGE_TYPE", "CHECKIMAGE_NAME",
    "WEIGHT_TYPE", "WEIGHT_IMAGE", "WRITE_XML", "XML_NAME", "VERBOSE_TYPE",
})
#: Supported weight-map types and the value that marks a pixel as bad (no data) in each.
#: SExtractor treats MAP_WEIGHT <= 0 and MAP_RMS / MAP_VAR values above its BIG (1e30) as bad.
BAD_WEIGHT_VALUE = {"MAP_WEIGHT": 0.0, "MAP_RMS": 1e31, "MAP_VAR": 1e31}
#: Noise model of a tile: correlations up to this lag [px], sky in boxes of this side [px] (BACK_SIZE),
#: source mask where the filtered image exceeds this many of its own sigmas.
NOISE_MAX_LAG = 8
NOISE_SKY_BOX = 64
SOURCE_MASK_NSIGMA = 4.0

_KEYWORD_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_STRUCTURAL_KEYS = ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND",
                    "PCOUNT", "GCOUNT", "BZERO", "BSCALE", "BLANK", "CHECKSUM", "DATASUM")


def find_sextractor(sex_command):
    """Path of the SExtractor executable to run.

    `sex_command` (job key) is used when it is executable (absolute path or a name on PATH);
    otherwise the first of ``source-extractor``, ``sex``, ``sextractor`` on PATH is used, with
    a warning naming both.
    """
    found = shutil.which(sex_command) if sex_command else None
    if found:
        return found
    for name in FALLBACK_COMMANDS:
        found = shutil.which(name)
        if found:
            logger.warning("sex_command %r is not an executable; using %s instead", sex_command, found)
            return found
    raise JointphotError(
        f"sex_command {sex_command!r}: SExtractor not found (not an executable, and none of "
        f"{', '.join(FALLBACK_COMMANDS)} is on PATH). Install it (Debian/Ubuntu: "
        "`apt-get install source-extractor`; conda: `conda install -c conda-forge "
        "astromatic-source-extractor`) or set sex_command to its path."
    )


def sextractor_version(command) -> str:
    """The version SExtractor `command` prints with --version (e.g. '2.25.0'), or 'unknown'."""
    try:
        out = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    words = (out.stdout + out.stderr).split()
    return words[words.index("version") + 1] if "version" in words[:-1] else "unknown"


def detection_settings(pixel_scale_arcsec, zeropoint, seeing_fwhm_arcsec, overrides=None):
    """SExtractor keyword -> value for HR detection (the original tool's HR numbers, deeper threshold).

    pixel_scale_arcsec : HR pixel size ["/px]; sets PIXEL_SCALE and the 3" *diameter*
        aperture PHOT_APERTURES [px].
    zeropoint : AB magnitude of one image count (MAG_ZEROPOINT) [mag].
    seeing_fwhm_arcsec : FWHM of the real HR PSF (SEEING_FWHM, used by CLASS_STAR) ["];
        the original hard-coded 0.15".
    overrides : SExtractor keyword -> value (job key ``sextractor_settings``); wins over
        the defaults.  Lists become comma-separated values, booleans Y/N.
    """
    for name, value in (("pixel_scale_arcsec", pixel_scale_arcsec),
                        ("seeing_fwhm_arcsec", seeing_fwhm_arcsec)):
        if not (np.isfinite(value) and value > 0):
            raise JointphotError(f"{name} must be a positive number of arcsec, got {value!r}")
    if not np.isfinite(zeropoint):
        raise JointphotError(f"zeropoint must be a finite AB magnitude, got {zeropoint!r}")
    settings = {
        "DETECT_TYPE": "CCD",
        "THRESH_TYPE": "RELATIVE",
        "DETECT_MINAREA": 5,                   # px (original: 20)
        "DETECT_THRESH": 1.0,                  # sigma (original: 2.0)
        "ANALYSIS_THRESH": 1.5,                # sigma
        "FILTER": "Y",
        "FILTER_NAME": "g2.8.conv",            # sexinputdir, else jointphot/data
        "DEBLEND_NTHRESH": 32,
        "DEBLEND_MINCONT": 0.005,              # original: 0.1 (merges a cluster core into one segment)
        "CLEAN": "Y",
        "CLEAN_PARAM": 1.0,
        "MASK_TYPE": "CORRECT",
        "INTERP_TYPE": "NONE",                 # zero-weight pixels stay bad (never detected)
        "PHOT_APERTURES": 3.0 / float(pixel_scale_arcsec),   # 3" diameter [px]
        "PHOT_AUTOPARAMS": (2.5, 3.5),
        "PHOT_PETROPARAMS": (2.0, 3.5),
        "PHOT_AUTOAPERS": (0.0, 0.0),
        "PHOT_FLUXFRAC": 0.5,
        "SATUR_LEVEL": 50000.0,                # counts
        "SATUR_KEY": "JP_NOKEY",               # GAIN / SATUR_LEVEL never taken from the header
        "MAG_ZEROPOINT": float(zeropoint),
        "MAG_GAMMA": 4.0,
        "GAIN": 0.0,                           # e-/count; 0 = no Poisson term (as the original)
        "GAIN_KEY": "JP_NOKEY",
        "PIXEL_SCALE": float(pixel_scale_arcsec),
        "SEEING_FWHM": float(seeing_fwhm_arcsec),
        "STARNNW_NAME": "default.nnw",         # sexinputdir, else SExtractor's own
        "BACK_TYPE": "AUTO",
        "BACK_SIZE": 64,                       # px
        "BACK_FILTERSIZE": 3,
        "BACK_FILTTHRESH": 0.0,
        "BACKPHOTO_TYPE": "LOCAL",
        "BACKPHOTO_THICK": 24,                 # px
        # A 40"x40" ACS tile plus overlap is ~1500^2 px: room for every pixel, many objects.
        "MEMORY_OBJSTACK": 30000,
        "MEMORY_PIXSTACK": 3000000,
        "MEMORY_BUFSIZE": 4096,                # image lines
        "NTHREADS": 1,                         # tiles run in parallel instead
    }
    for key, value in (overrides or {}).items():
        key = _keyword(key, "sextractor_settings")
        _format_value(key, value, "sextractor_settings")
        settings[key] = value
    return settings


def run_sextractor(image, *, out_dir, settings, sex_command="source-extractor", weight=None,
                   weight_type="MAP_WEIGHT", sexinputdir=None, header=None, segmentation=True):
    """Run SExtractor on `image`; return (catalogue sorted by NUMBER, segmentation map, or None when
    `segmentation` is False: none is written).

    image : 2-D array [counts]; non-finite pixels are set to 0 with weight 0 (bad).
    out_dir : directory for a temporary run directory, removed afterwards.
    settings : SExtractor keyword -> value (see :func:`detection_settings`).
    weight : optional 2-D array of `weight_type` MAP_WEIGHT (relative inverse variance;
        0 = no data, never detected), MAP_RMS or MAP_VAR [counts, counts^2].
    sexinputdir : directory whose g2.8.conv / default.nnw (or the files named by FILTER_NAME /
        STARNNW_NAME) replace the packaged / installed ones.
    header : astropy Header with the image WCS (for ALPHA_J2000, DELTA_J2000 [deg]).

    The catalogue has the columns :data:`CATALOG_COLUMNS` with SExtractor's names and 1-based
    pixel coordinates; no detection gives an empty table.  The segmentation map (int32, image
    shape) holds each object's NUMBER, 0 for background.
    """
    exe = find_sextractor(sex_command)
    args = {}
    for key, value in settings.items():
        key = _keyword(key, "settings")
        args[key] = _format_value(key, value, "settings")

    image = np.array(image, dtype=np.float32)
    if image.ndim != 2 or image.size == 0:
        raise JointphotError(f"image for SExtractor must be a non-empty 2-D array, got shape {image.shape}")
    bad = ~np.isfinite(image)
    if weight is not None:
        weight_type = str(weight_type).upper()
        if weight_type not in BAD_WEIGHT_VALUE:
            raise JointphotError(
                f"weight_type {weight_type!r} is not supported (use one of {', '.join(BAD_WEIGHT_VALUE)})")
        weight = np.array(weight, dtype=np.float32)
        if weight.shape != image.shape:
            raise JointphotError(f"weight map shape {weight.shape} differs from the image shape {image.shape}")
        weight[~np.isfinite(weight) | (weight <= 0) | bad] = BAD_WEIGHT_VALUE[weight_type]
    elif bad.any():
        weight_type = "MAP_WEIGHT"
        weight = np.where(bad, 0.0, 1.0).astype(np.float32)
    image[bad] = 0.0

    search_dirs = _search_dirs(exe, sexinputdir)

    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="sextractor_", dir=out_dir))
    except OSError as exc:
        raise JointphotError(f"cannot create a SExtractor run directory in {out_dir}: {exc}") from exc
    try:
        # Every file is copied into run_dir and named relative to it: SExtractor splits
        # command-line values at blanks and commas, so outside paths could be misread.
        shutil.copy(DATA_DIR / "detect.sex", run_dir)
        shutil.copy(DATA_DIR / "detect.param", run_dir)
        used = {}  # setting -> file actually used, for the log and error messages
        for key, default, local in (("FILTER_NAME", "g2.8.conv", "filter.conv"),
                                    ("STARNNW_NAME", "default.nnw", "star.nnw")):
            if key == "FILTER_NAME" and not args.get("FILTER", "Y").upper().startswith("Y"):
                continue
            used[key] = _find_file(args.get(key, default), key, search_dirs)
            shutil.copy(used[key], run_dir / local)
            args[key] = local
        fits.PrimaryHDU(image, _image_header(header)).writeto(run_dir / "image.fits")
        if weight is None:
            args["WEIGHT_TYPE"] = "NONE"
        else:
            fits.PrimaryHDU(weight).writeto(run_dir / "weight.fits")
            args["WEIGHT_TYPE"] = weight_type
            args["WEIGHT_IMAGE"] = "weight.fits"

        if not segmentation:
            args["CHECKIMAGE_TYPE"] = "NONE"
        command = [exe, "image.fits", "-c", "detect.sex"]
        for key, value in args.items():
            command += [f"-{key}", value]
        files = ", ".join(f"{key} = {path}" for key, path in used.items())
        logger.debug("running %s in %s (%s)", " ".join(command), run_dir, files)
        try:
            proc = subprocess.run(command, cwd=run_dir, capture_output=True, text=True, errors="replace")
        except OSError as exc:
            raise JointphotError(f"cannot run SExtractor (sex_command {exe!r}): {exc}") from exc
        messages = _ANSI_RE.sub("", proc.stderr).strip()
        if proc.returncode != 0:
            raise JointphotError(
                f"SExtractor ({exe}) failed with exit code {proc.returncode} ({files}): "
                f"{messages or '(no message)'}")
        unknown = re.findall(r"WARNING: (\S+) keyword unknown", messages)
        if unknown:
            raise JointphotError(f"SExtractor does not know the setting(s) {', '.join(unknown)}: {messages}")
        for line in messages.splitlines():
            if "WARNING" in line:
                logger.warning("SExtractor: %s", line.lstrip("> ").strip())
        try:
            catalog = Table.read(run_dir / "catalog.fits", hdu=1, unit_parse_strict="silent")
            segmap = fits.getdata(run_dir / "segmap.fits").astype(np.int32) if segmentation else None
        except (OSError, ValueError) as exc:
            raise JointphotError(
                f"SExtractor ({exe}) wrote no readable catalogue/segmentation ({exc}); "
                f"its messages: {messages or '(none)'}") from exc
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    catalog.sort("NUMBER")
    return catalog, segmap


def _keyword(key, where):
    """Upper-case SExtractor keyword; rejects malformed names and the keywords jointphot owns."""
    name = str(key).strip().upper()
    if not _KEYWORD_RE.match(name):
        raise JointphotError(f"{where}: {key!r} is not a SExtractor keyword")
    if name in RESERVED_KEYWORDS:
        raise JointphotError(f"{where}: {name} is set by jointphot itself and cannot be changed")
    return name


def _format_value(key, value, where):
    """Command-line text of a setting: numbers, Y/N for booleans, comma-joined sequences."""
    if isinstance(value, (bool, np.bool_)):
        return "Y" if value else "N"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            raise JointphotError(f"{where}: {key} = {value!r} is not a finite number")
        return repr(float(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0:
        return ",".join(_format_value(key, item, where) for item in value)
    raise JointphotError(f"{where}: {key} = {value!r} is not a number, string, boolean or list of them")


def _search_dirs(exe, sexinputdir):
    """Directories searched for FILTER_NAME / STARNNW_NAME: sexinputdir, jointphot/data, SExtractor's."""
    if sexinputdir is not None and not Path(sexinputdir).is_dir():
        raise JointphotError(f"sexinputdir {str(sexinputdir)!r} is not a directory")
    return ([Path(sexinputdir)] if sexinputdir is not None else []) + [DATA_DIR] + _share_dirs(exe)


def _share_dirs(exe):
    """Directories where SExtractor installations keep default.nnw and the .conv files."""
    prefix = Path(os.path.realpath(exe)).parent.parent
    dirs = [prefix / "share" / "source-extractor", prefix / "share" / "sextractor"]
    for root in ("/usr/share", "/usr/local/share"):
        dirs += [Path(root) / "source-extractor", Path(root) / "sextractor"]
    return list(dict.fromkeys(dirs))


def _find_file(name, setting, search_dirs):
    """Absolute `name`, or the first of `search_dirs` that holds it."""
    candidates = [Path(name)] if os.path.isabs(name) else [d / name for d in search_dirs]
    for path in candidates:
        if path.is_file():
            return path
    raise JointphotError(
        f"SExtractor setting {setting}: file {name!r} not found (looked in "
        f"{', '.join(str(p.parent) for p in candidates)}); put it in sexinputdir")


def _image_header(header):
    """Copy of `header` without the keywords that describe the data array (astropy sets them)."""
    result = fits.Header() if header is None else fits.Header(header, copy=True)
    for key in _STRUCTURAL_KEYS:
        result.remove(key, ignore_missing=True, remove_all=True)
    return result


def read_filter(path):
    """Kernel (2-D array) of a SExtractor filter file: a ``CONV NORM``/``CONV NONORM`` line, then
    rows of numbers; ``#`` starts a comment."""
    try:
        lines = [line.split("#")[0].split() for line in Path(path).read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise JointphotError(f"SExtractor setting FILTER_NAME: cannot read {path}: {exc}") from exc
    lines = [words for words in lines if words]
    try:
        if not lines or lines[0][0].upper() != "CONV":
            raise ValueError("no CONV line first")
        kernel = np.array([[float(v) for v in words] for words in lines[1:]])
        if kernel.ndim != 2 or kernel.size == 0 or not np.isfinite(kernel).all() or kernel.sum() == 0:
            raise ValueError("rows are not a non-empty rectangle of numbers with a non-zero sum")
    except ValueError as exc:
        raise JointphotError(f"SExtractor setting FILTER_NAME: {path} is not a suitable filter ({exc})") from exc
    return kernel


def detection_kernel(settings, sex_command="source-extractor", sexinputdir=None):
    """The kernel SExtractor filters the image with before thresholding (FILTER_NAME, found where
    :func:`run_sextractor` finds it), or [[1]] when FILTER is N."""
    settings = {_keyword(key, "settings"): value for key, value in settings.items()}
    if not _format_value("FILTER", settings.get("FILTER", "Y"), "settings").upper().startswith("Y"):
        return np.ones((1, 1))
    search_dirs = _search_dirs(find_sextractor(sex_command), sexinputdir)
    return read_filter(_find_file(_format_value("FILTER_NAME", settings.get("FILTER_NAME", "g2.8.conv"),
                                                "settings"), "FILTER_NAME", search_dirs))


def detection_noise_factor(noise_model, kernel):
    """Noise sigma of the `kernel`-filtered image over what SExtractor assumes (white noise).

    SExtractor thresholds the filtered image at DETECT_THRESH x the *unfiltered* per-pixel sigma,
    which it takes from the weight map rescaled to the measured background RMS (MAP_WEIGHT is
    relative), so the per-pixel scale of `noise_model` is already absorbed and only the correlation
    counts: sqrt(variance_factor) of the kernel with scale 1.
    """
    return math.sqrt(variance_factor(replace(noise_model, scale=1.0), kernel))


def detection_threshold_factor(noise_model, kernel, threshold, minarea):
    """Multiplier of a relative DETECT_THRESH `threshold` [sigma] that gives noise with `noise_model`'s
    correlation the false detections per pixel that white noise gives at `threshold` (same `kernel`,
    DETECT_MINAREA `minarea` [px]).

    :func:`detection_noise_factor` puts the threshold at the same number u of filtered-noise sigmas;
    the rest corrects for the filtered noise being smoother than white noise's: a smooth Gaussian
    field has ~ sqrt(det L) u exp(-u^2/2) / (2 pi)^1.5 connected regions above u per pixel (its
    Euler-characteristic density; L = gradient covariance / variance, 2 (1 - rho(1 px)) per axis)
    and their areas are ~ exponential with mean 2 pi / (u^2 sqrt(det L)), so a fraction
    exp(-minarea u^2 sqrt(det L) / (2 pi)) of them reach `minarea`: fewer but larger regions, more
    of them kept.  The returned factor x threshold equates that rate with white noise's.  For GalSim
    COSMOS noise, g2.8.conv and DETECT_MINAREA 5 it is 1.87 x 1.026 at DETECT_THRESH 1.0; without
    the 1.026, measured false detections exceed white noise's by 1.3-3x.
    """
    kernel = np.asarray(kernel, float)
    u_white = threshold * kernel.sum() / math.sqrt(np.sum(kernel ** 2))
    white, correlated = (_filtered_roughness(acf, kernel) for acf in (np.ones((1, 1)), noise_model.acf))

    def log_rate(u, roughness):
        return math.log(roughness * u) - u ** 2 / 2 - minarea * u ** 2 * roughness / (2 * math.pi)

    excess = lambda u: log_rate(u, correlated) - log_rate(u_white, white)
    u = brentq(excess, 1.0, 10.0 * u_white) if excess(1.0) > 0 > excess(10.0 * u_white) else u_white
    return detection_noise_factor(noise_model, kernel) * u / u_white


def _filtered_roughness(acf, kernel):
    """sqrt(det L) of unit-variance noise with autocorrelation `acf` filtered by `kernel`
    (L = 2 (1 - rho_filtered(1 px)) in x and in y)."""
    rho = fftconvolve(fftconvolve(kernel, kernel[::-1, ::-1]), acf)
    rho = np.pad(rho / rho[rho.shape[0] // 2, rho.shape[1] // 2], 1)
    c = rho.shape[0] // 2
    return math.sqrt(4.0 * (1.0 - rho[c, c + 1]) * (1.0 - rho[c + 1, c]))


def noise_scaled_settings(settings, noise_model, kernel):
    """`settings` with DETECT_THRESH and ANALYSIS_THRESH x the :func:`detection_threshold_factor` of
    DETECT_THRESH when it exceeds 1 (never lowered: it is 1.00 +- 0.01 on white noise).  Only
    relative thresholds (one number, THRESH_TYPE RELATIVE) are scaled; absolute ones are left as
    they are, with a warning."""
    settings = {_keyword(key, "settings"): value for key, value in settings.items()}
    relative = _format_value("THRESH_TYPE", settings.get("THRESH_TYPE", "RELATIVE"), "settings").upper() == "RELATIVE"
    text = {key: _format_value(key, settings.get(key, 1.5), "settings") for key in ("DETECT_THRESH", "ANALYSIS_THRESH")}
    factor = 1.0
    if relative and "," not in text["DETECT_THRESH"]:
        factor = max(1.0, detection_threshold_factor(noise_model, kernel, float(text["DETECT_THRESH"]),
                                                     float(_format_value("DETECT_MINAREA", settings.get(
                                                         "DETECT_MINAREA", 5), "settings"))))
    for key, value in text.items():
        if relative and "," not in value:
            settings[key] = float(value) * factor
        else:
            logger.warning("%s = %s is not a relative threshold: not scaled for the noise correlation", key, value)
    return settings


def tile_noise(image, invvar, kernel, fwhm_pix, max_lag=None, warn=True, dilate_pix=None, exclude=None,
               sky_box=NOISE_SKY_BOX):
    """NoiseModel of a cutout [counts, inverse variance] with correlations up to `max_lag` px
    (default NOISE_MAX_LAG); white noise when too little blank sky is left (with a warning, or an
    info message when `warn` is False).  `exclude`: bool pixels left out besides the source mask
    (e.g. where a fitted model's wings lie).  `sky_box`: side [px] of the running box whose mean is
    the sky of the measurement (noise.measure_noise's background_box; None: one constant).

    Source mask: :func:`jointphot.noise.source_mask` (the `kernel`-filtered image above 4 of its own
    robust sigmas, 3 passes, dilated by `dilate_pix`, default 3 FWHM + 3 px as fit_hr's sky mask), not a first SExtractor
    pass: its threshold would need the very correlation being measured (on COSMOS-like noise the
    default settings find ~2400 false objects per arcmin^2 and would mask most of the sky), and it
    costs no SExtractor run (0.6 s for a 1100x1100 px tile).
    """
    dilate_pix = int(3 * fwhm_pix) + 3 if dilate_pix is None else dilate_pix
    mask = source_mask(image, invvar, kernel, nsigma=SOURCE_MASK_NSIGMA, dilate_pix=dilate_pix,
                       background_box=NOISE_SKY_BOX)
    if exclude is not None:
        mask |= exclude
    try:
        return measure_noise(image, invvar, mask, max_lag=max_lag or NOISE_MAX_LAG, background_box=sky_box)
    except JointphotError as exc:
        (logger.warning if warn else logger.info)("%s; assuming uncorrelated noise", exc)
        return white_noise()


def detect_tile(plan, tile_id: int, directory: str) -> None:
    """Run SExtractor on a tile's HR cutout; write tNNNN_hr_detections.fits (CATALOG, SEGMAP, NOISE_ACF).

    The noise model of the cutout is measured first (:func:`tile_noise`) and the thresholds raised
    by :func:`noise_scaled_settings`, which keeps the false-detection rate that the settings give on
    white noise.  SExtractor also runs on the negated image with the same settings to count false
    detections.  CATALOG header: JP_TILE, JP_NSCAL, JP_NCORR, JP_THRSH, JP_NEGDT; the NOISE_ACF
    HDU holds the noise model (:func:`jointphot.noise.noise_model_from_hdu`).
    """
    from .images import read_tile_file, write_fits_atomic
    from .plan import tile_path, tile_psf

    job = plan["job"]
    with read_tile_file(tile_path(directory, tile_id, "hr_cutout"), f"tile {tile_id}") as hdul:
        sci, invvar, header = hdul[0].data, hdul["WHT"].data, hdul[0].header
        scale = plan["hr"]["pixel_scale_arcsec"]
        psf = tile_psf(plan, tile_id, "hr")
        settings = detection_settings(scale, job["hr_zp"], psf.fwhm_pix * scale, job["sextractor_settings"])
        sex_command = find_sextractor(job["sex_command"])     # warns once if it falls back
        kernel = detection_kernel(settings, sex_command, job["sexinputdir"])
        noise = tile_noise(sci, invvar, kernel, psf.fwhm_pix)
        factor = detection_noise_factor(noise, kernel)
        settings = noise_scaled_settings(settings, noise, kernel)
        run = dict(out_dir=directory, settings=settings, sex_command=sex_command, weight=invvar,
                   weight_type="MAP_WEIGHT", sexinputdir=job["sexinputdir"], header=header)
        catalog, segmap = run_sextractor(sci, **run)
        negated, _ = run_sextractor(-np.asarray(sci, np.float32), segmentation=False, **run)
    logger.info("tile %d: noise scale %.3f, filtered-noise factor %.3f, DETECT_THRESH %s, %d detections, "
                "%d on the negated image", tile_id, noise.scale, factor, settings["DETECT_THRESH"], len(catalog),
                len(negated))
    cat_hdu = fits.BinTableHDU(catalog, name="CATALOG")
    cat_hdu.header["JP_TILE"] = tile_id
    cat_hdu.header["JP_NSCAL"] = (noise.scale, "noise sigma / weight-map sigma, blank sky")
    cat_hdu.header["JP_NCORR"] = (factor, "filtered noise sigma / white-noise value")
    threshold = _format_value("DETECT_THRESH", settings["DETECT_THRESH"], "settings")
    cat_hdu.header["JP_THRSH"] = (float(threshold) if "," not in threshold else threshold,
                                  "DETECT_THRESH used [unfiltered px sigma]")
    cat_hdu.header["JP_NEGDT"] = (len(negated), "detections on the negated image")
    cat_hdu.header["JP_SEXV"] = (sextractor_version(sex_command), "SExtractor version")
    seg_hdu = fits.ImageHDU(segmap.astype(np.int32), header, name="SEGMAP")
    write_fits_atomic(fits.HDUList([fits.PrimaryHDU(), cat_hdu, seg_hdu, noise_model_hdu(noise)]),
                      tile_path(directory, tile_id, "hr_detections"))

