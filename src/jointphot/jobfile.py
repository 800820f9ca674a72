"""Job files: the original tool's JSON format (every key it ever read or wrote) plus jointphot's own.

`load_job(path)` validates types, fills defaults, resolves paths and returns a plain dict.
Relative input paths are looked up in the current directory first (the original tool's
behaviour: paths relative to where it was run) and then next to the job file.  Relative
output directories are relative to the current directory.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Dict, List

from .conventions import DEFAULT_LR_IGNORED_PLANES
from .errors import JointphotError

log = logging.getLogger("jointphot.job")

REQUIRED = object()
PSF_TYPES = ("fits", "fwhm", "psfex")
WEIGHT_TYPES = ("MAP_WEIGHT", "MAP_RMS", "MAP_VAR", "NONE")
ENGINES = ("auto", "native", "tractor")
#: <band>_aperture_correction: record the measured aperture correction only, or also multiply the fluxes by it.
APERTURE_CORRECTION_MODES = ("report", "apply")

#: key -> (kind, default, description).  kind: int, float, str, bool, path (input file),
#: outdir, pair (two numbers in arcsec), psf (path or number), list, dict, bands (list of objects), any.
KEYS: Dict[str, tuple] = {
    # --- the original tool's keys -----------------------------------------------------------
    "workdir": ("outdir", REQUIRED, "output directory (tiles, catalogue)"),
    "sexinputdir": ("dir", None, "directory with SExtractor filter/NNW files to use instead of the packaged ones"),
    "out_prefix": ("str", "jp", "prefix of output names"),
    "cutoutsize_arcsec": ("pair", REQUIRED, "tile core size [x, y] in arcsec"),
    "cutoutoverlap_arcsec": ("pair", [10.0, 10.0], "total overlap between tiles [x, y] in arcsec (half on each side)"),
    "cutout_output_dir": ("outdir", None, "accepted for compatibility; cutouts are written to the tile directories"),
    "hr_compl_niter": ("int", 15, "maximum optimiser steps per source of an HR group (a group of k sources: k x this)"),
    "lr_compl_niter": ("int", 10, "accepted for compatibility; the LR flux fit is linear (one step)"),
    "hr_zp": ("float", REQUIRED, "AB zeropoint of the HR image counts"),
    "lr_zp": ("float", REQUIRED, "AB zeropoint of the LR image counts"),
    "sex_command": ("str", "source-extractor", "SExtractor executable"),
    "hr_large_image_name": ("path", REQUIRED, "HR image (primary HDU)"),
    "lr_large_image_name": ("path", REQUIRED, "LR multi-extension FITS with IMAGE, MASK, VARIANCE"),
    "hr_image_psf": ("psf", REQUIRED, "HR PSF: FITS image, PSFEx file, or Gaussian FWHM in arcsec"),
    "hr_psf_type": ("choice", None, "fits | fwhm | psfex (default: fwhm for a number, else fits)"),
    "lr_image_psf": ("psf", REQUIRED, "LR PSF: FITS image, PSFEx file, or Gaussian FWHM in arcsec"),
    "lr_psf_type": ("choice", None, "fits | fwhm | psfex (default: fwhm for a number, else psfex)"),
    "hr_astrometry_correction_name": ("path", None, "HR astrometric offsets (mas, image - reference)"),
    "lr_astrometry_correction_name": ("path", None, "LR astrometric offsets (mas, image - reference)"),
    "hr_psf_fwhm_arcsec": ("float", None, "HR PSF FWHM for the point-source rule (default: measured from the PSF)"),
    "tile_id": ("int", None, "tile to run when no --tiles is given"),
    "spurious_pixel_cut": ("float", 0.0, "flag detections with FLUX_RADIUS below this (HR px) as spurious; 0 = off"),
    "hr_wht_image_type": ("choice", "MAP_WEIGHT", "HR weight map type: MAP_WEIGHT (inverse variance), MAP_RMS, MAP_VAR, NONE"),
    "hr_large_image_wht_name": ("path_or_none", None, "HR weight map, or 'none'"),
    "hr_ps_niter": ("int", 5, "maximum optimiser steps per source for groups made only of point sources"),
    # --- written by the original's scripts, read by nothing: accepted and ignored ----------
    "show_plots": ("any", None, "ignored (the original's plotting switch)"),
    "ncores": ("int", None, "default for --jobs"),
    "output_logfile_name": ("any", None, "ignored (written by the original at run time)"),
    "mainpath": ("any", None, "ignored (legacy)"),
    "userinputdir": ("any", None, "ignored (legacy)"),
    "run_on_mock": ("any", None, "ignored (legacy)"),
    # --- jointphot's own keys ---------------------------------------------------------------
    "psfex_mag": ("float", 21.0, "MAG_AUTO at which magnitude-dependent PSFEx models are evaluated"),
    "lr_mask_planes": ("list", list(DEFAULT_LR_IGNORED_PLANES), "LR mask planes whose pixels are ignored"),
    "sextractor_settings": ("dict", {}, "SExtractor keyword overrides for HR detection"),
    "engine": ("choice", "native", "fitting engine: native (default) | tractor | auto (the Tractor if it imports)"),
    "lr_band": ("str", "lr", "name of the LR band: column prefix in the catalogue and in tile file names "
                             "(a letter, then letters or digits; not 'hr')"),
    "lr_bands": ("bands", None, "several LR bands: a list of objects, one per band, each with the per-band keys "
                                "(lr_band, lr_large_image_name, lr_zp, lr_image_psf, ...; see BAND_KEYS); a key "
                                "an object leaves out is taken from the top level"),
    "noise_rescale": ("bool", True, "rescale the weights so blank-sky pixels have unit chi scatter"),
    "hr_psf_pixscale_arcsec": ("float", None, "pixel scale [\"/px] of a FITS hr_image_psf (default: its header's "
                                              "CD, PC x CDELT, CDELT or PIXSCALE, else the HR image's)"),
    "lr_psf_pixscale_arcsec": ("float", None, "pixel scale [\"/px] of a FITS lr_image_psf (default: its header's "
                                              "CD, PC x CDELT, CDELT or PIXSCALE, else the LR image's)"),
    "hr_psf_light_fraction": ("float", 1.0, "share of a point source's total light inside the HR PSF stamp, "
                                            "in (0.5, 1]: the PSF is normalised to it, so fluxes are total"),
    "lr_psf_light_fraction": ("float", 1.0, "share of a point source's total light inside the LR PSF stamp, "
                                            "in (0.5, 1]: the PSF is normalised to it, so fluxes are total"),
    "hr_aperture_correction": ("choice", "report", "HR aperture correction measured on bright isolated stars "
                                                   "(merged header JP_APCOR): report | apply (multiply the merged "
                                                   "HR fluxes and errors by it)"),
    "lr_aperture_correction": ("choice", "report", "LR aperture correction measured on bright isolated stars "
                                                   "(merged header JP_APCOL): report | apply (multiply the merged "
                                                   "LR fluxes and errors by it)"),
    "hr_background_cell_arcsec": ("float", 0.0, "cell [\"] of a smooth HR background measured on the first fit's "
                                                "residual and subtracted before the final fit (0: one constant per "
                                                "tile; e.g. 3 under cluster halos)"),
    "hr_models": ("choice", "sersic", "HR models: sersic (point sources by SExtractor's rule, else a free "
                                      "Sersic, or a bulge + disc comp where the fit prefers it) | legacy "
                                      "(psf/rex/exp/dev/ser chosen by the fit, the Legacy Surveys' DR9/DR10 rules)"),
}
CHOICES = {"hr_psf_type": PSF_TYPES, "lr_psf_type": PSF_TYPES, "hr_wht_image_type": WEIGHT_TYPES,
           "engine": ENGINES, "hr_models": ("sersic", "legacy"), "hr_aperture_correction": APERTURE_CORRECTION_MODES,
           "lr_aperture_correction": APERTURE_CORRECTION_MODES}
#: The keys that name input files or directories (their kinds: a file, a file or 'none', a directory, a PSF file or
#: a FWHM).  Their sizes and times enter the plan's job hash; the pipeline stages them into the tasks that read them.
INPUT_KEYS = tuple(key for key, (kind, _, _) in KEYS.items() if kind in ("path", "path_or_none", "dir", "psf"))
#: The keys that belong to one LR band: top-level (a one-band job, the original format) or in each object
#: of lr_bands.  The band's own name is lr_band.
BAND_KEYS = ("lr_band", "lr_zp", "lr_large_image_name", "lr_image_psf", "lr_psf_type", "lr_astrometry_correction_name",
             "lr_mask_planes", "lr_psf_pixscale_arcsec", "lr_psf_light_fraction", "lr_aperture_correction")
#: A band name: a column prefix and part of file names.
BAND_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
IGNORED = ("show_plots", "output_logfile_name", "mainpath", "userinputdir", "run_on_mock")


def read_json(path: str):
    """The JSON content of a job (or plan) file; one clear error for every way reading it can fail."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise JointphotError(f"job file {path!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise JointphotError(f"job file {path!r} is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise JointphotError(f"job file {path!r} is not a text (JSON) file") from None
    except OSError as exc:
        raise JointphotError(f"job file {path!r} cannot be read: {exc.strerror}") from None


def load_job(path: str) -> Dict[str, Any]:
    """Read, validate and resolve a job file; returns the job dict with absolute paths."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise JointphotError(f"job file {path!r} must hold a JSON object of keys")
    return validate_job(raw, os.path.dirname(os.path.abspath(path)), source=path)


def validate_job(raw: Dict[str, Any], base_dir: str, source: str = "job") -> Dict[str, Any]:
    """Validate the keys of a job dict, fill defaults and resolve paths (see module doc)."""
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise JointphotError(f"{source}: unknown key {unknown[0]!r}" + (f" (and {unknown[1:]})" if unknown[1:] else "")
                             + "; see `jointphot job-keys` for the accepted keys")
    several = raw.get("lr_bands") is not None
    job: Dict[str, Any] = {}
    for key, (kind, default, _) in KEYS.items():
        if key == "lr_bands":
            continue
        if key not in raw or raw[key] is None:
            if default is REQUIRED and not (several and key in BAND_KEYS):
                raise JointphotError(f"{source}: required key {key!r} is missing")
            job[key] = None if default is REQUIRED else default
            continue
        job[key] = _convert(key, kind, raw[key], base_dir, source)
    _psf_type(job, "hr", "fits", source)
    job["lr_bands"] = _bands(raw, base_dir, source)
    if not several:
        job.update(job["lr_bands"][0])   # a one-band job: its top-level keys are that band, resolved
    for key in IGNORED:
        if key in raw:
            log.info("%s: key %r is accepted for compatibility and ignored", source, key)
    return job


def _psf_type(job, prefix, fallback, where):
    """Fill and check <prefix>_psf_type against <prefix>_image_psf (the original's rule: a number is a FWHM)."""
    ptype, pkey = f"{prefix}_psf_type", f"{prefix}_image_psf"
    if job[ptype] is None:
        job[ptype] = "fwhm" if isinstance(job[pkey], float) else fallback
    if job[ptype] == "fwhm":
        if not isinstance(job[pkey], float) or job[pkey] <= 0:
            raise JointphotError(f"{where}: {pkey!r} must be a positive FWHM in arcsec when {ptype} is 'fwhm'")
    elif isinstance(job[pkey], float):
        raise JointphotError(f"{where}: {pkey!r} is a number but {ptype} is {job[ptype]!r}: give a file, or set {ptype} "
                             f"to 'fwhm'")


def _bands(raw, base_dir, source) -> List[Dict[str, Any]]:
    """The LR bands, each a dict of the BAND_KEYS: one per object of lr_bands (its keys over the top-level
    ones), or one band of the top-level keys."""
    entries = raw.get("lr_bands")
    if entries is None:
        entries, label = [{}], lambda i: source
    elif not (isinstance(entries, list) and entries and all(isinstance(e, dict) for e in entries)):
        raise JointphotError(f"{source}: key 'lr_bands' must be a non-empty list of objects (one per LR band)")
    else:
        label = lambda i: f"{source}: lr_bands[{i}]"   # noqa: E731
    bands, names = [], set()
    for i, entry in enumerate(entries):
        where = label(i)
        unknown = sorted(set(entry) - set(BAND_KEYS))
        if unknown:
            raise JointphotError(f"{where}: {unknown[0]!r} is not a per-band key (per-band keys: {', '.join(BAND_KEYS)})")
        band = {}
        for key in BAND_KEYS:
            kind, default, _ = KEYS[key]
            value = entry.get(key, raw.get(key))
            if key == "lr_psf_type" and "lr_image_psf" in entry and key not in entry:
                value = None   # a band's own PSF without a type: the type follows from it
            if value is None:
                if default is REQUIRED:
                    raise JointphotError(f"{where}: required key {key!r} is missing")
                band[key] = default
            else:
                band[key] = _convert(key, kind, value, base_dir, where)
        _psf_type(band, "lr", "psfex", where)
        name = band["lr_band"]
        if not BAND_NAME.match(name) or name == "hr":
            raise JointphotError(f"{where}: band name (lr_band) {name!r} must be a letter followed by letters or "
                                 f"digits, and not 'hr' (it prefixes columns and names files)")
        if name in names:
            raise JointphotError(f"{where}: band name (lr_band) {name!r} is used twice")
        names.add(name)
        bands.append(band)
    return bands


def band_names(job: Dict[str, Any]) -> List[str]:
    """The LR band names of a validated job, in job order."""
    return [b["lr_band"] for b in job["lr_bands"]]


def band_job(job: Dict[str, Any], band: str) -> Dict[str, Any]:
    """The job as one band sees it: its top-level BAND_KEYS are those of `band`."""
    for entry in job["lr_bands"]:
        if entry["lr_band"] == band:
            return dict(job, **entry)
    raise JointphotError(f"band {band!r} is not in this job (bands: {', '.join(band_names(job))})")


def _convert(key, kind, value, base_dir, source):
    def bad(expected):
        return JointphotError(f"{source}: key {key!r} must be {expected}, got {value!r}")

    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise bad("an integer")
        value = int(value)
        if key.endswith("niter") and value < 1:
            raise bad("a positive integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise bad("a non-empty string")
        return value
    if kind == "choice":
        if value not in CHOICES[key]:
            raise bad("one of " + ", ".join(CHOICES[key]))
        return value
    if kind == "pair":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value, value]
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise bad("two numbers [x, y] in arcsec")
        if min(value) < 0 or (key == "cutoutsize_arcsec" and min(value) <= 0):
            raise bad("positive numbers")
        return [float(v) for v in value]
    if kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return value
    if kind == "dict":
        if not isinstance(value, dict):
            raise bad("an object")
        return value
    if kind == "any":
        return value
    if kind == "outdir":
        if not isinstance(value, str) or not value:
            raise bad("a directory path")
        return os.path.abspath(value)
    if kind == "dir":
        if not isinstance(value, str):
            raise bad("a directory path")
        found = _find(value, base_dir)
        if found is None or not os.path.isdir(found):
            log.warning("%s: %s %r is not a directory; using jointphot's packaged SExtractor files", source, key, value)
            return None
        return found
    if kind == "psf" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "path_or_none" and isinstance(value, str) and value.strip().lower() in ("none", ""):
        return None
    if not isinstance(value, str) or not value:
        raise bad("a file path")
    if kind == "psf":
        try:
            return float(value)   # a FWHM written as a string
        except ValueError:
            pass
    found = _find(value, base_dir)
    if found is None:
        raise JointphotError(f"{source}: {key!r}: file {value!r} not found (looked in {os.getcwd()!r} "
                             f"and next to the job file in {base_dir!r})")
    return found


def _find(value: str, base_dir: str):
    """Absolute path of `value`: as given, else relative to the job file's directory."""
    value = os.path.expanduser(os.path.expandvars(value))
    for candidate in (value, os.path.join(base_dir, value)):
        if os.path.exists(candidate):
            return os.path.abspath(candidate)
    return None


def describe_keys() -> str:
    """Text table of the accepted keys (for `jointphot job-keys`)."""
    lines = []
    for key, (kind, default, desc) in KEYS.items():
        d = "required" if default is REQUIRED else f"default {default!r}"
        lines.append(f"{key:32s} {kind:12s} {d:24s} {desc}")
    return "\n".join(lines)
