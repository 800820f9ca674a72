"""Job files: the original format runs unchanged; bad keys give one clear line and exit 1."""
import json
import os
import subprocess
import sys

import pytest
from astropy.io import fits

from jointphot.jobfile import KEYS, load_job


def jp(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jointphot.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_every_original_key_is_known():
    original = ["workdir", "sexinputdir", "out_prefix", "cutoutsize_arcsec", "cutoutoverlap_arcsec", "cutout_output_dir",
                "hr_compl_niter", "lr_compl_niter", "hr_zp", "lr_zp", "sex_command", "hr_large_image_name",
                "lr_large_image_name", "hr_image_psf", "hr_psf_type", "lr_image_psf", "lr_psf_type",
                "lr_astrometry_correction_name", "hr_astrometry_correction_name", "hr_psf_fwhm_arcsec", "tile_id",
                "spurious_pixel_cut", "hr_wht_image_type", "hr_large_image_wht_name", "hr_ps_niter", "show_plots",
                "ncores", "output_logfile_name", "mainpath", "userinputdir", "run_on_mock"]
    assert set(original) <= set(KEYS)


def test_pre_2020_job_without_late_keys_infers_psf_types(field_copy):
    job = json.load(open(os.path.join(field_copy, "job_seed.json")))
    for key in ("hr_psf_type", "lr_psf_type", "hr_psf_fwhm_arcsec", "spurious_pixel_cut"):
        job.pop(key, None)
    job["lr_image_psf"] = 0.6          # a number meant a Gaussian FWHM
    path = os.path.join(field_copy, "old_job.json")
    json.dump(job, open(path, "w"))
    loaded = load_job(path)
    assert loaded["lr_psf_type"] == "fwhm" and loaded["hr_psf_type"] == "fits" and loaded["spurious_pixel_cut"] == 0


@pytest.mark.parametrize("change,message", [
    ({"nonsense_key": 1}, "unknown key 'nonsense_key'"),
    ({"hr_zp": "25"}, "key 'hr_zp' must be a number"),
    ({"hr_psf_type": "gauss"}, "key 'hr_psf_type' must be one of fits, fwhm, psfex"),
    ({"cutoutsize_arcsec": [30]}, "key 'cutoutsize_arcsec' must be two numbers"),
    ({"hr_large_image_name": "missing.fits"}, "'hr_large_image_name': file 'missing.fits' not found"),
    ({"lr_zp": None}, "required key 'lr_zp' is missing"),
    ({"lr_bands": {"lr_band": "g"}}, "key 'lr_bands' must be a non-empty list of objects"),
    ({"lr_bands": [{"lr_band": "g"}, {"lr_band": "g"}]}, "lr_bands[1]: band name (lr_band) 'g' is used twice"),
    ({"lr_bands": [{"lr_band": "hr"}]}, "lr_bands[0]: band name (lr_band) 'hr' must be a letter followed"),
    ({"lr_bands": [{"lr_band": "g_1"}]}, "lr_bands[0]: band name (lr_band) 'g_1' must be a letter followed"),
    ({"lr_bands": [{"lr_band": "g", "hr_zp": 25}]}, "lr_bands[0]: 'hr_zp' is not a per-band key"),
    ({"lr_bands": [{"lr_band": "g", "lr_zp": "27"}]}, "lr_bands[0]: key 'lr_zp' must be a number"),
    ({"lr_bands": [{"lr_band": "g", "lr_large_image_name": "nope.fits"}]},
     "lr_bands[0]: 'lr_large_image_name': file 'nope.fits' not found"),
    ({"lr_zp": None, "lr_bands": [{"lr_band": "g", "lr_zp": 27}, {"lr_band": "r"}]},
     "lr_bands[1]: required key 'lr_zp' is missing"),
])
def test_bad_job_files_give_one_clear_line(field_copy, change, message, tmp_path):
    job = json.load(open(os.path.join(field_copy, "job.json")))
    job.update(change)
    for key in [k for k, v in change.items() if v is None]:
        del job[key]
    path = tmp_path / "bad.json"
    json.dump(job, open(path, "w"))
    proc = jp("plan", str(path), "-o", str(tmp_path / "plan.json"), cwd=field_copy)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "plan.json").exists()


def test_seed_format_job_runs_unchanged(field_copy, tmp_path):
    """job_seed.json has the original's keys, '/usr/bin/sextractor' and a missing sexinputdir: it still runs
    (its tile_id, 0) and writes a catalogue whose sources lie in tile 0's core."""
    proc = jp("run", "job_seed.json", "-o", str(tmp_path / "seed_catalog.fits"), cwd=field_copy)
    assert proc.returncode == 0, proc.stderr
    with fits.open(tmp_path / "seed_catalog.fits") as hdul:
        cat = hdul[1].data
        assert len(cat) > 40 and set(cat["tile_id"]) == {0}


#: JSON-schema type of each jobfile.KEYS kind ('any' keys: any type).
SCHEMA_TYPE = {"int": "integer", "float": "number", "str": "string", "bool": "boolean", "path": "string",
               "outdir": "string", "dir": "string", "path_or_none": "string", "pair": "array",
               "psf": ["string", "number"], "list": "array", "dict": "object", "choice": "string", "bands": "array"}


def test_band_keys_are_the_schemas_lr_bands_items():
    """jobfile.BAND_KEYS (the per-band keys) are the properties of lr_bands' items in nextflow_schema.json,
    each a reference to the top-level key's definition (lib/Jointphot.groovy bandKeys reads them there)."""
    from jointphot.jobfile import BAND_KEYS
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    defs = json.load(open(os.path.join(repo, "nextflow_schema.json")))["$defs"]
    items = defs["jointphot_job_keys"]["properties"]["lr_bands"]["items"]["properties"]
    assert tuple(items) == BAND_KEYS
    for key, ref in items.items():
        group = ref["$ref"].split("/")[2]
        assert ref["$ref"] == f"#/$defs/{group}/properties/{key}" and key in defs[group]["properties"], key


def test_lr_bands_take_missing_keys_from_the_top_level(field_copy):
    from jointphot.jobfile import band_job, band_names, validate_job
    job = json.load(open(os.path.join(field_copy, "job.json")))
    job["lr_bands"] = [{"lr_band": "i"}, {"lr_band": "z", "lr_zp": 26.5, "lr_image_psf": 0.7}]
    loaded = validate_job(job, field_copy)
    assert band_names(loaded) == ["i", "z"]
    i, z = band_job(loaded, "i"), band_job(loaded, "z")
    assert i["lr_zp"] == job["lr_zp"] and i["lr_psf_type"] == "psfex" and i["lr_image_psf"].endswith(job["lr_image_psf"])
    assert z["lr_zp"] == 26.5 and z["lr_psf_type"] == "fwhm" and z["lr_image_psf"] == 0.7
    assert z["lr_large_image_name"] == i["lr_large_image_name"] and z["hr_zp"] == job["hr_zp"]


def test_job_keys_schema_and_config_agree_key_by_key():
    """Issue 16: jobfile.KEYS is the one definition of the job keys.  Each is a pipeline parameter of
    nextflow_schema.json with the same type, choices and jointphot default (none for required keys and
    keys whose default is worked out at run time), and is in nextflow.config's params as null (not set:
    jointphot applies its default); the schema's job-key groups hold nothing else."""
    import re
    from jointphot.jobfile import CHOICES, REQUIRED
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    defs = json.load(open(os.path.join(repo, "nextflow_schema.json")))["$defs"]
    groovy = open(os.path.join(repo, "lib", "Jointphot.groovy")).read()
    job_groups = re.search(r"JOB_GROUPS = \[([^\]]*)\]", groovy).group(1).replace("'", "").replace(" ", "").split(",")
    in_job_groups = {name: d for g in job_groups for name, d in defs[g]["properties"].items()}
    everywhere = {name: d for g in defs.values() for name, d in g.get("properties", {}).items()}
    config = open(os.path.join(repo, "nextflow.config")).read()
    assert set(in_job_groups) - set(KEYS) == set(), "schema job keys unknown to jobfile.KEYS"
    problems = []
    for key, (kind, default, _) in KEYS.items():
        d = everywhere.get(key)
        if d is None:
            problems.append(f"{key}: not in nextflow_schema.json")
            continue
        if kind != "any" and d.get("type") != SCHEMA_TYPE[kind]:
            problems.append(f"{key}: schema type {d.get('type')!r}, KEYS kind {kind!r}")
        if kind == "choice" and d.get("enum") != list(CHOICES[key]):
            problems.append(f"{key}: schema enum {d.get('enum')!r}, KEYS choices {list(CHOICES[key])!r}")
        expected = None if default is REQUIRED else default
        if d.get("default") != expected:
            problems.append(f"{key}: schema default {d.get('default')!r}, KEYS default {expected!r}")
        in_config = re.search(rf"^\s+{key}\s+=\s+(\S+)", config, re.M)
        wanted = "null" if key in in_job_groups else repr(default)
        if not in_config or in_config.group(1) != wanted:
            problems.append(f"{key}: nextflow.config has {in_config.group(1) if in_config else 'nothing'}, not {wanted}")
    assert not problems, "\n".join(problems)
