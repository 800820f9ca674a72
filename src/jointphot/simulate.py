"""A simulated HST/ACS-like + Subaru/HSC-like field with a truth catalogue, drawn with GalSim.

GalSim (not jointphot's own renderer) draws every source, pixel-convolved (method 'auto'), on
a stamp that holds all but < 1e-3 of its flux.  Sources sit at reference-frame (RA, Dec); on
each image they are drawn at :func:`jointphot.conventions.reference_to_image` of that
image's astrometric offset.  The output is bitwise reproducible for a given seed.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy.spatial import cKDTree
from scipy.special import gammaincinv

from . import conventions
from .errors import JointphotError
from .psf import psfex_exponents, write_psfex

HR_SCALE = 0.03          # arcsec / px
LR_SCALE = 0.168         # arcsec / px
HR_ZP = 25.94734         # AB mag of 1 count (ACS F814W)
LR_ZP = 27.0             # AB mag of 1 count (HSC coadd)
FIELD_CENTRE = (150.1, 2.2)   # deg (COSMOS)
#: HSC mask planes written to the MASK header (MP_<name> = bit).
LR_MASK_PLANES = {"BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5, "SUSPECT": 7, "NO_DATA": 8}
ISOLATION_RADIUS = 2.0   # arcsec: a source is isolated when no other source is closer
LR_MARGIN = 3.5          # arcsec of LR coverage beyond the HR field on every side
STAR_FRACTION = 0.15
MAIN_DENSITY = 0.075     # unblended sources per arcsec^2, kept >= MIN_SEPARATION apart
MIN_SEPARATION = 2.5     # arcsec
PAIR_DENSITY = 0.006     # deliberate blends (pairs 0.3-1" apart) per arcsec^2
FLUX_LOSS = 3e-4         # Sersic light allowed outside a stamp (the PSF pad keeps the total < 1e-3)


def simulate_field(outdir, *, seed=1, size_arcsec=60.0, hr_offset_mas=(12.0, -8.0), lr_offset_mas=(-45.0, 30.0),
                   lr_rotation_deg=1.0, hr_fwhm_arcsec=0.10, lr_fwhm_arcsec=0.6, lr_moffat_beta=3.0,
                   hr_depth_mag=27.5, lr_depth_mag=25.7):
    """Simulate a square HR field of `size_arcsec` (arcsec) and its LR counterpart into `outdir`.

    hr/lr_offset_mas: astrometric offset (dRA cos dec, dDec) of each image, image - reference, mas.
    lr_rotation_deg: rotation of the LR pixel grid with respect to north-up (deg).
    hr_fwhm_arcsec: FWHM of the Gaussian HR PSF; lr_fwhm_arcsec, lr_moffat_beta: the Moffat LR PSF.
    hr/lr_depth_mag: 5-sigma matched-filter point-source depth (AB mag), sets the pixel noise.
    Returns {name: path} of the files written (hr, hr_wht, lr, psf files, astrometry files,
    truth, job, job_seed).
    """
    import galsim  # optional dependency (extra 'sim'): only the simulation needs it

    if not size_arcsec >= 5.0:
        raise JointphotError(f"simulate: size_arcsec must be >= 5, got {size_arcsec}")
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {name: os.path.join(outdir, fname) for name, fname in (
        ("hr", "hr.fits"), ("hr_wht", "hr_wht.fits"), ("lr", "lr.fits"), ("hr_psf", "hr_psf.fits"),
        ("lr_psf", "lr_psf.fits"), ("lr_psfex", "lr_psf.psf"), ("hr_psfex", "hr_psf.psf"),
        ("hr_astro", "hr_astro.txt"), ("lr_astro", "lr_astro.txt"), ("truth", "truth.fits"),
        ("job", "job.json"), ("job_seed", "job_seed.json"))}

    hr_psf = galsim.Gaussian(fwhm=hr_fwhm_arcsec)
    lr_psf = galsim.Moffat(beta=lr_moffat_beta, fwhm=lr_fwhm_arcsec)
    hr_epsf = _write_psf_files(galsim, hr_psf, HR_SCALE, hr_fwhm_arcsec, paths["hr_psf"], paths["hr_psfex"],
                               polnames=["MAG_AUTO"], polzero=[23.0], polscal=[3.0], poldeg=1)

    # --- geometry -------------------------------------------------------------------------
    n_hr = int(round(size_arcsec / HR_SCALE))
    hr_wcs = _tan_wcs(n_hr, n_hr, HR_SCALE, 0.0, ((n_hr + 1) / 2.0, (n_hr + 1) / 2.0))
    theta = math.radians(lr_rotation_deg)
    n_lr = int(math.ceil((size_arcsec * (abs(math.cos(theta)) + abs(math.sin(theta))) + 2 * LR_MARGIN) / LR_SCALE)) + 1
    lr_wcs = _tan_wcs(n_lr, n_lr, LR_SCALE, lr_rotation_deg, ((n_lr + 1) / 2.0 + 0.37, (n_lr + 1) / 2.0 - 0.21))
    lr_epsf = _write_psf_files(galsim, lr_psf, LR_SCALE, lr_fwhm_arcsec, paths["lr_psf"], paths["lr_psfex"],
                               polnames=["X_IMAGE", "Y_IMAGE"], polzero=[(n_lr + 1) / 2.0] * 2,
                               polscal=[float(n_lr)] * 2, poldeg=2)

    # --- noise levels from the depths ------------------------------------------------------
    hr_sigma0 = _sigma_for_depth(hr_depth_mag, HR_ZP, hr_epsf)
    lr_sigma = _sigma_for_depth(lr_depth_mag, LR_ZP, lr_epsf)
    yy, xx = np.mgrid[:n_hr, :n_hr] / float(n_hr)
    hr_sigma = hr_sigma0 * (1.0 + 0.15 * np.cos(2 * np.pi * xx) * np.cos(np.pi * yy))

    # --- sources ---------------------------------------------------------------------------
    src = _make_sources(rng, size_arcsec)
    nsrc = len(src["x_arcsec"])
    ra_img, dec_img = hr_wcs.wcs_pix2world(src["x_arcsec"] / HR_SCALE, src["y_arcsec"] / HR_SCALE, 0)
    ra, dec = conventions.image_to_reference(ra_img, dec_img, hr_offset_mas)
    x_hr, y_hr = hr_wcs.wcs_world2pix(*conventions.reference_to_image(ra, dec, hr_offset_mas), 0)
    x_lr, y_lr = lr_wcs.wcs_world2pix(*conventions.reference_to_image(ra, dec, lr_offset_mas), 0)
    hr_flux = 10.0 ** (-0.4 * (src["hr_mag"] - HR_ZP))
    lr_flux = 10.0 ** (-0.4 * (src["lr_mag"] - LR_ZP))

    # --- LR defects (decided before drawing: the S/N uses the unmasked pixels only) ---------
    bits = {name: 1 << bit for name, bit in LR_MASK_PLANES.items()}
    mask = np.zeros((n_lr, n_lr), dtype=np.int32)
    bad_col = int(round(0.37 * n_lr))
    mask[:, bad_col] |= bits["BAD"]
    nodata_rows = int(round(6.0 / LR_SCALE))
    mask[-nodata_rows:, :] |= bits["NO_DATA"]
    candidates = np.flatnonzero(y_lr < n_lr - nodata_rows - 20)
    stars = candidates[src["kind"][candidates] == "point"]
    candidates = stars if len(stars) else candidates
    sat_star = candidates[np.argmin(src["lr_mag"][candidates])]
    ly, lx = np.mgrid[:n_lr, :n_lr]
    sat = np.hypot(lx - x_lr[sat_star], ly - y_lr[sat_star]) <= 2.5
    mask[sat] |= bits["SAT"]
    ignored = conventions.mask_value(conventions.DEFAULT_LR_IGNORED_PLANES, LR_MASK_PLANES)
    lr_valid = (mask & ignored) == 0

    # --- drawing ---------------------------------------------------------------------------
    hr_img = galsim.ImageF(n_hr, n_hr)
    lr_img = galsim.ImageD(n_lr, n_lr)
    hr_jac = _galsim_jacobian(galsim, hr_wcs)
    lr_jac = _galsim_jacobian(galsim, lr_wcs)
    hr_snr = np.zeros(nsrc)
    lr_snr = np.zeros(nsrc)
    lr_masked = np.zeros(nsrc)
    for i in range(nsrc):
        if src["kind"][i] == "point":
            profile, radius = galsim.DeltaFunction(), 0.0
        else:
            n, re, ab = src["sersic_n"][i], src["re_arcsec"][i], src["ab"][i]
            profile = galsim.Sersic(n=n, half_light_radius=re * math.sqrt(ab)).shear(
                q=ab, beta=(90.0 + src["pa_deg"][i]) * galsim.degrees)
            radius = re * (gammaincinv(2 * n, 1.0 - FLUX_LOSS) / gammaincinv(2 * n, 0.5)) ** n
        stamp = _draw(galsim, profile, hr_psf, hr_flux[i], hr_jac, hr_img, x_hr[i], y_hr[i],
                      radius + 6 * hr_fwhm_arcsec, HR_SCALE)
        if stamp is not None:
            b = stamp.bounds
            hr_img[b] += stamp
            var = hr_sigma[b.ymin - 1:b.ymax, b.xmin - 1:b.xmax] ** 2
            hr_snr[i] = math.sqrt(np.sum(stamp.array.astype(float) ** 2 / var))
        stamp = _draw(galsim, profile, lr_psf, lr_flux[i], lr_jac, lr_img, x_lr[i], y_lr[i],
                      radius + 5 * lr_fwhm_arcsec, LR_SCALE)
        if stamp is not None:
            b = stamp.bounds
            lr_img[b] += stamp
            cut = np.s_[b.ymin - 1:b.ymax, b.xmin - 1:b.xmax]
            lr_snr[i] = math.sqrt(np.sum(stamp.array ** 2 * lr_valid[cut]) / lr_sigma ** 2)
            lr_masked[i] = np.sum(stamp.array * ~lr_valid[cut]) / lr_flux[i]

    # --- noise, defects, files -------------------------------------------------------------
    hr_data = (hr_img.array + rng.standard_normal((n_hr, n_hr)) * hr_sigma).astype(np.float32)
    lr_model = lr_img.array
    mask[lr_model > 2.0 * lr_sigma] |= bits["DETECTED"]
    lr_data = lr_model + rng.standard_normal((n_lr, n_lr)) * lr_sigma
    variance = np.full((n_lr, n_lr), lr_sigma ** 2)
    lr_data[:, bad_col] = rng.normal(0.0, 50.0 * lr_sigma, n_lr)
    lr_data[sat] = 6.5e4 + rng.uniform(-3e4, 3e4, int(sat.sum()))
    nodata = (mask & bits["NO_DATA"]) != 0
    lr_data[nodata] = 0.0
    variance[nodata] = np.nan

    hr_header = _wcs_header(hr_wcs)
    hr_header["BUNIT"] = ("COUNTS", "image units; AB zeropoint in PHOTZP")
    hr_header["PHOTZP"] = (HR_ZP, "AB magnitude of 1 count")
    fits.PrimaryHDU(hr_data, header=hr_header).writeto(paths["hr"], overwrite=True)
    wht_header = _wcs_header(hr_wcs)
    wht_header["BUNIT"] = ("1/COUNTS**2", "inverse variance (MAP_WEIGHT)")
    fits.PrimaryHDU((1.0 / hr_sigma ** 2).astype(np.float32), header=wht_header).writeto(paths["hr_wht"], overwrite=True)
    _write_lr(paths["lr"], lr_wcs, lr_data.astype(np.float32), mask, variance.astype(np.float32), seed)

    _write_offsets(paths["hr_astro"], hr_offset_mas, rng)
    _write_offsets(paths["lr_astro"], lr_offset_mas, rng)

    sep = _nearest_distance(src["x_arcsec"], src["y_arcsec"])
    meta = {"SEED": (seed, "random seed of jointphot simulate"),
            "HR_ZP": (HR_ZP, "[mag] AB zeropoint of hr.fits"), "LR_ZP": (LR_ZP, "[mag] AB zeropoint of lr.fits"),
            "HR_DRA": (hr_offset_mas[0], "[mas] HR offset dRA cos(dec), image - reference"),
            "HR_DDEC": (hr_offset_mas[1], "[mas] HR offset dDec, image - reference"),
            "LR_DRA": (lr_offset_mas[0], "[mas] LR offset dRA cos(dec), image - reference"),
            "LR_DDEC": (lr_offset_mas[1], "[mas] LR offset dDec, image - reference"),
            "HR_FWHM": (hr_fwhm_arcsec, "[arcsec] FWHM of the Gaussian HR PSF"),
            "LR_FWHM": (lr_fwhm_arcsec, "[arcsec] FWHM of the Moffat LR PSF"),
            "LR_BETA": (lr_moffat_beta, "Moffat beta of the LR PSF"),
            "HR_SIG": (hr_sigma0, "[count] mean HR pixel noise sigma"),
            "LR_SIG": (lr_sigma, "[count] LR pixel noise sigma"),
            "LR_ROT": (lr_rotation_deg, "[deg] rotation of the LR pixel grid"),
            "ISO_RAD": (ISOLATION_RADIUS, "[arcsec] isolation radius of column isolated")}
    _write_truth(paths["truth"], meta, [
        ("id", np.arange(1, nsrc + 1, dtype=np.int32), None, "source number"),
        ("ra", ra, "deg", "RA, reference frame"),
        ("dec", dec, "deg", "Dec, reference frame"),
        ("kind", src["kind"], None, "point or sersic"),
        ("hr_flux", hr_flux, "count", "total flux in hr.fits counts"),
        ("lr_flux", lr_flux, "count", "total flux in lr.fits counts"),
        ("hr_mag", src["hr_mag"], "mag", "AB magnitude in HR"),
        ("lr_mag", src["lr_mag"], "mag", "AB magnitude in LR"),
        ("re_arcsec", src["re_arcsec"], "arcsec", "half-light semi-major axis (0 for points)"),
        ("ab", src["ab"], None, "axis ratio b/a"),
        ("pa_deg", src["pa_deg"], "deg", "major-axis position angle, east of north"),
        ("sersic_n", src["sersic_n"], None, "Sersic index (NaN for points)"),
        ("hr_snr", hr_snr, None, "HR matched-filter S/N, sqrt(sum(model^2/var))"),
        ("lr_snr", lr_snr, None, "LR matched-filter S/N over unmasked pixels"),
        ("isolated", sep > ISOLATION_RADIUS, None, "no other source within ISO_RAD"),
        ("nearest_arcsec", sep, "arcsec", "distance to the nearest other source"),
        ("pair_id", src["pair_id"], None, "deliberate blend pair number (0 = none)"),
        ("x_hr", x_hr, "pix", "0-based x on hr.fits (offset applied)"),
        ("y_hr", y_hr, "pix", "0-based y on hr.fits (offset applied)"),
        ("x_lr", x_lr, "pix", "0-based x on lr.fits IMAGE (offset applied)"),
        ("y_lr", y_lr, "pix", "0-based y on lr.fits IMAGE (offset applied)"),
        ("lr_masked_frac", lr_masked, None, "fraction of the LR flux on BAD/SAT/NO_DATA pixels"),
    ])
    _write_jobs(paths)
    return paths


def _tan_wcs(nx, ny, scale, rot_deg, crpix):
    """TAN WCS with a CD matrix: `scale` arcsec/px, north up / east left rotated by `rot_deg`."""
    c, s = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crval = list(FIELD_CENTRE)
    w.wcs.crpix = list(crpix)
    w.wcs.cd = np.array([[-c, s], [s, c]]) * scale / 3600.0
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    w.pixel_shape = (nx, ny)
    return w


def _wcs_header(wcs):
    """FITS header cards of a TAN WCS with the CD matrix written out (astropy would write PC + CDELT)."""
    h = fits.Header()
    for i in (1, 2):
        h[f"CTYPE{i}"] = wcs.wcs.ctype[i - 1]
        h[f"CUNIT{i}"] = "deg"
        h[f"CRVAL{i}"] = wcs.wcs.crval[i - 1]
        h[f"CRPIX{i}"] = wcs.wcs.crpix[i - 1]
    for i in (1, 2):
        for j in (1, 2):
            h[f"CD{i}_{j}"] = wcs.wcs.cd[i - 1, j - 1]
    h["RADESYS"] = "ICRS"
    h["EQUINOX"] = 2000.0
    return h


def _galsim_jacobian(galsim, wcs):
    """Local GalSim Jacobian (u = west, v = north, arcsec) of an astropy WCS with a CD matrix."""
    cd = wcs.wcs.cd * 3600.0
    return galsim.JacobianWCS(-cd[0, 0], -cd[0, 1], cd[1, 0], cd[1, 1])


def _draw(galsim, profile, psf, flux, jac, image, x, y, radius_arcsec, scale):
    """Draw profile * psf (pixel-convolved) centred on 0-based (x, y); None if off the image."""
    half = int(math.ceil(radius_arcsec / scale))
    ix, iy = int(round(x)) + 1, int(round(y)) + 1
    bounds = galsim.BoundsI(ix - half, ix + half, iy - half, iy + half) & image.bounds
    if not bounds.isDefined():
        return None
    stamp = galsim.Image(bounds, dtype=image.dtype)
    galsim.Convolve(profile.withFlux(flux), psf).drawImage(
        image=stamp, wcs=jac, method="auto", center=galsim.PositionD(x + 1.0, y + 1.0))
    return stamp


def _sigma_for_depth(depth_mag, zp, epsf):
    """Pixel sigma (counts) at which a point source of `depth_mag` has matched-filter S/N 5."""
    return 10.0 ** (-0.4 * (depth_mag - zp)) * math.sqrt(np.sum(epsf ** 2)) / 5.0


def _write_psf_files(galsim, psf, scale, fwhm, fits_path, psfex_path, *, polnames, polzero, polscal, poldeg):
    """Write the ePSF image (odd, unit sum) and a PSFEx model with PSF_SAMP 0.5; return the ePSF."""
    half = int(math.ceil(6.0 * fwhm / scale)) + 2
    epsf = psf.drawImage(nx=2 * half + 1, ny=2 * half + 1, scale=scale, method="auto").array.astype(float)
    epsf /= epsf.sum()
    header = fits.Header()
    header["PIXSCALE"] = (scale, "[arcsec/px] pixel scale of the PSF image")
    header["PSF_FWHM"] = (fwhm, "[arcsec] FWHM of the true PSF")
    fits.PrimaryHDU(epsf.astype(np.float32), header=header).writeto(fits_path, overwrite=True)
    samp = 0.5
    fine = galsim.Convolve(psf, galsim.Pixel(scale)).drawImage(
        nx=4 * half + 1, ny=4 * half + 1, scale=scale * samp, method="no_pixel").array
    fine /= fine.sum() * samp ** 2
    planes = np.zeros((len(psfex_exponents([0] * len(polnames), [poldeg])),) + fine.shape)
    planes[0] = fine
    write_psfex(psfex_path, planes, psf_samp=samp, polnames=polnames, polzero=polzero, polscal=polscal,
                poldeg=poldeg, fwhm_pix=fwhm / scale)
    return epsf


def _make_sources(rng, size):
    """Positions (arcsec from the HR pixel-(0,0) centre), kinds, magnitudes and shapes."""
    lo, hi = 0.3, size - 0.3
    n_main = int(round(MAIN_DENSITY * size * size))
    pts = np.empty((0, 2))
    for _ in range(200 * n_main):
        if len(pts) == n_main:
            break
        p = rng.uniform(lo, hi, 2)
        if len(pts) == 0 or np.min(np.hypot(*(pts - p).T)) >= MIN_SEPARATION:
            pts = np.vstack([pts, p])
    pair_id = np.zeros(len(pts), dtype=np.int32)
    n_pairs = int(round(PAIR_DENSITY * size * size))
    inner = np.flatnonzero(np.all((pts > 1.5) & (pts < size - 1.5), axis=1))
    companions = []
    for k, i in enumerate(rng.choice(inner, size=min(n_pairs, len(inner)), replace=False), start=1):
        sep, ang = rng.uniform(0.3, 1.0), rng.uniform(0, 2 * np.pi)
        companions.append(pts[i] + sep * np.array([math.cos(ang), math.sin(ang)]))
        pair_id[i] = k
    if companions:
        pts = np.vstack([pts, companions])
        pair_id = np.concatenate([pair_id, np.arange(1, len(companions) + 1, dtype=np.int32)])
    n = len(pts)
    point = rng.uniform(size=n) < STAR_FRACTION
    hr_mag = np.where(point, rng.uniform(19.5, 25.5, n), rng.uniform(20.5, 26.5, n))
    lr_mag = hr_mag + np.clip(rng.normal(0.0, 0.3, n), -0.8, 0.8)
    sersic_n = rng.uniform(0.7, 4.0, n)
    re = np.exp(rng.uniform(np.log(0.05), np.log(0.6), n))
    ab = rng.uniform(0.3, 1.0, n)
    pa = rng.uniform(0.0, 180.0, n)
    return {"x_arcsec": pts[:, 0], "y_arcsec": pts[:, 1], "kind": np.where(point, "point", "sersic"),
            "hr_mag": hr_mag, "lr_mag": lr_mag, "pair_id": pair_id,
            "sersic_n": np.where(point, np.nan, sersic_n), "re_arcsec": np.where(point, 0.0, re),
            "ab": np.where(point, 1.0, ab), "pa_deg": np.where(point, 0.0, pa)}


def _nearest_distance(x, y):
    """Distance (same units) from each point to its nearest neighbour (inf for a lone point)."""
    xy = np.c_[x, y]
    if len(xy) < 2:
        return np.full(len(xy), np.inf)
    return cKDTree(xy).query(xy, k=2)[0][:, 1]


def _write_lr(path, wcs, image, mask, variance, seed):
    """HSC-like MEF: header-only primary, IMAGE, MASK (MP_* keys), VARIANCE, all with the same WCS."""
    primary = fits.PrimaryHDU()
    primary.header["ORIGIN"] = ("jointphot simulate", "HSC-like simulated coadd")
    primary.header["SEED"] = seed
    primary.header["FLUXMAG0"] = (10.0 ** (0.4 * LR_ZP), "counts of a 0 mag AB source")
    hdus = [primary]
    for name, data in (("IMAGE", image), ("MASK", mask), ("VARIANCE", variance)):
        header = _wcs_header(wcs)
        header["EXTNAME"] = name
        if name == "MASK":
            for plane, bit in LR_MASK_PLANES.items():
                header[("HIERARCH " if len(plane) > 5 else "") + f"MP_{plane}"] = bit
        hdus.append(fits.ImageHDU(data, header=header))
    fits.HDUList(hdus).writeto(path, overwrite=True)


def _write_offsets(path, offset_mas, rng, nrows=21):
    """Per-star offsets (mas) whose median is exactly `offset_mas`: the truth plus symmetric scatter."""
    cols = []
    for truth in offset_mas:
        d = rng.normal(0.0, 15.0, nrows // 2)
        col = np.concatenate([[truth], truth + d, truth - d])
        cols.append(rng.permutation(col))
    mags = rng.uniform(17.0, 21.0, nrows)
    with open(path, "w") as fh:
        fh.write("dRA_mas dDec_mas gaia_g_mag   # image - reference, dRA includes cos(dec)\n")
        for a, b, m in zip(cols[0], cols[1], mags):
            fh.write(f"{a:.3f} {b:.3f} {m:.2f}\n")


def _write_truth(path, meta, columns):
    """Truth table as a FITS binary table with TUNITn and a description (TCOMMn) per column."""
    cols = []
    for name, data, unit, _ in columns:
        data = np.asarray(data)
        if data.dtype.kind == "U":
            fmt = f"{max(len(s) for s in data)}A"
        else:
            fmt = {"i": "J", "b": "L", "f": "D"}[data.dtype.kind]
        cols.append(fits.Column(name=name, format=fmt, unit=unit, array=data))
    hdu = fits.BinTableHDU.from_columns(cols)
    hdu.header["EXTNAME"] = "TRUTH"
    for i, (_, _, _, comment) in enumerate(columns, start=1):
        hdu.header[f"TCOMM{i}"] = comment
    for key, value in meta.items():
        hdu.header[key] = value
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)


def _write_jobs(paths):
    """job_seed.json in the original tool's format and job.json with jointphot's extra keys."""
    name = {k: os.path.basename(v) for k, v in paths.items()}
    seed_job = {
        "workdir": "work/",
        "sexinputdir": "../sextractor_input/",
        "out_prefix": "SIM",
        "cutoutsize_arcsec": [30, 30],
        "cutoutoverlap_arcsec": [6, 6],
        "cutout_output_dir": "work/cutouts/",
        "hr_compl_niter": 15,
        "lr_compl_niter": 10,
        "hr_zp": HR_ZP,
        "lr_zp": int(LR_ZP) if LR_ZP == int(LR_ZP) else LR_ZP,
        "sex_command": "/usr/bin/sextractor",
        "hr_large_image_name": name["hr"],
        "lr_large_image_name": name["lr"],
        "hr_image_psf": name["hr_psf"],
        "hr_psf_type": "fits",
        "lr_image_psf": name["lr_psfex"],
        "lr_psf_type": "psfex",
        "lr_astrometry_correction_name": name["lr_astro"],
        "hr_astrometry_correction_name": name["hr_astro"],
        "hr_psf_fwhm_arcsec": 0.1,
        "spurious_pixel_cut": 1.0,
        "tile_id": 0,
    }
    job = dict(seed_job, sex_command="source-extractor", hr_large_image_wht_name=name["hr_wht"],
               hr_wht_image_type="MAP_WEIGHT")
    for key, content in (("job_seed", seed_job), ("job", job)):
        with open(paths[key], "w") as fh:   # one key per line, like the original README's example
            fh.write("{" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in content.items()) + "\n}\n")
