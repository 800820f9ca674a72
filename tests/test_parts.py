"""Part plans (`jointphot plan --parts`): what the pipeline gives each task of a tile.  The HR part and a
band's part do not change when another band is added (so -resume re-uses their tasks), each names only the
files its steps read, and the cutouts made part by part are the cutouts made at once."""
from __future__ import annotations

import json
import os

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
