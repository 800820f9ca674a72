"""PSF loading: fwhm, FITS (recentring, rescaling) and PSFEx (polynomial basis, PSF_SAMP), incl. a real PSFEx run."""
import json
import math
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from astropy.io import fits
from scipy.special import erf

from jointphot.engines.base import PSF, Source
from jointphot.errors import JointphotError
from jointphot.jobfile import KEYS, validate_job
from jointphot.models import PSFRenderer, render_sources
from jointphot.plan import tile_psf
from jointphot.psf import FWHM_PER_SIGMA, gaussian_epsf, load_psf, psfex_exponents, write_psfex


def pixel_gaussian(shape, cx, cy, sigma):
    """Pixel-integrated unit-flux Gaussian (pixels), centred on 0-based (cx, cy)."""
    def line(n, c):
        edges = (np.arange(n + 1) - 0.5 - c) / (math.sqrt(2) * sigma)
        return np.diff(erf(edges)) / 2
    return np.outer(line(shape[0], cy), line(shape[1], cx))


def moffat_epsf(shape, cx, cy, fwhm, beta=3.0, sub=8):
    """Pixel-integrated unit-flux Moffat (fwhm in pixels), by sub x sub sampling of each pixel."""
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    ny, nx = shape
    y = (np.arange(ny)[:, None] + offs[None, :]).ravel() - cy
    x = (np.arange(nx)[:, None] + offs[None, :]).ravel() - cx
    prof = (beta - 1) / (math.pi * alpha ** 2) * (1 + (x[None, :] ** 2 + y[:, None] ** 2) / alpha ** 2) ** (-beta)
    return prof.reshape(ny, sub, nx, sub).mean(axis=(1, 3))


def centroid(img):
    yy, xx = np.mgrid[:img.shape[0], :img.shape[1]]
    return (img * xx).sum() / img.sum(), (img * yy).sum() / img.sum()


def write_image(path, data, **keys):
    hdu = fits.PrimaryHDU(np.asarray(data, dtype=np.float32))
    for k, v in keys.items():
        hdu.header[k] = v
    hdu.writeto(path, overwrite=True)
    return str(path)


# --- fwhm ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,scale", [(0.1, 0.03), ("0.6", 0.168), (0.25, 0.168)])
def test_fwhm_psf(spec, scale):
    psf = load_psf(spec, "fwhm", scale, what="lr")
    sigma = float(spec) / 2.3548200450309493 / scale
    assert psf.kind == "fwhm"
    assert psf.sigma_pix == pytest.approx(sigma, rel=1e-12)
    img = psf.image
    ny, nx = img.shape
    assert nx == ny and nx % 2 == 1
    assert nx >= 4 * FWHM_PER_SIGMA * sigma and nx // 2 >= 5 * sigma
    assert img.sum() == pytest.approx(1.0, abs=1e-12)
    cx, cy = centroid(img)
    assert (cx, cy) == (pytest.approx(nx // 2, abs=1e-9), pytest.approx(ny // 2, abs=1e-9))
    if sigma > 1:   # second moment of a well-sampled pixel-integrated Gaussian: sigma^2 + 1/12
        var = (img * (np.arange(nx) - nx // 2) ** 2).sum()
        assert var == pytest.approx(sigma ** 2 + 1 / 12, rel=1e-4)
    np.testing.assert_allclose(img, pixel_gaussian(img.shape, nx // 2, ny // 2, sigma), atol=1e-12)


@pytest.mark.parametrize("spec", [0, -0.1, "abc", None, float("nan")])
def test_fwhm_bad_value(spec):
    with pytest.raises(JointphotError, match="hr_image_psf"):
        load_psf(spec, "fwhm", 0.03, what="hr")


def test_unknown_psf_type_names_the_key():
    with pytest.raises(JointphotError, match="lr_psf_type.*'gauss'"):
        load_psf(0.6, "gauss", 0.168, what="lr")


# --- fits -----------------------------------------------------------------------------------------
def test_fits_centred_odd_is_kept(tmp_path):
    ref = pixel_gaussian((25, 25), 12, 12, 1.4)
    path = write_image(tmp_path / "p.fits", 3.0 * ref)
    psf = load_psf(path, "fits", 0.03)
    assert psf.kind == "fits" and psf.image.shape == (25, 25)
    np.testing.assert_allclose(psf.image, ref / ref.sum(), rtol=1e-6, atol=1e-9)


def test_fits_even_size_is_resampled_to_odd(tmp_path):
    sigma = 1.5
    path = write_image(tmp_path / "even.fits", pixel_gaussian((24, 24), 11.5, 11.5, sigma))
    img = load_psf(path, "fits", 0.03).image
    n = img.shape[0]
    assert img.shape[0] == img.shape[1] and n % 2 == 1
    assert img.sum() == pytest.approx(1.0)
    cx, cy = centroid(img)
    assert abs(cx - n // 2) < 0.01 and abs(cy - n // 2) < 0.01
    ref = pixel_gaussian(img.shape, n // 2, n // 2, sigma)
    assert np.abs(img - ref / ref.sum()).max() < 1e-3 * ref.max()


def test_fits_off_centre_is_recentred(tmp_path):
    sigma = 1.4
    path = write_image(tmp_path / "off.fits", pixel_gaussian((31, 31), 16.3, 14.8, sigma))
    img = load_psf(path, "fits", 0.03).image
    n = img.shape[0]
    assert n % 2 == 1 and n >= 21
    ref = pixel_gaussian(img.shape, n // 2, n // 2, sigma)
    assert np.abs(img - ref / ref.sum()).max() < 1e-3 * ref.max()


@pytest.mark.parametrize("keys, override", [
    ({"PIXSCALE": 0.015}, None),
    ({"CD1_1": -0.015 / 3600, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 0.015 / 3600}, None),
    ({"CDELT1": -0.015 / 3600, "CDELT2": 0.015 / 3600}, None),
    ({"PC1_1": -0.015 / 3600, "PC2_2": 0.015 / 3600, "CDELT1": 1.0, "CDELT2": 1.0}, None),      # PC x CDELT
    ({"PC1_1": -0.5, "PC2_2": 0.5, "CDELT1": 0.03 / 3600, "CDELT2": 0.03 / 3600}, None),
    ({"PC1_1": -0.015 / 3600, "PC2_2": 0.015 / 3600}, None),                                    # CDELT defaults to 1
    ({"CDELT1": -0.015, "CDELT2": 0.015, "CUNIT1": "arcsec", "CUNIT2": "arcsec"}, None),
    ({"CD1_1": -0.015 / 3600, "CD2_2": 0.015 / 3600, "CDELT1": 1.0, "CDELT2": 1.0, "PIXSCALE": 0.06}, None),  # CD first
    ({"PC1_1": -0.015 / 3600, "PC2_2": 0.015 / 3600, "PIXSCALE": 0.06}, None),                 # PC x CDELT before PIXSCALE
    ({"CDELT1": 1.0, "CDELT2": 1.0}, 0.015),                                                    # the job's key wins
    ({}, 0.015),
])
def test_fits_other_pixel_scale_is_resampled(tmp_path, keys, override):
    sigma_arcsec = 0.06
    fine = pixel_gaussian((61, 61), 30, 30, sigma_arcsec / 0.015)   # file sampled at 0.015"/px
    path = write_image(tmp_path / "fine.fits", fine, **keys)
    img = load_psf(path, "fits", 0.03, file_pixscale_arcsec=override).image
    n = img.shape[0]
    assert n % 2 == 1 and n >= 25
    ref = pixel_gaussian(img.shape, n // 2, n // 2, sigma_arcsec / 0.03)
    ref /= ref.sum()
    assert np.abs(img - ref).max() < 3e-3 * ref.max()
    # the effective width is that of the image's pixels: sigma^2 + 1/12 (px^2)
    var = (img * (np.arange(n) - n // 2) ** 2).sum()
    assert var == pytest.approx((sigma_arcsec / 0.03) ** 2 + 1 / 12, rel=5e-3)


def test_fits_same_scale_within_one_percent_is_not_resampled(tmp_path):
    ref = pixel_gaussian((25, 25), 12, 12, 1.4)
    path = write_image(tmp_path / "p.fits", ref, PIXSCALE=0.0302)
    np.testing.assert_allclose(load_psf(path, "fits", 0.03).image, ref / ref.sum(), rtol=1e-6, atol=1e-9)


def test_fits_nan_pixels_are_zeroed(tmp_path):
    ref = pixel_gaussian((25, 25), 12, 12, 1.4)
    data = ref.copy()
    data[0, 0] = np.nan
    psf = load_psf(write_image(tmp_path / "p.fits", data), "fits", 0.03)
    assert np.isfinite(psf.image).all() and psf.image[0, 0] == 0.0


def test_fits_errors(tmp_path):
    with pytest.raises(JointphotError, match="hr_image_psf.*nope.fits.*does not exist"):
        load_psf(str(tmp_path / "nope.fits"), "fits", 0.03)
    text = tmp_path / "psf.txt"
    text.write_text("not a fits file\n" * 200)
    with pytest.raises(JointphotError, match="lr_image_psf.*psf.txt"):
        load_psf(str(text), "fits", 0.168, what="lr")
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.ones((3, 5, 5), np.float32)).writeto(cube)
    with pytest.raises(JointphotError, match="cube.fits.*2-D"):
        load_psf(str(cube), "fits", 0.03)
    zero = write_image(tmp_path / "zero.fits", np.zeros((5, 5)))
    with pytest.raises(JointphotError, match="zero.fits.*non-positive sum"):
        load_psf(zero, "fits", 0.03)
    inf = np.ones((5, 5))
    inf[2, 2] = np.inf
    with pytest.raises(JointphotError, match="infinite"):
        load_psf(write_image(tmp_path / "inf.fits", inf), "fits", 0.03)
    with pytest.raises(JointphotError, match="needs a file name"):
        load_psf(0.1, "fits", 0.03)


# --- PSFEx ------------------------------------------------------------------------------------------
def test_psfex_basis_order_matches_poly_func():
    assert psfex_exponents([0, 0], [2]) == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (0, 2)]
    assert psfex_exponents([0, 0], [3]) == [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1), (2, 1),
                                            (0, 2), (1, 2), (0, 3)]
    assert psfex_exponents([0], [1]) == [(0,), (1,)]
    assert psfex_exponents([], []) == [()]
    # two groups: a tensor product, the second group's powers outermost
    assert psfex_exponents([0, 1], [1, 1]) == [(0, 0), (1, 0), (0, 1), (1, 1)]


def sampled_gaussian(n, sigma):
    """Continuous unit-integral Gaussian sampled on an n x n grid centred on element n // 2."""
    r2 = (np.arange(n) - n // 2) ** 2
    return np.exp(-(r2[:, None] + r2[None, :]) / (2 * sigma ** 2)) / (2 * math.pi * sigma ** 2)


XY_COEFFS = [0.0, 0.3, 0.1, -0.2, 0.15, 0.05]     # terms 1, x, x^2, y, x y, y^2


@pytest.mark.parametrize("samp", [0.5, 0.7])
def test_psfex_position_dependent(tmp_path, samp):
    """Model = (1 - w) G(s0) + w G(s1) with w a known polynomial of the scaled position."""
    s0, s1 = 1.3, 2.1           # image pixels
    n = 2 * int(12 / samp) + 1
    g0, g1 = sampled_gaussian(n, s0 / samp), sampled_gaussian(n, s1 / samp)
    planes = np.array([g0] + [c * (g1 - g0) for c in XY_COEFFS[1:]])
    zero, scale = (1000.0, 1500.0), (2000.0, 1800.0)
    path = str(tmp_path / "xy.psf")
    write_psfex(path, planes, psf_samp=samp, polnames=["X_IMAGE", "Y_IMAGE"], polzero=zero, polscal=scale,
                poldeg=2, fwhm_pix=2.5)
    for pos in [(1000.0, 1500.0), (1, 1), (2000, 300), (150, 2600), (1800, 2900)]:
        u, v = (pos[0] - zero[0]) / scale[0], (pos[1] - zero[1]) / scale[1]
        w = sum(c * t for c, t in zip(XY_COEFFS, [1, u, u * u, v, u * v, v * v]))
        psf = load_psf(path, "psfex", 0.168, position=pos, what="lr")
        img = psf.image
        m = img.shape[0]
        assert psf.kind == "psfex" and m % 2 == 1 and img.sum() == pytest.approx(1.0)
        ref = (1 - w) * sampled_gaussian(m, s0) + w * sampled_gaussian(m, s1)
        ref /= ref.sum()
        tol = 1e-6 if samp == 0.5 else 2e-3     # 0.5: image pixels fall on model nodes
        assert np.abs(img - ref).max() < tol * ref.max(), pos


def test_psfex_mag_dependent(tmp_path):
    s0, s1, samp = 1.5, 2.5, 0.5
    n = 49
    g0, g1 = sampled_gaussian(n, s0 / samp), sampled_gaussian(n, s1 / samp)
    path = str(tmp_path / "mag.psf")
    write_psfex(path, np.array([g0, 0.5 * (g1 - g0)]), psf_samp=samp, polnames=["MAG_AUTO"], polzero=[22.0],
                polscal=[2.0], poldeg=1, fwhm_pix=3.0)
    for mag in (21.0, 22.0, 23.5):
        w = 0.5 * (mag - 22.0) / 2.0
        img = load_psf(path, "psfex", 0.03, psfex_mag=mag).image
        m = img.shape[0]
        ref = (1 - w) * sampled_gaussian(m, s0) + w * sampled_gaussian(m, s1)
        assert np.abs(img - ref / ref.sum()).max() < 1e-6 * ref.max()
    # the default is magnitude 21, like the original tool
    np.testing.assert_allclose(load_psf(path, "psfex", 0.03).image,
                               load_psf(path, "psfex", 0.03, psfex_mag=21.0).image)


def test_psfex_constant_model(tmp_path):
    path = str(tmp_path / "c.psf")
    write_psfex(path, sampled_gaussian(41, 3.0)[None], psf_samp=0.5, polnames=[], polzero=[], polscal=[],
                poldeg=0, fwhm_pix=3.5)
    img = load_psf(path, "psfex", 0.168).image
    ref = sampled_gaussian(img.shape[0], 1.5)
    assert np.abs(img - ref / ref.sum()).max() < 1e-6 * ref.max()


def test_psfex_errors(tmp_path):
    g = sampled_gaussian(21, 2.0)
    good = str(tmp_path / "good.psf")
    write_psfex(good, np.array([g] * 6), psf_samp=1.0, polnames=["X_IMAGE", "Y_IMAGE"], polzero=[1, 1],
                polscal=[1, 1], poldeg=2, fwhm_pix=4.7)
    with pytest.raises(JointphotError, match="lr_image_psf.*good.psf.*X_IMAGE.*position"):
        load_psf(good, "psfex", 0.168, what="lr")

    def altered(name, edit):
        with fits.open(good) as hdul:
            edit(hdul)
            out = str(tmp_path / name)
            hdul.writeto(out, overwrite=True)
        return out

    bad = altered("airmass.psf", lambda h: h[1].header.__setitem__("POLNAME2", "AIRMASS"))
    with pytest.raises(JointphotError, match="airmass.psf.*POLNAME.*'AIRMASS'"):
        load_psf(bad, "psfex", 0.168, position=(1, 1))
    bad = altered("nosamp.psf", lambda h: h[1].header.remove("PSF_SAMP"))
    with pytest.raises(JointphotError, match="nosamp.psf.*PSF_SAMP is missing"):
        load_psf(bad, "psfex", 0.168, position=(1, 1))
    bad = altered("deg3.psf", lambda h: h[1].header.__setitem__("POLDEG1", 3))
    with pytest.raises(JointphotError, match="deg3.psf.*6 planes.*needs 10"):
        load_psf(bad, "psfex", 0.168, position=(1, 1))
    bad = altered("axes.psf", lambda h: h[1].header.__setitem__("PSFAXIS1", 20))
    with pytest.raises(JointphotError, match="axes.psf.*PSF_MASK has 2646 values"):
        load_psf(bad, "psfex", 0.168, position=(1, 1))
    image_only = write_image(tmp_path / "image.fits", g)
    with pytest.raises(JointphotError, match="image.fits.*not a PSFEx file"):
        load_psf(image_only, "psfex", 0.168)
    nocol = str(tmp_path / "nocol.psf")
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="OTHER", format="E", array=np.ones(1))])]).writeto(nocol)
    with pytest.raises(JointphotError, match="nocol.psf.*no PSF_MASK column"):
        load_psf(nocol, "psfex", 0.168)
    with pytest.raises(JointphotError, match="hr_image_psf.*missing.psf.*does not exist"):
        load_psf(str(tmp_path / "missing.psf"), "psfex", 0.03)
    with pytest.raises(JointphotError, match="write_psfex.*2 planes given, 6 needed"):
        write_psfex(str(tmp_path / "x.psf"), np.array([g, g]), psf_samp=1.0, polnames=["X_IMAGE", "Y_IMAGE"],
                    polzero=[0, 0], polscal=[1, 1], poldeg=2, fwhm_pix=4.7)


# --- a real PSFEx run -------------------------------------------------------------------------------
SEX_PARAMS = ["VIGNET(35,35)", "X_IMAGE", "Y_IMAGE", "FLUX_APER(1)", "FLUXERR_APER(1)", "FLUX_RADIUS",
              "ELONGATION", "FLAGS", "SNR_WIN"]
FILTER = "CONV NORM\n1 2 1\n2 4 2\n1 2 1\n"


def star_field_fwhm(x, n):
    """True Moffat FWHM (pixels) at 0-based column x of an n-pixel-wide image: 3.0 -> 4.0 px across."""
    return 3.0 + 1.0 * x / n


@pytest.mark.skipif(not (shutil.which("source-extractor") and shutil.which("psfex")),
                    reason="source-extractor / psfex binaries not installed")
def test_real_psfex_run_reproduces_true_psf(tmp_path):
    """SExtractor + PSFEx on a star field whose Moffat FWHM varies with x; load_psf must reproduce it."""
    rng = np.random.default_rng(7)
    n, half = 1000, 20
    image = np.zeros((n, n))
    placed = []
    while len(placed) < 300:
        x, y = rng.uniform(half + 5, n - half - 6, 2)
        if placed and np.min(np.hypot(*(np.array(placed) - (x, y)).T)) < 30:
            continue
        placed.append((x, y))
        ix, iy = int(round(x)), int(round(y))
        stamp = moffat_epsf((2 * half + 1,) * 2, half + x - ix, half + y - iy, star_field_fwhm(x, n))
        image[iy - half:iy + half + 1, ix - half:ix + half + 1] += 10 ** rng.uniform(4.3, 5.0) * stamp
    image += rng.normal(0.0, 1.0, image.shape)
    fits.PrimaryHDU(image.astype(np.float32)).writeto(tmp_path / "stars.fits")
    (tmp_path / "sex.param").write_text("\n".join(SEX_PARAMS) + "\n")
    (tmp_path / "default.conv").write_text(FILTER)
    subprocess.run(["source-extractor", "stars.fits", "-c", "/dev/null", "-CATALOG_NAME", "stars.cat",
                    "-CATALOG_TYPE", "FITS_LDAC", "-PARAMETERS_NAME", "sex.param", "-FILTER_NAME", "default.conv",
                    "-DETECT_THRESH", "5", "-PHOT_APERTURES", "20", "-SATUR_LEVEL", "1e9", "-CHECKIMAGE_TYPE", "NONE",
                    "-VERBOSE_TYPE", "QUIET"], cwd=tmp_path, check=True, capture_output=True)
    subprocess.run(["psfex", "stars.cat", "-c", "/dev/null", "-PSF_SAMPLING", "0.5", "-PSF_SIZE", "51,51",
                    "-PSFVAR_KEYS", "X_IMAGE,Y_IMAGE", "-PSFVAR_DEGREES", "2", "-SAMPLE_FWHMRANGE", "1,20",
                    "-SAMPLE_VARIABILITY", "1.0", "-SAMPLE_MINSN", "20", "-CHECKPLOT_TYPE", "NONE",
                    "-CHECKIMAGE_TYPE", "NONE", "-WRITE_XML", "N", "-VERBOSE_TYPE", "QUIET"],
                   cwd=tmp_path, check=True, capture_output=True)
    header = fits.getheader(tmp_path / "stars.psf", 1)
    assert header["POLNAXIS"] == 2 and header["POLDEG1"] == 2 and header["PSFAXIS3"] == 6
    assert header["ACCEPTED"] > 200
    widths = []
    for x, y in [(100, 100), (900, 100), (100, 900), (900, 900), (500, 500)]:
        psf = load_psf(str(tmp_path / "stars.psf"), "psfex", 0.168, position=(x + 1, y + 1), what="lr")
        img = psf.image
        m = img.shape[0]
        assert m % 2 == 1 and img.sum() == pytest.approx(1.0)
        truth = moffat_epsf((m, m), m // 2, m // 2, star_field_fwhm(x, n))
        truth /= truth.sum()
        core = truth > 0.1 * truth.max()
        # PSFEx's own modelling error is ~1 % in the core (measured: 1.1-1.5 %)
        assert np.abs(img / truth - 1)[core].max() < 0.025, (x, y)
        cx, cy = centroid(img)
        assert abs(cx - m // 2) < 0.02 and abs(cy - m // 2) < 0.02
        widths.append(psf.fwhm_pix)
    assert widths[1] > widths[0] * 1.15 and widths[3] > widths[2] * 1.15   # the x-variation is reproduced
    assert widths[0] == pytest.approx(widths[2], rel=0.02)                 # and there is no y-variation


def test_gaussian_epsf_size():
    img = gaussian_epsf(0.3)
    assert img.shape == (5, 5) and img.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("fwhm", [2.2, 3.6, 6.0])
def test_fwhm_of_an_image_psf_is_its_half_maximum_width(fwhm):
    """PSF.fwhm_pix of a Moffat (beta 3) ePSF is its FWHM, broadened by the pixel (8 % at
    2.2 px, 3 % at 3.6 px); a second-moment width would say 1.6x the FWHM."""
    img = moffat_epsf((49, 49), 24, 24, fwhm)
    measured = PSF(image=img / img.sum(), kind="fits").fwhm_pix
    assert fwhm < measured < 1.1 * fwhm, measured
    # and a Gaussian ePSF of sigma s: 2.3548 sqrt(s^2 + 1/12) (the pixel adds 1/12 px^2)
    s = fwhm / FWHM_PER_SIGMA
    assert PSF(image=gaussian_epsf(s), kind="fits").fwhm_pix == pytest.approx(FWHM_PER_SIGMA * math.sqrt(s * s + 1 / 12), rel=0.01)


# --- FITS PSFs as they come: HFF header, implausible scales, non-square stamps, light fraction --------------
#: The WCS cards of the HFF F105W PSF (petrofit 0.5.0, docs/data/f105w_psf.fits.gz, 50x50 float32):
#: a PC matrix with CDELT = 1 deg, i.e. 0.06"/px; CDELT alone would say 1 deg/px.
HFF_PSF_WCS = {"WCSAXES": 2, "CRPIX1": -680.0, "CRPIX2": 1049.0, "PC1_1": -1.6666663575825E-05,
               "PC1_2": 1.1661906916749E-13, "PC2_1": 1.77355429717E-10, "PC2_2": 1.6666673359481E-05,
               "CDELT1": 1.0, "CDELT2": 1.0, "CUNIT1": "deg", "CUNIT2": "deg", "CTYPE1": "RA---TAN",
               "CTYPE2": "DEC--TAN", "CRVAL1": 3.5832679, "CRVAL2": -30.3880082, "LONPOLE": 180.0,
               "LATPOLE": -30.3880082, "RADESYS": "FK5", "EQUINOX": 2000.0}


@pytest.mark.parametrize("scale", [0.06, 0.03, 0.168])
def test_hff_psf_header_is_read_as_0p06_arcsec_per_pixel(tmp_path, scale):
    """The HFF PSF as shipped (50x50, even, unnormalised, PC x CDELT = 0.06"/px) loads on HR and LR grids."""
    sigma = 0.15                                               # arcsec
    stamp = 2534.6 * pixel_gaussian((50, 50), 24.4, 24.7, sigma / 0.06)
    path = write_image(tmp_path / "f105w_psf.fits", stamp, **HFF_PSF_WCS)
    img = load_psf(path, "fits", scale).image
    n = img.shape[0]
    assert img.shape == (n, n) and n % 2 == 1 and n <= 2 * math.ceil(25.6 * 0.06 / scale) + 1
    assert img.sum() == pytest.approx(1.0, abs=1e-12)
    cx, cy = centroid(img)
    assert abs(cx - n // 2) < 0.01 and abs(cy - n // 2) < 0.01
    # second moment [image px^2]: the Gaussian plus the larger of the file's and the image's pixel
    var = (img * (np.arange(n) - n // 2) ** 2).sum()
    assert var == pytest.approx((sigma / scale) ** 2 + (max(0.06, scale) / scale) ** 2 / 12, rel=5e-3)


@pytest.mark.parametrize("keys, override, says", [
    ({"CDELT1": 1.0, "CDELT2": 1.0}, None, 'a pixel scale of 3600"/px (from the CDELT keywords) is not plausible'),
    ({"PIXSCALE": 0.0}, None, 'a pixel scale of 0"/px (from PIXSCALE) is not plausible'),
    ({"PC1_1": 1e-2, "PC2_2": 1e-2}, None, "a pixel scale of 36\"/px (from the PC x CDELT keywords) is not"),
    ({}, 50.0, 'a pixel scale of 50"/px (from hr_psf_pixscale_arcsec = 50.0) is not plausible'),
    ({"CDELT1": 1e-5, "CDELT2": 1e-5}, 1e-4, "(from hr_psf_pixscale_arcsec = 0.0001) is not plausible"),
    ({"CDELT1": 0.03, "CDELT2": 0.03, "CUNIT1": "pix", "CUNIT2": "pix"}, None, "cannot read a pixel scale from its CDELT"),
    ({"CDELT1": 0.03 / 3600, "CDELT2": 0.045 / 3600}, None, 'non-square pixels (0.03 x 0.045")'),
])
def test_implausible_psf_pixel_scale_names_the_key_and_file(tmp_path, keys, override, says):
    path = write_image(tmp_path / "odd_header.fits", pixel_gaussian((25, 25), 12, 12, 1.5), **keys)
    with pytest.raises(JointphotError) as err:
        load_psf(path, "fits", 0.03, file_pixscale_arcsec=override)
    assert str(err.value).startswith(f"hr_image_psf {path}: ")
    assert says in str(err.value) and "hr_psf_pixscale_arcsec" in str(err.value)


def test_psf_that_would_resample_to_a_huge_stamp_is_an_error(tmp_path):
    """A plausible but wrong scale must not allocate a giant array: at most MAX_PSF_SIDE pixels."""
    path = write_image(tmp_path / "big.fits", pixel_gaussian((701, 701), 350, 350, 3.0), PIXSCALE=0.1)
    with pytest.raises(JointphotError, match=r"lr_image_psf .*big.fits: .*701x701 PSF would become 2335x2335 pixels "
                                             r"of 0.03\" \(at most 2001\): check lr_psf_pixscale_arcsec"):
        load_psf(path, "fits", 0.03, what="lr")


def test_pixscale_override_and_light_fraction_are_checked():
    with pytest.raises(JointphotError, match="lr_psf_pixscale_arcsec: applies to FITS image PSFs only, but "
                                             "lr_psf_type is 'fwhm'"):
        load_psf(0.6, "fwhm", 0.168, what="lr", file_pixscale_arcsec=0.168)
    for bad in (0.5, 1.0001, 0.0, float("nan")):
        with pytest.raises(JointphotError, match=r"hr_psf_light_fraction: must be in \(0.5, 1\]"):
            load_psf(0.1, "fwhm", 0.03, light_fraction=bad)


def point_source_centroid(psf, x, y, shape=(81, 81)):
    """Centroid (x, y) of a unit point source at (x, y) rendered by the native engine's PSFRenderer."""
    img = render_sources(shape, PSFRenderer(psf), [Source("point", x, y, 1.0)])
    return centroid(img)


@pytest.mark.parametrize("cx, cy", [(10.0, 14.0), (8.3, 17.6)])
def test_non_square_stamp_renders_point_sources_in_place(tmp_path, cx, cy):
    """A 21 (x) by 29 (y) stamp, centred or not, becomes a square one centred on its middle pixel:
    point sources land where they are (the stamp as given put them 4 px off in y)."""
    sigma = 1.5
    data = pixel_gaussian((29, 21), cx, cy, sigma)
    psf = load_psf(write_image(tmp_path / "narrow.fits", data), "fits", 0.03)
    n = psf.image.shape[0]
    assert psf.image.shape == (n, n) and n % 2 == 1 and n >= 29
    if (cx, cy) == (10.0, 14.0):          # centred: padded, not interpolated
        np.testing.assert_allclose(psf.image[:, 4:25], data / data.sum(), rtol=1e-6, atol=1e-12)
        assert not psf.image[:, :4].any() and not psf.image[:, 25:].any()
    for x, y in ((40.0, 40.0), (37.37, 44.81)):
        gx, gy = point_source_centroid(psf, x, y)
        assert abs(gx - x) < 0.02 and abs(gy - y) < 0.02, (gx, gy)


def test_fit_with_non_square_off_centre_psf_recovers_position_and_flux(tmp_path, engine):
    """Each engine fits a star through a 21 (x) by 29 (y) stamp whose peak is off its middle
    (at 8.3, 17.6): the fitted position is the truth to 0.01 px and the flux to 0.1 % (S/N > 500)."""
    sigma, flux, x, y = 1.5, 20000.0, 31.37, 30.81
    psf = load_psf(write_image(tmp_path / "narrow.fits", pixel_gaussian((29, 21), 8.3, 17.6, sigma)), "fits", 0.03)
    rng = np.random.default_rng(13)
    image = flux * pixel_gaussian((64, 64), x, y, sigma) + rng.standard_normal((64, 64))
    fit = engine.fit_group(image, np.ones_like(image), psf, [Source("point", x + 0.4, y - 0.3, 0.7 * flux)])
    src, err = fit.sources[0], fit.errors[0]
    assert flux / err["flux"] > 500
    assert abs(src.x - x) < 0.01 and abs(src.y - y) < 0.01
    assert abs(src.flux - flux) < 3 * err["flux"] and abs(src.flux / flux - 1) < 1e-3


def halo_psf_star(shape, x, y, halo):
    """Pixel-integrated unit-flux PSF with a wide halo: 1 - halo in sigma 1.5 px, halo in sigma 5 px."""
    return (1 - halo) * pixel_gaussian(shape, x, y, 1.5) + halo * pixel_gaussian(shape, x, y, 5.0)


def test_light_fraction_makes_fitted_fluxes_total(tmp_path, engine):
    """A PSF stamp holding 99.7 % of a star's light: with the job's light fraction the fit gives
    the total flux (within 0.1 % at S/N > 500); as unit-sum, 0.3 % low."""
    stamp_core = pixel_gaussian((25, 25), 12, 12, 1.5).sum()
    stamp_halo = pixel_gaussian((25, 25), 12, 12, 5.0).sum()
    halo = (stamp_core - 0.997) / (stamp_core - stamp_halo)      # the 25x25 stamp holds 0.997 of the light
    stamp = halo_psf_star((25, 25), 12, 12, halo)
    assert stamp.sum() == pytest.approx(0.997, abs=1e-9)
    path = write_image(tmp_path / "stamp.fits", 123.0 * stamp)
    flux, x, y = 30000.0, 50.0, 50.0
    rng = np.random.default_rng(5)
    image = flux * halo_psf_star((101, 101), x, y, halo) + rng.standard_normal((101, 101))
    invvar = np.ones_like(image)
    fitted = {}
    for fraction in (0.997, 1.0):
        psf = load_psf(path, "fits", 0.03, light_fraction=fraction)
        assert psf.image.sum() == pytest.approx(fraction, rel=1e-6)
        assert psf.fwhm_pix == pytest.approx(load_psf(path, "fits", 0.03).fwhm_pix, rel=1e-12)   # shape unchanged
        fit = engine.fit_group(image, invvar, psf, [Source("point", x + 0.2, y - 0.1, 0.8 * flux)])
        assert flux / fit.errors[0]["flux"] > 500
        fitted[fraction] = fit.sources[0].flux
        lin = engine.solve_fluxes(image, invvar, psf, [Source("point", x, y, 1.0)])
        assert lin.flux[0] == pytest.approx(fitted[fraction], rel=2e-4)
    assert fitted[0.997] == pytest.approx(flux, rel=1e-3)
    assert fitted[1.0] == pytest.approx(0.997 * flux, rel=1e-3)


def test_galaxies_render_with_the_psf_light_fraction():
    """A galaxy drawn through a PSF holding 90 % of the light has 90 % of the light of one drawn
    through the unit-sum PSF, wide mixture components included."""
    for src in (Source("exp", 60.0, 60.0, 1.0, re=3.0), Source("dev", 60.0, 60.0, 1.0, re=10.0, ab=0.5)):
        full = render_sources((121, 121), PSFRenderer(PSF(image=gaussian_epsf(1.5))), [src]).sum()
        part = render_sources((121, 121), PSFRenderer(PSF(image=0.9 * gaussian_epsf(1.5))), [src]).sum()
        assert part == pytest.approx(0.9 * full, rel=1e-4), src.kind


def test_job_psf_keys_reach_the_loaded_psf(tmp_path):
    """hr_/lr_psf_light_fraction and hr_psf_pixscale_arcsec pass from a job file through the plan to the tiles' PSFs."""
    write_image(tmp_path / "hr_psf.fits", pixel_gaussian((61, 61), 30, 30, 4.0), CDELT1=1.0, CDELT2=1.0)
    for name in ("hr.fits", "lr.fits"):
        (tmp_path / name).write_text("")
    raw = {"workdir": str(tmp_path / "work"), "cutoutsize_arcsec": 30, "hr_zp": 25.9, "lr_zp": 27.0,
           "hr_large_image_name": "hr.fits", "lr_large_image_name": "lr.fits", "hr_image_psf": "hr_psf.fits",
           "lr_image_psf": 0.6, "hr_psf_pixscale_arcsec": 0.015, "hr_psf_light_fraction": 0.98,
           "lr_psf_light_fraction": 0.99}
    job = validate_job(raw, str(tmp_path))
    plan = {"job": job, "hr": {"pixel_scale_arcsec": 0.03}, "lr": {"pixel_scale_arcsec": 0.168},
            "tiles": [{"tile_id": 0, "psf_position": {"hr": [1.0, 1.0], "lr": [1.0, 1.0]}}]}
    hr = tile_psf(plan, 0, "hr")
    assert hr.image.sum() == pytest.approx(0.98, rel=1e-9)
    assert hr.fwhm_pix == pytest.approx(FWHM_PER_SIGMA * 2.0, rel=0.02)      # 4 px at 0.015"/px = 2 px at 0.03"
    assert tile_psf(plan, 0, "lr").image.sum() == pytest.approx(0.99, rel=1e-9)
    defaults = validate_job({k: v for k, v in raw.items() if "_psf_" not in k}, str(tmp_path))
    assert (defaults["hr_psf_pixscale_arcsec"], defaults["hr_psf_light_fraction"]) == (None, 1.0)
    with pytest.raises(JointphotError, match="is not plausible for a PSF"):      # its CDELT = 1 deg
        tile_psf(dict(plan, job=defaults), 0, "hr")
    with pytest.raises(JointphotError, match="key 'lr_psf_light_fraction' must be a number"):
        validate_job(dict(raw, lr_psf_light_fraction="high"), str(tmp_path))


def test_psf_job_keys_are_pipeline_parameters():
    """The new job keys are in jobfile.KEYS, nextflow_schema.json (jointphot's own keys) and nextflow.config."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    schema = json.load(open(os.path.join(repo, "nextflow_schema.json")))["$defs"]["jointphot_job_keys"]["properties"]
    config = open(os.path.join(repo, "nextflow.config")).read()
    for band in ("hr", "lr"):
        assert KEYS[f"{band}_psf_pixscale_arcsec"][:2] == ("float", None)
        assert KEYS[f"{band}_psf_light_fraction"][:2] == ("float", 1.0)
        assert schema[f"{band}_psf_light_fraction"]["exclusiveMinimum"] == 0.5
        assert schema[f"{band}_psf_light_fraction"]["maximum"] == 1
        assert schema[f"{band}_psf_pixscale_arcsec"]["type"] == "number"
        for key in (f"{band}_psf_pixscale_arcsec", f"{band}_psf_light_fraction"):
            assert re.search(rf"^\s+{key}\s+= null$", config, re.M), key
