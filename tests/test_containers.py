"""The jointphot image, for real: containers/build (without the Tractor), then

* the image: labels with versions, a non-root default user, no entrypoint, `jointphot --version`;
* `podman run --read-only -u 12345:12345 IMG jointphot run ...` on the test field writes a correct
  catalogue into a bind-mounted folder (how Shifter and podman-hpc run images: any uid,
  read-only root, no entrypoint);
* `nextflow run main.nf -profile test,podman` with the real Nextflow: every process runs in the
  image (trace column `container`, `podman run` in each task's .command.run) and the published
  catalogue passes the truth thresholds.

Select with `pytest -m container`.  Skipped with the reason when podman/buildah cannot be
installed, except in CI (CI=true), where that fails.
"""
import json
import os
from pathlib import Path

import pytest

import containerlib as cl

pytestmark = pytest.mark.container


@pytest.fixture(scope="session")
def image():
    tag, env, seconds = cl.build_image()
    return tag, env


def podman(env, *args, timeout=900):
    return cl.run(["podman", *args], env=env, timeout=timeout)


def test_image_metadata(image):
    tag, env = image
    proc = podman(env, "image", "inspect", tag)
    assert proc.returncode == 0, cl.show(proc)
    cfg = json.loads(proc.stdout)[0]["Config"]
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.version"] == cl.version()
    assert labels["jointphot.version"] == cl.version()
    assert labels["jointphot.sextractor.version"].startswith("2.25")
    assert labels["jointphot.psfex.version"].startswith("3.21")
    assert labels["jointphot.tractor"] == "0"
    assert cfg.get("User") not in (None, "", "0", "root", "0:0")
    assert not cfg.get("Entrypoint")


def test_tools_and_version_inside(image):
    tag, env = image
    proc = podman(env, "run", "--rm", "--read-only", "-u", "12345:12345", tag, "sh", "-c",
                  "jointphot --version && source-extractor --version && psfex --version && id -u && echo HOME=$HOME")
    assert proc.returncode == 0, cl.show(proc)
    assert cl.version() in proc.stdout.splitlines()[0], proc.stdout
    assert "Source Extractor version 2.25" in proc.output
    assert "PSFEx version 3.21" in proc.output
    assert "12345" in proc.stdout and "HOME=/tmp" in proc.stdout


def test_readonly_uid_12345_run_writes_correct_catalogue(image, tmp_path):
    """podman run --read-only -u 12345:12345 IMG jointphot run JOB: catalogue in a bind mount."""
    tag, env = image
    data = cl.get_test_data()
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777)                      # uid 12345 writes here
    job = cl.job_for(data, "/out/work", data_prefix="/data")
    (out / "job.json").write_text(json.dumps(job, indent=1))
    proc = podman(env, "run", "--rm", "--read-only", "-u", "12345:12345", "--network=none",
                  "-v", f"{data}:/data:ro", "-v", f"{out}:/out", "-w", "/out",
                  tag, "jointphot", "run", "/out/job.json", "--tiles", "all", "--jobs", "2", timeout=1800)
    print(f"read-only uid-12345 run: {proc.seconds:.0f} s")
    assert proc.returncode == 0, cl.show(proc)
    catalog = out / "work" / "catalog.fits"
    assert catalog.is_file(), sorted(str(p.relative_to(out)) for p in out.rglob("*"))[:50]
    assert catalog.stat().st_uid == 12345
    print(cl.check_catalog(catalog, data / "truth.fits"))


@pytest.fixture(scope="module")
def podman_pipeline(image, tmp_path_factory):
    tag, env = image
    nextflow = cl.get_nextflow()
    cl.get_test_data()
    launch = tmp_path_factory.mktemp("nf-podman")
    outdir = launch / "results"
    proc = cl.nextflow_run(nextflow, launch, "-profile", "test,podman", "--outdir", outdir,
                           "--container", tag, env=env)
    print(f"nextflow -profile test,podman: {proc.seconds:.0f} s")
    return proc, launch, outdir, tag


def test_pipeline_test_podman(podman_pipeline):
    proc, launch, outdir, tag = podman_pipeline
    assert proc.returncode == 0, cl.show(proc)
    rows = cl.newest_trace(outdir)
    cl.assert_all_steps_completed(rows)
    # every task ran in the image
    assert {r["container"] for r in rows} == {tag}, {r["container"] for r in rows}
    for r in rows:
        wrapper = (Path(r["workdir"]) / ".command.run").read_text()
        assert "podman run" in wrapper and tag in wrapper, r["workdir"]
    print(cl.check_catalog(cl.catalog_path(outdir), cl.TEST_DATA / "truth.fits"))
