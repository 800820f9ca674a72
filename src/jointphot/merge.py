"""One catalogue for the whole field from the per-tile catalogues.

A source belongs to the tile whose core contains its HR position.  Two tiles fitting the
same source can put it a hair apart, on either side of a core boundary; so rows within
`BOUNDARY_TOLERANCE_PIX` of their core are candidates, and candidates from different tiles
closer than `DUPLICATE_RADIUS_ARCSEC` are the same source: the row deepest inside its own
core is kept.  A candidate just outside its core with no twin was missed by the owning
tile and is kept.  Every source is therefore kept exactly once.
"""
from __future__ import annotations

import json
import logging
import os
import platform
from typing import Dict, Iterable, List, Optional

import numpy as np
from astropy.io import fits
from astropy.table import Table, vstack
from scipy.spatial import cKDTree

from . import __version__, apcorr
from .catalog import readme_text, set_units
from .engines.base import STANDARD_PARAMS
from .errors import JointphotError
from .fit_lr import add_magnitudes
from .images import write_fits_atomic, write_text_atomic
from .plan import tile_path

log = logging.getLogger("jointphot.merge")

#: Entries of different tiles whose fitted positions, or whose detection peaks, are closer than
#: this are one object: a galaxy larger than the overlap is cut differently by each tile, and the
#: brightest pixel of its flat, noisy core can differ by a pixel between tiles and fall in two cores.
DUPLICATE_RADIUS_ARCSEC = 0.15
ID_STRIDE = 100000
#: Columns an aperture correction multiplies (HR, and the LR band's: '{band}'; the LR x HR flux
#: covariance by both); magnitudes and uJy columns are made again from them, and the flux row and
#: column of hr_param_cov are scaled too.
FLUX_COLUMNS = {"hr": ("hr_flux", "hr_flux_err", "hr_flux_err_model", "{band}_hr_flux_cov"),
                "lr": ("{band}_flux", "{band}_flux_err", "{band}_flux_err_fixed", "{band}_flux_err_shape",
                       "{band}_hr_flux_cov")}


def padded_depth(table: Table, padded) -> np.ndarray:
    """Distance [px] of each row's fitted position inside the tile's cut-out region (how little
    of the source the tile's edges cut off)."""
    x = np.asarray(table["x_large"], float)
    y = np.asarray(table["y_large"], float)
    return np.minimum.reduce([x - padded[0], padded[1] - x, y - padded[2], padded[3] - y])


def merge_tables(plan, tables: Dict[int, Table]) -> Table:
    """Merged catalogue (sorted by id) from {tile_id: lr_fit table}: each tile keeps the sources
    whose detection peak lies in its core (`in_core`; every pixel lies in exactly one core); of
    entries from different tiles that are one object (DUPLICATE_RADIUS_ARCSEC), the one that
    its tile's edges cut least is kept.  The tiles' aperture corrections (table.meta['apcorr'])
    are combined per band and, where the job key <band>_aperture_correction is 'apply', multiply
    the fluxes; meta['apcorr'] = {band: (Correction, applied)} for write_catalogue."""
    merged = _kept_rows(plan, tables)
    merged.meta["sextractor"] = ",".join(sorted({t.meta.get("sextractor", "unknown") for t in tables.values()}))
    merged.meta["apcorr"] = {}
    for band in apcorr.CARDS:
        corr = apcorr.combine_tiles([t.meta.get("apcorr", {}).get(band, apcorr.Correction()) for t in tables.values()])
        key = f"{band}_aperture_correction"
        apply = plan["job"].get(key) == "apply"
        usable = apcorr.usable(corr)
        if apply and corr.n == 0:
            log.warning("merge: %s is 'apply' but no tile measured one (no bright isolated star): %s fluxes "
                        "not corrected", key, band.upper())
        elif apply and not usable:
            log.warning("merge: %s is 'apply' but the correction %.4f +- %.4f (%d stars) is less precise than "
                        "+-%g: %s fluxes not corrected", key, corr.value, corr.error, corr.n,
                        apcorr.MAX_APPLIED_ERROR, band.upper())
        if apply and usable:
            apply_correction(merged, band, plan["job"]["lr_band"], corr.value, plan["job"][f"{band}_zp"])
        merged.meta["apcorr"][band] = (corr, bool(apply and usable))
    return merged


def apply_correction(table: Table, band: str, lr_band: str, factor: float, zeropoint: float) -> None:
    """Multiply the FLUX_COLUMNS of `band` ('hr' or 'lr'; LR columns named after `lr_band`) that the
    table has by `factor` in place, and make their magnitudes and uJy columns again (AB `zeropoint`)."""
    for col in FLUX_COLUMNS[band]:
        if col.format(band=lr_band) in table.colnames:
            table[col.format(band=lr_band)] *= factor
    if band == "hr":
        k = STANDARD_PARAMS.index("flux")
        cov = np.asarray(table["hr_param_cov"], float).reshape(-1, 7, 7)
        cov[:, k, :] *= factor
        cov[:, :, k] *= factor
        table["hr_param_cov"] = cov.reshape(len(table), 49)
    add_magnitudes(table, "hr" if band == "hr" else lr_band, zeropoint)


def _kept_rows(plan, tables: Dict[int, Table]) -> Table:
    """The rows merge_tables keeps, sorted by id."""
    scale = plan["hr"]["pixel_scale_arcsec"]
    parts = []
    for tile_id, table in sorted(tables.items()):
        part = table[np.asarray(table["in_core"], bool)] if len(table) else table
        if len(part):
            part["_depth"] = padded_depth(part, plan["tiles"][tile_id]["padded"])
            parts.append(part)
    if not parts:
        merged = next(iter(tables.values()))[:0].copy() if tables else Table()
        if "id" not in merged.colnames and tables:
            merged.add_column(np.zeros(0, np.int64), name="id", index=0)
        return merged
    merged = vstack(parts, metadata_conflicts="silent")
    keep = np.ones(len(merged), bool)
    depth = np.asarray(merged["_depth"], float)
    tile = np.asarray(merged["tile_id"])
    for xcol, ycol in (("x_large", "y_large"), ("x_det_large", "y_det_large")):
        xy = np.column_stack([merged[xcol], merged[ycol]])
        for i, j in cKDTree(xy).query_pairs(DUPLICATE_RADIUS_ARCSEC / scale, output_type="ndarray"):
            if tile[i] != tile[j]:
                keep[i if depth[i] < depth[j] else j] = False
    merged = merged[keep]
    merged.remove_column("_depth")
    merged.add_column(np.asarray(merged["tile_id"], np.int64) * ID_STRIDE + np.asarray(merged["number"], np.int64),
                      name="id", index=0)
    merged.sort("id")
    return merged


def read_tile_catalogues(plan, paths: Iterable[str]) -> Dict[int, Table]:
    """{tile_id: table} from per-tile lr_fit files."""
    tables = {}
    seen = {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen[real] = path
        try:
            with fits.open(path) as hdul:
                table = Table(hdul["LR_FIT"].data)
                tile_id = int(hdul["LR_FIT"].header["JP_TILE"])
                table.meta["engine"] = hdul["LR_FIT"].header.get("JP_ENGV", "")
                table.meta["sextractor"] = hdul["LR_FIT"].header.get("JP_SEXV", "unknown")
                table.meta["apcorr"] = {band: apcorr.from_header(hdul["LR_FIT"].header, band) for band in apcorr.CARDS}
        except FileNotFoundError:
            raise JointphotError(f"merge: {path!r} does not exist") from None
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise JointphotError(f"merge: {path!r} is not a jointphot per-tile catalogue ({exc})") from None
        if tile_id in tables:
            raise JointphotError(f"merge: two catalogues of tile {tile_id}: {path!r} and another file")
        if not 0 <= tile_id < len(plan["tiles"]):
            raise JointphotError(f"merge: {path!r} is tile {tile_id}, which is not in this job's grid "
                                 f"(0..{len(plan['tiles']) - 1})")
        tables[tile_id] = table
    return tables


def default_tile_files(plan) -> List[str]:
    """Existing tNNNN_lr_fit.fits files under <workdir>/tiles that were made for this job.

    A file whose fit-lr .done marker names another job (the job or its inputs changed since)
    is skipped with a warning; a file without a marker (copied by hand) is taken.
    """
    from .pipeline import read_marker
    out = []
    for t in plan["tiles"]:
        directory = os.path.join(plan["job"]["workdir"], "tiles", f"{t['tile_id']:04d}")
        path = tile_path(directory, t["tile_id"], "lr_fit")
        if not os.path.exists(path):
            continue
        marker = read_marker(directory, t["tile_id"], "fit-lr")
        if marker is not None and marker.get("job_hash") != plan["job_hash"]:
            log.warning("merge: skipping %s: it was made for another version of the job or its input files "
                        "(re-run tile %d)", path, t["tile_id"])
            continue
        out.append(path)
    return out


#: Extension of a merged catalogue that holds the job and the tools' versions as JSON.
JOB_HDU = "JOB"


def tool_versions():
    """{name: version} of Python and the Python packages the numbers depend on."""
    out = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "astropy"):
        out[name] = __import__(name).__version__
    return out


def job_hdu(job, versions):
    """The JOB extension: one row, columns `job` (the whole job, JSON, paths as resolved) and
    `versions` (JSON), read back by :func:`job_from_catalogue`."""
    texts = [json.dumps(job, sort_keys=True, default=str), json.dumps(versions, sort_keys=True)]
    cols = [fits.Column(name=name, format=f"{max(len(text), 1)}A", array=np.array([text]))
            for name, text in zip(("job", "versions"), texts)]
    return fits.BinTableHDU.from_columns(cols, name=JOB_HDU)


def job_from_catalogue(path):
    """(job dict, versions dict) stored in a merged catalogue by write_catalogue."""
    try:
        with fits.open(path) as hdul:
            row = hdul[JOB_HDU].data[0]
            return json.loads(row["job"]), json.loads(row["versions"])
    except FileNotFoundError:
        raise JointphotError(f"{path!r} does not exist") from None
    except (OSError, KeyError, IndexError, ValueError) as exc:
        raise JointphotError(f"{path!r} is not a jointphot catalogue with a {JOB_HDU} extension ({exc})") from None


def write_catalogue(plan, merged: Table, path: str, missing: List[int], engines: List[str],
                    failures: Optional[Dict[int, str]] = None) -> None:
    """Write the merged catalogue (units, job, versions, missing tiles in the header) and its README."""
    band = plan["job"]["lr_band"]
    set_units(merged, band)
    hdr = fits.Header()
    hdr["JP_VERS"] = (__version__, "jointphot version")
    hdr["JP_NTILE"] = (len(plan["tiles"]), "tiles in the grid")
    hdr["JP_NMISS"] = (len(missing), "tiles missing from this catalogue")
    hdr["JP_MISS"] = (",".join(str(t) for t in missing) or "none", "ids of the missing tiles")
    hdr["JP_ENGV"] = (",".join(sorted(set(engines))) or "none", "fitting engine(s) and version(s)")
    hdr["JP_BAND"] = (band, "LR band name")
    hdr["JP_HRZP"] = (plan["job"]["hr_zp"], "[mag] HR AB zeropoint")
    hdr["JP_LRZP"] = (plan["job"]["lr_zp"], "[mag] LR AB zeropoint")
    for which, (corr, applied) in merged.meta.pop("apcorr", {}).items():
        hdr.update(apcorr.header_cards(which, corr, applied))
    hdr["JP_SEXV"] = (merged.meta.pop("sextractor", "unknown") or "unknown", "SExtractor version(s) of the tiles")
    versions = tool_versions()
    for name, version in versions.items():
        hdr[f"V_{name.upper()[:6]}"] = (version, f"{name} version")
    for tile_id, reason in sorted((failures or {}).items()):
        hdr.add_history(f"tile {tile_id} failed: {reason}"[:70])
    hdr["JP_JOBHD"] = (JOB_HDU, "HDU holding the whole job as JSON (jointphot rerun)")
    write_fits_atomic(fits.HDUList([fits.PrimaryHDU(header=hdr), fits.BinTableHDU(merged, header=hdr, name="CATALOG"),
                                    job_hdu(plan["job"], dict(versions, jointphot=__version__,
                                                              engine=hdr["JP_ENGV"], sextractor=hdr["JP_SEXV"]))]),
                      path)
    write_text_atomic(readme_text(merged, band), os.path.splitext(path)[0] + "_README.txt")
