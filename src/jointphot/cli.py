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
from .errors import JointphotError

ENGINE_OPTION = click.option("--engine", type=click.Choice(["auto", "native", "tractor"]), default=None,
                             help="Fitting engine (default: the job's `engine` key, else auto = the Tractor "
                                  "when it imports, else native).")


class _Group(click.Group):
    """Turns JointphotError into one line on stderr and exit status 1 (no traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except JointphotError as exc:
            click.echo(f"jointphot: error: {exc}", err=True)
            sys.exit(1)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("jointphot").setLevel(level)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jointphot")
@click.option("-v", "--verbose", is_flag=True, help="Debug messages.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def main(verbose, quiet):
    """Joint prior-based photometry of a high-resolution (HR) and a low-resolution (LR) image.

    Fluxes are in image counts (mag = zp - 2.5 log10 flux) and in microjansky; positions in
    degrees in the reference frame of the astrometric offset files.
    """
    _setup_logging(verbose, quiet)


def _load(job):
    from . import plan as plan_mod
    return plan_mod.load(job)


def _engine(plan, engine):
    return engine or plan["job"]["engine"]


def _tile_step(step):
    """A click command running `step` for one tile."""
    def command(job, tile, directory, engine=None):
        from . import plan as plan_mod
        from .pipeline import run_step
        plan = _load(job)
        plan_mod.get_tile(plan, tile)
        run_step(step, plan, tile, directory or plan_mod.tile_dir(plan, tile), _engine(plan, engine))
    return command


_TILE_ARGS = [click.argument("job", type=click.Path(dir_okay=False)),
              click.option("--tile", type=int, required=True, help="Tile id (row-major from 0; see plan.json)."),
              click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
                           help="Tile directory holding the step's inputs and outputs "
                                "(default <workdir>/tiles/NNNN).")]


def _with_tile_args(func, engine=False):
    for deco in reversed(_TILE_ARGS + ([ENGINE_OPTION] if engine else [])):
        func = deco(func)
    return func


@main.command("plan")
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Plan file to write (default <workdir>/plan.json).")
def plan_command(job, output):
    """Check the inputs and lay out the tile grid; write plan.json.

    The plan holds the resolved job (absolute paths, defaults filled) and, per tile, its
    core (owned region) and padded (cut-out) region in 0-based HR pixels of the large image.
    """
    from . import plan as plan_mod
    plan = _load(job)
    output = output or os.path.join(plan["job"]["workdir"], "plan.json")
    plan_mod.write_plan(plan, output)
    g = plan["grid"]
    click.echo(f"{len(plan['tiles'])} tiles ({g['nx']} x {g['ny']}) -> {output}")


main.command("cutout")(_with_tile_args(_tile_step("cutout")))
main.commands["cutout"].help = ("Cut one tile out of the large images: tNNNN_hr_cutout.fits (SCI, WHT = inverse "
                                "variance [count^-2]) and tNNNN_lr_cutout.fits (IMAGE, MASK, VARIANCE).")
main.command("detect")(_with_tile_args(_tile_step("detect")))
main.commands["detect"].help = ("Run SExtractor on the tile's HR cutout: tNNNN_hr_detections.fits "
                                "(CATALOG table, SEGMAP image).")
main.command("fit-hr")(_with_tile_args(_tile_step("fit-hr"), engine=True))
main.commands["fit-hr"].help = ("Fit point-source / Sersic models to the HR cutout: tNNNN_hr_fit.fits (fluxes in HR "
                                "counts, sizes in pixels and arcsec) and tNNNN_hr_images.fits (IMAGE, MODEL, RESIDUAL).")
main.command("fit-lr")(_with_tile_args(_tile_step("fit-lr"), engine=True))
main.commands["fit-lr"].help = ("Forced LR photometry with the HR models: tNNNN_lr_fit.fits (the tile's catalogue, "
                                "fluxes in counts and uJy) and tNNNN_lr_images.fits.")


@main.command("merge")
@click.argument("job", type=click.Path(dir_okay=False))
@click.argument("tile_files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Catalogue to write (default <workdir>/catalog.fits).")
@click.option("--missing-tiles", default="", help="Comma list of tiles known to have failed (recorded in the header).")
def merge_command(job, tile_files, output, missing_tiles):
    """Merge per-tile catalogues (tNNNN_lr_fit.fits) into one catalogue; overlaps kept once."""
    from .merge import default_tile_files, merge_tables, read_tile_catalogues, write_catalogue
    plan = _load(job)
    files = list(tile_files) or default_tile_files(plan)
    tables = read_tile_catalogues(plan, files)
    declared = {int(t) for t in missing_tiles.split(",") if t.strip()}
    missing = sorted(declared | (set(range(len(plan["tiles"]))) - set(tables)))
    merged = merge_tables(plan, tables)
    output = output or os.path.join(plan["job"]["workdir"], "catalog.fits")
    write_catalogue(plan, merged, output, missing, [t.meta.get("engine", "") for t in tables.values()])
    click.echo(f"{len(merged)} sources from {len(tables)} tiles -> {output}" +
               (f" (missing tiles: {','.join(map(str, missing))})" if missing else ""))


@main.command("run")
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--tiles", default=None, help="'all', one id or a comma list (default: the job's tile_id, else all).")
@click.option("-j", "--jobs", type=int, default=None, help="Tiles run in parallel (default: the job's ncores, else 1).")
@ENGINE_OPTION
@click.option("--force", is_flag=True, help="Re-run steps whose outputs exist for this job.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Catalogue to write (default <workdir>/catalog.fits).")
def run_command(job, tiles, jobs, engine, force, output):
    """Run the whole chain (cutout, detect, fit-hr, fit-lr) for tiles, then merge.

    Finished steps are re-used when the job is unchanged, so an interrupted run continues
    where it stopped.  Exit status 1 when any tile failed (the others are still merged).
    """
    import time
    from . import plan as plan_mod
    from .merge import merge_tables, read_tile_catalogues, write_catalogue
    from .pipeline import run_tiles
    start = time.time()
    plan = _load(job)
    plan_mod.write_plan(plan, os.path.join(plan["job"]["workdir"], "plan.json"))
    if tiles is None:
        tiles = "all" if plan["job"]["tile_id"] is None else str(plan["job"]["tile_id"])
    ids = plan_mod.parse_tiles(tiles, len(plan["tiles"]))
    n_jobs = jobs or plan["job"]["ncores"] or 1
    engine_name = _engine(plan, engine)
    logger = logging.getLogger("jointphot")

    def report(status, done, total):
        state = "ok" if status["ok"] else "FAILED"
        reused = f", re-used {'+'.join(status['reused'])}" if status["reused"] else ""
        logger.info("[%d/%d] tile %d %s (%.1f s%s)%s", done, total, status["tile_id"], state, status["seconds"],
                    reused, "" if status["ok"] else f": {status['error']}")

    results = run_tiles(plan, ids, engine_name, n_jobs, force, report)
    failed = {s["tile_id"]: s["error"] for s in results if not s["ok"]}
    files = [plan_mod.tile_path(plan_mod.tile_dir(plan, s["tile_id"]), s["tile_id"], "lr_fit")
             for s in results if s["ok"]]
    tables = read_tile_catalogues(plan, files)
    merged = merge_tables(plan, tables)
    output = output or os.path.join(plan["job"]["workdir"], "catalog.fits")
    missing = sorted(set(ids) - set(tables))
    write_catalogue(plan, merged, output, missing, [t.meta.get("engine", "") for t in tables.values()], failed)
    click.echo(f"{len(ids) - len(failed)}/{len(ids)} tiles done, {len(failed)} failed, {len(merged)} sources, "
               f"{time.time() - start:.1f} s -> {output}")
    if failed:
        for t, err in sorted(failed.items()):
            click.echo(f"jointphot: error: tile {t} failed: {err}", err=True)
        sys.exit(1)


@main.command("simulate")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed (same seed, same files).")
@click.option("--size-arcsec", type=float, default=60.0, show_default=True, help="Field size in arcsec.")
def simulate_command(outdir, seed, size_arcsec):
    """Simulate an HR + LR test field with GalSim, with truth catalogue, PSFs, offsets and job files."""
    try:
        from .simulate import simulate_field
    except ImportError as exc:
        raise JointphotError(f"simulate needs GalSim: pip install 'jointphot[sim]' ({exc})") from None
    paths = simulate_field(outdir, seed=seed, size_arcsec=size_arcsec)
    click.echo(f"simulated field written to {outdir} ({len(paths)} files)")


@main.command("job-keys")
def job_keys_command():
    """List every job-file key with its type, default and meaning."""
    from .jobfile import describe_keys
    click.echo(describe_keys())


if __name__ == "__main__":
    main()
