"""The Nextflow pipeline (main.nf) with the real Nextflow and the real jointphot CLI.

* `nextflow run main.nf -profile test` on the simulated field; the published catalogue against the
  truth catalogue with the thresholds of the core issue; pipeline_info (versions, report, timeline, trace)
* `-resume` re-runs no task (every trace row CACHED)
* one deliberately broken tile (--fail_tiles): the other tiles finish, the run exits non-zero and names
  the tile and why, and the merged catalogue's header records the missing tile
* a job file in the original tool's format runs unchanged through -params-file
* a transient failure (exit 137) is retried with more memory
* a wrong parameter fails before any task starts, naming the parameter; --help lists the parameters
* `nextflow config` resolves every profile (nersc and shifter included)

Nextflow comes from scripts/get-nextflow (PATH, else Maven Central). When it cannot be obtained the
tests are skipped with the reason, except in CI (CI=true), where they fail.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import containerlib  # tests/ is on sys.path (conftest.py)
import truthcheck

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = containerlib.TEST_DATA
N_TEST_TILES = 4            # 60" field, 30" tiles
BROKEN_TILE = 1


@pytest.fixture(scope="session")
def nextflow():
    return containerlib.get_nextflow()


@pytest.fixture(scope="session")
def jointphot_cli():
    """The pipeline's tasks run `jointphot` (bin/jointphot, else the installed console script)."""
    exe = REPO / "bin" / "jointphot"
    if not (exe.exists() and os.access(exe, os.X_OK)):
        found = shutil.which("jointphot")
        if not found:
            pytest.fail("jointphot is neither bin/jointphot nor on PATH (pip install -e .)")
        exe = Path(found)
    return str(exe)


@pytest.fixture(scope="session")
def test_data(field):
    """test-data/generated (conftest.py makes it with `jointphot simulate` if missing): the test profile's inputs."""
    assert Path(field) == TEST_DATA
    return TEST_DATA


def nf(nextflow, args, cwd, timeout=1800):
    env = dict(os.environ, NXF_ANSI_LOG="false")
    env["NXF_OPTS"] = (env.get("NXF_OPTS", "") + " -XX:TieredStopAtLevel=1").strip()
    proc = subprocess.run([nextflow, *args], cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout)
    proc.output = proc.stdout + proc.stderr
    return proc


def run_pipeline(nextflow, cwd, *args, timeout=1800):
    cwd.mkdir(parents=True, exist_ok=True)
    return nf(nextflow, ["run", str(REPO / "main.nf"), *args], cwd, timeout=timeout)


def traces(outdir):
    return set((Path(outdir) / "pipeline_info").glob("execution_trace_*.txt"))


def read_trace(path):
    with open(path) as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def new_trace(outdir, before):
    new = sorted(traces(outdir) - before)
    assert len(new) == 1, f"expected one new trace file in {outdir}/pipeline_info, found {new}"
    return read_trace(new[0])


def show(proc):
    return f"exit {proc.returncode}\n--- output ---\n{proc.output[-6000:]}"


# ----------------------------------------------------------------------------- the test profile

@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    return tmp_path_factory.mktemp("nextflow")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The work directory of the test profile's runs: on another path than the launch directory and the inputs."""
    return tmp_path_factory.mktemp("elsewhere") / "work"


@pytest.fixture(scope="module")
def test_run(nextflow, test_data, jointphot_cli, launch, work):
    outdir = launch / "results"
    proc = run_pipeline(nextflow, launch, "-profile", "test", "--outdir", str(outdir), "-w", str(work))
    print(proc.output[-3000:])
    return proc, outdir


def test_test_profile_runs(test_run):
    proc, outdir = test_run
    assert proc.returncode == 0, show(proc)
    rows = read_trace(sorted(traces(outdir))[-1])
    by_process = {}
    for r in rows:
        by_process.setdefault(r["process"].split(":")[-1], []).append(r)
    assert {k: len(v) for k, v in by_process.items()} == {
        "PLAN": 1, "CUTOUT": 2 * N_TEST_TILES, "DETECT": N_TEST_TILES, "FIT_HR": N_TEST_TILES,
        "FIT_LR": N_TEST_TILES, "MERGE": 1, "QA": 1}     # CUTOUT: per tile, of the HR image and of the LR band
    assert all(r["status"] == "COMPLETED" for r in rows)
    # each task stages only the input files it reads: the large images in PLAN and CUTOUT only, a band's
    # files in its own tasks only
    staged = {(r["process"].split(":")[-1], r["tag"]): sorted(f.name for f in Path(r["workdir"], "inputs").glob("in*/*"))
              for r in rows}
    for (process, tag), names in staged.items():
        if process == "CUTOUT":
            assert names == (["lr.fits"] if tag.endswith(" lr") else ["hr.fits", "hr_wht.fits"]), (tag, names)
        elif process == "FIT_LR":
            assert names and all(n.startswith("lr") for n in names), (tag, names)
        elif process in ("DETECT", "FIT_HR"):
            assert "hr_psf.fits" in names and all(n.startswith("hr") and n not in ("hr.fits", "hr_wht.fits")
                                                  for n in names), (tag, names)
        elif process != "PLAN":
            assert names == [], (process, names)
    # no task reads a host path: the scripts name staged files only, and the tile plans hold no absolute path
    host = [str(p) for p in TEST_DATA.iterdir()] + [str(TEST_DATA), str(REPO)]
    for r in rows:
        script = Path(r["workdir"], ".command.sh").read_text()
        assert not [p for p in host if p in script], (r["process"], r["tag"])
        if r["process"].split(":")[-1] not in ("PLAN", "MERGE", "QA"):
            assert '"/' not in Path(r["workdir"], "tile_plan.json").read_text(), (r["process"], r["tag"])
    for t in range(N_TEST_TILES):
        tile_dir = outdir / "tiles" / f"{t:04d}"
        for product in ("hr_cutout", "lr_cutout", "hr_detections", "hr_fit", "lr_fit"):
            assert (tile_dir / f"t{t:04d}_{product}.fits").is_file(), (tile_dir, product)


def test_pipeline_info(test_run):
    proc, outdir = test_run
    assert proc.returncode == 0, show(proc)
    info = outdir / "pipeline_info"
    for pattern in ("execution_report_*.html", "execution_timeline_*.html", "execution_trace_*.txt"):
        assert list(info.glob(pattern)), pattern
    assert json.loads((info / "plan.json").read_text())["tiles"]
    versions = (info / "software_versions.yml").read_text()
    for name in ("PLAN:", "CUTOUT:", "DETECT:", "FIT_HR:", "FIT_LR:", "MERGE:", "QA:", "Workflow:", "Nextflow:",
                 "jointphot:", "source-extractor:", "python:", "numpy:", "astropy:"):
        assert name in versions, (name, versions)
    # QA pictures (matplotlib is a test dependency)
    assert (outdir / "qa" / "summary.html").is_file()
    assert sorted(p.name for p in (outdir / "qa").glob("tile_*.png")) == [f"tile_{t:04d}.png" for t in range(N_TEST_TILES)]
    assert (info / "failed_tiles.tsv").read_text().count("\n") == 1     # header only


# ---- the catalogue against the truth (thresholds of the core issue, tests/truthcheck.py)

@pytest.fixture(scope="module")
def figures(test_run, test_data):
    proc, outdir = test_run
    assert proc.returncode == 0, show(proc)
    f = truthcheck.catalog_figures(str(outdir / "catalog.fits"), str(test_data / "truth.fits"))
    print(f)
    return f


def test_catalogue_complete_astrometric_no_duplicates(figures):
    assert figures["n_selected"] >= 150, figures
    assert figures["completeness_snr10"] > 0.95, figures
    assert figures["median_offset_mas"] < 5.0, figures
    assert figures["duplicate_ids"] == 0 and figures["duplicate_positions"] == 0, figures
    assert figures["n_truth_matched_twice"] == 0, figures


def test_catalogue_hr_fluxes_against_truth(figures):
    med, sig, n = figures["hr_chi"]
    assert n >= 150
    assert 0.8 < sig < 1.25, figures["hr_chi"]


def test_catalogue_hr_flux_median_against_truth(figures):
    assert abs(figures["hr_chi"][0]) < 0.15, figures["hr_chi"]


def test_catalogue_lr_fluxes_against_truth(figures):
    med, sig, n = figures["lr_chi"]
    assert n >= 150
    assert abs(med) < 0.15 and 0.8 < sig < 1.25, figures["lr_chi"]


def test_catalogue_same_as_jointphot_run(test_run, native_run):
    """The pipeline and `jointphot run` (conftest.native_run, same job, native engine) give the same catalogue."""
    proc, outdir = test_run
    directory, run = native_run
    assert proc.returncode == 0 and run.returncode == 0, run.stderr
    with fits.open(outdir / "catalog.fits") as a, fits.open(Path(directory) / "work" / "catalog.fits") as b:
        ta, tb = a[1].data, b[1].data
        assert ta.columns.names == tb.columns.names
        assert len(ta) == len(tb)
        for name in ta.columns.names:
            x, y = ta[name], tb[name]
            if x.dtype.kind == "f":    # equal up to rounding (summation order may differ by a last bit)
                assert np.allclose(x, y, rtol=1e-9, atol=0, equal_nan=True), name
            else:
                assert (x == y).all(), name


def test_catalogue_header_no_missing_tiles(test_run):
    proc, outdir = test_run
    hdr = fits.getheader(outdir / "catalog.fits", 1)
    assert hdr["JP_NMISS"] == 0 and hdr["JP_MISS"] == "none"
    assert hdr["JP_NTILE"] == N_TEST_TILES


# ---- -resume

def test_resume_reruns_nothing(nextflow, test_run, launch, work):
    proc, outdir = test_run
    assert proc.returncode == 0, show(proc)
    before = traces(outdir)
    again = run_pipeline(nextflow, launch, "-profile", "test", "--outdir", str(outdir), "-w", str(work), "-resume")
    assert again.returncode == 0, show(again)
    rows = new_trace(outdir, before)
    assert len(rows) == 3 + 5 * N_TEST_TILES           # PLAN, MERGE, QA; per tile 2 CUTOUT, DETECT, FIT_HR, FIT_LR
    assert {r["status"] for r in rows} == {"CACHED"}, [(r["name"], r["status"]) for r in rows]


# ---- one broken tile

def test_broken_tile(nextflow, test_run, launch, work):
    proc, outdir = test_run
    assert proc.returncode == 0, show(proc)
    broken_out = launch / "results-broken"
    # -resume: the tasks of the good run are reused; FIT_HR of the broken tile, its FIT_LR and MERGE are new
    run = run_pipeline(nextflow, launch, "-profile", "test", "--outdir", str(broken_out), "-w", str(work),
                       "--fail_tiles", str(BROKEN_TILE), "-resume")
    assert run.returncode != 0, show(run)
    assert f"tile {BROKEN_TILE}: FIT_HR failed" in run.output, show(run)
    reason = run.output.split(f"tile {BROKEN_TILE}: FIT_HR failed (exit 1): ", 1)[1].splitlines()[0]
    assert len(reason.strip()) > 10, show(run)                  # why: the last error line of jointphot
    assert "log: " in run.output and ".command.err" in run.output
    # only the broken tile's fit-hr is new; everything else of the good run is reused
    rows_all = read_trace(sorted(traces(broken_out))[-1])
    new = sorted((r["process"].split(":")[-1], r["tag"]) for r in rows_all if r["status"] != "CACHED")
    assert new == sorted([("FIT_HR", f"tile {BROKEN_TILE}"), ("MERGE", "SIM"), ("QA", "SIM")]), new

    rows = read_trace(sorted(traces(broken_out))[-1])
    fit_lr_tiles = sorted(r["tag"] for r in rows if r["process"].endswith("FIT_LR"))
    assert fit_lr_tiles == [f"tile {t} lr" for t in range(N_TEST_TILES) if t != BROKEN_TILE]
    failed = [r for r in rows if r["status"] == "FAILED"]
    assert [(r["process"].split(":")[-1], r["tag"]) for r in failed] == [("FIT_HR", f"tile {BROKEN_TILE}")]

    # the other tiles are merged, and the header says which tile is missing
    cat = broken_out / "catalog.fits"
    assert cat.is_file()
    hdr = fits.getheader(cat, 1)
    assert hdr["JP_NMISS"] == 1 and hdr["JP_MISS"] == str(BROKEN_TILE), repr(hdr)
    tiles = set(fits.getdata(cat, 1)["tile_id"].tolist())
    assert BROKEN_TILE not in tiles and tiles, tiles

    with open(broken_out / "pipeline_info" / "failed_tiles.tsv") as fh:
        tsv = list(csv.DictReader(fh, delimiter="\t"))
    assert [(r["tile_id"], r["step"]) for r in tsv] == [(str(BROKEN_TILE), "FIT_HR")]


# ---- a job file of the original tool, unchanged

def test_seed_job_file_runs_unchanged(nextflow, test_data, jointphot_cli, tmp_path):
    seed = json.loads((test_data / "job_seed.json").read_text())
    # the original tool's format: its keys, paths relative to the job file, a tile_id
    for key in ("workdir", "sexinputdir", "out_prefix", "cutoutsize_arcsec", "cutoutoverlap_arcsec", "cutout_output_dir",
                "hr_compl_niter", "lr_compl_niter", "hr_zp", "lr_zp", "sex_command", "hr_large_image_name",
                "lr_large_image_name", "hr_image_psf", "hr_psf_type", "lr_image_psf", "lr_psf_type",
                "lr_astrometry_correction_name", "hr_astrometry_correction_name", "hr_psf_fwhm_arcsec", "tile_id"):
        assert key in seed, key
    outdir = tmp_path / "results"
    run = run_pipeline(nextflow, tmp_path, "-params-file", str(test_data / "job_seed.json"), "--outdir", str(outdir),
                       "--max_cpus", "2", "--max_memory", "6.GB")
    assert run.returncode == 0, show(run)
    assert "tile_id=0 is ignored" in run.output
    assert (outdir / "catalog.fits").is_file()
    job = json.loads((outdir / "pipeline_info" / "job.json").read_text())
    assert job["hr_large_image_name"] == str((test_data / "hr.fits").resolve())
    assert "tile_id" not in job and job["workdir"] == "."
    rows = read_trace(sorted(traces(outdir))[-1])
    assert sum(r["process"].endswith("FIT_LR") for r in rows) == N_TEST_TILES


# ----------------------------------------------------------------------------- no jointphot needed

@pytest.fixture()
def fake_inputs(tmp_path):
    """Files that exist, for the parameter checks and -stub-run (stubs never read them)."""
    d = tmp_path / "in"
    d.mkdir()
    for name in ("hr.fits", "lr.fits", "hr_psf.fits", "lr_psf.psf"):
        (d / name).write_text("x")
    return ["--hr_large_image_name", str(d / "hr.fits"), "--lr_large_image_name", str(d / "lr.fits"),
            "--hr_image_psf", str(d / "hr_psf.fits"), "--lr_image_psf", str(d / "lr_psf.psf"),
            "--hr_zp", "25.9", "--lr_zp", "27", "--cutoutsize_arcsec", "30,30"]


def test_help_lists_the_parameters(nextflow, tmp_path):
    run = run_pipeline(nextflow, tmp_path, "--help")
    assert run.returncode == 0, show(run)
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    for group in schema["$defs"].values():
        for name, spec in group["properties"].items():
            if not spec.get("hidden"):
                assert f"--{name} " in run.output, name
    assert "Submitted process" not in run.output
    assert not list(tmp_path.glob("work/*/*")), "a task ran"
    assert not (tmp_path / "results").exists(), "--help wrote reports"


@pytest.mark.parametrize("args, message", [
    (["--tilez", "3"], "Unknown parameter --tilez (did you mean --tiles?)"),
    (["--hr_zp", "abc"], "--hr_zp: expected number, got the string 'abc'"),
    (["--engine", "magic"], "--engine: 'magic' is not one of auto, native, tractor"),
    (["--cutoutsize_arcsec", "30,30,30"], "--cutoutsize_arcsec: takes at most 2 values"),
    (["--hr_compl_niter", "0"], "--hr_compl_niter: 0 is less than the minimum 1"),
    (["--lr_psf_type", "gauss"], "--lr_psf_type: 'gauss' is not one of fits, fwhm, psfex"),
    (["--tiles", "1;2"], "--tiles: '1;2' does not match"),
    (["--hr_large_image_name", "nope.fits"], "--hr_large_image_name: file not found: nope.fits"),
])
def test_wrong_parameter_fails_before_any_task(nextflow, tmp_path, fake_inputs, args, message):
    run = run_pipeline(nextflow, tmp_path, *fake_inputs, *args, "-stub-run")
    assert run.returncode != 0, show(run)
    assert message in run.output, show(run)
    assert "Submitted process" not in run.output
    assert not list(tmp_path.glob("work/*/*")), "a task ran"


def test_missing_required_parameter(nextflow, tmp_path, fake_inputs):
    args = list(fake_inputs)
    i = args.index("--lr_image_psf")
    del args[i:i + 2]
    run = run_pipeline(nextflow, tmp_path, *args, "-stub-run")
    assert run.returncode != 0
    assert "Missing required parameter --lr_image_psf" in run.output, show(run)


def test_transient_failure_is_retried_with_more_memory(nextflow, tmp_path, fake_inputs):
    """The first attempt of every FIT_LR task is killed (exit 137, as an OOM kill); each is retried and succeeds."""
    extra = tmp_path / "oom.config"
    extra.write_text("process { withName: 'FIT_LR' { beforeScript = { task.attempt == 1 ? "
                     "'echo simulated OOM kill >&2; exit 137' : '' } } }\n")
    outdir = tmp_path / "results"
    run = run_pipeline(nextflow, tmp_path, *fake_inputs, "-stub-run", "--stub_tiles", "2", "-c", str(extra),
                       "--outdir", str(outdir))
    assert run.returncode == 0, show(run)
    assert "Execution is retried (1)" in run.output
    rows = [r for r in read_trace(sorted(traces(outdir))[-1]) if r["process"].endswith("FIT_LR")]
    attempts = sorted((r["tag"], r["attempt"], r["status"], r["exit"], r["memory"]) for r in rows)
    assert [(a[1], a[2], a[3]) for a in attempts] == [("1", "FAILED", "137"), ("2", "COMPLETED", "0")] * 2, attempts
    first, second = attempts[0][4], attempts[1][4]
    assert first != second, attempts            # memory grows with the attempt
    assert (outdir / "catalog.fits").is_file()


def test_tiles_selects_tiles(nextflow, tmp_path, fake_inputs):
    outdir = tmp_path / "results"
    run = run_pipeline(nextflow, tmp_path, *fake_inputs, "-stub-run", "--tiles", "1,3", "--outdir", str(outdir))
    assert run.returncode == 0, show(run)
    rows = read_trace(sorted(traces(outdir))[-1])
    assert sorted(r["tag"] for r in rows if r["process"].endswith("CUTOUT")) == ["tile 1", "tile 1 lr", "tile 3",
                                                                                 "tile 3 lr"]
    assert sorted(r["tag"] for r in rows if r["process"].endswith("FIT_LR")) == ["tile 1 lr", "tile 3 lr"]
    bad = run_pipeline(nextflow, tmp_path, *fake_inputs, "-stub-run", "--tiles", "2,9", "--outdir", str(outdir))
    assert bad.returncode != 0
    assert "jointphot: error: --tiles: tile 9 does not exist: the grid has 4 tiles (0..3)" in bad.output, show(bad)


@pytest.mark.parametrize("profile", ["standard", "test", "debug", "docker", "podman", "shifter", "slurm", "nersc"])
def test_config_profiles_resolve(nextflow, tmp_path, profile):
    run = nf(nextflow, ["config", str(REPO), "-profile", profile], tmp_path, timeout=300)
    assert run.returncode == 0, show(run)
    assert "process {" in run.stdout
    if profile in ("slurm", "nersc"):
        assert "executor = 'slurm'" in run.stdout, run.stdout
    if profile == "nersc":
        assert "--qos=shared" in run.stdout and "--constraint=cpu" in run.stdout, run.stdout


def test_unknown_profile_is_an_error(nextflow, tmp_path):
    run = nf(nextflow, ["config", str(REPO), "-profile", "nosuch"], tmp_path, timeout=300)
    assert run.returncode != 0
    assert "Unknown configuration profile: 'nosuch'" in run.output


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
