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
from typing import Dict, Iterable, List, Optional

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table, vstack
from scipy.spatial import cKDTree

from . import __version__, apcorr, tool_versions
from . import conventions as cv
from .catalog import BANDS_COLUMNS, readme_text, set_units
from .engines.base import STANDARD_PARAMS
from .errors import JointphotError
from .fit_lr import add_magnitudes
from .images import write_fits_atomic, write_text_atomic
from .jobfile import band_job
from .lr_residual import LR_ONLY_MATCH_ARCSEC, LR_ONLY_NUMBER_START, blank_rows
from .plan import band_product, tile_entry, tile_path

log = logging.getLogger("jointphot.merge")

#: Entries of different tiles whose fitted positions, or whose detection peaks, are closer than
#: this are one object: a galaxy larger than the overlap is cut differently by each tile, and the
#: brightest pixel of its flat, noisy core can differ by a pixel between tiles and fall in two cores.
DUPLICATE_RADIUS_ARCSEC = 0.15
ID_STRIDE = 100000
#: Columns an aperture correction multiplies (HR: 'hr', with every LR band's '{band}_hr_flux_cov'; an LR
#: band's: 'lr'); magnitudes and uJy columns are made again from them, and the flux row and column of
#: hr_param_cov are scaled too.
FLUX_COLUMNS = {"hr": ("hr_flux", "hr_flux_err", "hr_flux_err_model", "{band}_hr_flux_cov"),
                "lr": ("{band}_flux", "{band}_flux_err", "{band}_flux_err_fixed", "{band}_flux_err_shape",
                       "{band}_hr_flux_cov")}
#: Extension of a merged catalogue with one row per LR band (zeropoint, aperture correction, missing tiles).
BANDS_HDU = "BANDS"


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
    merged.meta["missing_bands"] = {b: sorted(t for t, table in tables.items() if b in table.meta.get("missing_bands", []))
                                    for b in plan["bands"]}
    merged.meta["sextractor"] = ",".join(sorted({t.meta.get("sextractor", "unknown") for t in tables.values()}))
    merged.meta["apcorr"] = {}
    bands = list(plan["bands"])
    for which in ["hr"] + bands:
        corr = apcorr.combine_tiles([t.meta.get("apcorr", {}).get(which, apcorr.Correction()) for t in tables.values()])
        job = plan["job"] if which == "hr" else band_job(plan["job"], which)
        prefix = "hr" if which == "hr" else "lr"
        key = f"{prefix}_aperture_correction"
        apply = job[key] == "apply"
        usable = apcorr.usable(corr)
        if apply and corr.n == 0:
            log.warning("merge: %s is 'apply' but no tile measured one (no bright isolated star): %s fluxes "
                        "not corrected", key, which)
        elif apply and not usable:
            log.warning("merge: %s is 'apply' but the correction %.4f +- %.4f (%d stars) is less precise than "
                        "+-%g: %s fluxes not corrected", key, corr.value, corr.error, corr.n,
                        apcorr.MAX_APPLIED_ERROR, which)
        if apply and usable:
            apply_correction(merged, which, bands, corr.value, job[f"{prefix}_zp"])
        merged.meta["apcorr"][which] = (corr, bool(apply and usable))
    return merged


def apply_correction(table: Table, which: str, bands: List[str], factor: float, zeropoint: float) -> None:
    """Multiply the FLUX_COLUMNS of `which` ('hr' or an LR band of `bands`) that the table has by `factor`
    in place, and make their magnitudes and uJy columns again (AB `zeropoint`)."""
    columns = ([c.format(band=b) for c in FLUX_COLUMNS["hr"] for b in bands] if which == "hr"
               else [c.format(band=which) for c in FLUX_COLUMNS["lr"]])
    for col in dict.fromkeys(columns):
        if col in table.colnames:
            table[col] *= factor
    if which == "hr":
        k = STANDARD_PARAMS.index("flux")
        cov = np.asarray(table["hr_param_cov"], float).reshape(-1, 7, 7)
        cov[:, k, :] *= factor
        cov[:, :, k] *= factor
        table["hr_param_cov"] = cov.reshape(len(table), 49)
    add_magnitudes(table, which, zeropoint)


def _kept_rows(plan, tables: Dict[int, Table]) -> Table:
    """The rows merge_tables keeps, sorted by id."""
    scale = plan["hr"]["pixel_scale_arcsec"]
    parts = []
    for tile_id, table in sorted(tables.items()):
        part = table[np.asarray(table["in_core"], bool)] if len(table) else table
        if len(part):
            part["_depth"] = padded_depth(part, tile_entry(plan, tile_id)["padded"])
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
    """{tile_id: table} from per-tile band catalogues (tNNNN_<band>_fit.fits), each tile's bands joined
    (join_bands); table.meta['missing_bands'] lists the bands a tile lacks."""
    per_tile: Dict[int, Dict[str, Table]] = {}
    seen = set()
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            with fits.open(path) as hdul:
                header = hdul["LR_FIT"].header
                table = Table(hdul["LR_FIT"].data)
                tile_id = int(header["JP_TILE"])
                band = str(header["JP_BAND"])
                table.meta["engine"] = header.get("JP_ENGV", "")
                table.meta["sextractor"] = header.get("JP_SEXV", "unknown")
                table.meta["apcorr"] = {"hr": apcorr.from_header(header, "hr"), band: apcorr.from_header(header, "lr")}
        except FileNotFoundError:
            raise JointphotError(f"merge: {path!r} does not exist") from None
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise JointphotError(f"merge: {path!r} is not a jointphot per-tile catalogue ({exc})") from None
        if not 0 <= tile_id < len(plan["tiles"]):
            raise JointphotError(f"merge: {path!r} is tile {tile_id}, which is not in this job's grid "
                                 f"(0..{len(plan['tiles']) - 1})")
        if band not in plan["bands"]:
            raise JointphotError(f"merge: {path!r} is band {band!r}, which is not in this job "
                                 f"(bands: {', '.join(plan['bands'])})")
        if band in per_tile.get(tile_id, {}):
            raise JointphotError(f"merge: two catalogues of tile {tile_id} band {band}: {path!r} and another file")
        per_tile.setdefault(tile_id, {})[band] = table
    footprints = {b: band.get("corners_radec") for b, band in plan["bands"].items()}
    return {tile_id: join_bands(list(plan["bands"]), tables, footprints) for tile_id, tables in per_tile.items()}


def join_bands(bands: List[str], tables: Dict[str, Table], footprints: Optional[Dict[str, list]] = None) -> Table:
    """One tile's catalogue from its bands' tables ({band: table}, the same HR rows in each): the HR columns
    once, each band's own columns, `flags` the OR of all; a band without a table gets NaN columns and
    the flag LR_OFF_IMAGE (meta['missing_bands']).  LR-only rows (lr_residual) of different bands
    closer than LR_ONLY_MATCH_ARCSEC are one source, numbered again from LR_ONLY_NUMBER_START; a band
    whose search did not find it gets NaN and LR_NOT_DETECTED, or LR_OFF_IMAGE where it lies outside
    the band's image (`footprints`: {band: its image's four corners as [ra, dec] (plan 'corners_radec')})."""
    lr_only = {b: (np.asarray(t["flags"], np.int64) & cv.FLAGS["LR_ONLY"]) != 0 for b, t in tables.items()}
    out = _join_hr_rows(bands, {b: t[~lr_only[b]] for b, t in tables.items()})
    extra = _join_lr_only_rows(bands, {b: t[lr_only[b]] for b, t in tables.items()}, out, footprints or {})
    if not len(extra):
        return out
    joined = vstack([out, extra], metadata_conflicts="silent")
    joined.meta = out.meta
    return joined


def _join_hr_rows(bands: List[str], tables: Dict[str, Table]) -> Table:
    """join_bands of the rows of HR sources."""
    first = tables[next(b for b in bands if b in tables)]
    template = next(b for b in bands if b in tables)
    out = Table([first[c] for c in first.colnames if not _is_band_column(c, bands)], meta=dict(first.meta))
    out.meta["apcorr"] = {"hr": first.meta["apcorr"]["hr"]}
    out.meta["missing_bands"] = [b for b in bands if b not in tables]
    flags = np.asarray(out["flags"], np.int64).copy()
    for band in bands:
        table = tables.get(band)
        if table is not None:
            if not np.array_equal(np.asarray(table["number"]), np.asarray(first["number"])):
                raise JointphotError(f"merge: tile {int(first['tile_id'][0]) if len(first) else '?'}: band {band}'s "
                                     f"catalogue has other sources than band {template}'s (made from another HR fit)")
            flags |= np.asarray(table["flags"], np.int64)
            out.meta["apcorr"][band] = table.meta["apcorr"][band]
            for col in table.colnames:
                if col.startswith(f"{band}_"):
                    out[col] = table[col]
            continue
        off = cv.FLAGS["LR_OFF_IMAGE"]
        flags |= off
        for col in first.colnames:
            if col.startswith(f"{template}_"):
                name = band + col[len(template):]
                out[name] = np.full(len(out), off, np.int32) if col.endswith("_flags") else np.full(len(out), np.nan)
    out["flags"] = flags.astype(np.int32)
    return out


def _join_lr_only_rows(bands: List[str], parts: Dict[str, Table], joined: Table, footprints) -> Table:
    """Rows with the columns of `joined` (the tile's joined HR rows) for the LR-only rows of each band
    ({band: rows}), those of different bands within LR_ONLY_MATCH_ARCSEC taken as one source."""
    sources = []            # [(ra, dec), {band: row}]
    for band in bands:
        for row in parts.get(band, []):
            here = SkyCoord(row["ra"], row["dec"], unit="deg")
            near = [(here.separation(SkyCoord(*pos, unit="deg")).arcsec, rows) for pos, rows in sources
                    if band not in rows]
            near = [(d, rows) for d, rows in near if d < LR_ONLY_MATCH_ARCSEC]
            if near:
                min(near, key=lambda item: item[0])[1][band] = row
            else:
                sources.append(((float(row["ra"]), float(row["dec"])), {band: row}))
    out = blank_rows(joined, len(sources))
    for k, (_, rows) in enumerate(sources):
        first = rows[next(b for b in bands if b in rows)]
        flags = 0
        for name in joined.colnames:
            if not _is_band_column(name, bands) and name != "flags":
                out[name][k] = first[name]
        for band in bands:
            if band in rows:
                for name in rows[band].colnames:
                    if name.startswith(f"{band}_"):
                        out[name][k] = rows[band][name]
                flags |= int(rows[band]["flags"])
            else:
                covered = band in parts and (footprints.get(band) is None
                                             or _inside(first["ra"], first["dec"], footprints[band]))
                missing = cv.FLAGS["LR_NOT_DETECTED"] if covered else cv.FLAGS["LR_OFF_IMAGE"]
                out[f"{band}_flags"][k] = missing
                flags |= missing
        out["flags"][k] = flags
    out["number"] = LR_ONLY_NUMBER_START + np.arange(len(sources))
    return out


def _inside(ra, dec, corners) -> bool:
    """True when (ra, dec) [deg] lies inside the convex quadrilateral of `corners` ([ra, dec] in order),
    on the tangent plane at the point (images are far smaller than a radian)."""
    c = np.asarray(corners, float)
    dx = ((c[:, 0] - ra + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec))
    dy = c[:, 1] - dec
    cross = dx * np.roll(dy, -1) - dy * np.roll(dx, -1)
    return bool(np.all(cross > 0) or np.all(cross < 0))


def _is_band_column(name: str, bands: List[str]) -> bool:
    return any(name.startswith(f"{b}_") for b in bands)


def default_tile_files(plan) -> List[str]:
    """Existing per-band tile catalogues (tNNNN_<band>_fit.fits) under <workdir>/tiles made for this job.

    A file whose fit-lr .done marker names another job (the job or its inputs changed since)
    is skipped with a warning; a file without a marker (copied by hand) is taken.
    """
    from .pipeline import read_marker
    out = []
    for t, band in ((t["tile_id"], b) for t in plan["tiles"] for b in plan["bands"]):
        directory = os.path.join(plan["job"]["workdir"], "tiles", f"{t:04d}")
        path = tile_path(directory, t, band_product(band, "fit"))
        if not os.path.exists(path):
            continue
        marker = read_marker(directory, t, "fit-lr", band)
        if marker is not None and marker.get("job_hash") != plan["job_hash"]:
            log.warning("merge: skipping %s: it was made for another version of the job or its input files "
                        "(re-run tile %d)", path, t)
            continue
        out.append(path)
    return out


#: Extension of a merged catalogue that holds the job and the tools' versions as JSON.
JOB_HDU = "JOB"


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
    bands = list(plan["bands"])
    set_units(merged, bands)
    hdr = fits.Header()
    hdr["JP_VERS"] = (__version__, "jointphot version")
    hdr["JP_NTILE"] = (len(plan["tiles"]), "tiles in the grid")
    hdr["JP_NMISS"] = (len(missing), "tiles missing from this catalogue")
    hdr["JP_MISS"] = (",".join(str(t) for t in missing) or "none", "ids of the missing tiles")
    hdr["JP_ENGV"] = (",".join(sorted(set(engines))) or "none", "fitting engine(s) and version(s)")
    hdr["JP_BAND"] = (",".join(bands), f"LR band names (extension {BANDS_HDU}: one row each)")
    hdr["JP_HRZP"] = (plan["job"]["hr_zp"], "[mag] HR AB zeropoint")
    corrections = merged.meta.pop("apcorr", {})
    hdr.update(apcorr.header_cards("hr", *corrections.get("hr", (apcorr.Correction(), False))))
    missing_bands = merged.meta.pop("missing_bands", {})
    hdr["JP_SEXV"] = (merged.meta.pop("sextractor", "unknown") or "unknown", "SExtractor version(s) of the tiles")
    versions = tool_versions()
    for name, version in versions.items():
        hdr[f"V_{name.upper()[:6]}"] = (version, f"{name} version")
    for tile_id, reason in sorted((failures or {}).items()):
        hdr.add_history(f"tile {tile_id} failed: {reason}"[:70])
    for band, tiles in missing_bands.items():
        if tiles:
            hdr.add_history(f"band {band} missing in tiles {','.join(map(str, tiles))}"[:70])
    hdr["JP_JOBHD"] = (JOB_HDU, "HDU holding the whole job as JSON (jointphot rerun)")
    write_fits_atomic(fits.HDUList([fits.PrimaryHDU(header=hdr), fits.BinTableHDU(merged, header=hdr, name="CATALOG"),
                                    bands_hdu(plan, corrections, missing_bands),
                                    job_hdu(plan["job"], dict(versions, jointphot=__version__,
                                                              engine=hdr["JP_ENGV"], sextractor=hdr["JP_SEXV"]))]),
                      path)
    write_text_atomic(readme_text(merged, bands), os.path.splitext(path)[0] + "_README.txt")


def band_corrections(path) -> Dict[str, tuple]:
    """{band: (apcorr.Correction, applied)} of the LR bands of a merged catalogue (its BANDS extension)."""
    out = {}
    for row in Table.read(path, hdu=BANDS_HDU):
        n = int(row["apcor_nstars"])
        corr = (apcorr.Correction(float(row["apcor"]), float(row["apcor_err"]), n, float(row["apcor_radius"]))
                if n else apcorr.Correction())
        out[str(row["band"])] = (corr, bool(row["apcor_applied"]))
    return out


def bands_hdu(plan, corrections, missing_bands):
    """The BANDS extension: one row per LR band with its zeropoint, pixel scale, aperture correction
    (corrections: {band: (Correction, applied)}) and the tiles without its catalogue."""
    rows = []
    for band in plan["bands"]:
        corr, applied = corrections.get(band, (apcorr.Correction(), False))
        rows.append((band, band_job(plan["job"], band)["lr_zp"], plan["bands"][band]["pixel_scale_arcsec"],
                     corr.value, corr.error if corr.n else -1.0, corr.n,
                     corr.radius if np.isfinite(corr.radius) else 0.0, bool(applied),
                     ",".join(map(str, missing_bands.get(band, []))) or "none"))
    table = Table(rows=rows, names=list(BANDS_COLUMNS), dtype=("U16", float, float, float, float, int, float, bool, "U2000"))
    for name, (unit, desc) in BANDS_COLUMNS.items():
        table[name].unit = unit or None
        table[name].description = desc
    return fits.BinTableHDU(table, name=BANDS_HDU)

