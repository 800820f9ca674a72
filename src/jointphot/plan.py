"""The plan: a validated job plus its tile grid, written once and read by every step.

`load(path)` accepts a job file or a plan file, so every step can be run by hand on a
job file as well as by Nextflow on the plan.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

from . import __version__
from .astrometry import read_offsets
from .errors import JointphotError
from .images import (celestial_wcs, image_hdu, open_fits, pixel_scale_arcsec, read_section, LR_EXTENSIONS,
                     write_text_atomic)
from .jobfile import BAND_KEYS, INPUT_KEYS, band_job, band_names, load_job, read_json
from .psf import load_psf
from .tiling import Tile, make_grid, tile_from_dict

PLAN_FORMAT = 3
#: Largest tile grid accepted (a typo in cutoutsize_arcsec or a broken pixel scale gives millions).
MAX_TILES = 100000
#: Largest plausible pixel scale ["/px] (a CD matrix of zeros is read as 1 deg/px).
MAX_PIXEL_SCALE_ARCSEC = 60.0


def make_plan(job: Dict[str, Any], job_file: str) -> Dict[str, Any]:
    """Check the inputs (images, WCS, overlap, PSFs, offsets) and lay out the tiles."""
    with open_fits(job["hr_large_image_name"], "hr_large_image_name") as hdul:
        hdu = image_hdu(hdul, job["hr_large_image_name"], "hr_large_image_name")
        hr_shape = (int(hdu.header["NAXIS2"]), int(hdu.header["NAXIS1"]))
        hr_wcs = celestial_wcs(hdu.header, job["hr_large_image_name"], "hr_large_image_name")
    if job["hr_large_image_wht_name"]:
        with open_fits(job["hr_large_image_wht_name"], "hr_large_image_wht_name") as hdul:
            hdu = image_hdu(hdul, job["hr_large_image_wht_name"], "hr_large_image_wht_name")
            wshape = (int(hdu.header["NAXIS2"]), int(hdu.header["NAXIS1"]))
        if wshape != hr_shape:
            raise JointphotError(f"hr_large_image_wht_name: {job['hr_large_image_wht_name']!r} is {wshape[1]}x{wshape[0]} "
                                 f"pixels but the HR image is {hr_shape[1]}x{hr_shape[0]}")
    hr_scale = pixel_scale_arcsec(hr_wcs)
    if not (np.isfinite(hr_scale) and 0 < hr_scale <= MAX_PIXEL_SCALE_ARCSEC):
        raise JointphotError(_implausible_scale("hr_large_image_name", job["hr_large_image_name"], hr_scale))
    bands = {}
    for name in band_names(job):
        view = band_job(job, name)
        lr_wcs, lr_shape = _check_lr_image(view, hr_wcs, hr_shape)
        ny, nx = lr_shape
        corners = lr_wcs.all_pix2world([[-0.5, -0.5], [nx - 0.5, -0.5], [nx - 0.5, ny - 0.5], [-0.5, ny - 0.5]], 0)
        bands[name] = {"shape": list(lr_shape), "pixel_scale_arcsec": pixel_scale_arcsec(lr_wcs), "wcs": lr_wcs,
                       "corners_radec": corners.tolist()}
    offsets = {"hr": _offsets(job, "hr")}
    offsets.update({name: _offsets(band_job(job, name), "lr") for name in bands})
    n_tiles = int(np.prod([np.ceil(n * hr_scale / size) for n, size in zip(hr_shape[::-1], job["cutoutsize_arcsec"])]))
    if n_tiles > MAX_TILES:
        raise JointphotError(f"cutoutsize_arcsec {job['cutoutsize_arcsec']} makes {n_tiles} tiles on the "
                             f"{hr_shape[1]}x{hr_shape[0]}-pixel HR image ({hr_scale:.4g}\"/px); at most {MAX_TILES} "
                             f"are allowed: use larger tiles (or check the HR WCS pixel scale)")
    tiles = make_grid(hr_shape, hr_scale, job["cutoutsize_arcsec"], job["cutoutoverlap_arcsec"])
    # load every PSF once so that a bad PSF fails now, not in every tile
    cx, cy = (hr_shape[1] - 1) / 2.0, (hr_shape[0] - 1) / 2.0
    load_psf(job["hr_image_psf"], job["hr_psf_type"], hr_scale, position=(cx + 1, cy + 1), **psf_options(job, "hr"))
    centre = hr_wcs.all_pix2world([[cx, cy]], 0)
    for name, band in bands.items():
        view = band_job(job, name)
        lx, ly = band["wcs"].all_world2pix(centre, 0)[0]
        load_psf(view["lr_image_psf"], view["lr_psf_type"], band["pixel_scale_arcsec"], position=(lx + 1, ly + 1),
                 **psf_options(view, "lr"))
    _check_workdir(job["workdir"])
    tile_dicts = []
    for t in tiles:
        d = {"tile_id": t.tile_id, "ix": t.ix, "iy": t.iy, "core": t.core, "padded": t.padded}
        ra, dec = hr_wcs.all_pix2world([t.centre], 0)[0]
        d["centre_radec"] = [float(ra), float(dec)]
        # sky corners of the padded region (pixel edges): where each band's LR cutout is taken
        x0, x1, y0, y1 = t.padded
        corners = [[x0 - 0.5, y0 - 0.5], [x1 - 0.5, y0 - 0.5], [x0 - 0.5, y1 - 0.5], [x1 - 0.5, y1 - 0.5]]
        d["padded_corners_radec"] = hr_wcs.all_pix2world(corners, 0).tolist()
        # where position-dependent (PSFEx) PSFs are evaluated: 1-based large-image pixels, per band
        d["psf_position"] = {"hr": [t.centre[0] + 1.0, t.centre[1] + 1.0]}
        for name, band in bands.items():
            lx, ly = band["wcs"].all_world2pix([[ra, dec]], 0)[0]
            d["psf_position"][name] = [float(lx) + 1.0, float(ly) + 1.0]
        tile_dicts.append(d)
    for band in bands.values():
        del band["wcs"]
    return {
        "jointphot_plan": PLAN_FORMAT,
        "jointphot_version": __version__,
        "job_file": os.path.abspath(job_file),
        "job": job,
        "job_hash": job_hash(job),
        "hr": {"shape": list(hr_shape), "pixel_scale_arcsec": hr_scale},
        "bands": bands,
        "astrometry_offsets_mas": offsets,
        "grid": {"nx": max(t.ix for t in tiles) + 1, "ny": max(t.iy for t in tiles) + 1},
        "tiles": tile_dicts,
    }


#: The large images: read by the cutout step only (and by the plan); every later step reads its tile's cutouts.
MOSAIC_KEYS = ("hr_large_image_name", "hr_large_image_wht_name", "lr_large_image_name")


def part_plan(plan: Dict[str, Any], part: str, tile_id: Optional[int] = None) -> Dict[str, Any]:
    """The plan as the steps of one part see it: part 'hr' (cutout, detect, fit-hr; no LR band) or an LR band
    (its cutout and fit-lr: the HR keys and that band's), for one tile (`tile_id`) or all.

    Nothing in it depends on the other bands, on the working directory or on where the plan was made,
    so the pipeline's tasks of a part are re-used (-resume) when only another band changed."""
    if part != "hr" and part not in plan["bands"]:
        raise JointphotError(f"band {part!r} is not in this job (bands: {', '.join(plan['bands'])})")
    bands = [] if part == "hr" else [part]
    job = {k: v for k, v in plan["job"].items() if k not in BAND_KEYS}
    job["lr_bands"] = [entry for entry in plan["job"]["lr_bands"] if entry["lr_band"] in bands]
    job.update(job["lr_bands"][0] if bands else {})
    job["workdir"] = "."
    job["cutout_output_dir"] = None
    tiles = plan["tiles"] if tile_id is None else [tile_entry(plan, tile_id)]
    keep = {"hr", *bands}
    offsets = plan["astrometry_offsets_mas"]
    return {"jointphot_plan": plan["jointphot_plan"], "jointphot_version": plan["jointphot_version"], "job": job,
            "job_hash": job_hash(job), "hr": plan["hr"], "bands": {b: plan["bands"][b] for b in bands},
            "astrometry_offsets_mas": {k: offsets[k] for k in offsets if k in keep}, "grid": plan["grid"],
            "tiles": [dict(t, psf_position={k: v for k, v in t["psf_position"].items() if k in keep}) for t in tiles]}


def part_inputs(part: Dict[str, Any]) -> Dict[str, List[str]]:
    """The input files that the steps of a part plan read, from the keys of that part (HR or its band's):
    {'cutout': the large images, 'steps': the PSF, offset and SExtractor files of the later steps}."""
    job = part["job"]
    keys = [k for k in INPUT_KEYS if (k in BAND_KEYS) == bool(part["bands"])]
    files = {k: job[k] for k in keys if isinstance(job.get(k), str) and os.path.exists(job[k])}
    return {"cutout": sorted({f for k, f in files.items() if k in MOSAIC_KEYS}),
            "steps": sorted({f for k, f in files.items() if k not in MOSAIC_KEYS})}


#: Where a pipeline task finds the i-th (from 1) of the input files it staged: Nextflow's stageAs 'inputs/in*/*'.
STAGED_INPUT = "inputs/in{index}/{name}"
#: What a task's plan calls an input file of its part that the task did not stage (a step reading it fails naming it).
NOT_STAGED = "not-staged/{name}"


def task_plan(part: Dict[str, Any], staged: List[str]) -> Dict[str, Any]:
    """The part plan as a pipeline task sees it: the input files `staged` (in staging order) at their STAGED_INPUT
    locations, every other input file of the job at NOT_STAGED; no host path is left in it.  The job hash stays
    the part's (it describes the user's files)."""
    where = {f: STAGED_INPUT.format(index=i, name=os.path.basename(f.rstrip("/"))) for i, f in enumerate(staged, 1)}
    return _with_input_paths_mapped(part, lambda p: where.get(p, NOT_STAGED.format(name=os.path.basename(p.rstrip("/")))))


def _with_input_paths_mapped(plan: Dict[str, Any], new_path) -> Dict[str, Any]:
    """The plan with each input path of its job (top level and every lr_bands entry) replaced by new_path(path)."""
    def mapped(view):
        return {k: new_path(v) if k in INPUT_KEYS and isinstance(v, str) else v for k, v in view.items()}
    job = mapped(plan["job"])
    job["lr_bands"] = [mapped(entry) for entry in job["lr_bands"]]
    return dict(plan, job=job)


def write_parts(plan: Dict[str, Any], directory: str) -> List[str]:
    """Write <directory>/<part>.json for 'hr' and each band: what the pipeline gives each task of a tile,
    {"inputs": {"cutout": [...], "steps": [...]}: the files the cutout step and the later steps read (part_inputs),
    "plans": {"cutout": ..., "steps": ...}: the part plan of every tile as those tasks see it (task_plan)}."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name in ["hr", *plan["bands"]]:
        part = part_plan(plan, name)
        inputs = part_inputs(part)
        content = {"inputs": inputs, "plans": {step: task_plan(part, files) for step, files in inputs.items()}}
        paths.append(os.path.join(directory, f"{name}.json"))
        write_text_atomic(json.dumps(content, indent=1, sort_keys=True) + "\n", paths[-1])
    return paths


def staged_paths(staged: Dict[str, Any], given: Dict[str, Any], given_file: str) -> Dict[str, str]:
    """{path in the job `staged`: the path in the job `given`} for each input key: the two job files (JSON content)
    are one job, `staged` naming the copies of the files of `given` that a pipeline task staged."""
    def views(job):
        return [job] + [entry for entry in job.get("lr_bands") or [] if isinstance(entry, dict)]
    pairs = list(zip(views(staged), views(given)))
    if len(views(staged)) != len(views(given)) or any(set(a) != set(b) for a, b in pairs):
        raise JointphotError(f"--as-given: {given_file!r} is not the job that the plan's job file stages (other keys "
                             f"or bands)")
    return {a[k]: b[k] for a, b in pairs for k in INPUT_KEYS if isinstance(a.get(k), str) and isinstance(b.get(k), str)}


def with_input_paths(plan: Dict[str, Any], given: Dict[str, str], base_dir: str = ".") -> Dict[str, Any]:
    """The plan with its job's input paths that are keys of `given` (staged copies, in a pipeline task) replaced
    by the paths as the user gave them (recorded in plan.json, the parts and the catalogue; the job hash kept).
    Relative keys are found as the job file's paths are: in the working directory, else in `base_dir`."""
    given = {os.path.abspath(k if os.path.exists(k) else os.path.join(base_dir, k)): v for k, v in given.items()}
    return _with_input_paths_mapped(plan, lambda p: given.get(p, p))


def _implausible_scale(key, path, scale):
    return (f"{key}: {path!r}: the WCS gives a pixel scale of {scale:.6g}\"/px, which is not plausible: check its "
            f"CD1_1..CD2_2 (or CDELT) keywords (a CD matrix of zeros is read as 1 degree per pixel)")


def _check_lr_image(view, hr_wcs, hr_shape):
    """(WCS, shape) of a band's LR image (`view`: band_job), after checking its extensions, WCS, pixel scale,
    VARIANCE and overlap with the HR image."""
    lr_path = view["lr_large_image_name"]
    with open_fits(lr_path, "lr_large_image_name") as hdul:
        lr_hdus = {name: image_hdu(hdul, lr_path, "lr_large_image_name", name) for name in LR_EXTENSIONS}
        lr_shape = (int(lr_hdus["IMAGE"].header["NAXIS2"]), int(lr_hdus["IMAGE"].header["NAXIS1"]))
        for name in ("MASK", "VARIANCE"):
            shp = (int(lr_hdus[name].header["NAXIS2"]), int(lr_hdus[name].header["NAXIS1"]))
            if shp != lr_shape:
                raise JointphotError(f"lr_large_image_name: {lr_path!r}: {name} is {shp[1]}x{shp[0]} but IMAGE is "
                                     f"{lr_shape[1]}x{lr_shape[0]}")
        lr_wcs = celestial_wcs(lr_hdus["IMAGE"].header, lr_path, "lr_large_image_name")
        _check_variance(lr_hdus["VARIANCE"], lr_path)
    scale = pixel_scale_arcsec(lr_wcs)
    if not (np.isfinite(scale) and 0 < scale <= MAX_PIXEL_SCALE_ARCSEC):
        raise JointphotError(_implausible_scale("lr_large_image_name", lr_path, scale))
    _check_overlap(hr_wcs, hr_shape, lr_wcs, lr_shape, view)
    return lr_wcs, lr_shape


def _offsets(view, prefix):
    """[dx, dy] astrometric offset [mas] of <prefix>_astrometry_correction_name (0, 0 without one)."""
    key = f"{prefix}_astrometry_correction_name"
    return list(read_offsets(view[key], key)) if view[key] else [0.0, 0.0]


def band_plan(plan: Dict[str, Any], band: str) -> Dict[str, Any]:
    """The plan as one LR band sees it: plan['job'] is band_job, plan['lr'] the band's image, and the LR
    astrometric offset and PSF positions ('lr') are the band's."""
    if band not in plan["bands"]:
        raise JointphotError(f"band {band!r} is not in this job (bands: {', '.join(plan['bands'])})")
    offsets = plan["astrometry_offsets_mas"]
    return dict(plan, job=band_job(plan["job"], band), lr=plan["bands"][band],
                astrometry_offsets_mas={"hr": offsets["hr"], "lr": offsets[band]},
                tiles=[dict(t, psf_position={"hr": t["psf_position"]["hr"], "lr": t["psf_position"][band]})
                       for t in plan["tiles"]])


def _check_variance(hdu, path):
    """The VARIANCE plane must hold positive values (a variance, not a weight of 0 / sigma of -1 etc.).

    Pixels with variance <= 0 or NaN are legal (they get zero weight), but a plane without any
    positive value would leave every source without an LR flux: that is a wrong input.
    Up to 64 evenly spaced rows are read; the whole plane only when they have no positive value.
    """
    ny = int(hdu.header["NAXIS2"])
    nx = int(hdu.header["NAXIS1"])
    for y in np.unique(np.linspace(0, ny - 1, min(ny, 64)).astype(int)):
        row = read_section(hdu, int(y), int(y) + 1, 0, nx, np.float64, path, "lr_large_image_name")
        if np.any(np.isfinite(row) & (row > 0)):
            return
    data = read_section(hdu, 0, ny, 0, nx, np.float64, path, "lr_large_image_name")
    if not np.any(np.isfinite(data) & (data > 0)):
        raise JointphotError(f"lr_large_image_name: {path!r}: the VARIANCE extension has no positive finite value "
                             f"(pixels with variance <= 0 or NaN get zero weight, so no source could get an LR flux); "
                             f"it must hold the variance of each pixel in counts^2")


def _check_workdir(workdir: str) -> None:
    """The work directory must exist and be writable, or be creatable (nothing is created here)."""
    path = os.path.abspath(workdir)
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise JointphotError(f"workdir: cannot create {workdir!r}: {probe!r} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise JointphotError(f"workdir: cannot write in {probe!r} (permissions): choose another workdir")


def _check_overlap(hr_wcs, hr_shape, lr_wcs, lr_shape, job):
    ny, nx = hr_shape
    corners = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1], [(nx - 1) / 2, (ny - 1) / 2]], float)
    world = hr_wcs.all_pix2world(corners, 0)
    lxy = lr_wcs.all_world2pix(world, 0)
    lny, lnx = lr_shape
    inside = (lxy[:, 0] > -0.5) & (lxy[:, 0] < lnx - 0.5) & (lxy[:, 1] > -0.5) & (lxy[:, 1] < lny - 0.5)
    if not inside.any():
        # also try the other way round (LR inside HR)
        lc = np.array([[(lnx - 1) / 2, (lny - 1) / 2]], float)
        hxy = hr_wcs.all_world2pix(lr_wcs.all_pix2world(lc, 0), 0)[0]
        if not (-0.5 < hxy[0] < nx - 0.5 and -0.5 < hxy[1] < ny - 0.5):
            raise JointphotError(f"the HR image {job['hr_large_image_name']!r} and the LR image "
                                 f"{job['lr_large_image_name']!r} do not overlap on the sky (check their WCS)")


def job_hash(job: Dict[str, Any]) -> str:
    """Short hash of the job parameters and the input files' sizes and times (for re-use checks)."""
    h = hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode())
    views = [job] + list(job.get("lr_bands", []))
    for view, key in ((v, k) for v in views for k in INPUT_KEYS):
        path = view.get(key)
        if isinstance(path, str) and os.path.exists(path):
            st = os.stat(path)
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(__version__.encode())
    return h.hexdigest()[:16]


def write_plan(plan: Dict[str, Any], path: str) -> None:
    write_text_atomic(json.dumps(plan, indent=1, sort_keys=True) + "\n", path)


def load(path: str) -> Dict[str, Any]:
    """A plan from a plan file, or made on the fly from a job file."""
    raw = read_json(path)
    if isinstance(raw, dict) and "jointphot_plan" in raw:
        if raw.get("jointphot_plan") != PLAN_FORMAT:
            raise JointphotError(f"plan file {path!r} has format {raw.get('jointphot_plan')!r}, this jointphot "
                                 f"reads format {PLAN_FORMAT}: re-run `jointphot plan` on the job file")
        raw["bands"] = {name: raw["bands"][name] for name in band_names(raw["job"])}   # the job's order (JSON sorts keys)
        return raw
    return make_plan(load_job(path), path)


def tile_entry(plan: Dict[str, Any], tile_id: int) -> Dict[str, Any]:
    """The plan's dict of tile `tile_id` (a part plan holds only its own tile); a clear error when it has none."""
    for entry in plan["tiles"]:
        if entry["tile_id"] == tile_id:
            return entry
    n = plan["grid"]["nx"] * plan["grid"]["ny"]
    if len(plan["tiles"]) < n and 0 <= tile_id < n:
        raise JointphotError(f"tile {tile_id} is not in this part plan (it holds tile(s) "
                             f"{', '.join(str(t['tile_id']) for t in plan['tiles'])})")
    raise JointphotError(f"tile {tile_id} does not exist: the grid has {n} tiles (0..{n - 1})")


def get_tile(plan: Dict[str, Any], tile_id: int) -> Tile:
    """The tile with id `tile_id`; a clear error when the plan has no such tile."""
    return tile_from_dict(tile_entry(plan, tile_id))


def tile_psf(plan: Dict[str, Any], tile_id: int, band: str):
    """PSF of `band` ('hr' or 'lr') for a tile, evaluated at the tile centre."""
    job = plan["job"]
    return load_psf(job[f"{band}_image_psf"], job[f"{band}_psf_type"], plan[band]["pixel_scale_arcsec"],
                    position=tuple(tile_entry(plan, tile_id)["psf_position"][band]), **psf_options(job, band))


def psf_options(job: Dict[str, Any], band: str) -> Dict[str, Any]:
    """The job's load_psf options for `band` ('hr' or 'lr')."""
    return {"psfex_mag": job["psfex_mag"], "what": band, "file_pixscale_arcsec": job[f"{band}_psf_pixscale_arcsec"],
            "light_fraction": job[f"{band}_psf_light_fraction"]}


def tile_dir(plan: Dict[str, Any], tile_id: int) -> str:
    """Default directory of a tile's files: <workdir>/tiles/NNNN."""
    return os.path.join(plan["job"]["workdir"], "tiles", f"{tile_id:04d}")


def tile_path(directory: str, tile_id: int, product: str) -> str:
    """Path of a per-tile product, e.g. tile_path(d, 3, 'hr_fit') -> d/t0003_hr_fit.fits."""
    return os.path.join(directory, f"t{tile_id:04d}_{product}.fits")


def band_product(band: str, what: str) -> str:
    """Product name of an LR band's per-tile file: 'cutout', 'fit' or 'images' (e.g. 'g_fit')."""
    return f"{band}_{what}"


def parse_tiles(spec: str, n_tiles: int) -> List[int]:
    """'all', '3', '0,2,5' or '0,2,5-7' -> sorted list of tile ids (checked against the grid): `run --tiles`,
    and the pipeline's --tiles (`jointphot select-tiles` in its PLAN task); errors say what is wrong without
    naming the option (the caller does)."""
    spec = str(spec).strip()
    if spec.lower() == "all":
        return list(range(n_tiles))
    ids = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            lo, hi = (int(first), int(last)) if dash else (int(part), int(part))
        except ValueError:
            raise JointphotError(f"{spec!r} is not 'all' or a comma-separated list of tile ids and ranges "
                                 f"(e.g. 0,2,5-7)") from None
        if lo > hi:
            raise JointphotError(f"{spec!r}: the range {part!r} is empty")
        ids.update(range(lo, hi + 1))
    for t in sorted(ids):
        if not 0 <= t < n_tiles:
            raise JointphotError(f"tile {t} does not exist: the grid has {n_tiles} tiles (0..{n_tiles - 1})")
    return sorted(ids)
