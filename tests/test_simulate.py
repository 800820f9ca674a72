"""The GalSim test field: determinism, file layout, truth vs pixels, astrometry files, field statistics."""
import json
import math
import os
import time

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy.special import gammaincinv

from jointphot import conventions
from jointphot.astrometry import read_offsets
from jointphot.psf import load_psf

galsim = pytest.importorskip("galsim")
from jointphot.simulate import HR_ZP, LR_ZP, simulate_field  # noqa: E402  (needs galsim)

ORIGINAL_KEYS = ["workdir", "sexinputdir", "out_prefix", "cutoutsize_arcsec", "cutoutoverlap_arcsec",
                 "cutout_output_dir", "hr_compl_niter", "lr_compl_niter", "hr_zp", "lr_zp", "sex_command",
                 "hr_large_image_name", "lr_large_image_name", "hr_image_psf", "hr_psf_type", "lr_image_psf",
                 "lr_psf_type", "lr_astrometry_correction_name", "hr_astrometry_correction_name",
                 "hr_psf_fwhm_arcsec", "tile_id"]


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("field")
    start = time.perf_counter()
    paths = simulate_field(str(outdir), seed=1)
    elapsed = time.perf_counter() - start
    truth = fits.getdata(paths["truth"], "TRUTH")
    return paths, truth, elapsed


def test_deterministic(tmp_path):
    a = simulate_field(str(tmp_path / "a"), seed=5, size_arcsec=20.0)
    b = simulate_field(str(tmp_path / "b"), seed=5, size_arcsec=20.0)
    c = simulate_field(str(tmp_path / "c"), seed=6, size_arcsec=20.0)
    assert sorted(os.listdir(tmp_path / "a")) == sorted(os.listdir(tmp_path / "b"))
    for key in a:
        with open(a[key], "rb") as fa, open(b[key], "rb") as fb:
            assert fa.read() == fb.read(), key
    with open(a["hr"], "rb") as fa, open(c["hr"], "rb") as fc:
        assert fa.read() != fc.read()


def test_speed(field):
    assert field[2] < 45.0   # target < 30 s; margin for a loaded machine


def test_hr_image_and_weight(field):
    paths, truth, _ = field
    with fits.open(paths["hr"]) as hdul:
        assert len(hdul) == 1 and hdul[0].data.dtype == np.dtype(">f4")
        h = hdul[0].header
        data = hdul[0].data
    assert data.shape == (2000, 2000)
    assert h["CD1_1"] == pytest.approx(-0.03 / 3600) and h["CD2_2"] == pytest.approx(0.03 / 3600)
    assert h["CD1_2"] == 0 and h["CD2_1"] == 0
    ra, dec = WCS(h).wcs_pix2world(999.5, 999.5, 0)
    assert (float(ra), float(dec)) == (pytest.approx(150.1, abs=1e-9), pytest.approx(2.2, abs=1e-9))
    wht = fits.getdata(paths["hr_wht"])
    assert wht.shape == data.shape and (wht > 0).all()
    assert WCS(fits.getheader(paths["hr_wht"])).wcs.compare(WCS(h).wcs)
    # sky-subtracted, Gaussian noise of the weight map's sigma: data * sqrt(wht) ~ N(0, 1) far from sources
    yy, xx = np.mgrid[:2000, :2000]
    far = np.ones(data.shape, bool)
    for x, y in zip(truth["x_hr"], truth["y_hr"]):
        x0, y0 = max(int(x) - 90, 0), max(int(y) - 90, 0)
        cut = np.s_[y0:int(y) + 91, x0:int(x) + 91]
        far[cut] &= np.hypot(xx[cut] - x, yy[cut] - y) > 2.5 / 0.03
    chi = (data * np.sqrt(wht))[far]
    assert far.sum() > 1e5
    assert abs(np.mean(chi)) < 0.02 and chi.std() == pytest.approx(1.0, abs=0.01)


def test_lr_file_layout_and_defects(field):
    paths, truth, _ = field
    with fits.open(paths["lr"]) as hdul:
        assert hdul[0].data is None
        assert [h.name for h in hdul[1:]] == ["IMAGE", "MASK", "VARIANCE"]
        image, mask, var = (hdul[n].data for n in ("IMAGE", "MASK", "VARIANCE"))
        assert image.dtype == np.dtype(">f4") and mask.dtype == np.dtype(">i4") and var.dtype == np.dtype(">f4")
        mh = hdul["MASK"].header
        wcs = WCS(hdul["IMAGE"].header)
    bits, from_header = conventions.mask_bits_from_header(mh)
    assert from_header
    assert bits == {"BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5, "SUSPECT": 7, "NO_DATA": 8}
    # rotated by ~1 degree, 0.168"/px, parity of north up / east left
    cd = wcs.wcs.cd * 3600
    assert math.degrees(math.atan2(cd[0, 1], -cd[0, 0])) == pytest.approx(1.0, abs=0.01)
    assert math.sqrt(abs(np.linalg.det(cd))) == pytest.approx(0.168)
    assert np.linalg.det(cd) < 0
    # covers the HR field with >= 3" to spare
    hr_wcs = WCS(fits.getheader(paths["hr"]))
    corners = np.array([[-0.5, -0.5], [1999.5, -0.5], [-0.5, 1999.5], [1999.5, 1999.5]])
    x, y = wcs.wcs_world2pix(*hr_wcs.wcs_pix2world(corners[:, 0], corners[:, 1], 0), 0)
    ny, nx = image.shape
    margin = 3.0 / 0.168
    assert x.min() > -0.5 + margin and y.min() > -0.5 + margin
    assert x.max() < nx - 0.5 - margin and y.max() < ny - 0.5 - margin
    # defects: a BAD column, a SAT blob with garbage, a NO_DATA strip with zeros, DETECTED footprints
    bad_cols = np.flatnonzero(((mask & 1 << bits["BAD"]) != 0).all(axis=0))
    assert len(bad_cols) == 1
    sat = (mask & 1 << bits["SAT"]) != 0
    assert 5 <= sat.sum() <= 100 and image[sat].min() > 1e4
    nodata = (mask & 1 << bits["NO_DATA"]) != 0
    assert nodata[-1].all() and (image[nodata] == 0).all() and np.isnan(var[nodata]).all()
    assert nodata.sum() > 20 * nx
    assert ((mask & 1 << bits["DETECTED"]) != 0).sum() > 1000
    good = mask & conventions.mask_value(conventions.DEFAULT_LR_IGNORED_PLANES, bits) == 0
    assert np.isfinite(image[good]).all() and (var[good] > 0).all()
    # some sources lose LR flux to the defects
    assert (truth["lr_masked_frac"] > 0.2).sum() >= 3


def test_truth_table(field):
    paths, t, _ = field
    with fits.open(paths["truth"]) as hdul:
        cols = hdul["TRUTH"].columns
        units = dict(zip(cols.names, cols.units))
        header = hdul["TRUTH"].header
    for name in ("id", "ra", "dec", "kind", "hr_flux", "lr_flux", "re_arcsec", "ab", "pa_deg", "sersic_n",
                 "hr_snr", "lr_snr", "isolated"):
        assert name in cols.names
    assert units["ra"] == "deg" and units["hr_flux"] == "count" and units["re_arcsec"] == "arcsec"
    assert units["pa_deg"] == "deg"
    assert header["HR_ZP"] == HR_ZP and header["LR_ZP"] == LR_ZP
    assert len(np.unique(t["id"])) == len(t)
    assert set(t["kind"]) == {"point", "sersic"}
    gal = t["kind"] == "sersic"
    assert 0.7 <= t["sersic_n"][gal].min() and t["sersic_n"][gal].max() <= 4.0
    assert 0.05 <= t["re_arcsec"][gal].min() and t["re_arcsec"][gal].max() <= 0.6
    assert 0.3 <= t["ab"][gal].min() and np.isnan(t["sersic_n"][~gal]).all()
    np.testing.assert_allclose(conventions.counts_to_mag(t["hr_flux"], HR_ZP), t["hr_mag"])
    colour = t["lr_mag"] - t["hr_mag"]
    assert colour.std() > 0.1
    # isolation as documented
    xy = np.c_[t["x_hr"], t["y_hr"]] * 0.03
    d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(d.min(axis=1), t["nearest_arcsec"], atol=1e-6)
    assert (t["isolated"] == (d.min(axis=1) > 2.0)).all()


def test_positions_follow_the_astrometric_offsets(field):
    paths, t, _ = field
    h = fits.getheader(paths["truth"], "TRUTH")
    for img, ext, xcol, ycol, off in (("hr", 0, "x_hr", "y_hr", (h["HR_DRA"], h["HR_DDEC"])),
                                      ("lr", "IMAGE", "x_lr", "y_lr", (h["LR_DRA"], h["LR_DDEC"]))):
        wcs = WCS(fits.getheader(paths[img], ext))
        x, y = wcs.wcs_world2pix(*conventions.reference_to_image(t["ra"], t["dec"], off), 0)
        np.testing.assert_allclose(x, t[xcol], atol=1e-6)
        np.testing.assert_allclose(y, t[ycol], atol=1e-6)
    # the bright isolated stars really are there (HR weighted centroid within 0.03 px)
    hr = fits.getdata(paths["hr"]).astype(float)
    sel = np.flatnonzero(t["isolated"] & (t["kind"] == "point") & (t["hr_snr"] > 200))
    assert len(sel) >= 10
    for i in sel:
        ix, iy = int(round(t["x_hr"][i])), int(round(t["y_hr"][i]))
        if min(ix, iy) < 10 or max(ix, iy) > 1989:
            continue
        cut = hr[iy - 10:iy + 11, ix - 10:ix + 11]
        yy, xx = np.mgrid[-10:11, -10:11]
        for _ in range(20):   # Gaussian-weighted centroid, window sigma 2 px
            dx, dy = t["x_hr"][i] - ix, t["y_hr"][i] - iy
            w = cut * np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / 8.0)
            cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
        assert abs(cx - dx) < 0.03 and abs(cy - dy) < 0.03


def aperture(img, var, x, y, radius):
    """Sum and its 1-sigma noise in a circle of `radius` pixels around 0-based (x, y)."""
    h = int(radius) + 2
    iy, ix = int(round(y)), int(round(x))
    yy, xx = np.mgrid[iy - h:iy + h + 1, ix - h:ix + h + 1]
    inside = np.hypot(xx - x, yy - y) <= radius
    return img[yy[inside], xx[inside]].sum(), math.sqrt(var[yy[inside], xx[inside]].sum())


def test_truth_fluxes_match_pixel_sums(field):
    """Aperture sums of isolated bright sources equal the truth flux within the noise."""
    paths, t, _ = field
    hr = fits.getdata(paths["hr"]).astype(float)
    hr_var = 1.0 / fits.getdata(paths["hr_wht"]).astype(float)
    lr = fits.getdata(paths["lr"], "IMAGE").astype(float)
    lr_var = fits.getdata(paths["lr"], "VARIANCE").astype(float)
    point = t["kind"] == "point"
    n = np.where(point, 1.0, t["sersic_n"])
    r99 = np.where(point, 0.0, t["re_arcsec"] * (gammaincinv(2 * n, 0.99) / gammaincinv(2 * n, 0.5)) ** n)
    edge = np.minimum.reduce([t["x_hr"], t["y_hr"], 1999 - t["x_hr"], 1999 - t["y_hr"]]) * 0.03
    base = t["isolated"] & (edge > 2.0) & (t["lr_masked_frac"] == 0)
    alpha = 0.6 / 0.168 / (2 * math.sqrt(2 ** (1 / 3) - 1))       # Moffat beta = 3, pixels
    r_lr = 1.5 / 0.168
    cases = [  # (image, var, x, y, radius px, flux, selection, enclosed fraction)
        (hr, hr_var, "x_hr", "y_hr", 0.5 / 0.03, "hr_flux", base & point & (t["hr_snr"] > 20), 1.0),
        (hr, hr_var, "x_hr", "y_hr", 1.6 / 0.03, "hr_flux", base & ~point & (t["hr_snr"] > 20) & (r99 < 1.0), 1.0),
        (lr, lr_var, "x_lr", "y_lr", r_lr, "lr_flux", base & (r99 < 0.3) & (t["lr_snr"] > 20)
         & (t["nearest_arcsec"] > 3.0), 1 - (1 + (r_lr / alpha) ** 2) ** -2),
    ]
    for img, var, xc, yc, radius, fc, sel, frac in cases:
        chi, ratio = [], []
        for i in np.flatnonzero(sel):
            total, err = aperture(img, var, t[xc][i], t[yc][i], radius)
            chi.append((total - frac * t[fc][i]) / err)
            ratio.append(total / (frac * t[fc][i]))
        assert len(chi) >= 8, fc
        chi = np.array(chi)
        assert np.abs(chi).max() < 4.5, (fc, chi)
        assert abs(np.median(chi)) < 1.0
        assert np.median(ratio) == pytest.approx(1.0, abs=0.01)


def test_astrometry_files_have_the_true_median(field):
    paths, _, _ = field
    assert read_offsets(paths["hr_astro"], "hr") == (12.0, -8.0)
    assert read_offsets(paths["lr_astro"], "lr") == (-45.0, 30.0)
    rows = np.loadtxt(paths["lr_astro"], skiprows=1)
    assert rows.shape[0] >= 20 and rows[:, 0].std() > 1.0


def test_psf_files(field):
    paths, _, _ = field
    hr_fits = load_psf(paths["hr_psf"], "fits", 0.03)
    hr_fwhm = load_psf(0.1, "fwhm", 0.03)
    m = min(hr_fits.image.shape[0], hr_fwhm.image.shape[0])
    crop = lambda a: a[(a.shape[0] - m) // 2:(a.shape[0] + m) // 2, (a.shape[1] - m) // 2:(a.shape[1] + m) // 2]  # noqa: E731
    assert np.abs(crop(hr_fits.image) - crop(hr_fwhm.image)).max() < 2e-3 * hr_fwhm.image.max()
    hr_psfex = load_psf(paths["hr_psfex"], "psfex", 0.03, psfex_mag=21.0)
    assert fits.getheader(paths["hr_psfex"], 1)["POLNAME1"] == "MAG_AUTO"
    assert np.abs(crop(hr_psfex.image) - crop(hr_fits.image)).max() < 2e-3 * hr_fits.image.max()
    lr_fits = load_psf(paths["lr_psf"], "fits", 0.168, what="lr")
    h = fits.getheader(paths["lr_psfex"], 1)
    assert (h["POLNAME1"], h["POLNAME2"], h["POLDEG1"], h["PSF_SAMP"]) == ("X_IMAGE", "Y_IMAGE", 2, 0.5)
    for pos in [(1, 1), (200.5, 300.5), (400, 400)]:
        lr_psfex = load_psf(paths["lr_psfex"], "psfex", 0.168, position=pos, what="lr")
        assert lr_psfex.image.shape == lr_fits.image.shape and lr_psfex.image.shape[0] % 2 == 1
        assert np.abs(lr_psfex.image - lr_fits.image).max() < 2e-3 * lr_fits.image.max()


def test_job_files(field):
    paths, _, _ = field
    root = os.path.dirname(paths["job"])
    seed = json.load(open(paths["job_seed"]))
    assert list(seed) == ORIGINAL_KEYS[:-1] + ["spurious_pixel_cut", "tile_id"]
    assert (seed["hr_psf_type"], seed["lr_psf_type"]) == ("fits", "psfex")
    assert (seed["sex_command"], seed["sexinputdir"]) == ("/usr/bin/sextractor", "../sextractor_input/")
    assert (seed["cutoutsize_arcsec"], seed["cutoutoverlap_arcsec"], seed["tile_id"]) == ([30, 30], [6, 6], 0)
    assert seed["workdir"] == "work/"
    job = json.load(open(paths["job"]))
    assert set(ORIGINAL_KEYS) < set(job)
    assert (job["hr_large_image_wht_name"], job["hr_wht_image_type"]) == ("hr_wht.fits", "MAP_WEIGHT")
    for content in (seed, job):
        for key in ("hr_large_image_name", "lr_large_image_name", "hr_image_psf", "lr_image_psf",
                    "hr_astrometry_correction_name", "lr_astrometry_correction_name"):
            assert os.path.isfile(os.path.join(root, content[key])), key
    assert os.path.isfile(os.path.join(root, job["hr_large_image_wht_name"]))


def test_field_statistics(field):
    """The numbers the end-to-end tests rely on (default 60" field)."""
    _, t, _ = field
    iso = t["isolated"]
    assert (iso & (t["hr_snr"] > 20)).sum() >= 150
    assert ((t["hr_snr"] > 5) & (t["hr_snr"] < 20)).sum() >= 40
    assert ((t["hr_snr"] > 10) & (t["hr_snr"] < 20)).sum() >= 20
    pairs = t["pair_id"][t["pair_id"] > 0]
    assert len(np.unique(pairs)) >= 15
    for k in np.unique(pairs):
        a, b = np.flatnonzero(t["pair_id"] == k)
        sep = math.hypot(t["x_hr"][a] - t["x_hr"][b], t["y_hr"][a] - t["y_hr"][b]) * 0.03
        assert 0.3 <= sep <= 1.0
    assert 0.08 < np.mean(t["kind"] == "point") < 0.25
    # the LR S/N of a typical source is below its HR S/N
    assert np.median(t["lr_snr"] / t["hr_snr"]) < 0.7
    assert np.mean(t["lr_snr"] < t["hr_snr"]) > 0.8
