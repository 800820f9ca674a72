"""The `jointphot` command line: one subcommand per pipeline step, plus `run` and `simulate`.

JOB is a job file (the original tool's JSON format, optionally with jointphot's own keys;
see `jointphot job-keys`) or a plan.json written by `jointphot plan`.
"""
from __future__ import annotations

import logging
import os
import sys

import click

from . import __version__
from .errors import Interrupted, JointphotError

ENGINE_OPTION = click.option("--engine", type=click.Choice(["auto", "native", "tractor"]), default=None,
                             help="Fitting engine (default: the job's `engine` key, native by default; auto = the "
                                  "Tractor when it imports, else native).")


class _Group(click.Group):
    """Turns JointphotError (and OS errors such as a full disk) into one line on stderr and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except JointphotError as exc:
            click.echo(f"jointphot: error: {exc}", err=True)
            sys.exit(1)
        except OSError as exc:   # e.g. no space left, permission denied, read-only file system
            where = f": {exc.filename!r}" if exc.filename else ""
            click.echo(f"jointphot: error: {exc.strerror or exc}{where}", err=True)
            sys.exit(1)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    from .logs import setup_console_logging
    setup_console_logging(verbose, quiet)


def _verbosity_options(func):
    """-v/--verbose and -q/--quiet after the subcommand too (`jointphot run JOB --quiet`)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, verbose_sub=False, quiet_sub=False, **kwargs):
        if verbose_sub or quiet_sub:
            ctx = click.get_current_context().find_root()
            ctx.obj = ctx.obj or {}
            verbose = verbose_sub or ctx.obj.get("verbose", False)
            quiet = (quiet_sub or ctx.obj.get("quiet", False)) and not verbose
            ctx.obj.update(verbose=verbose, quiet=quiet)
            _setup_logging(verbose, quiet)
        return func(*args, **kwargs)

    wrapper = click.option("-q", "--quiet", "quiet_sub", is_flag=True,
                           help="Warnings and errors only: no progress, no summary.")(wrapper)
    wrapper = click.option("-v", "--verbose", "verbose_sub", is_flag=True,
                           help="Every message, with tracebacks.")(wrapper)
    return wrapper


def _echo(message: str) -> None:
    """A result line on stdout (not with --quiet)."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    if not (root and root.obj and root.obj.get("quiet")):
        click.echo(message)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jointphot")
@click.option("-v", "--verbose", is_flag=True, help="Every message, with tracebacks (per-tile logs always have them).")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only: no progress, no summary.")
@click.pass_context
def main(ctx, verbose, quiet):
    """Joint prior-based photometry of a high-resolution (HR) and a low-resolution (LR) image.

    Fluxes are in image counts (mag = zp - 2.5 log10 flux) and in microjansky; positions in
    degrees in the reference frame of the astrometric offset files.
    """
    ctx.obj = {"verbose": verbose, "quiet": quiet and not verbose}
    _setup_logging(verbose, quiet)


def _load(job):
    from . import plan as plan_mod
    return plan_mod.load(job)


def _engine(plan, engine):
    return engine or plan["job"]["engine"]


def _tile_step(step):
    """A click command running `step` for one tile (fit-lr: for one band or all)."""
    def command(job, tile, directory, engine=None, band=None):
        from . import plan as plan_mod
        from .pipeline import run_step
        plan = _load(job)
        plan_mod.get_tile(plan, tile)
        run_step(step, plan, tile, directory or plan_mod.tile_dir(plan, tile), _engine(plan, engine), band)
    return command


_TILE_ARGS = [click.argument("job", type=click.Path(dir_okay=False)),
              click.option("--tile", type=int, required=True, help="Tile id (row-major from 0; see plan.json)."),
              click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
                           help="Tile directory holding the step's inputs and outputs "
                                "(default <workdir>/tiles/NNNN).")]


def _with_tile_args(func, engine=False):
    func = _verbosity_options(func)
    for deco in reversed(_TILE_ARGS + ([ENGINE_OPTION] if engine else [])):
        func = deco(func)
    return func


@main.command("plan")
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Plan file to write (default <workdir>/plan.json).")
@click.option("--parts", type=click.Path(file_okay=False), default=None,
              help="Also write the part plans into this directory: hr.json and <band>.json, each the plan as the "
                   "steps of that part see it and the input files they read (what the pipeline gives each task).")
@click.option("--as-given", type=click.Path(dir_okay=False), default=None,
              help="The job file as the user gave it, when JOB is that job naming staged copies of its input files "
                   "(a pipeline task): the plan records the paths as given.")
@_verbosity_options
def plan_command(job, output, parts, as_given):
    """Check the inputs and lay out the tile grid; write plan.json.

    The plan holds the resolved job (absolute paths, defaults filled) and, per tile, its
    core (owned region) and padded (cut-out) region in 0-based HR pixels of the large image.
    """
    from . import plan as plan_mod
    from .jobfile import read_json
    plan = _load(job)
    if as_given:
        plan = plan_mod.with_input_paths(plan, plan_mod.staged_paths(read_json(job), read_json(as_given), as_given),
                                         os.path.dirname(os.path.abspath(job)))
    output = output or os.path.join(plan["job"]["workdir"], "plan.json")
    plan_mod.write_plan(plan, output)
    if parts:
        plan_mod.write_parts(plan, parts)
    g = plan["grid"]
    _echo(f"{len(plan['tiles'])} tiles ({g['nx']} x {g['ny']}) -> {output}")


main.command("cutout")(click.option("--band", default=None, help="Cut this LR band only (default: the HR image and "
                                                                  "every band).")(_with_tile_args(_tile_step("cutout"))))
main.commands["cutout"].help = ("Cut one tile out of the large images: tNNNN_hr_cutout.fits (SCI, WHT = inverse "
                                "variance [count^-2]) and per LR band tNNNN_<band>_cutout.fits (IMAGE, MASK, VARIANCE).")
main.command("detect")(_with_tile_args(_tile_step("detect")))
main.commands["detect"].help = ("Run SExtractor on the tile's HR cutout: tNNNN_hr_detections.fits "
                                "(CATALOG table, SEGMAP image).")
main.command("fit-hr")(_with_tile_args(_tile_step("fit-hr"), engine=True))
main.commands["fit-hr"].help = ("Fit point-source / Sersic models to the HR cutout: tNNNN_hr_fit.fits (fluxes in HR "
                                "counts, sizes in pixels and arcsec) and tNNNN_hr_images.fits (IMAGE, MODEL, RESIDUAL).")
main.command("fit-lr")(click.option("--band", default=None, help="LR band to fit (default: every band of the job).")(
    _with_tile_args(_tile_step("fit-lr"), engine=True)))
main.commands["fit-lr"].help = ("Forced photometry of each LR band with the HR models: tNNNN_<band>_fit.fits (the "
                                "tile's catalogue with the band's columns, fluxes in counts and uJy) and "
                                "tNNNN_<band>_images.fits.")


@main.command("merge")
@click.argument("job", type=click.Path(dir_okay=False))
@click.argument("tile_files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Catalogue to write (default <workdir>/catalog.fits).")
@click.option("--missing-tiles", default="", help="Comma list of tiles known to have failed (recorded in the header).")
@_verbosity_options
def merge_command(job, tile_files, output, missing_tiles):
    """Merge per-tile band catalogues (tNNNN_<band>_fit.fits) into one catalogue; overlaps kept once."""
    from .merge import default_tile_files, merge_tables, read_tile_catalogues, write_catalogue
    plan = _load(job)
    files = list(tile_files) or default_tile_files(plan)
    if not files:
        raise JointphotError(f"merge: no tile catalogues (tNNNN_<band>_fit.fits) of this job under "
                             f"{os.path.join(plan['job']['workdir'], 'tiles')!r}: run the tiles first")
    tables = read_tile_catalogues(plan, files)
    try:
        declared = {int(t) for t in missing_tiles.split(",") if t.strip()}
    except ValueError:
        raise JointphotError(f"--missing-tiles: {missing_tiles!r} is not a comma-separated list of tile ids") from None
    missing = sorted(declared | (set(range(len(plan["tiles"]))) - set(tables)))
    merged = merge_tables(plan, tables)
    output = output or os.path.join(plan["job"]["workdir"], "catalog.fits")
    write_catalogue(plan, merged, output, missing, [t.meta.get("engine", "") for t in tables.values()])
    _echo(f"{len(merged)} sources from {len(tables)} tiles -> {output}" +
          (f" (missing tiles: {','.join(map(str, missing))})" if missing else ""))


def _tile_ids(plan, tiles):
    """Tile ids of `run --tiles` (or of the job's tile_id key); errors name where the bad id came from."""
    from . import plan as plan_mod
    n = len(plan["tiles"])
    if tiles is None:
        tile_id = plan["job"]["tile_id"]
        if tile_id is None:
            return list(range(n))
        if not 0 <= tile_id < n:
            raise JointphotError(f"job key tile_id: tile {tile_id} does not exist: the grid has {n} tile"
                                 f"{'s' if n != 1 else ''} (0..{n - 1}); see `jointphot plan`, or use --tiles all")
        return [tile_id]
    try:
        return plan_mod.parse_tiles(tiles, n)
    except JointphotError as exc:
        raise JointphotError(f"--tiles: {exc}") from None


@main.command("select-tiles")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--tiles", default="all", show_default=True, help="'all', one id, or a comma list of ids and ranges, "
                                                               "e.g. 0,2,5-7.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="JSON list of tile ids to write.")
@_verbosity_options
def select_tiles_command(plan_file, tiles, output):
    """Write the ids of the plan's tiles that --tiles selects (the pipeline's fan-out; `run --tiles` reads the same)."""
    import json
    from . import plan as plan_mod
    from .images import write_text_atomic
    from .jobfile import read_json
    n = len(read_json(plan_file)["tiles"])
    try:
        ids = plan_mod.parse_tiles(tiles, n)
    except JointphotError as exc:
        raise JointphotError(f"--tiles: {exc}") from None
    write_text_atomic(json.dumps(ids) + "\n", output)


@main.command("run")
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--tiles", default=None, help="'all', one id, or a comma list of ids and ranges, e.g. 0,2,5-7 "
                                            "(default: the job's tile_id, else all).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Tiles run in parallel (default: the job's ncores, else 1).")
@ENGINE_OPTION
@click.option("--force", is_flag=True, help="Re-run steps whose outputs exist for this job.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Catalogue to write (default <workdir>/catalog.fits).")
@click.option("--no-qa", is_flag=True, help="Do not draw the QA pictures (<workdir>/qa).")
@_verbosity_options
def run_command(job, tiles, jobs, engine, force, output, no_qa):
    """Run the whole chain (cutout, detect, fit-hr, fit-lr) for tiles, then merge, then draw QA pictures.

    Finished steps are re-used when the job is unchanged, so an interrupted run continues
    where it stopped.  Progress: one line per tile on stderr; every tile logs to
    <workdir>/tiles/NNNN/tNNNN.log, the run to <workdir>/run.log.  Exit status 1 when any
    tile failed (the others are still merged, the missing tiles named in the catalogue
    header); 128 + signal number when interrupted (finished tiles are kept).
    """
    import time
    from . import plan as plan_mod
    from .detect import find_sextractor
    from .merge import merge_tables, read_tile_catalogues, write_catalogue
    from .logs import progress_log
    from .pipeline import STEPS, clean_stale_files, interruptible, run_tiles, step_bands, tile_is_done, workdir_lock
    start = time.time()
    plan = _load(job)
    ids = _tile_ids(plan, tiles)
    n_jobs = jobs or plan["job"]["ncores"] or 1
    if n_jobs < 1:
        raise JointphotError(f"job key ncores must be at least 1, got {n_jobs}")
    engine_name = _engine(plan, engine)
    from .engines import get_engine
    get_engine(engine_name)                       # --engine tractor without the Tractor: fail now
    find_sextractor(plan["job"]["sex_command"])   # no SExtractor: fail now, not in every tile
    workdir = plan["job"]["workdir"]
    output = output or os.path.join(workdir, "catalog.fits")
    with workdir_lock(workdir), _run_log(workdir):
        clean_stale_files(workdir, sextractor_dirs=False)
        plan_mod.write_plan(plan, os.path.join(workdir, "plan.json"))
        progress_log.info("jointphot %s: %d tile%s of %s, %d at a time, engine %s, work dir %s", __version__, len(ids),
                          "s" if len(ids) != 1 else "", job, min(n_jobs, len(ids)), engine_name, workdir)

        n_units = sum(len(step_bands(plan, step)) for step in STEPS)

        def report(status, done, total):
            if status["ok"]:
                what = f"ok, {status['n_sources']} sources"
                if status["reused"] and len(status["reused"]) == n_units:
                    what += ", re-used"
                elif status["reused"]:
                    what += f", re-used {'+'.join(status['reused'])}"
                progress_log.info("[%d/%d] tile %d %s (%.1f s)", done, total, status["tile_id"], what,
                                  status["seconds"])
            else:
                progress_log.error("[%d/%d] tile %d FAILED (%.1f s): %s", done, total, status["tile_id"],
                                   status["seconds"], status["error"])

        try:
            with interruptible():
                results = run_tiles(plan, ids, engine_name, n_jobs, force, report)
        except Interrupted as exc:
            finished = [t for t in ids if tile_is_done(plan, t)]
            message = (f"{exc} after {time.time() - start:.1f} s: {len(finished)} of {len(ids)} tiles are finished "
                       f"and kept; run the same command again to continue")
            progress_log.error("%s", message, extra={"console": False})
            click.echo(f"jointphot: error: {message}", err=True)
            sys.exit(128 + exc.signum)
        failed = {s["tile_id"]: s["error"] for s in results if not s["ok"]}
        ok = [s for s in results if s["ok"]]
        n_sources = 0
        if ok:
            files = [plan_mod.tile_path(plan_mod.tile_dir(plan, s["tile_id"]), s["tile_id"], plan_mod.band_product(b, "fit"))
                     for s in ok for b in plan["bands"]]
            tables = read_tile_catalogues(plan, files)
            merged = merge_tables(plan, tables)
            n_sources = len(merged)
            missing = sorted(set(ids) - set(tables))
            write_catalogue(plan, merged, output, missing, [t.meta.get("engine", "") for t in tables.values()],
                            failed)
        if not no_qa:
            _run_qa(plan, progress_log, output if ok else None, n_jobs)
        reused = sum(1 for s in ok if len(s["reused"]) == n_units)
        summary = (f"{len(ok)}/{len(ids)} tiles done ({reused} re-used), {len(failed)} failed, {n_sources} sources, "
                   f"{time.time() - start:.1f} s")
        if not ok:
            summary += "; no catalogue written (no tile finished)"
        else:
            summary += f" -> {output}"
            if failed:
                summary += f" (INCOMPLETE: tiles {','.join(map(str, sorted(failed)))} missing)"
        progress_log.info("%s", summary, extra={"console": False})
        _echo(summary)
        if failed:
            first = min(failed)
            click.echo(f"jointphot: error: {len(failed)} of {len(ids)} tiles failed ({','.join(map(str, sorted(failed)))}"
                       f"); first: tile {first}: {failed[first]}", err=True)
            click.echo(f"jointphot: error: logs in {os.path.join(workdir, 'tiles', 'NNNN', 'tNNNN.log')}; fix the "
                       f"cause and run the same command again (finished tiles are re-used)", err=True)
            sys.exit(1)


class _run_log:
    """<workdir>/run.log: the progress lines, errors and summary of every run (appended)."""

    def __init__(self, workdir):
        self.path = os.path.join(workdir, "run.log")

    def __enter__(self):
        from .logs import progress_log
        self.handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        self.handler.setLevel(logging.DEBUG)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
        main_pid = os.getpid()
        self.handler.addFilter(lambda record: record.process == main_pid)
        progress_log.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        from .logs import progress_log
        progress_log.removeHandler(self.handler)
        self.handler.close()
        return False


def _run_qa(plan, logger, catalog=None, jobs=1):
    """QA pictures at the end of `run`: skipped (one line) without matplotlib; a QA failure is a warning."""
    try:
        from . import qa
        qa.require_matplotlib()
    except JointphotError as exc:
        logger.info("QA pictures skipped: %s", exc)
        return
    try:
        paths = qa.make_qa(plan, catalog=catalog, jobs=jobs)
    except Exception as exc:  # noqa: BLE001 - pictures must never cost the catalogue
        logger.warning("QA pictures failed: %s: %s", type(exc).__name__, exc)
        return
    logger.info("QA pictures: %s", paths["html"])


@main.command("qa")
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--tiles", default="all", show_default=True, help="Tiles to draw: 'all', one id, or a comma list of ids and ranges (0,2,5-7).")
@click.option("-o", "--outdir", type=click.Path(file_okay=False), default=None,
              help="Directory of the pictures (default <workdir>/qa).")
@click.option("--force", is_flag=True, help="Redraw the tile pictures even when they are newer than their tile's products.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tile pictures drawn in parallel.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Work directory whose tiles/NNNN hold the tiles' products (default: the job's workdir).")
@_verbosity_options
def qa_command(job, tiles, outdir, force, jobs, workdir):
    """Draw the QA pictures: per tile HR and LR data / model / residual with the detections
    (qa/tile_NNNN.png), and a summary (qa/summary.png, qa/summary.html): tile map coloured by
    status, LR vs HR magnitude, flux error vs magnitude, residual statistics per tile."""
    from . import plan as plan_mod
    from . import qa
    qa.require_matplotlib()
    plan = _load(job)
    if workdir:
        plan = dict(plan, job=dict(plan["job"], workdir=os.path.abspath(workdir)))
    try:
        ids = plan_mod.parse_tiles(tiles, len(plan["tiles"]))
    except JointphotError as exc:
        raise JointphotError(f"--tiles: {exc}") from None
    paths = qa.make_qa(plan, outdir=outdir, tile_ids=ids, force=force, jobs=jobs)
    _echo(f"{len(paths['tiles'])} tile pictures, summary -> {paths['html']}")


def _fractions(ctx, param, value):
    """'F' (both images) or 'F_HR,F_LR' -> (F_HR, F_LR)."""
    try:
        values = tuple(float(v) for v in value.split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 2):
        raise click.BadParameter(f"expected F or F_HR,F_LR, got {value!r}")
    return values * (3 - len(values))


def _mag_range(ctx, param, value):
    """'LO,HI' (AB mag) -> (LO, HI), or None."""
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LO,HI magnitudes, got {value!r}") from None
    if not lo < hi:
        raise click.BadParameter(f"LO must be brighter (smaller) than HI, got {value!r}")
    return lo, hi


@main.command("simulate")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed (same seed, same files).")
@click.option("--size-arcsec", type=float, default=60.0, show_default=True, help="Field size in arcsec.")
@click.option("--galaxies", type=click.Choice(["sersic", "truncated", "composite"]), default="truncated",
              show_default=True, help="Galaxy model: single untruncated Sersic; Sersic with n > 1.5 truncated at "
                                      "8 r_e; truncated de Vaucouleurs bulge + exponential disc (+ knots), "
                                      "each with its own LR/HR colour.")
@click.option("--hr-noise", type=click.Choice(["white", "cosmos"]), default="white", show_default=True,
              help="HR noise: white, or correlated like ACS F814W drizzled images (weight map unchanged).")
@click.option("--lr-noise", type=click.Choice(["white", "warped"]), default="white", show_default=True,
              help="LR noise: white, or correlated by a Lanczos-3 warp (VARIANCE unchanged).")
@click.option("--poisson", is_flag=True, help="Add source shot noise (in VARIANCE, not in the HR weight map).")
@click.option("--psf-light-fraction", default="1", show_default=True, callback=_fractions,
              help="Fraction of the PSF's light kept in the written PSF files: F (both) or F_HR,F_LR.")
@click.option("--star-fraction", type=click.FloatRange(0.0, 1.0), default=None,
              help="Fraction of the sources that are stars [default: 0.15].")
@click.option("--star-mags", callback=_mag_range, help="LO,HI: HR AB magnitudes of the stars [default: 19.5,25.5].")
@click.option("--galaxy-mags", callback=_mag_range,
              help="LO,HI: HR AB magnitudes of the galaxies [default: 20.5,26.5].")
@click.option("--hr-gap", "hr_gap", type=click.FloatRange(0.0), default=0.0, show_default=True,
              help="Width [arcsec] of a vertical strip where the HR image has no data (a chip gap); the LR images "
                   "cover it.")
@click.option("--density", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Sources per arcmin^2 (unblended ones and pairs scaled alike) [default: ~292].")
@click.option("--extra-bands", default="", help="Comma list of further LR bands to draw (g, z: other pixel scales, "
                                               "rotations, PSFs, footprints and colours); job.json lists them in lr_bands.")
def simulate_command(outdir, seed, size_arcsec, galaxies, hr_noise, lr_noise, poisson, psf_light_fraction,
                     star_fraction, star_mags, galaxy_mags, extra_bands, hr_gap, density):
    """Simulate an HR + LR test field with GalSim, with truth catalogue, PSFs, offsets and job files."""
    try:
        from .simulate import EXTRA_BANDS, add_band, simulate_field
    except ImportError as exc:
        raise JointphotError(f"simulate needs GalSim: pip install 'jointphot[sim]' ({exc})") from None
    counts = {name: value for name, value in (("star_fraction", star_fraction), ("star_mags", star_mags),
                                                ("galaxy_mags", galaxy_mags)) if value is not None}
    bands = [b.strip() for b in extra_bands.split(",") if b.strip()]
    unknown = sorted(set(bands) - set(EXTRA_BANDS))
    if unknown:
        raise JointphotError(f"--extra-bands: unknown band {unknown[0]!r} (known: {', '.join(EXTRA_BANDS)})")
    paths = simulate_field(outdir, seed=seed, size_arcsec=size_arcsec, galaxies=galaxies, hr_noise=hr_noise,
                           lr_noise=lr_noise, poisson=poisson, psf_light_fraction=psf_light_fraction,
                           hr_gap_arcsec=hr_gap, density=density, **counts)
    for band in bands:
        paths.update({f"{band}_{k}": v for k, v in add_band(outdir, band, seed=seed).items()})
    click.echo(f"simulated field written to {outdir} ({len(set(paths.values()))} files)")


@main.command("rerun")
@click.argument("catalogue", type=click.Path(dir_okay=False))
@click.option("--dir", "directory", type=click.Path(file_okay=False), required=True,
              help="New directory: the stored job is written there as job.json, its work directory is DIR/work.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, help="Tiles run in parallel.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Catalogue to write (default DIR/work/catalog.fits).")
@_verbosity_options
@click.pass_context
def rerun_command(ctx, catalogue, directory, jobs, output):
    """Run again the job stored in a merged catalogue (its JOB extension: every key as resolved, the
    inputs by absolute path) with the engine that made it, every tile, into a new directory; the
    versions that made it and today's are compared (a warning names each difference)."""
    import json
    from . import tool_versions
    from .merge import job_from_catalogue
    job, versions = job_from_catalogue(catalogue)
    os.makedirs(directory, exist_ok=True)
    job["workdir"] = os.path.join(os.path.abspath(directory), "work")
    job["tile_id"] = None
    path = os.path.join(directory, "job.json")
    with open(path, "w") as fh:
        json.dump(job, fh, indent=1, sort_keys=True)
    for name, version in tool_versions().items():
        if versions.get(name, version) != version:
            logging.getLogger("jointphot").warning("%s was %s for %s, is %s now", name, versions[name], catalogue,
                                                   version)
    engine = "tractor" if "tractor" in versions.get("engine", "") else "native"
    ctx.invoke(run_command, job=path, tiles="all", jobs=jobs, engine=engine, force=False, output=output, no_qa=True)


@main.command("versions")
@click.argument("process")
@click.option("--tool", "tools", multiple=True, type=click.Choice(["source-extractor", "matplotlib"]),
              help="Also report this tool's version (repeatable).")
def versions_command(process, tools):
    """Print the versions.yml of a Nextflow task PROCESS: jointphot, Python and the packages the numbers
    depend on (as the catalogue's JOB extension records them), and each --tool.  The pipeline's
    modules all report their versions with it."""
    from . import tool_versions
    versions = {"jointphot": __version__, **tool_versions()}
    for tool in tools:
        if tool == "source-extractor":
            from .detect import FALLBACK_COMMANDS, find_sextractor, sextractor_version
            try:
                versions[tool] = sextractor_version(find_sextractor(FALLBACK_COMMANDS[0]))
            except JointphotError:
                versions[tool] = "not found"
        else:
            try:
                versions[tool] = __import__(tool).__version__
            except ImportError:
                versions[tool] = "not installed"
    click.echo(f'"{process}":')
    for name, version in versions.items():
        click.echo(f"    {name}: {version}")


@main.command("job-keys")
def job_keys_command():
    """List every job-file key with its type, default and meaning."""
    from .jobfile import describe_keys
    click.echo(describe_keys())


if __name__ == "__main__":
    main()
