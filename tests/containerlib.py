"""Shared helpers of tests/test_containers.py and tests/test_slurm.py (not a test module).

Everything here does the real thing: containers/build builds the image, podman runs it,
tests/slurm/start starts a real Slurm, the real Nextflow (scripts/get-nextflow) runs main.nf.
When a tool cannot be had, the test is skipped with the reason, except in CI (CI=true), where
it fails.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from testlock import exclusive

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_DATA = REPO / "test-data" / "generated"
CONTAINERS_CONF = REPO / "containers" / "containers.conf"
N_TEST_TILES = 4
STEPS = ("PLAN", "CUTOUT", "DETECT", "FIT_HR", "FIT_LR", "MERGE", "QA")


def unavailable(reason):
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def version():
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'(?m)^version\s*=\s*"([^"]+)"', text).group(1)


def image_tag():
    """The tag containers/build makes by default (= the pipeline's default params.container)."""
    return f"jointphot:{version()}"


def run(cmd, timeout=1800, **kw):
    t0 = time.time()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    proc.output = proc.stdout + proc.stderr
    proc.seconds = time.time() - t0
    return proc


def show(proc, n=6000):
    return f"exit {proc.returncode} after {getattr(proc, 'seconds', 0):.0f} s\n--- output ---\n{proc.output[-n:]}"


# ----------------------------------------------------------------------------- podman + image

def podman_env():
    """os.environ for podman, with CONTAINERS_CONF set when podman's defaults cannot run a container."""
    env = dict(os.environ)
    if shutil.which("podman") is None:
        return env
    if "CONTAINERS_CONF" not in env:
        probe = subprocess.run(["podman", "run", "--rm", "--network=none", image_tag(), "true"],
                               capture_output=True, text=True, timeout=120)
        if probe.returncode != 0:
            env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def build_image():
    """containers/build --no-tractor (installs buildah/podman when missing); returns (tag, env, seconds)."""
    opts = os.environ.get("JOINTPHOT_BUILD_OPTS", "").split()
    try:
        with exclusive("image"):
            proc = run([REPO / "containers" / "build", "--no-tractor", *opts], timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"containers/build did not run: {exc}")
    if proc.returncode != 0:
        if not IN_CI and ("missing tools" in proc.output or "needs root" in proc.output):
            pytest.skip("cannot build the image here: " + proc.output[-1500:])
        pytest.fail("containers/build failed:\n" + show(proc))
    if shutil.which("podman") is None:
        unavailable("podman is not installed (containers/build used another engine)")
    print(f"containers/build: {proc.seconds:.0f} s")
    return image_tag(), podman_env(), proc.seconds


# ----------------------------------------------------------------------------- Nextflow

def get_nextflow():
    try:
        with exclusive("nextflow"):
            out = subprocess.run([str(REPO / "scripts" / "get-nextflow")], capture_output=True, text=True, timeout=1200)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"scripts/get-nextflow did not run: {exc}")
    if out.returncode != 0 or not out.stdout.strip():
        unavailable("no Nextflow launcher (scripts/get-nextflow failed: needs Java 17 and Maven with access "
                    f"to Maven Central, or nextflow on PATH):\n{out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def get_test_data():
    with exclusive("field"):
        if not (TEST_DATA / "truth.fits").exists() or not (TEST_DATA / "job.json").exists():
            exe = shutil.which("jointphot")
            if exe is None:
                unavailable("jointphot is not installed on the host (pip install -e .) to simulate the test field")
            proc = run([exe, "simulate", TEST_DATA], timeout=600)
            assert proc.returncode == 0, show(proc)
    return TEST_DATA


def nextflow_run(nextflow, cwd, *args, env=None, timeout=1800):
    """nextflow run main.nf ARGS in cwd; returns the CompletedProcess (.output, .seconds)."""
    cwd = Path(cwd)
    cwd.mkdir(parents=True, exist_ok=True)
    env = dict(env or os.environ)
    env["NXF_ANSI_LOG"] = "false"
    env["NXF_OPTS"] = (env.get("NXF_OPTS", "") + " -XX:TieredStopAtLevel=1").strip()
    extra = os.environ.get("JOINTPHOT_NF_EXTRA_ARGS", "").split()   # e.g. "-with-dag dag.html" when debugging
    return run([nextflow, "run", REPO / "main.nf", *args, *extra], cwd=str(cwd), env=env, timeout=timeout)


def newest_trace(outdir):
    files = sorted((Path(outdir) / "pipeline_info").glob("execution_trace_*.txt"), key=lambda p: p.stat().st_mtime)
    assert files, f"no trace in {outdir}/pipeline_info"
    with open(files[-1]) as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def step(row):
    return row["process"].split(":")[-1]


def final_rows(rows):
    """The last attempt of every task (by process + tag)."""
    last = {}
    for r in rows:
        key = (step(r), r.get("tag", ""))
        if key not in last or int(r["attempt"]) >= int(last[key]["attempt"]):
            last[key] = r
    return list(last.values())


def assert_all_steps_completed(rows, n_tiles=N_TEST_TILES, status=("COMPLETED",)):
    final = final_rows(rows)
    counts = {}
    for r in final:
        counts[step(r)] = counts.get(step(r), 0) + 1
    # CUTOUT per tile and part: the HR image and the test job's one LR band
    assert counts == {"PLAN": 1, "CUTOUT": 2 * n_tiles, "DETECT": n_tiles, "FIT_HR": n_tiles, "FIT_LR": n_tiles,
                      "MERGE": 1, "QA": 1}, counts
    bad = [(step(r), r.get("tag"), r["status"], r["exit"]) for r in final if r["status"] not in status]
    assert not bad, bad


# ----------------------------------------------------------------------------- truth check

def catalog_path(outdir):
    """The merged catalogue a pipeline run published into `outdir`."""
    path = Path(outdir) / "catalog.fits"
    assert path.exists(), f"no catalogue in {outdir}: {sorted(p.name for p in Path(outdir).iterdir())}"
    return path


def check_catalog(catalog, truth):
    """The truth thresholds of issue 2 (tests/truthcheck.py)."""
    from truthcheck import check_catalog_against_truth
    return check_catalog_against_truth(str(catalog), str(truth))


def job_for(data_dir, workdir, data_prefix=None):
    """The test job (test-data/generated/job.json) with absolute input paths and its own workdir."""
    job = json.loads((Path(data_dir) / "job.json").read_text())
    prefix = Path(data_prefix or data_dir)
    for key, value in list(job.items()):
        if key.endswith(("_name", "_psf")) and isinstance(value, str) and value:
            job[key] = str(prefix / value)
    job["workdir"] = str(workdir)
    job["cutout_output_dir"] = str(Path(workdir) / "cutouts")
    job["sexinputdir"] = str(Path(workdir) / "sextractor_input")
    return job
