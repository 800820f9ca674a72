"""Bad input (issue 5): every case gives a clear message naming the file, key or tile, a non-zero
exit status, no traceback and no partial output; defects that are not errors (NaN pixels,
pixels with variance <= 0, all-masked or empty tiles, tiles off the LR image) give valid
catalogues.

Each case damages a private copy of a small simulated field (20"x20", one 30" tile: a run takes
a few seconds) with astropy and runs the real `jointphot` (real SExtractor) on it.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits

from jointphot.conventions import FLAGS

WCS_KEYS = ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2",
            "CUNIT1", "CUNIT2")


# --------------------------------------------------------------------------- helpers
def small_field(tmp_path_factory) -> str:
    """A 20" simulated field (made once per session, shared by the issue-5 test modules)."""
    path = tmp_path_factory.getbasetemp() / "small_field_20"
    if not (path / "truth.fits").exists():
        proc = subprocess.run([sys.executable, "-m", "jointphot.cli", "simulate", str(path), "--size-arcsec", "20"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    return str(path)


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    return small_field(tmp_path_factory)


def copy_field(src, dest):
    """Copy the field's files to `dest`; job.json: native engine, no sexinputdir."""
    for name in os.listdir(src):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(dest, name))
    edit_job(str(dest), engine="native", sexinputdir=None)


@pytest.fixture
def case(small, tmp_path):
    """A fresh copy of the small field in tmp_path (job.json: one tile, native engine)."""
    copy_field(small, str(tmp_path))
    return str(tmp_path)


def jp(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "jointphot.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env)


def four_tile_field(tmp_path_factory, name):
    """A private copy of the small field, cut into 2 x 2 tiles of 10.5" (native engine)."""
    src = small_field(tmp_path_factory)
    d = tmp_path_factory.mktemp(name)
    for entry in os.listdir(src):
        if os.path.isfile(os.path.join(src, entry)):
            shutil.copy(os.path.join(src, entry), d / entry)
    edit_job(str(d), cutoutsize_arcsec=[10.5, 10.5], cutoutoverlap_arcsec=[3, 3], tile_id=None, engine="native",
             sexinputdir=None)
    return d


def edit_job(d, **changes):
    path = os.path.join(d, "job.json")
    job = json.load(open(path))
    for key, value in changes.items():
        if value is None:
            job.pop(key, None)
        else:
            job[key] = value
    json.dump(job, open(path, "w"), indent=1)


def edit_fits(path, change):
    """Rewrite a FITS file after `change(hdul)` (which may return a new HDUList)."""
    with fits.open(path) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    hdul = change(hdul) or hdul
    hdul.writeto(path, overwrite=True)


def files_under(d):
    out = []
    for root, _, names in os.walk(d):
        out += [os.path.relpath(os.path.join(root, n), d) for n in names]
    return sorted(out)


def assert_clean_failure(proc, d, *needles):
    """Exit 1, one `jointphot: error:` line with every needle, no traceback, nothing written."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("jointphot: error:")]
    assert errors, proc.stderr
    for needle in needles:
        assert any(needle in line for line in errors), (needle, proc.stderr)
    assert not os.path.exists(os.path.join(d, "work")), files_under(os.path.join(d, "work"))


# --------------------------------------------------------------------------- fail early: nothing is written
def _truncate(path, keep):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:keep(len(data))])


def _drop(extname):
    return lambda d: edit_fits(f"{d}/lr.fits", lambda h: fits.HDUList([x for x in h if x.name != extname]))


def _strip_wcs(path, ext):
    def change(h):
        for key in WCS_KEYS:
            del h[ext].header[key]
    return lambda d: edit_fits(f"{d}/{path}", change)


def _set_header(path, ext, **cards):
    def change(h):
        for key, value in cards.items():
            h[ext].header[key] = value
    return lambda d: edit_fits(f"{d}/{path}", change)


def _shift_lr(d):
    def change(h):
        for name in ("IMAGE", "MASK", "VARIANCE"):
            h[name].header["CRVAL1"] += 1.0       # one degree east: far off the HR image
    edit_fits(f"{d}/lr.fits", change)


def _variance(value):
    def change(h):
        h["VARIANCE"].data[:] = value
    return lambda d: edit_fits(f"{d}/lr.fits", change)


def _psfex(change):
    return lambda d: edit_fits(f"{d}/lr_psf.psf", change)


def _write(name, content):
    def damage(d):
        with open(f"{d}/{name}", "wb") as fh:
            fh.write(content)
    return damage


def _job(**changes):
    return lambda d: edit_job(d, **changes)


def _remove(name):
    return lambda d: os.remove(f"{d}/{name}")


def _lr_3d(h):
    h["IMAGE"].data = np.stack([h["IMAGE"].data] * 2)


EARLY = {
    # missing or unreadable files (the message names the job key and the file)
    "missing_hr_image": (_remove("hr.fits"), ["'hr_large_image_name': file 'hr.fits' not found"]),
    "missing_lr_image": (_remove("lr.fits"), ["'lr_large_image_name': file 'lr.fits' not found"]),
    "missing_hr_weight": (_remove("hr_wht.fits"), ["'hr_large_image_wht_name': file 'hr_wht.fits' not found"]),
    "missing_psf": (_remove("lr_psf.psf"), ["'lr_image_psf': file 'lr_psf.psf' not found"]),
    "missing_astrometry": (_remove("hr_astro.txt"), ["'hr_astrometry_correction_name': file 'hr_astro.txt' not found"]),
    "hr_not_fits": (_write("hr.fits", b"this is not FITS\n" * 200), ["hr_large_image_name", "hr.fits",
                                                                     "not a readable FITS file"]),
    "hr_empty_file": (_write("hr.fits", b""), ["hr_large_image_name", "hr.fits", "not a readable FITS file"]),
    "hr_truncated": (lambda d: _truncate(f"{d}/hr.fits", lambda n: n // 2), ["hr_large_image_name", "hr.fits",
                                                                              "is truncated"]),
    "lr_truncated": (lambda d: _truncate(f"{d}/lr.fits", lambda n: n - 100000), ["lr_large_image_name", "lr.fits",
                                                                                  "is truncated", "VARIANCE"]),
    "hr_is_directory": (lambda d: (os.remove(f"{d}/hr.fits"), os.mkdir(f"{d}/hr.fits")),
                        ["hr_large_image_name", "hr.fits", "is a directory"]),
    # the LR multi-extension layout
    "lr_without_image": (_drop("IMAGE"), ["lr_large_image_name", "lr.fits", "has no IMAGE extension"]),
    "lr_without_mask": (_drop("MASK"), ["lr_large_image_name", "lr.fits", "has no MASK extension"]),
    "lr_without_variance": (_drop("VARIANCE"), ["lr_large_image_name", "lr.fits", "has no VARIANCE extension"]),
    "lr_image_3d": (lambda d: edit_fits(f"{d}/lr.fits", _lr_3d), ["lr.fits", "IMAGE extension is not a 2-D image"]),
    "hr_weight_wrong_shape": (lambda d: edit_fits(f"{d}/hr_wht.fits",
                                                  lambda h: setattr(h[0], "data", h[0].data[:100, :100])),
                              ["hr_large_image_wht_name", "hr_wht.fits", "is 100x100 pixels"]),
    # WCS and overlap
    "no_overlap": (_shift_lr, ["hr.fits", "lr.fits", "do not overlap on the sky"]),
    "hr_without_wcs": (_strip_wcs("hr.fits", 0), ["hr_large_image_name", "hr.fits", "has no celestial WCS"]),
    "lr_without_wcs": (_strip_wcs("lr.fits", "IMAGE"), ["lr_large_image_name", "lr.fits", "has no celestial WCS"]),
    "hr_bad_projection": (_set_header("hr.fits", 0, CTYPE1="RA---XXX"), ["hr_large_image_name", "hr.fits",
                                                                         "invalid WCS"]),
    "hr_zero_cd_matrix": (_set_header("hr.fits", 0, CD1_1=0.0, CD1_2=0.0, CD2_1=0.0, CD2_2=0.0),
                          ["hr_large_image_name", "hr.fits", "pixel scale", "CD1_1"]),
    # PSFs and offsets
    "psfex_missing_key": (_psfex(lambda h: h[1].header.remove("POLZERO1")),
                          ["lr_image_psf", "lr_psf.psf", "keyword POLZERO1 is missing"]),
    "psfex_wrong_size": (_psfex(lambda h: h[1].header.set("PSFAXIS1", 95)), ["lr_image_psf", "lr_psf.psf",
                                                                            "PSF_MASK has"]),
    "psfex_not_fits": (_write("lr_psf.psf", b"garbage"), ["lr_image_psf", "lr_psf.psf", "cannot read PSF file"]),
    "psfex_is_an_image": (lambda d: shutil.copy(f"{d}/lr_psf.fits", f"{d}/lr_psf.psf"),
                          ["lr_image_psf", "lr_psf.psf", "not a PSFEx file"]),
    "psf_image_all_zero": (lambda d: edit_fits(f"{d}/hr_psf.fits", lambda h: h[0].data.fill(0)),
                           ["hr_image_psf", "hr_psf.fits", "non-positive sum"]),
    "astrometry_not_numbers": (_write("lr_astro.txt", b"dRA dDec\n1 2\nfoo bar\n"),
                               ["lr_astrometry_correction_name", "lr_astro.txt", "line 3"]),
    "astrometry_empty": (_write("hr_astro.txt", b""), ["hr_astrometry_correction_name", "hr_astro.txt",
                                                       "no offset rows"]),
    # variance: a plane without any positive value is not a variance
    "variance_all_zero": (_variance(0.0), ["lr_large_image_name", "lr.fits", "VARIANCE", "no positive"]),
    "variance_all_negative": (_variance(-1.0), ["lr_large_image_name", "lr.fits", "VARIANCE", "no positive"]),
    # job files
    "job_wrong_type": (_job(hr_zp="25.9"), ["job.json", "key 'hr_zp' must be a number"]),
    "job_wrong_type_bool": (_job(noise_rescale="yes"), ["job.json", "key 'noise_rescale' must be true or false"]),
    "job_unknown_key": (_job(hr_zeropoint=25.9), ["job.json", "unknown key 'hr_zeropoint'"]),
    "job_missing_key": (_job(hr_zp=None), ["job.json", "required key 'hr_zp' is missing"]),
    "job_not_json": (_write("job.json", b'{"workdir": "work/",}'), ["job.json", "is not valid JSON"]),
    "job_tile_id_out_of_range": (_job(tile_id=7), ["tile_id", "tile 7 does not exist", "1 tile"]),
    "job_tiles_too_small": (_job(cutoutsize_arcsec=[0.01, 0.01]), ["cutoutsize_arcsec", "tiles"]),
    "workdir_under_a_file": (lambda d: (open(f"{d}/afile", "w").close(), edit_job(d, workdir="afile/work")),
                             ["workdir", "afile", "not a directory"]),
}


@pytest.fixture(scope="module")
def early_runs(small, tmp_path_factory):
    """`jointphot run job.json` on a damaged copy per EARLY case, three at a time: {name: (dir, process)}."""
    import concurrent.futures

    def one(name):
        d = str(tmp_path_factory.mktemp(name))
        copy_field(small, d)
        EARLY[name][0](d)
        return name, d, jp("run", "job.json", cwd=d)

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        return {name: (d, proc) for name, d, proc in pool.map(one, sorted(EARLY))}


@pytest.mark.parametrize("name", sorted(EARLY))
def test_bad_input_fails_early_with_a_clear_message(early_runs, name):
    d, proc = early_runs[name]
    assert_clean_failure(proc, d, *EARLY[name][1])


def test_tiles_option_out_of_range(case):
    proc = jp("run", "job.json", "--tiles", "0,5", cwd=case)
    assert_clean_failure(proc, case, "--tiles", "tile 5 does not exist")
    proc = jp("cutout", "job.json", "--tile", "3", cwd=case)
    assert_clean_failure(proc, case, "tile 3 does not exist")
    proc = jp("run", "job.json", "--tiles", "one", cwd=case)
    assert_clean_failure(proc, case, "--tiles", "'one'")


def test_sextractor_missing(case):
    """No SExtractor anywhere on PATH: one message naming sex_command, before any tile runs."""
    edit_job(case, sex_command="/nonexistent/source-extractor")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))
    proc = jp("run", "job.json", cwd=case, env=env)
    assert_clean_failure(proc, case, "sex_command '/nonexistent/source-extractor'", "SExtractor not found")


def test_unreadable_file(case):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    os.chmod(os.path.join(case, "lr.fits"), 0)
    proc = jp("run", "job.json", cwd=case)
    assert_clean_failure(proc, case, "lr_large_image_name", "not readable")


# --------------------------------------------------------------------------- failures inside a tile
def test_sextractor_failing_shows_its_message(case):
    """SExtractor exits non-zero (a setting out of range): its own stderr line is shown, the tile fails,
    and nothing of the failed step (or a catalogue) is left behind."""
    edit_job(case, sextractor_settings={"BACK_SIZE": 0})
    proc = jp("run", "job.json", "--no-qa", cwd=case)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "tile 0 FAILED" in proc.stderr and "BACK_SIZE keyword out of range" in proc.stderr, proc.stderr
    assert "exit code 1" in proc.stderr
    tile = os.path.join(case, "work", "tiles", "0000")
    left = files_under(tile)
    assert not os.path.exists(os.path.join(case, "work", "catalog.fits"))
    assert "no catalogue written" in proc.stdout
    assert "t0000_hr_detections.fits" not in left and ".t0000_detect.done" not in left, left
    assert not [f for f in left if f.startswith((".tmp-", "sextractor_"))], left
    assert {"t0000_hr_cutout.fits", "t0000_lr_cutout.fits", ".t0000_cutout.done"} <= set(left)   # good steps stay
    status = json.load(open(os.path.join(tile, "t0000_status.json")))
    assert status["ok"] is False and "BACK_SIZE" in status["error"]
    assert "BACK_SIZE keyword out of range" in open(os.path.join(tile, "t0000.log")).read()


def test_unknown_sextractor_setting(case):
    edit_job(case, sextractor_settings={"NOT_A_KEYWORD": 1})
    proc = jp("run", "job.json", "--no-qa", cwd=case)
    assert proc.returncode == 1 and "NOT_A_KEYWORD" in proc.stderr and "tile 0" in proc.stderr, proc.stderr


def _catalogue(d):
    with fits.open(os.path.join(d, "work", "catalog.fits")) as hdul:
        return hdul[1].data.copy(), hdul[1].columns.names


def test_nan_and_inf_pixels_are_masked_not_propagated(case):
    def hr(h):
        h[0].data[100:160, 100:160] = np.nan
        h[0].data[300:303, :] = np.inf
    edit_fits(f"{case}/hr.fits", hr)
    edit_fits(f"{case}/hr_wht.fits", lambda h: h[0].data.__setitem__((slice(400, 420), slice(400, 420)), np.nan))

    def lr(h):
        h["IMAGE"].data[50:60, 50:90] = np.nan
        h["IMAGE"].data[10, :] = -np.inf
        h["VARIANCE"].data[70:72, :] = np.nan
    edit_fits(f"{case}/lr.fits", lr)
    proc = jp("run", "job.json", "--no-qa", cwd=case)
    assert proc.returncode == 0, proc.stderr
    cat, _ = _catalogue(case)
    assert len(cat) > 20
    for col in ("hr_flux", "hr_flux_err", "ra", "dec"):
        assert np.all(np.isfinite(cat[col])), col
    # LR: a flux wherever engines.base.MIN_MODEL_ON_DATA of the model is on usable pixels, else NaN and
    # LR_OFF_IMAGE (the NaN rows 50-59 hide a few sources almost entirely)
    from jointphot.conventions import FLAGS
    from jointphot.engines.base import MIN_MODEL_ON_DATA
    on_data = np.asarray(cat["lr_masked_frac"]) < 1 - MIN_MODEL_ON_DATA
    assert on_data.mean() > 0.9
    for col in ("lr_flux", "lr_flux_err"):
        assert np.all(np.isfinite(cat[col][on_data])) and np.all(np.isnan(cat[col][~on_data])), col
    assert np.all(cat["lr_flags"][~on_data] & FLAGS["LR_OFF_IMAGE"])
    tile = os.path.join(case, "work", "tiles", "0000")
    with fits.open(os.path.join(tile, "t0000_hr_cutout.fits")) as hdul:
        sci, wht = hdul[0].data, hdul["WHT"].data
        x0, y0 = hdul[0].header["JP_X0"], hdul[0].header["JP_Y0"]
        assert np.all(np.isfinite(sci)) and np.all(np.isfinite(wht))
        assert np.all(wht[100 - y0:160 - y0, 100 - x0:160 - x0] == 0)     # NaN pixels: zero weight
        assert np.all(wht[300 - y0:303 - y0, :] == 0)                     # inf pixels: zero weight
    for product in ("hr_images", "lr_images"):
        with fits.open(os.path.join(tile, f"t0000_{product}.fits")) as hdul:
            for ext in ("IMAGE", "MODEL", "RESIDUAL"):
                assert np.all(np.isfinite(hdul[ext].data)), (product, ext)


def test_variance_zero_or_negative_pixels_get_zero_weight(case):
    def lr(h):
        h["VARIANCE"].data[20:40, 20:40] = 0.0
        h["VARIANCE"].data[60:70, :] = -1.0
    edit_fits(f"{case}/lr.fits", lr)
    proc = jp("run", "job.json", "--no-qa", cwd=case)
    assert proc.returncode == 0, proc.stderr
    cat, _ = _catalogue(case)
    assert np.isfinite(cat["lr_flux"]).sum() >= len(cat) - 3
    tile = os.path.join(case, "work", "tiles", "0000")
    with fits.open(os.path.join(tile, "t0000_lr_cutout.fits")) as cut, \
            fits.open(os.path.join(tile, "t0000_lr_images.fits")) as out:
        variance, residual = cut["VARIANCE"].data, out["RESIDUAL"].data
    assert np.any(variance <= 0)
    assert np.all(residual[variance <= 0] == 0)        # not used by the LR fit


def test_all_masked_lr_tile_gives_a_catalogue_without_lr_fluxes(case):
    """Every LR pixel of the tile masked (BAD): the HR photometry is kept, LR fluxes are NaN with
    LR_OFF_IMAGE, a warning says so; not a crash."""
    edit_fits(f"{case}/lr.fits", lambda h: h["MASK"].data.fill(1))    # bit 0 = BAD
    proc = jp("run", "job.json", "--no-qa", cwd=case)
    assert proc.returncode == 0, proc.stderr
    assert "none of its" in proc.stderr and "LR_OFF_IMAGE" in proc.stderr, proc.stderr
    cat, _ = _catalogue(case)
    assert len(cat) > 20
    assert np.all(np.isfinite(cat["hr_flux"]))
    assert np.all(np.isnan(cat["lr_flux"]))
    assert np.all(cat["flags"] & FLAGS["LR_OFF_IMAGE"])


@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_empty_hr_tile_gives_a_catalogue_of_lr_only_sources(case, small, fill):
    """An HR tile without data (all 0 or all NaN): no HR detection; a valid catalogue with every column
    whose sources are the LR image's own (issue 14: LR_ONLY, no HR flux), each a true source."""
    edit_fits(f"{case}/hr.fits", lambda h: h[0].data.fill(fill))
    edit_fits(f"{case}/hr_wht.fits", lambda h: h[0].data.fill(0.0))
    proc = jp("run", "job.json", "--no-qa", cwd=case)
    assert proc.returncode == 0, proc.stderr
    cat, names = _catalogue(case)
    assert f"{len(cat)} sources" in proc.stdout
    for col in ("id", "ra", "dec", "hr_flux", "hr_flux_err", "lr_flux", "lr_flux_err", "flags"):
        assert col in names, col
    assert np.all(cat["flags"] & FLAGS["LR_ONLY"]) and np.all(np.isnan(cat["hr_flux"]))
    truth = fits.getdata(os.path.join(case, "truth.fits"), "TRUTH")
    bright = truth[(truth["lr_snr"] > 10) & (truth["lr_masked_frac"] < 0.2)]
    sep = SkyCoord(cat["ra"], cat["dec"], unit="deg").match_to_catalog_sky(SkyCoord(truth["ra"], truth["dec"],
                                                                                      unit="deg"))[1].arcsec
    assert np.all(sep < 0.5), sep                     # nothing spurious
    assert len(cat) >= 0.8 * len(bright), (len(cat), len(bright))


def test_tiles_off_the_lr_image_keep_their_hr_photometry(case):
    """HR and LR overlap only partly: tiles off the LR image are not failures; their sources have HR
    fluxes, no LR flux and LR_OFF_IMAGE."""
    edit_job(case, cutoutsize_arcsec=[10.5, 10.5], cutoutoverlap_arcsec=[3, 3], tile_id=None)

    def shift(h):
        for name in ("IMAGE", "MASK", "VARIANCE"):
            h[name].header["CRPIX1"] += 90           # the LR image moves 15" east: the HR's west half is off it
    edit_fits(f"{case}/lr.fits", shift)
    proc = jp("run", "job.json", "--no-qa", "-j", "2", cwd=case)
    assert proc.returncode == 0, proc.stderr
    assert "LR_OFF_IMAGE" in proc.stderr          # a warning names the tile without LR data
    cat, _ = _catalogue(case)
    # (the shifted LR image's sources no longer fall on HR ones: the residual pass adds them as LR-only)
    cat = cat[(cat["flags"] & FLAGS["LR_ONLY"]) == 0]
    off = (cat["flags"] & FLAGS["LR_OFF_IMAGE"]) != 0
    assert off.any() and (~off).any()
    assert np.all(np.isnan(cat["lr_flux"][off])) and np.all(np.isfinite(cat["hr_flux"]))
    assert np.all(np.isfinite(cat["lr_flux"][~off]))


def test_no_traceback_for_a_damaged_tile_product(case):
    """A per-tile product damaged between steps: the step names the file and says what to do."""
    assert jp("cutout", "job.json", "--tile", "0", cwd=case).returncode == 0
    path = glob.glob(os.path.join(case, "work", "tiles", "0000", "t0000_hr_cutout.fits"))[0]
    open(path, "wb").write(b"broken")
    proc = jp("detect", "job.json", "--tile", "0", cwd=case)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "t0000_hr_cutout.fits" in proc.stderr and "damaged" in proc.stderr
