"""QA pictures: what a run did, to look at rather than read.

Per tile, ``<workdir>/qa/tile_NNNN.png``: HR and LR data / model / residual, the detections
marked (one marker per model type, orange: flagged (conventions.is_flagged); dashed box: the tile's core).
For the run, ``<workdir>/qa/summary.png`` and ``summary.html``: the tile map coloured by status
(ok / failed / missing), LR vs HR magnitude, flux error vs magnitude, and per-tile residual
statistics (median and robust sigma of residual / noise); the HTML page adds a table of the
tiles with their numbers, errors and links to the pictures and logs.

The numbers come from plain functions (:func:`tile_statuses`, :func:`residual_statistics`,
:func:`tile_residuals`, :func:`catalogue_summary`) that the pictures only draw.
matplotlib is optional (``pip install 'jointphot[qa]'``); it is imported only here.
"""
from __future__ import annotations

import html
import json
import logging
import os
from typing import Dict, Iterable, List, Optional

import numpy as np
from astropy.io import fits
from astropy.table import Table

from . import conventions as cv
from .errors import JointphotError
from .jobfile import band_names
from .plan import band_plan, band_product, tile_dir, tile_entry, tile_path

log = logging.getLogger("jointphot.qa")

#: |residual / noise| above which a pixel counts as an outlier.
OUTLIER_CHI = 5.0
#: Tile status colours of the tile map.
STATUS_COLOURS = {"ok": "#4daf4a", "failed": "#e41a1c", "missing": "#bdbdbd"}
#: Marker of each model type (catalogue `type`) on the tile pictures.
TYPE_MARKERS = {"psf": "o", "rex": "D", "exp": "s", "dev": "^", "ser": "p", "comp": "h"}
#: Tile pictures' marker colours: unflagged, flagged, LR-only.
MARKER_COLOURS = ("#1b9e77", "#d95f02", "#e7298a")


def require_matplotlib():
    """The matplotlib module, or a JointphotError saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.figure  # noqa: F401  (the Agg canvas is all we need)
    except ImportError as exc:
        raise JointphotError(f"the QA pictures need matplotlib: pip install 'jointphot[qa]' ({exc})") from None
    return matplotlib


# --------------------------------------------------------------------------- numbers
def tile_statuses(plan, tile_ids: Optional[Iterable[int]] = None) -> Dict[int, str]:
    """{tile_id: 'ok' | 'failed' | 'missing'} from the tile directories of this job.

    ok: the tile catalogue of every band (tNNNN_<band>_fit.fits) exists and its last run (tNNNN_status.json, when
    present) succeeded for this job; failed: the last run for this job failed; missing: not run
    (or run for another version of the job).
    """
    from .pipeline import read_marker, status_path
    out = {}
    ids = range(len(plan["tiles"])) if tile_ids is None else tile_ids
    for t in ids:
        directory = tile_dir(plan, t)
        status = None
        try:
            with open(status_path(directory, t)) as fh:
                status = json.load(fh)
        except (OSError, ValueError):
            pass
        if status is not None and status.get("job_hash") not in (None, plan["job_hash"]):
            status = None                     # a run of another job
        markers = [read_marker(directory, t, "fit-lr", b) for b in plan["bands"]]
        current = all(m is None or m.get("job_hash") == plan["job_hash"] for m in markers)
        has_catalogue = current and all(os.path.exists(tile_path(directory, t, band_product(b, "fit")))
                                        for b in plan["bands"])
        if status is not None and not status.get("ok", False):
            out[t] = "failed"
        elif has_catalogue:
            out[t] = "ok"
        else:
            out[t] = "missing"
    return out


def read_status(plan, tile_id: int) -> Dict:
    """The tile's tNNNN_status.json ({} when there is none)."""
    from .pipeline import status_path
    try:
        with open(status_path(tile_dir(plan, tile_id), tile_id)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def residual_statistics(residual, weight, select=None) -> Dict[str, float]:
    """Statistics of chi = residual * sqrt(weight) over pixels with weight > 0 (and `select`).

    residual: data - model [counts]; weight: inverse variance [counts^-2].
    Returns n (pixels), median, sigma (1.4826 x median absolute deviation: 1 for pure noise),
    rms, outlier_frac (|chi| > OUTLIER_CHI); NaN figures when no pixel is usable.
    """
    residual = np.asarray(residual, float)
    weight = np.asarray(weight, float)
    good = np.isfinite(residual) & np.isfinite(weight) & (weight > 0)
    if select is not None:
        good &= np.asarray(select, bool)
    chi = residual[good] * np.sqrt(weight[good])
    if chi.size == 0:
        return {"n": 0, "median": np.nan, "sigma": np.nan, "rms": np.nan, "outlier_frac": np.nan}
    med = float(np.median(chi))
    return {"n": int(chi.size), "median": med, "sigma": float(1.4826 * np.median(np.abs(chi - med))),
            "rms": float(np.sqrt(np.mean(chi ** 2))), "outlier_frac": float(np.mean(np.abs(chi) > OUTLIER_CHI))}


def _read(path, names):
    with fits.open(path, memmap=False) as hdul:
        return [hdul[n].data for n in names], [hdul[n].header.copy() for n in names]


def tile_images(plan, tile_id: int) -> Dict:
    """Arrays of a finished tile: HR and LR image/model/residual and inverse variance (as fitted); LR: the
    band of `plan` (plan.band_plan).

    HR weight: WHT of the cutout times JP_WFAC; LR weight: JP_WFACL / VARIANCE where the LR fit
    used the pixel (its written residual is exactly 0 elsewhere), else 0.
    """
    d = tile_dir(plan, tile_id)
    (himg, hmod, hres), (hh, _, _) = _read(tile_path(d, tile_id, "hr_images"), ("IMAGE", "MODEL", "RESIDUAL"))
    with fits.open(tile_path(d, tile_id, "hr_images")) as hdul:
        wfac = float(hdul[0].header.get("JP_WFAC", 1.0))
    (wht,), _ = _read(tile_path(d, tile_id, "hr_cutout"), ("WHT",))
    band = plan["job"]["lr_band"]
    (limg, lmod, lres), (lh, _, _) = _read(tile_path(d, tile_id, band_product(band, "images")),
                                           ("IMAGE", "MODEL", "RESIDUAL"))
    with fits.open(tile_path(d, tile_id, band_product(band, "images"))) as hdul:
        wfacl = float(hdul[0].header.get("JP_WFACL", 1.0))
    (cimg, mask, var), (_, mask_header, _) = _read(tile_path(d, tile_id, band_product(band, "cutout")),
                                                   ("IMAGE", "MASK", "VARIANCE"))
    (seg,), _ = _read(tile_path(d, tile_id, "hr_detections"), ("SEGMAP",))
    var = np.asarray(var, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        lw = np.where(np.isfinite(var) & (var > 0) & (lres != 0), wfacl / var, 0.0)
        usable = np.isfinite(var) & (var > 0) & np.isfinite(cimg)
    try:   # the LR pixels the fit ignores (mask planes of the job), as fit_lr decides
        from .fit_lr import lr_weights
        usable = lr_weights(np.asarray(cimg, float), np.asarray(mask, np.int64), var, mask_header,
                            plan["job"]["lr_mask_planes"], plan["job"]["lr_large_image_name"])[0] > 0
    except (ImportError, JointphotError, TypeError, ValueError):
        pass
    return {"hr": {"image": himg, "model": hmod, "residual": hres, "weight": np.asarray(wht, float) * wfac,
                   "header": hh, "segmap": seg, "ignored": ~(np.asarray(wht) > 0)},
            "lr": {"image": limg, "model": lmod, "residual": lres, "weight": lw, "header": lh, "ignored": ~usable}}


def tile_residuals(plan, tile_id: int, images: Optional[Dict] = None) -> Dict[str, Dict[str, float]]:
    """Residual statistics of a finished tile: hr, hr_sources (pixels of detected sources), lr,
    lr_sources (pixels where the LR model exceeds the noise)."""
    im = images or tile_images(plan, tile_id)
    hr, lr = im["hr"], im["lr"]
    on_lr_sources = np.asarray(lr["model"], float) * np.sqrt(lr["weight"]) > 1.0
    return {"hr": residual_statistics(hr["residual"], hr["weight"]),
            "hr_sources": residual_statistics(hr["residual"], hr["weight"], np.asarray(hr["segmap"]) > 0),
            "lr": residual_statistics(lr["residual"], lr["weight"]),
            "lr_sources": residual_statistics(lr["residual"], lr["weight"], on_lr_sources)}


def catalogue_summary(table: Table, band: str = "lr") -> Dict[str, float]:
    """Figures of a (merged) catalogue drawn on the summary page.

    n, n_point, n_flagged (conventions.is_flagged), n_lr (finite LR magnitude), median_lr_minus_hr (mag, for
    sources with both magnitudes), hr_mag_range / lr_mag_range ([min, max]), median fractional
    flux errors of HR and LR.
    """
    n = len(table)
    if n == 0:
        return {"n": 0, "n_point": 0, "n_flagged": 0, "n_lr": 0, "median_lr_minus_hr": np.nan,
                "hr_mag_range": [np.nan, np.nan], "lr_mag_range": [np.nan, np.nan],
                "median_hr_frac_err": np.nan, "median_lr_frac_err": np.nan}
    hr = np.asarray(table["hr_mag"], float)
    lr = np.asarray(table[f"{band}_mag"], float)
    both = np.isfinite(hr) & np.isfinite(lr)

    def frac(prefix):
        f = np.asarray(table[f"{prefix}_flux"], float)
        e = np.asarray(table[f"{prefix}_flux_err"], float)
        ok = np.isfinite(f) & np.isfinite(e) & (f > 0)
        return float(np.median(e[ok] / f[ok])) if ok.any() else np.nan

    def rng(m):
        m = m[np.isfinite(m)]
        return [float(m.min()), float(m.max())] if m.size else [np.nan, np.nan]

    return {"n": n, "n_point": int(np.sum(np.asarray(table["type"]).astype(str) == "psf")),
            "n_flagged": int(np.sum(cv.is_flagged(table["flags"]))), "n_lr": int(np.isfinite(lr).sum()),
            "median_lr_minus_hr": float(np.median(lr[both] - hr[both])) if both.any() else np.nan,
            "hr_mag_range": rng(hr), "lr_mag_range": rng(lr),
            "median_hr_frac_err": frac("hr"), "median_lr_frac_err": frac(band)}


def load_catalogue(plan, catalog: Optional[str] = None) -> Table:
    """The catalogue to summarise: `catalog`, else the finished tiles of this job merged in memory."""
    if catalog:
        with fits.open(catalog) as hdul:
            return Table(hdul[1].data)
    from .merge import merge_tables, read_tile_catalogues
    statuses = tile_statuses(plan)
    files = [tile_path(tile_dir(plan, t), t, band_product(b, "fit")) for t, s in statuses.items() if s == "ok"
             for b in plan["bands"]]
    tables = read_tile_catalogues(plan, files)
    return merge_tables(plan, tables) if tables else Table()


# --------------------------------------------------------------------------- pictures
def _stretch_limits(data, weight):
    """(sky, noise, top) for an asinh display of data."""
    d = np.asarray(data, float)
    good = np.isfinite(d) & (np.asarray(weight) > 0)
    vals = d[good] if good.sum() > 10 else d[np.isfinite(d)]
    if vals.size == 0:
        return 0.0, 1.0, 1.0
    sky = float(np.median(vals))
    noise = float(1.4826 * np.median(np.abs(vals - sky))) or float(np.std(vals)) or 1.0
    top = float(np.percentile(vals, 99.7))
    return sky, noise, max(top, sky + 10 * noise)


def _asinh(x, sky, noise, top):
    scale = 3.0 * noise
    x = np.nan_to_num(np.asarray(x, float), nan=sky)
    return np.arcsinh((x - sky) / scale) / np.arcsinh((top - sky) / scale)


def _lr_positions(plan, table, lr_header):
    from astropy.wcs import WCS
    import warnings
    if len(table) == 0:
        return np.zeros(0), np.zeros(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(lr_header).celestial
    ra, dec = cv.reference_to_image(np.asarray(table["ra"], float), np.asarray(table["dec"], float),
                                    plan["astrometry_offsets_mas"]["lr"])
    xy = wcs.all_world2pix(np.column_stack([ra, dec]), 0)
    return xy[:, 0], xy[:, 1]


def draw_tile(plan, tile_id: int, path: str, images: Optional[Dict] = None, stats: Optional[Dict] = None) -> str:
    """tile_NNNN.png: HR and LR data / model / residual with the detections and the core marked."""
    require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Polygon
    from astropy.wcs import WCS
    import warnings

    im = images or tile_images(plan, tile_id)
    stats = stats or tile_residuals(plan, tile_id, im)
    d = tile_dir(plan, tile_id)
    band = plan["job"]["lr_band"]
    with fits.open(tile_path(d, tile_id, band_product(band, "fit"))) as hdul:
        table = Table(hdul["LR_FIT"].data)
    fig = Figure(figsize=(15, 10), dpi=100)
    axes = fig.subplots(2, 3)
    core = tile_entry(plan, tile_id)["core"]
    hh = im["hr"]["header"]
    x0, y0 = hh.get("JP_X0", 0), hh.get("JP_Y0", 0)
    flagged = cv.is_flagged(table["flags"]) if len(table) else np.zeros(0, bool)
    types = np.asarray(table["type"]).astype(str) if len(table) else np.zeros(0, str)
    lr_only = (np.asarray(table["flags"], np.int64) & cv.FLAGS["LR_ONLY"]) != 0 if len(table) else np.zeros(0, bool)
    # marker colour: LR-only sources (lr_residual), else flagged or not
    category = np.where(lr_only, 2, flagged.astype(int))
    lx, ly = _lr_positions(plan, table, im["lr"]["header"])
    hx = np.asarray(table["x"], float) if len(table) else np.zeros(0)
    hy = np.asarray(table["y"], float) if len(table) else np.zeros(0)
    # the core, in each cutout's pixels
    hr_core = np.array([[core[0] - x0, core[2] - y0], [core[1] - x0, core[2] - y0],
                        [core[1] - x0, core[3] - y0], [core[0] - x0, core[3] - y0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hw, lw = WCS(hh).celestial, WCS(im["lr"]["header"]).celestial
    lr_core = lw.all_world2pix(hw.all_pix2world(hr_core, 0), 0)
    for row, band_name, key, xs, ys, core_xy in ((0, "HR", "hr", hx, hy, hr_core),
                                                 (1, f"LR ({band})", "lr", lx, ly, lr_core)):
        b = im[key]
        sky, noise, top = _stretch_limits(b["image"], b["weight"])
        resid_noise = (1.0 / np.sqrt(np.median(b["weight"][b["weight"] > 0]))
                       if np.any(b["weight"] > 0) else noise)
        panels = (("data", _asinh(b["image"], sky, noise, top), "gray_r", (-0.05, 1.0)),
                  ("model", _asinh(b["model"], 0.0, noise, top - sky), "gray_r", (-0.05, 1.0)),
                  ("residual", np.asarray(b["residual"], float) / resid_noise, "RdBu_r", (-5, 5)))
        s = stats[key]
        for col, (name, arr, cmap, (vmin, vmax)) in enumerate(panels):
            ax = axes[row, col]
            shown = ax.imshow(arr, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            if name == "data" and np.any(b["ignored"]):
                overlay = np.zeros(np.shape(arr) + (4,))
                overlay[b["ignored"]] = (1.0, 0.75, 0.0, 0.6)
                ax.imshow(overlay, origin="lower", interpolation="nearest")
            ax.add_patch(Polygon(core_xy, closed=True, fill=False, ls="--", lw=1.0, ec="#7570b3"))
            if len(xs):
                for kind, marker in TYPE_MARKERS.items():
                    for cat, colour in enumerate(MARKER_COLOURS):
                        m = (types == kind) & (category == cat)
                        if m.any():
                            ax.scatter(xs[m], ys[m], s=90, marker=marker, facecolors="none", edgecolors=colour,
                                       linewidths=1.0)
                if name == "data":
                    ax.legend(handles=[Line2D([], [], ls="", marker=mk, mfc="none", mec=MARKER_COLOURS[0], label=k)
                                       for k, mk in TYPE_MARKERS.items()]
                              + [Line2D([], [], ls="", marker="o", mfc="none", mec=MARKER_COLOURS[1], label="flagged"),
                                 Line2D([], [], ls="", marker="o", mfc="none", mec=MARKER_COLOURS[2], label="LR-only")],
                              loc="upper right", fontsize=7, ncol=3, framealpha=0.6)
            ny, nx = np.shape(arr)
            ax.set_xlim(-0.5, nx - 0.5)
            ax.set_ylim(-0.5, ny - 0.5)
            if name == "residual":
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="residual / noise")
                title = (f"{band_name} residual: chi median {s['median']:.2f}, sigma {s['sigma']:.2f}"
                         if s["n"] else f"{band_name} residual (no usable pixels)")
            else:
                title = f"{band_name} {name}"
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(f"x [{key.upper()} cutout px]", fontsize=8)
            ax.set_ylabel(f"y [{key.upper()} cutout px]", fontsize=8)
            ax.tick_params(labelsize=7)
    status = read_status(plan, tile_id)
    in_core = int(np.sum(np.asarray(table["in_core"]))) if len(table) else 0
    by_type = ", ".join(f"{int(np.sum(types == k))} {k}" for k in TYPE_MARKERS)
    fig.suptitle(f"tile {tile_id}: {len(table)} sources fitted, {in_core} in its core ({by_type}; "
                 f"{int(flagged.sum())} flagged)"
                 + (f", {status['seconds']:.0f} s" if status else "")
                 + "\nmarkers: model type (legend); green: unflagged; orange: flagged (informational flags "
                   "aside); magenta: LR-only; dashed: the tile's core; yellow: ignored pixels", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    _save(fig, path)
    return path


def _save(fig, path):
    """Save a figure atomically (temporary name, then rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


#: Colours of the LR bands on the summary picture, in job order.
BAND_COLOURS = ("#984ea3", "#e41a1c", "#377eb8", "#ff7f00", "#a65628", "#f781bf", "#17becf")


def draw_summary(plan, path: str, statuses: Dict[int, str], table: Table, residuals: Dict[int, Dict]) -> str:
    """summary.png: tile map by status, each LR band's colour (band - HR) against HR magnitude, flux error
    against magnitude (HR and every band), residual statistics per tile (HR and every band)."""
    require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    fig = Figure(figsize=(14, 11.5), dpi=100)
    (ax_map, ax_mag), (ax_err, ax_res) = fig.subplots(2, 2)
    scale = plan["hr"]["pixel_scale_arcsec"]
    # tile map: arcsec from the HR image's lower-left corner
    counts = {}
    if len(table):
        for t in np.asarray(table["tile_id"]):
            counts[int(t)] = counts.get(int(t), 0) + 1
    for t in plan["tiles"]:
        c = t["core"]
        status = statuses.get(t["tile_id"], "missing")
        ax_map.add_patch(Rectangle(((c[0] + 0.5) * scale, (c[2] + 0.5) * scale), (c[1] - c[0]) * scale,
                                   (c[3] - c[2]) * scale, fc=STATUS_COLOURS[status], ec="k", lw=0.8, alpha=0.55))
        label = f"{t['tile_id']}\n{counts.get(t['tile_id'], 0)} src" if status == "ok" else f"{t['tile_id']}\n{status}"
        ax_map.text((0.5 * (c[0] + c[1]) + 0.5) * scale, (0.5 * (c[2] + c[3]) + 0.5) * scale, label,
                    ha="center", va="center", fontsize=8 if len(plan["tiles"]) <= 100 else 5)
    if len(table):
        ax_map.scatter((np.asarray(table["x_large"]) + 0.5) * scale, (np.asarray(table["y_large"]) + 0.5) * scale,
                       s=2, c="k", lw=0)
    ny, nx = plan["hr"]["shape"]
    ax_map.set_xlim(0, nx * scale)
    ax_map.set_ylim(0, ny * scale)
    ax_map.set_aspect("equal")
    ax_map.set_xlabel("HR x [arcsec]")
    ax_map.set_ylabel("HR y [arcsec]")
    n_status = {s: sum(1 for v in statuses.values() if v == s) for s in STATUS_COLOURS}
    ax_map.set_title(f"tiles: {n_status['ok']} ok, {n_status['failed']} failed, {n_status['missing']} missing")
    ax_map.legend(handles=[Patch(fc=c, ec="k", alpha=0.55, label=s) for s, c in STATUS_COLOURS.items()],
                  loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8)

    bands = band_names(plan["job"])
    band_colours = dict(zip(bands, BAND_COLOURS * (len(bands) // len(BAND_COLOURS) + 1)))
    summaries = {b: catalogue_summary(table, b) for b in bands}
    if len(table):
        hr = np.asarray(table["hr_mag"], float)
        point = np.asarray(table["type"]).astype(str) == "psf"
        flagged = cv.is_flagged(table["flags"])
        for b in bands:
            colour = np.asarray(table[f"{b}_mag"], float) - hr
            for sel, marker, kind in ((point & ~flagged, "o", "point"), (~point & ~flagged, "^", "galaxy")):
                ax_mag.scatter(hr[sel], colour[sel], s=10, c=band_colours[b], marker=marker, lw=0, alpha=0.7,
                               label=f"{b} {kind} ({int(np.sum(sel & np.isfinite(colour)))})")
            if np.isfinite(summaries[b]["median_lr_minus_hr"]):
                ax_mag.axhline(summaries[b]["median_lr_minus_hr"], c=band_colours[b], ls=":", lw=1.0,
                               label=f"median {b} - HR {summaries[b]['median_lr_minus_hr']:+.2f}")
            ax_mag.scatter(hr[flagged], colour[flagged], s=6, c="#999999", lw=0, alpha=0.6)
        colours = np.concatenate([np.asarray(table[f"{b}_mag"], float) - hr for b in bands])
        colours = colours[np.isfinite(colours)]
        if not colours.size:
            ax_mag.text(0.5, 0.5, "no source has an LR magnitude", transform=ax_mag.transAxes, ha="center",
                        va="center")
        else:
            lo, hi = np.percentile(colours, [1, 99])
            ax_mag.set_ylim(lo - 0.5, hi + 0.5)     # the few faint outliers would squash the rest
            ax_mag.legend(fontsize=7, ncol=2)
        for prefix, colour, name in [("hr", "#4daf4a", "HR")] + [(b, band_colours[b], b) for b in bands]:
            m = np.asarray(table[f"{prefix}_mag"], float)
            e = np.asarray(table[f"{prefix}_flux_ujy_err"], float)
            ok = np.isfinite(m) & np.isfinite(e) & (e > 0)
            for sel, marker, kind in ((point, "o", "point"), (~point, "^", "galaxy")):
                ax_err.scatter(m[ok & sel], e[ok & sel], s=12, c=colour, marker=marker, lw=0, alpha=0.7,
                               label=f"{name} {kind} ({int(np.sum(ok & sel))})")
        if ax_err.collections:
            ax_err.set_yscale("log")
            ax_err.legend(fontsize=7, ncol=2)
    else:
        for ax in (ax_mag, ax_err):
            ax.text(0.5, 0.5, "no sources", transform=ax.transAxes, ha="center", va="center")
    ax_mag.set_xlabel("HR magnitude [AB]")
    ax_mag.set_ylabel("LR band - HR [mag] (flagged: grey)")
    ax_mag.set_title(f"{len(table)} sources; with a magnitude: "
                     + ", ".join(f"{b} {v['n_lr']}" for b, v in summaries.items()))
    ax_err.set_xlabel("magnitude [AB]")
    ax_err.set_ylabel("flux error [uJy]")
    ax_err.set_title("flux error vs magnitude")

    ids = sorted(residuals)
    if ids:
        keys = [("hr", "#4daf4a", "HR")] + [(b, band_colours[b], b) for b in bands]
        for k, (key, colour, name) in enumerate(keys):
            dx = 0.6 * (k / max(len(keys) - 1, 1) - 0.5)
            sig = np.array([residuals[t].get(key, {}).get("sigma", np.nan) for t in ids])
            med = np.array([residuals[t].get(key, {}).get("median", np.nan) for t in ids])
            src = np.array([residuals[t].get(f"{key}_sources", {}).get("sigma", np.nan) for t in ids])
            x = np.array(ids, float) + dx
            ax_res.plot(x, sig, "o", c=colour, ms=5, label=f"{name} sigma, all pixels")
            ax_res.plot(x, src, "^", c=colour, ms=5, mfc="none", label=f"{name} sigma, source pixels")
            ax_res.plot(x, med, "x", c=colour, ms=5, label=f"{name} median")
        ax_res.axhline(1.0, c="k", ls="--", lw=0.8)
        ax_res.axhline(0.0, c="k", ls=":", lw=0.8)
        ax_res.legend(fontsize=7, ncol=2)
        if len(ids) <= 40:
            ax_res.set_xticks(ids)
        ax_res.set_xlim(min(ids) - 0.6, max(ids) + 0.6)
    else:
        ax_res.text(0.5, 0.5, "no finished tile", transform=ax_res.transAxes, ha="center", va="center")
    ax_res.set_xlabel("tile")
    ax_res.set_ylabel("residual / noise")
    ax_res.set_title("residual statistics per tile (pure noise: sigma 1, median 0)")
    fig.suptitle(f"jointphot run summary: {plan['job_file']}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    _save(fig, path)
    return path


def write_html(plan, path: str, statuses: Dict[int, str], residuals: Dict[int, Dict], tile_pngs: Dict[int, str],
               summaries: Dict[str, Dict]) -> str:
    """summary.html: the summary picture and a table of the tiles (status, numbers, residual statistics of
    HR and each LR band, errors, links); `summaries`: {band: catalogue_summary}."""
    from .images import write_text_atomic
    directory = os.path.dirname(os.path.abspath(path))

    def rel(p):
        return html.escape(os.path.relpath(p, directory))

    def num(v, fmt="{:.2f}"):
        return "" if v is None or not np.isfinite(v) else fmt.format(v)

    rows = []
    for t in range(len(plan["tiles"])):
        if t not in statuses:
            continue
        st = read_status(plan, t)
        res = residuals.get(t, {})
        bands_cells = "".join(f'<td>{num(res.get(b, {}).get("median"))}</td><td>{num(res.get(b, {}).get("sigma"))}</td>'
                              for b in summaries)
        log_path = os.path.join(tile_dir(plan, t), f"t{t:04d}.log")
        picture = f'<a href="{rel(tile_pngs[t])}">picture</a>' if t in tile_pngs else ""
        log_link = f'<a href="{rel(log_path)}">log</a>' if os.path.exists(log_path) else ""
        rows.append(
            f'<tr class="{statuses[t]}"><td>{t}</td><td>{statuses[t]}</td><td>{st.get("n_sources", "") if statuses[t] == "ok" else ""}</td>'
            f'<td>{num(res.get("hr", {}).get("median"))}</td><td>{num(res.get("hr", {}).get("sigma"))}</td>{bands_cells}'
            f'<td>{num(st.get("seconds"), "{:.1f}")}</td>'
            f'<td>{picture} {log_link}</td><td>{html.escape(st.get("error", "") or "")}</td></tr>')
    n = {s: sum(1 for v in statuses.values() if v == s) for s in STATUS_COLOURS}
    summary = next(iter(summaries.values()))
    per_band = "; ".join(f"{html.escape(b)}: {v['n_lr']} with a magnitude, median {html.escape(b)} - HR "
                         f"{num(v['median_lr_minus_hr'], '{:+.3f}')}" for b, v in summaries.items())
    band_heads = "".join(f"<th>{html.escape(b)} chi median</th><th>{html.escape(b)} chi sigma</th>" for b in summaries)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>jointphot QA</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 90%; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
td:last-child {{ text-align: left; }}
tr.ok td:nth-child(2) {{ background: {STATUS_COLOURS['ok']}55; }}
tr.failed td:nth-child(2) {{ background: {STATUS_COLOURS['failed']}77; }}
tr.missing td:nth-child(2) {{ background: {STATUS_COLOURS['missing']}; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>jointphot QA</h1>
<p>Job: {html.escape(plan['job_file'])}<br>
Tiles: {n['ok']} ok, {n['failed']} failed, {n['missing']} missing (of {len(statuses)});
sources: {summary['n']} ({summary['n_point']} point, {summary['n_flagged']} flagged, {summary['n_lr']} with an LR
magnitude in the first band); LR bands: {per_band}.</p>
<p><img src="{rel(os.path.join(directory, 'summary.png'))}" alt="summary"></p>
<h2>Tiles</h2>
<p>chi = residual / noise over the fitted pixels: median and robust sigma (1.4826 MAD); pure noise gives 0 and 1.</p>
<table><tr><th>tile</th><th>status</th><th>sources</th><th>HR chi median</th><th>HR chi sigma</th>
{band_heads}<th>seconds</th><th>files</th><th>error</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    write_text_atomic(page, path)
    return path


def _qa_tile(plan, tile_id: int, png: str, draw: bool, force: bool):
    """(tile_id, residual statistics or None, png or None, warning) of one finished tile.  Statistics:
    tile_residuals' hr and hr_sources, and per LR band <band> and <band>_sources; the picture shows the
    first band."""
    d = tile_dir(plan, tile_id)
    bands = band_names(plan["job"])
    try:
        images = {b: tile_images(band_plan(plan, b), tile_id) for b in bands}
    except (OSError, KeyError, ValueError) as exc:
        return tile_id, None, None, f"tile {tile_id}: no QA numbers: its products cannot be read ({exc})"
    stats = {}
    for b in bands:
        res = tile_residuals(band_plan(plan, b), tile_id, images[b])
        stats.update(hr=res["hr"], hr_sources=res["hr_sources"], **{b: res["lr"], f"{b}_sources": res["lr_sources"]})
    if not draw:
        return tile_id, stats, None, ""
    first = band_plan(plan, bands[0])
    newest = max(os.path.getmtime(tile_path(d, tile_id, p))
                 for p in (band_product(bands[0], "fit"), band_product(bands[0], "images"), "hr_images"))
    if force or not os.path.exists(png) or os.path.getmtime(png) < newest:
        draw_tile(first, tile_id, png, images[bands[0]], tile_residuals(first, tile_id, images[bands[0]]))
    return tile_id, stats, png, ""


def make_qa(plan, outdir: Optional[str] = None, tile_ids: Optional[List[int]] = None, force: bool = False,
            catalog: Optional[str] = None, jobs: int = 1) -> Dict:
    """Draw every QA picture of a run; returns {'tiles': {id: png}, 'summary': png, 'html': html,
    'statuses': {...}, 'residuals': {...}}.

    Tile pictures (of `tile_ids`, default all finished tiles) newer than their tile's products
    are kept unless `force`; `jobs` tiles are drawn at a time.  The summary uses `catalog` when
    given, else the finished tiles of this job merged in memory.
    """
    require_matplotlib()
    outdir = outdir or os.path.join(plan["job"]["workdir"], "qa")
    os.makedirs(outdir, exist_ok=True)
    statuses = tile_statuses(plan)
    table = load_catalogue(plan, catalog)
    wanted = set(statuses) if tile_ids is None else set(tile_ids)
    todo = [(t, os.path.join(outdir, f"tile_{t:04d}.png"), t in wanted) for t in sorted(statuses)
            if statuses[t] == "ok"]
    if jobs > 1 and len(todo) > 1:
        import concurrent.futures
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
            done = list(pool.map(_qa_tile, *zip(*[(plan, t, png, draw, force) for t, png, draw in todo])))
    else:
        done = [_qa_tile(plan, t, png, draw, force) for t, png, draw in todo]
    pngs, residuals = {}, {}
    for t, stats, png, warning in done:
        if warning:
            log.warning("%s", warning)
        if stats is not None:
            residuals[t] = stats
        if png is not None:
            pngs[t] = png
    summary_png = draw_summary(plan, os.path.join(outdir, "summary.png"), statuses, table, residuals)
    page = write_html(plan, os.path.join(outdir, "summary.html"), statuses, residuals, pngs,
                      {b: catalogue_summary(table, b) for b in band_names(plan["job"])})
    return {"tiles": pngs, "summary": summary_png, "html": page, "statuses": statuses, "residuals": residuals}
