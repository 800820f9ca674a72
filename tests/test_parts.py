"""Part plans (`jointphot plan --parts`): what the pipeline gives each task of a tile.  The HR part and a
band's part do not change when another band is added (so -resume re-uses their tasks), each names only the
files its steps read, and the cutouts made part by part are the cutouts made at once."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from jointphot import plan as plan_mod
from jointphot.errors import JointphotError
from jointphot.jobfile import INPUT_KEYS
from jointphot.pipeline import run_step

TILE = 3


def _job_file(field, directory, bands):
    """The field's job with absolute paths and LR bands `bands` (every band on the field's LR image)."""
    with open(os.path.join(field, "job.json")) as fh:
        job = json.load(fh)
    for key in INPUT_KEYS:
        if isinstance(job.get(key), str) and os.path.exists(os.path.join(field, job[key])):
            job[key] = os.path.join(field, job[key])
    job.update(workdir=str(directory / "work"), lr_bands=[{"lr_band": b, "lr_zp": 27.0 + i} for i, b in enumerate(bands)])
    job.pop("lr_band", None)
    path = directory / f"job_{'_'.join(bands)}.json"
    path.write_text(json.dumps(job))
    return str(path)


@pytest.fixture(scope="module")
def plans(field, tmp_path_factory):
    directory = tmp_path_factory.mktemp("parts")
    return {n: plan_mod.load(_job_file(field, directory, bands)) for n, bands in (("one", ["lr"]),
                                                                                   ("two", ["lr", "g"]))}


def test_parts_do_not_change_when_a_band_is_added(plans):
    for part in ("hr", "lr"):
        assert plan_mod.part_plan(plans["one"], part, TILE) == plan_mod.part_plan(plans["two"], part, TILE), part
    assert plan_mod.part_plan(plans["one"], "lr", TILE) != plan_mod.part_plan(plans["two"], "g", TILE)
    hr = plan_mod.part_plan(plans["two"], "hr", TILE)
    assert hr["bands"] == {} and hr["job"]["lr_bands"] == [] and "lr_zp" not in hr["job"]
    assert [t["tile_id"] for t in hr["tiles"]] == [TILE] and list(hr["tiles"][0]["psf_position"]) == ["hr"]
    g = plan_mod.part_plan(plans["two"], "g", TILE)
    assert list(g["bands"]) == ["g"] and g["job"]["lr_zp"] == 28.0 and sorted(g["astrometry_offsets_mas"]) == ["g", "hr"]


def test_parts_name_only_the_files_their_steps_read(plans, field):
    job = plans["two"]["job"]
    hr = plan_mod.part_inputs(plan_mod.part_plan(plans["two"], "hr"))
    assert hr["cutout"] == sorted([job["hr_large_image_name"], job["hr_large_image_wht_name"]])
    assert job["hr_image_psf"] in hr["steps"] and job["lr_image_psf"] not in hr["steps"]
    g = plan_mod.part_inputs(plan_mod.part_plan(plans["two"], "g"))
    assert g["cutout"] == [job["lr_large_image_name"]]
    assert job["lr_image_psf"] in g["steps"] and job["hr_image_psf"] not in g["steps"]


def test_cutouts_part_by_part_are_the_cutouts_at_once(plans, tmp_path):
    plan = plans["two"]
    run_step("cutout", plan, TILE, str(tmp_path / "once"))
    run_step("cutout", plan_mod.part_plan(plan, "hr", TILE), TILE, str(tmp_path / "parts"))
    for band in plan["bands"]:
        run_step("cutout", plan_mod.part_plan(plan, band, TILE), TILE, str(tmp_path / "parts"), band=band)
    names = sorted(os.listdir(tmp_path / "once"))
    assert [n for n in names if n.endswith(".fits")] == [f"t{TILE:04d}_{p}_cutout.fits" for p in ("g", "hr", "lr")]
    for name in (n for n in names if n.endswith(".fits")):
        with fits.open(tmp_path / "once" / name) as once, fits.open(tmp_path / "parts" / name) as parts:
            assert len(once) == len(parts)
            for a, b in zip(once, parts):
                assert a.header == b.header, name
                assert (a.data is None and b.data is None) or np.array_equal(a.data, b.data, equal_nan=True), name


def test_a_part_without_the_band_or_tile_is_named(plans):
    with pytest.raises(JointphotError, match="band 'z' is not in this job"):
        plan_mod.part_plan(plans["two"], "z")
    with pytest.raises(JointphotError, match=f"tile 0 is not in this part plan .*tile\\(s\\) {TILE}"):
        plan_mod.get_tile(plan_mod.part_plan(plans["two"], "hr", TILE), 0)
    with pytest.raises(JointphotError, match="step 'detect' runs for the HR image"):
        run_step("detect", plans["two"], TILE, "unused", band="g")


def _task_dir(directory, task_plan, staged):
    """A pipeline task's directory: `staged` files copied to their staged locations and tile_plan.json."""
    os.makedirs(directory)
    for i, f in enumerate(staged, 1):
        dest = os.path.join(directory, plan_mod.STAGED_INPUT.format(index=i, name=os.path.basename(f)))
        os.makedirs(os.path.dirname(dest))
        (shutil.copytree if os.path.isdir(f) else shutil.copy)(f, dest)
    with open(os.path.join(directory, "tile_plan.json"), "w") as fh:
        json.dump(task_plan, fh)
    return directory


def test_task_plans_hold_no_host_path_and_run_from_copies_elsewhere(plans, tmp_path):
    """The parts written for the pipeline: each task's plan names its staged files only (inputs/in<i>/<name>, the
    others not-staged/<name>); the steps run from copies of the inputs in another directory give the cutouts and
    detections of the plan made next to the inputs."""
    plan = plans["two"]
    written = {os.path.basename(p)[:-5]: json.load(open(p)) for p in plan_mod.write_parts(plan, str(tmp_path / "parts"))}
    assert sorted(written) == ["g", "hr", "lr"]
    host = [v for k, v in plan["job"].items() if k in INPUT_KEYS and isinstance(v, str)]
    assert host and all(os.path.isabs(p) for p in host)
    for name, content in written.items():
        assert content["inputs"] == plan_mod.part_inputs(plan_mod.part_plan(plan, name))
        for step, task_plan in content["plans"].items():
            text = json.dumps(task_plan)
            assert not any(p in text for p in host) and '"/' not in text, (name, step)
            assert task_plan["job_hash"] == plan_mod.part_plan(plan, name)["job_hash"]
    # HR part: cutout, then detect, each in its own task directory far from the inputs; the band g: its cutout
    tasks = tmp_path / "elsewhere"
    expected = tmp_path / "host"
    run_step("cutout", plan, TILE, str(expected))
    run_step("detect", plan, TILE, str(expected))
    cwd = os.getcwd()
    try:
        for part, step, band in (("hr", "cutout", None), ("g", "cutout", "g"), ("hr", "steps", None)):
            content = written[part]
            task = _task_dir(str(tasks / f"{part}_{step}"), content["plans"][step], content["inputs"][step])
            os.chdir(task)
            task_plan = plan_mod.load("tile_plan.json")
            if step == "steps":
                shutil.copy(tasks / "hr_cutout" / f"t{TILE:04d}_hr_cutout.fits", task)
                run_step("detect", task_plan, TILE, ".")
            else:
                run_step("cutout", task_plan, TILE, ".", band=band)
    finally:
        os.chdir(cwd)
    for task, name in (("hr_cutout", "hr_cutout"), ("g_cutout", "g_cutout"), ("hr_steps", "hr_detections")):
        with fits.open(tasks / task / f"t{TILE:04d}_{name}.fits") as got, \
                fits.open(expected / f"t{TILE:04d}_{name}.fits") as want:
            assert len(got) == len(want), name
            for a, b in zip(got, want):
                same = (a.data is None and b.data is None) or (
                    np.array_equal(a.data, b.data, equal_nan=True) if a.is_image else np.all(a.data == b.data))
                assert same, (name, a.name)


def test_plan_records_the_paths_as_given(field, tmp_path):
    """`jointphot plan --as-given` (the PLAN task, whose job names staged copies of the files): plan.json and the
    parts name the files as the user gave them."""
    given_file = _job_file(field, tmp_path, ["lr"])
    job = json.load(open(given_file))
    keys = [k for k in INPUT_KEYS if isinstance(job.get(k), str) and os.path.isfile(job[k])]
    given = {k: job[k] for k in keys}
    task = tmp_path / "task"
    for i, key in enumerate(keys, 1):
        job[key] = plan_mod.STAGED_INPUT.format(index=i, name=os.path.basename(given[key]))
        os.makedirs(task / os.path.dirname(job[key]))
        os.symlink(given[key], task / job[key])
    (task / "staged_job.json").write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, "-m", "jointphot.cli", "plan", "staged_job.json", "-o", "plan.json",
                           "--parts", "parts", "--as-given", given_file], cwd=task, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    recorded = json.load(open(task / "plan.json"))["job"]
    assert {k: recorded[k] for k in keys} == given
    assert json.load(open(task / "parts" / "hr.json"))["inputs"]["cutout"] == \
        sorted(given[k] for k in ("hr_large_image_name", "hr_large_image_wht_name"))
    other = dict(json.load(open(given_file)), lr_bands=[{"lr_band": "g"}, {"lr_band": "z"}])
    (tmp_path / "other.json").write_text(json.dumps(other))
    proc = subprocess.run([sys.executable, "-m", "jointphot.cli", "plan", "staged_job.json", "-o", "plan2.json",
                           "--as-given", str(tmp_path / "other.json")], cwd=task, capture_output=True, text=True)
    assert proc.returncode != 0 and "other.json' is not the job" in proc.stderr and "Traceback" not in proc.stderr
    assert not (task / "plan2.json").exists()
