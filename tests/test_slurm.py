"""The pipeline through a real single-node Slurm (tests/slurm/start: Debian's slurmctld, slurmd,
munge; memory enforced with cgroups), with the image built by containers/build:

* `-profile test,slurm,podman`: every task is a Slurm job running in the image; the catalogue
  passes the truth thresholds; `-resume` re-runs nothing;
* `-profile test,nersc` with the test-only stand-in `shifter` (tests/shifter/shifter: podman,
  read-only, calling uid, inside the Slurm job's cgroup) first on PATH: the nersc profile's own
  task command lines (`shifter --image=IMG /bin/bash ...`) and sbatch options (account, qos,
  constraint) run; the catalogue passes the truth thresholds.  In the same run every CUTOUT
  job asks for 40 MB on its first attempt (tests/slurm/oom.config): Slurm kills it for
  exceeding its memory (exit 137) and the error strategy retries it with more memory.

tests/slurm/local.config only makes Nextflow poll the local cluster faster.
Select with `pytest -m slurm`.  Skipped with the reason when Slurm or podman cannot be
installed (not root, no apt-get), except in CI (CI=true), where that fails.
"""
import os
import subprocess
from pathlib import Path

import pytest

import containerlib as cl

pytestmark = pytest.mark.slurm

SLURM_DIR = Path(os.environ.get("JOINTPHOT_SLURM_DIR", "/tmp/jointphot-slurm-pytest"))
LOCAL_CONFIG = cl.REPO / "tests" / "slurm" / "local.config"
OOM_CONFIG = cl.REPO / "tests" / "slurm" / "oom.config"
STANDIN = cl.REPO / "tests" / "shifter"


@pytest.fixture(scope="session")
def slurm():
    """A running cluster: the one in $SLURM_CONF if it answers, else one started here (stopped after)."""
    if os.environ.get("SLURM_CONF") and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0:
        yield {"SLURM_CONF": os.environ["SLURM_CONF"]}
        return
    if os.geteuid() != 0:
        cl.unavailable("starting Slurm needs root (tests/slurm/start)")
    proc = cl.run([cl.REPO / "tests" / "slurm" / "start", SLURM_DIR], timeout=900)
    if proc.returncode != 0:
        if "no apt-get" in proc.output:
            cl.unavailable("cannot install Slurm here: " + proc.output[-1000:])
        pytest.fail("tests/slurm/start failed:\n" + cl.show(proc))
    print(f"tests/slurm/start: {proc.seconds:.0f} s")
    try:
        yield {"SLURM_CONF": str(SLURM_DIR / "slurm.conf")}
    finally:
        stop = cl.run([cl.REPO / "tests" / "slurm" / "stop", SLURM_DIR], timeout=120)
        print(stop.output)


@pytest.fixture(scope="session")
def image():
    tag, env, _ = cl.build_image()
    return tag, env


@pytest.fixture(scope="module")
def env(slurm, image):
    tag, podman_env = image
    e = dict(podman_env)
    e.update(slurm)
    return e


@pytest.fixture(scope="module")
def nextflow():
    nf = cl.get_nextflow()
    cl.get_test_data()
    return nf


def sbatch_header(workdir):
    return [line for line in (Path(workdir) / ".command.run").read_text().splitlines() if line.startswith("#SBATCH")]


# ----------------------------------------------------------------------------- slurm + podman

@pytest.fixture(scope="module")
def slurm_podman(nextflow, env, image, tmp_path_factory):
    tag, _ = image
    launch = tmp_path_factory.mktemp("nf-slurm-podman")
    outdir = launch / "results"
    args = ["-profile", "test,slurm,podman", "-c", LOCAL_CONFIG, "--outdir", outdir, "--container", tag]
    first = cl.nextflow_run(nextflow, launch, *args, env=env)
    print(f"nextflow -profile test,slurm,podman: {first.seconds:.0f} s")
    first_rows = cl.newest_trace(outdir) if first.returncode == 0 else []
    second = cl.nextflow_run(nextflow, launch, *args, "-resume", env=env) if first.returncode == 0 else None
    if second is not None:
        print(f"nextflow -profile test,slurm,podman -resume: {second.seconds:.0f} s")
    return first, first_rows, second, outdir, tag


def test_slurm_podman_pipeline(slurm_podman):
    first, rows, _, outdir, tag = slurm_podman
    assert first.returncode == 0, cl.show(first)
    cl.assert_all_steps_completed(rows)
    for r in rows:
        assert r["native_id"].isdigit(), ("not a Slurm job id", r["native_id"])   # ran as a Slurm job
        assert r["container"] == tag, r
        header = sbatch_header(r["workdir"])
        assert any(h.startswith("#SBATCH --mem") for h in header), header
        assert "podman run" in (Path(r["workdir"]) / ".command.run").read_text()
    print(cl.check_catalog(cl.catalog_path(outdir), cl.TEST_DATA / "truth.fits"))


def test_slurm_podman_resume_reruns_nothing(slurm_podman):
    first, _, second, outdir, _ = slurm_podman
    assert first.returncode == 0, cl.show(first)
    assert second.returncode == 0, cl.show(second)
    rows = cl.newest_trace(outdir)
    assert rows and all(r["status"] == "CACHED" for r in rows), [(r["name"], r["status"]) for r in rows]
    cl.assert_all_steps_completed(rows, status=("CACHED",))


# ----------------------------------------------------------------------------- nersc profile

@pytest.fixture(scope="module")
def nersc_run(nextflow, env, image, tmp_path_factory):
    tag, _ = image
    launch = tmp_path_factory.mktemp("nf-nersc")
    outdir = launch / "results"
    e = dict(env)
    e["PATH"] = f"{STANDIN}:{e['PATH']}"
    # the stand-in binds these host folders (like Shifter's site mounts): work dir and test data
    e["SHIFTER_STANDIN_VOLUMES"] = f"{launch} {cl.TEST_DATA}"
    proc = cl.nextflow_run(
        nextflow, launch, "-profile", "test,nersc", "-c", LOCAL_CONFIG, "-c", OOM_CONFIG,
        "--outdir", outdir, "--container", tag,
        "--nersc_account", "jointphot-ci", "--nersc_qos", "normal", "--nersc_constraint", "cpu",
        "--nersc_sbatch_image", "false",          # vanilla sbatch has no Shifter --image option
        env=e)
    print(f"nextflow -profile test,nersc (stand-in shifter, OOM retry): {proc.seconds:.0f} s")
    return proc, outdir, tag


def test_nersc_profile_with_standin_shifter(nersc_run):
    proc, outdir, tag = nersc_run
    assert proc.returncode == 0, cl.show(proc)
    rows = cl.newest_trace(outdir)
    cl.assert_all_steps_completed(rows)
    for r in cl.final_rows(rows):
        assert r["native_id"].isdigit(), r["native_id"]
        wrapper = (Path(r["workdir"]) / ".command.run").read_text()
        assert f"shifter --image={tag} /bin/bash" in wrapper, r["workdir"]
        header = " ".join(sbatch_header(r["workdir"]))
        for opt in ("--account=jointphot-ci", "--qos=normal", "--constraint=cpu"):
            assert opt in header, (opt, header)
    print(cl.check_catalog(cl.catalog_path(outdir), cl.TEST_DATA / "truth.fits"))


def test_job_killed_by_slurm_for_memory_is_retried_with_more(nersc_run):
    proc, outdir, _ = nersc_run
    assert proc.returncode == 0, cl.show(proc)
    rows = [r for r in cl.newest_trace(outdir) if cl.step(r) == "CUTOUT"]
    first = [r for r in rows if r["attempt"] == "1"]
    retried = [r for r in rows if r["attempt"] == "2"]
    assert first and all(r["exit"] == "137" and r["status"] == "FAILED" for r in first), \
        [(r["tag"], r["attempt"], r["status"], r["exit"]) for r in rows]
    assert len(retried) == len(first) and all(r["status"] == "COMPLETED" for r in retried)
    # Slurm's cgroup killed it: the job log says so
    log = (Path(first[0]["workdir"]) / ".command.log").read_text() + (Path(first[0]["workdir"]) / ".command.err").read_text()
    print(log[-500:])
    mem = {r["attempt"]: r["memory"] for r in rows}
    assert mem["1"] != mem["2"], mem
    header1 = " ".join(sbatch_header(first[0]["workdir"]))
    header2 = " ".join(sbatch_header(retried[0]["workdir"]))
    assert "--mem 40M" in header1, header1
    assert "--mem 2048M" in header2, header2
