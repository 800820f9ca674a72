"""The GalSim test field: determinism, file layout, truth vs pixels, astrometry files, field statistics;
the simulate options that break the fitter's assumptions (truth fluxes, noise correlations, PSF files)."""
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
from jointphot.simulate import (ELECTRONS_PER_COUNT, HR_ZP, LR_MASK_PLANES, LR_ZP, TRUNCATION,  # noqa: E402
                                galaxy_profiles, simulate_field)  # (needs galsim)

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
    assert set(ORIGINAL_KEYS) - {"sexinputdir"} < set(job) and "sexinputdir" not in job   # no warning
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


# --- options that break the fitter's assumptions (issues 12, 13); small fields, each a few seconds ---------------

NOISELESS = {"hr_depth_mag": 45.0, "lr_depth_mag": 45.0}   # pixel noise ~1e-7 of the faintest source


def read_lr(path):
    """IMAGE, VARIANCE (float) and valid (not on an ignored mask plane) of an LR file."""
    with fits.open(path) as hdul:
        image, var = hdul["IMAGE"].data.astype(float), hdul["VARIANCE"].data.astype(float)
        valid = (hdul["MASK"].data & conventions.mask_value(conventions.DEFAULT_LR_IGNORED_PLANES, LR_MASK_PLANES)) == 0
    return image, var, valid


def lr_valid_sum_vs_truth(paths, truth):
    """(sum of the LR image over valid pixels, sum of truth lr_flux x (1 - lr_masked_frac))."""
    image, _, valid = read_lr(paths["lr"])
    return image[valid].sum(), np.sum(truth["lr_flux"] * (1.0 - truth["lr_masked_frac"]))


def row_dict(truth, i):
    return {name: truth[name][i] for name in truth.names}


def test_truncated_galaxies_hold_their_truth_flux(tmp_path):
    paths = simulate_field(str(tmp_path), seed=7, size_arcsec=20.0, galaxies="truncated", **NOISELESS)
    t = fits.getdata(paths["truth"], "TRUTH")
    assert fits.getheader(paths["truth"], "TRUTH")["GALAXIES"] == "truncated"
    gal = t["kind"] == "sersic"
    cut = gal & (t["sersic_n"] > 1.5)
    np.testing.assert_allclose(t["trunc_arcsec"][cut], TRUNCATION * t["re_arcsec"][cut])
    assert (t["trunc_arcsec"][~cut] == 0).all() and cut.sum() >= 10
    # one isolated source, no noise: the drawn (PSF-convolved, pixelised) stamp sums to the truth flux,
    # where the untruncated profile of the same n and half-light radius loses > 1 % beyond 8 r_e
    psf = galsim.Gaussian(fwhm=0.1)
    i = np.flatnonzero(cut)[np.argmax(t["sersic_n"][cut])]
    profile, _, radius = galaxy_profiles(galsim, row_dict(t, i))
    half = int(math.ceil((radius + 0.6) / 0.03))

    def drawn(p):
        return galsim.Convolve(p.withFlux(t["hr_flux"][i]), psf).drawImage(
            nx=2 * half + 1, ny=2 * half + 1, scale=0.03, method="auto").array.sum()

    assert radius == t["trunc_arcsec"][i]
    assert drawn(profile) / t["hr_flux"][i] == pytest.approx(1.0, abs=1e-3)
    untruncated = galsim.Sersic(n=t["sersic_n"][i], half_light_radius=t["re_arcsec"][i] * math.sqrt(t["ab"][i])).shear(
        q=t["ab"][i], beta=(90 + t["pa_deg"][i]) * galsim.degrees)
    assert t["sersic_n"][i] > 3 and drawn(untruncated) / t["hr_flux"][i] < 0.99
    # the whole noiseless LR image holds the truth fluxes (the LR image covers the HR field + 3.5")
    image_sum, truth_sum = lr_valid_sum_vs_truth(paths, t)
    assert image_sum / truth_sum == pytest.approx(1.0, abs=1e-3)


def test_composite_truth_lr_flux_is_the_drawn_lr_flux(tmp_path):
    paths = simulate_field(str(tmp_path), seed=8, size_arcsec=20.0, galaxies="composite", star_fraction=0.0,
                           **NOISELESS)
    t = fits.getdata(paths["truth"], "TRUTH")
    assert set(t["kind"]) == {"composite"} and np.isnan(t["sersic_n"]).all()
    knotty = t["n_knots"] > 0
    assert 0.25 < knotty.mean() < 0.75
    assert (t["knot_frac_hr"][~knotty] == 0).all() and (t["knot_frac_hr"][knotty] > 0).all()
    # a colour gradient: bulge redder, knots bluer (LR/HR) than the disc
    assert (t["bulge_lr_hr"] < t["disc_lr_hr"]).all() and (t["knot_lr_hr"][knotty] > t["disc_lr_hr"][knotty]).all()
    np.testing.assert_allclose(t["trunc_arcsec"], TRUNCATION * t["bulge_re_arcsec"])
    disc = 1.0 - t["bulge_frac_hr"] - t["knot_frac_hr"]
    components = t["bulge_frac_hr"] * t["bulge_lr_hr"] + disc * t["disc_lr_hr"] + t["knot_frac_hr"] * t["knot_lr_hr"]
    np.testing.assert_allclose(t["lr_flux"], t["hr_flux"] * components, rtol=1e-12)
    np.testing.assert_allclose(conventions.counts_to_mag(t["lr_flux"], LR_ZP), t["lr_mag"])
    # the noiseless LR image: galaxies only, so its flux is the composites' LR truth
    image_sum, truth_sum = lr_valid_sum_vs_truth(paths, t)
    assert image_sum / truth_sum == pytest.approx(1.0, abs=1e-3)
    # and a single-colour LR truth (lr_flux = disc colour x hr_flux) would be off by > 1 %
    assert abs(np.sum(t["disc_lr_hr"] * t["hr_flux"] * (1 - t["lr_masked_frac"])) / image_sum - 1) > 0.01
    # the profiles are rebuilt from the truth row alone: unit flux in HR and in LR, different shapes
    i = np.flatnonzero(knotty)[0]
    hr, lr, _ = galaxy_profiles(galsim, row_dict(t, i))
    assert hr.flux == pytest.approx(1.0) and lr.flux == pytest.approx(1.0)
    a, b = (galsim.Convolve(p, galsim.Gaussian(fwhm=0.1)).drawImage(nx=64, ny=64, scale=0.03).array for p in (hr, lr))
    assert np.abs(a - b).sum() > 0.02


def test_cosmos_hr_noise_is_correlated_with_the_weight_maps_variance(tmp_path):
    paths = simulate_field(str(tmp_path), seed=9, size_arcsec=15.0, hr_noise="cosmos", hr_depth_mag=15.0)
    chi = fits.getdata(paths["hr"]).astype(float) * np.sqrt(fits.getdata(paths["hr_wht"]).astype(float))
    assert chi.var() == pytest.approx(1.0, rel=0.05)
    for corr in (np.mean(chi[:, 1:] * chi[:, :-1]), np.mean(chi[1:] * chi[:-1])):
        assert 0.4 < corr < 0.55
    h = fits.getheader(paths["truth"], "TRUTH")
    assert h["HR_NOISE"] == "cosmos" and h["HR_NCORR"] == pytest.approx(0.48, abs=0.01) and h["HR_NVF"] > 3
    assert h["LR_NOISE"] == "white" and h["LR_NVF"] == 1.0


def test_warped_lr_noise_keeps_the_variance_plane(tmp_path):
    paths = simulate_field(str(tmp_path), seed=10, size_arcsec=15.0, lr_noise="warped", lr_depth_mag=13.0)
    image, var, valid = read_lr(paths["lr"])
    h = fits.getheader(paths["truth"], "TRUTH")
    assert valid.sum() > 10000
    np.testing.assert_allclose(var[valid], np.float32(h["LR_SIG"] ** 2))
    chi = np.where(valid, image / np.sqrt(np.where(valid, var, 1.0)), np.nan)
    assert np.nanvar(chi) == pytest.approx(1.0, rel=0.05)
    corr = np.nanmean(chi[:, 1:] * chi[:, :-1])
    assert h["LR_NCORR"] > 0.15 and corr == pytest.approx(h["LR_NCORR"], abs=0.03)
    assert 0.3 <= h["LR_WARPX"] <= 0.7 and h["LR_NVF"] > 1.2


def test_poisson_noise_is_in_variance_not_in_the_weight_map(tmp_path):
    kw = dict(seed=12, size_arcsec=30.0, star_fraction=0.8, star_mags=(17.0, 20.0))
    plain = simulate_field(str(tmp_path / "plain"), **kw)
    shot = simulate_field(str(tmp_path / "shot"), poisson=True, **kw)
    h = fits.getheader(shot["truth"], "TRUTH")
    assert (h["POISSON"], h["HR_GAIN"], h["LR_GAIN"]) == (True, ELECTRONS_PER_COUNT["hr"], ELECTRONS_PER_COUNT["lr"])
    with open(plain["hr_wht"], "rb") as a, open(shot["hr_wht"], "rb") as b:
        assert a.read() == b.read()
    # HR: same sky noise draws, so the difference is the shot noise alone (model ~ plain image where bright)
    hr_plain = fits.getdata(plain["hr"]).astype(float)
    diff = fits.getdata(shot["hr"]).astype(float) - hr_plain
    bright = hr_plain > 100 * h["HR_SIG"]
    assert bright.sum() > 500
    assert np.std(diff[bright] / np.sqrt(hr_plain[bright] / h["HR_GAIN"])) == pytest.approx(1.0, abs=0.07)
    # LR: VARIANCE = sky + model / gain, and it is the per-pixel variance where the shot noise dominates
    image, var, valid = read_lr(shot["lr"])
    sky = h["LR_SIG"] ** 2
    model = (var - sky) * h["LR_GAIN"]
    shot_dominated = valid & (var > 2 * sky)
    assert shot_dominated.sum() > 300
    chi = (image - model) / np.sqrt(var)
    assert np.std(chi[shot_dominated]) == pytest.approx(1.0, abs=0.07)


def test_psf_files_hold_the_stated_light_fraction(tmp_path):
    whole = simulate_field(str(tmp_path / "whole"), seed=13, size_arcsec=10.0)
    cut = simulate_field(str(tmp_path / "cut"), seed=13, size_arcsec=10.0, psf_light_fraction=(0.9, 0.95))
    h = fits.getheader(cut["truth"], "TRUTH")
    assert h["HR_PSFLF"] == pytest.approx(0.9, abs=0.03) and h["LR_PSFLF"] == pytest.approx(0.95, abs=0.01)
    for key in ("hr", "lr", "hr_wht"):     # the images are drawn with the whole PSF
        with open(whole[key], "rb") as a, open(cut[key], "rb") as b:
            assert a.read() == b.read(), key
    # hr_psf.fits (the job's HR PSF): the whole ePSF inside a radius, renormalised; HR_PSFLF of its light
    full = fits.getdata(whole["hr_psf"]).astype(float)
    kept = fits.getdata(cut["hr_psf"]).astype(float)
    inside = kept > 0
    assert kept.sum() == pytest.approx(1.0, abs=1e-5) and (~inside).sum() > inside.sum()
    assert full[inside].sum() == pytest.approx(h["HR_PSFLF"], abs=1e-3)
    np.testing.assert_allclose(kept[inside], full[inside] / full[inside].sum(), rtol=1e-5)
    # lr_psf.psf (the job's LR PSF): likewise on the PSFEx grid
    full = fits.getdata(whole["lr_psfex"], 1)["PSF_MASK"][0][0].astype(float)
    kept = fits.getdata(cut["lr_psfex"], 1)["PSF_MASK"][0][0].astype(float)
    inside = kept > 0
    assert full[inside].sum() / full.sum() == pytest.approx(h["LR_PSFLF"], abs=1e-3)
    np.testing.assert_allclose(kept[inside] / kept.sum(), full[inside] / full[inside].sum(), rtol=1e-5)


def test_source_counts_options(tmp_path):
    paths = simulate_field(str(tmp_path), seed=14, size_arcsec=30.0, star_fraction=0.5, star_mags=(22.0, 26.0),
                           galaxy_mags=(21.0, 25.5))
    t = fits.getdata(paths["truth"], "TRUTH")
    star = t["kind"] == "point"
    assert 0.4 < star.mean() < 0.6
    assert 22.0 <= t["hr_mag"][star].min() and t["hr_mag"][star].max() <= 26.0
    assert 21.0 <= t["hr_mag"][~star].min() and t["hr_mag"][~star].max() <= 25.5
    h = fits.getheader(paths["truth"], "TRUTH")
    assert (h["STARFRAC"], h["STARMAG1"], h["GALMAG2"], h["GALAXIES"]) == (0.5, 22.0, 25.5, "truncated")


def test_bad_options_are_one_clear_error(tmp_path):
    from jointphot.errors import JointphotError
    for kw, word in ((dict(galaxies="bulgy"), "galaxies"), (dict(hr_noise="pink"), "hr_noise"),
                     (dict(lr_noise="pink"), "lr_noise"), (dict(psf_light_fraction=(1.2, 1.0)), "psf_light_fraction"),
                     (dict(star_fraction=-0.1), "star_fraction")):
        with pytest.raises(JointphotError, match=word):
            simulate_field(str(tmp_path), **kw)


def test_cli_options(tmp_path):
    from click.testing import CliRunner

    from jointphot.cli import main
    out = str(tmp_path / "f")
    result = CliRunner().invoke(main, ["simulate", out, "--seed", "3", "--size-arcsec", "10", "--galaxies", "composite",
                                       "--lr-noise", "warped", "--psf-light-fraction", "0.9,0.95", "--star-mags",
                                       "22,26"])
    assert result.exit_code == 0, result.output
    h = fits.getheader(os.path.join(out, "truth.fits"), "TRUTH")
    assert (h["GALAXIES"], h["HR_NOISE"], h["LR_NOISE"], h["POISSON"], h["STARMAG1"]) == (
        "composite", "white", "warped", False, 22.0)
    assert h["LR_PSFLF"] == pytest.approx(0.95, abs=0.01)
    for args, status, word in ((["--psf-light-fraction", "1.5"], 1, "psf_light_fraction"),
                               (["--psf-light-fraction", "a,b"], 2, "F_HR,F_LR"),
                               (["--star-mags", "26,22"], 2, "brighter")):
        result = CliRunner().invoke(main, ["simulate", out, "--size-arcsec", "10", *args])
        assert result.exit_code == status and word in result.output, result.output


def test_density_sets_the_number_of_sources(tmp_path):
    """density [per arcmin^2] scales the unblended sources and the pairs alike (jointphot simulate --density,
    the benchmark's fields); the truth header records it."""
    paths = simulate_field(str(tmp_path), size_arcsec=30.0, density=120.0)
    with fits.open(paths["truth"]) as hdul:
        truth, header = hdul[1].data, hdul[1].header
    assert len(truth) == 30 and (truth["pair_id"] > 0).sum() == 4     # 120 x 0.25 arcmin^2; 2 pairs
    assert header["DENSITY"] == 120.0
