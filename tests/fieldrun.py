"""Simulated fields run end to end for the per-bin figures (scripts/validate, tests/test_statistics.py).

Each field is `jointphot simulate DIR/seedN --seed N` with FIELD_OPTIONS and the caller's options, then
`jointphot run job.json --tiles all` there (the real CLI, the real SExtractor); the figures are those
of truthcheck.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from astropy.io import fits
from astropy.table import Table, vstack

import truthcheck
from jointphot.tiling import tile_from_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: A field with >= ~50 isolated sources per (type, S/N bin) per seed: 90" (9 tiles), 45 % stars,
#: magnitudes that fill the S/N bins 20-50, 50-200, > 200.
FIELD_OPTIONS = ["--size-arcsec", "90", "--star-fraction", "0.45", "--star-mags", "21.5,26", "--galaxy-mags", "20,25.5"]


def jointphot(args, cwd, timeout=None):
    """Run `jointphot ARGS` in `cwd`; returns (exit status or None if stopped at the timeout, seconds)."""
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "jointphot.cli", *args], cwd=cwd, start_new_session=True)
    try:
        status = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        status = None
    return status, time.time() - start


def detection_catalogue(workdir, tiles):
    """The tiles' SExtractor detections in their cores, as a catalogue with ra, dec, hr_flux(_err), tile_id."""
    rows = []
    for tile in tiles:
        path = os.path.join(workdir, "tiles", f"{tile.tile_id:04d}", f"t{tile.tile_id:04d}_hr_detections.fits")
        if not os.path.exists(path):
            continue
        det = fits.getdata(path, "CATALOG")
        x = det["X_IMAGE"] - 1.0 + tile.padded[0]
        y = det["Y_IMAGE"] - 1.0 + tile.padded[2]
        core = tile.owns(x, y)
        rows.append(Table({"ra": det["ALPHA_J2000"][core], "dec": det["DELTA_J2000"][core],
                           "hr_flux": det["FLUX_AUTO"][core], "hr_flux_err": det["FLUXERR_AUTO"][core],
                           "tile_id": np.full(int(core.sum()), tile.tile_id)}))
    return vstack(rows) if rows else Table(names=["ra", "dec", "hr_flux", "hr_flux_err", "tile_id"])


def area_arcmin2(path):
    """Sky area of an image (arcmin^2) from its NAXIS and CD matrix."""
    h = fits.getheader(path)
    return h["NAXIS1"] * h["NAXIS2"] * abs(h["CD1_1"] * h["CD2_2"] - h["CD1_2"] * h["CD2_1"]) * 3600.0 ** 2 / 3600.0


def flux_table(rows):
    """The per-type, per-bin figures of flux rows (truthcheck.binned_flux_figures) as a text table."""
    lines = [f"  {'type':6s} {'HR S/N':8s} | {'N':>4s} {'HR bias':>8s} {'med chi':>8s} {'sig chi':>8s} | "
             f"{'N':>4s} {'LR bias':>8s} {'med chi':>8s} {'sig chi':>8s} | colour {'med chi':>8s} {'sig chi':>8s} | "
             f"HR chi - ideal (N)"]
    for kind, (lo, hi), f in truthcheck.binned_flux_figures(rows):
        label = f"{lo:.0f}-{hi:.0f}" if np.isfinite(hi) else f">{lo:.0f}"
        (nh, bh, mh, sh), (nl, bl, ml, sl), (_, mc, sc), (npair, paired) = f["hr"], f["lr"], f["colour"], f["hr_paired"]
        lines.append(f"  {kind:6s} {label:8s} | {nh:4d} {bh:+8.3f} {mh:+8.2f} {sh:8.2f} | "
                     f"{nl:4d} {bl:+8.3f} {ml:+8.2f} {sl:8.2f} |        {mc:+8.2f} {sc:8.2f} | "
                     + (f"{paired:+.3f} ({npair})" if npair else "-"))
    return "\n".join(lines)


def run_field(seed, directory, options, *, engine=None, job=None, jobs=2, timeout=None, reuse=False):
    """Simulate seed `seed` into DIRECTORY/seedN (`jointphot simulate` with FIELD_OPTIONS + `options`, later
    ones win), change the job keys `job`, run it; returns (flux rows or None, detection figures dict).
    reuse: keep a catalogue made with the same settings.  A run stopped at `timeout` [s] gives detection
    figures from the tiles' SExtractor catalogues only (rows None)."""
    outdir = os.path.join(directory, f"seed{seed}")
    catalogue = os.path.join(outdir, "catalog.fits")
    stamp = os.path.join(outdir, "validate.json")
    options = FIELD_OPTIONS + list(options)
    settings = {"seed": seed, "options": options, "engine": engine, "job": job or {}}
    if not (reuse and os.path.exists(catalogue) and os.path.exists(stamp) and json.load(open(stamp)) == settings):
        status, seconds = jointphot(["simulate", outdir, "--seed", str(seed), *options], REPO)
        if status != 0:
            raise RuntimeError(f"`jointphot simulate` failed for seed {seed}")
        job_path = os.path.join(outdir, "job.json")
        changed = dict(json.load(open(job_path)), **settings["job"])
        json.dump(changed, open(job_path, "w"), indent=1)
        run = ["-q", "run", "job.json", "--tiles", "all", "--jobs", str(jobs), "-o", "catalog.fits", "--no-qa",
               "--force"]
        status, seconds = jointphot(run + (["--engine", engine] if engine else []), outdir, timeout)
        if status is None:
            print(f"seed {seed}: run stopped after {seconds:.0f} s (timeout): detection figures from the "
                  f"SExtractor catalogues only")
            if os.path.exists(catalogue):
                os.remove(catalogue)
        else:
            print(f"seed {seed}: run took {seconds:.0f} s, exit status {status}")
            json.dump(settings, open(stamp, "w"))
    truth, _ = truthcheck.load(os.path.join(outdir, "truth.fits"))
    truth["hr_chi_ideal"] = truthcheck.ideal_point_chi(outdir, truth)
    tiles = [tile_from_dict(d) for d in json.load(open(os.path.join(outdir, "work", "plan.json")))["tiles"]]
    if os.path.exists(catalogue):
        cat, header = truthcheck.load(catalogue)
        rows, source = truthcheck.flux_rows(cat, truth), f"catalogue ({header.get('JP_ENGV', '?')})"
    else:
        cat, rows, source = detection_catalogue(os.path.join(outdir, "work"), tiles), None, "SExtractor detections"
    area = area_arcmin2(os.path.join(outdir, "hr.fits"))
    n_spurious, density = truthcheck.spurious_per_arcmin2(cat, truth, area)
    return rows, {"source": source, "area": area, "n_spurious": n_spurious, "density": density,
                  "tiles": truthcheck.detections_per_tile(cat, truth, tiles)}
