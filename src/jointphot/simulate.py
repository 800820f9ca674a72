"""A simulated HST/ACS-like + Subaru/HSC-like field with a truth catalogue, drawn with GalSim.

GalSim (not jointphot's own renderer) draws every source, pixel-convolved (method 'auto'), on
a stamp that holds all but < 1e-3 of its flux.  Sources sit at reference-frame (RA, Dec); on
each image they are drawn at :func:`jointphot.conventions.reference_to_image` of that
image's astrometric offset.  The output is bitwise reproducible for a given seed.

Options that break the fitter's assumptions (all off by default; the default field is unchanged):
truncated or composite (bulge + disc + knots, colour gradient) galaxies, correlated HR noise
(ACS F814W drizzle), warped (correlated) LR noise, source shot noise, and PSF files that hold
only part of the PSF's light.  A field made with any of them records them in the truth header.
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
from .convolution import fftconvolve
from .errors import JointphotError
from .noise import NoiseModel, variance_factor
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
STAR_MAGS = (19.5, 25.5)     # HR AB magnitudes of the stars, uniform
GALAXY_MAGS = (20.5, 26.5)   # HR AB magnitudes of the galaxies, uniform
MAIN_DENSITY = 0.075     # unblended sources per arcsec^2, kept >= MIN_SEPARATION apart
MIN_SEPARATION = 2.5     # arcsec
PAIR_DENSITY = 0.006     # deliberate blends (pairs 0.3-1" apart) per arcsec^2
#: Sources per arcmin^2 of the default field (MAIN_DENSITY + PAIR_DENSITY counting a pair's companion).
DEFAULT_DENSITY = 3600.0 * (MAIN_DENSITY + PAIR_DENSITY)
FLUX_LOSS = 3e-4         # Sersic light allowed outside a stamp (the PSF pad keeps the total < 1e-3)
GALAXY_MODELS = ("sersic", "truncated", "composite")
HR_NOISE_MODELS = ("white", "cosmos")
LR_NOISE_MODELS = ("white", "warped")
TRUNCATION = 8.0         # truncated Sersic profiles end at TRUNCATION half-light radii (semi-major)
TRUNCATE_MIN_N = 1.5     # --galaxies truncated: only profiles with n > TRUNCATE_MIN_N are truncated
#: --poisson: electrons per image count.  HR counts are e-/s (ACS drizzle) of a one-orbit 2028 s
#: exposure; LR counts (zeropoint 27) are taken as e-/s of a 1200 s coadd.
ELECTRONS_PER_COUNT = {"hr": 2028.0, "lr": 1200.0}
WARP_SHIFT = (0.3, 0.7)  # px: range of the sub-pixel shift of the Lanczos-3 warp kernel (--lr-noise warped)
HR_GAP_CENTRE = 0.4      # --hr-gap: x of the strip's centre as a fraction of the field (off the tile boundaries)


def simulate_field(outdir, *, seed=1, size_arcsec=60.0, hr_offset_mas=(12.0, -8.0), lr_offset_mas=(-45.0, 30.0),
                   lr_rotation_deg=1.0, hr_fwhm_arcsec=0.10, lr_fwhm_arcsec=0.6, lr_moffat_beta=3.0,
                   hr_depth_mag=27.5, lr_depth_mag=25.7, galaxies="truncated", hr_noise="white", lr_noise="white",
                   poisson=False, psf_light_fraction=(1.0, 1.0), star_fraction=STAR_FRACTION, star_mags=STAR_MAGS,
                   galaxy_mags=GALAXY_MAGS, hr_gap_arcsec=0.0, density=None):
    """Simulate a square HR field of `size_arcsec` (arcsec) and its LR counterpart into `outdir`.

    hr/lr_offset_mas: astrometric offset (dRA cos dec, dDec) of each image, image - reference, mas.
    lr_rotation_deg: rotation of the LR pixel grid with respect to north-up (deg).
    hr_fwhm_arcsec: FWHM of the Gaussian HR PSF; lr_fwhm_arcsec, lr_moffat_beta: the Moffat LR PSF.
    hr/lr_depth_mag: 5-sigma matched-filter point-source depth (AB mag), sets the pixel noise.
    galaxies: 'truncated' (default; n > TRUNCATE_MIN_N cut at TRUNCATION r_e of the untruncated profile,
    jointphot's convention), 'sersic' (single untruncated Sersic)
    or 'composite' (truncated de Vaucouleurs bulge + exponential disc + knots for
    half of them, each with its own LR/HR flux ratio).
    hr_noise: 'white' or 'cosmos' (the correlation of ACS F814W drizzled noise; the weight map stays the
    per-pixel inverse variance).  lr_noise: 'white' or 'warped' (white noise through a Lanczos-3 warp
    kernel; VARIANCE stays the per-pixel variance).  poisson: add source shot noise
    (ELECTRONS_PER_COUNT; included in VARIANCE, not in the HR weight map, as in HSC and drizzle products).
    psf_light_fraction: (HR, LR) fraction of the PSF's light kept in the written PSF files (cut at a
    radius, renormalised to unit sum); the images are drawn with the whole PSF.
    star_fraction, star_mags, galaxy_mags: fraction of stars; (min, max) HR AB magnitudes, uniform.
    hr_gap_arcsec: width of a vertical strip (centred at HR_GAP_CENTRE of the field) where the HR image
    has no data (image 0, weight 0), like a chip gap; the LR images cover it.  Truth: in_hr_gap, and
    hr_snr 0 there.
    density: sources per arcmin^2 (None: DEFAULT_DENSITY, ~292); the unblended sources and the pairs are
    scaled alike (the unblended ones stay MIN_SEPARATION apart, which caps the density near 1300).
    Returns {name: path} of the files written (hr, hr_wht, lr, psf files, astrometry files,
    truth, job, job_seed).
    """
    import galsim  # optional dependency (extra 'sim'): only the simulation needs it

    if not size_arcsec >= 5.0:
        raise JointphotError(f"simulate: size_arcsec must be >= 5, got {size_arcsec}")
    for name, value, allowed in (("galaxies", galaxies, GALAXY_MODELS), ("hr_noise", hr_noise, HR_NOISE_MODELS),
                                 ("lr_noise", lr_noise, LR_NOISE_MODELS)):
        if value not in allowed:
            raise JointphotError(f"simulate: {name} must be one of {', '.join(allowed)}, got {value!r}")
    if not all(0.0 < f <= 1.0 for f in psf_light_fraction):
        raise JointphotError(f"simulate: psf_light_fraction must be in (0, 1], got {psf_light_fraction}")
    if not 0.0 <= star_fraction <= 1.0:
        raise JointphotError(f"simulate: star_fraction must be in [0, 1], got {star_fraction}")
    if density is not None and not density > 0:
        raise JointphotError(f"simulate: density must be > 0, got {density}")
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {name: os.path.join(outdir, fname) for name, fname in (
        ("hr", "hr.fits"), ("hr_wht", "hr_wht.fits"), ("lr", "lr.fits"), ("hr_psf", "hr_psf.fits"),
        ("lr_psf", "lr_psf.fits"), ("lr_psfex", "lr_psf.psf"), ("hr_psfex", "hr_psf.psf"),
        ("hr_astro", "hr_astro.txt"), ("lr_astro", "lr_astro.txt"), ("truth", "truth.fits"),
        ("job", "job.json"), ("job_seed", "job_seed.json"))}

    hr_psf = galsim.Gaussian(fwhm=hr_fwhm_arcsec)
    # the Moffat cut where the PSF files end: with psf_light_fraction 1 they hold all of its light
    # (untruncated, the files would miss 0.07 % and stars drawn to 5 FWHM another 0.07 %: LR fluxes of
    # bright stars 0.2 sigma low for a reason of the simulation's own)
    lr_psf = galsim.Moffat(beta=lr_moffat_beta, fwhm=lr_fwhm_arcsec,
                           trunc=psf_stamp_half(lr_fwhm_arcsec, LR_SCALE) * LR_SCALE)
    hr_epsf, hr_psf_kept = _write_psf_files(galsim, hr_psf, HR_SCALE, hr_fwhm_arcsec, paths["hr_psf"],
                                            paths["hr_psfex"], light_fraction=psf_light_fraction[0],
                                            polnames=["MAG_AUTO"], polzero=[23.0], polscal=[3.0], poldeg=1)

    # --- geometry -------------------------------------------------------------------------
    n_hr = int(round(size_arcsec / HR_SCALE))
    hr_wcs = _tan_wcs(n_hr, n_hr, HR_SCALE, 0.0, ((n_hr + 1) / 2.0, (n_hr + 1) / 2.0))
    theta = math.radians(lr_rotation_deg)
    n_lr = int(math.ceil((size_arcsec * (abs(math.cos(theta)) + abs(math.sin(theta))) + 2 * LR_MARGIN) / LR_SCALE)) + 1
    lr_wcs = _tan_wcs(n_lr, n_lr, LR_SCALE, lr_rotation_deg, ((n_lr + 1) / 2.0 + 0.37, (n_lr + 1) / 2.0 - 0.21))
    lr_epsf, lr_psf_kept = _write_psf_files(galsim, lr_psf, LR_SCALE, lr_fwhm_arcsec, paths["lr_psf"],
                                            paths["lr_psfex"], light_fraction=psf_light_fraction[1],
                                            polnames=["X_IMAGE", "Y_IMAGE"], polzero=[(n_lr + 1) / 2.0] * 2,
                                            polscal=[float(n_lr)] * 2, poldeg=2)

    # --- noise levels from the depths ------------------------------------------------------
    hr_sigma0 = _sigma_for_depth(hr_depth_mag, HR_ZP, hr_epsf)
    lr_sigma = _sigma_for_depth(lr_depth_mag, LR_ZP, lr_epsf)
    yy, xx = np.mgrid[:n_hr, :n_hr] / float(n_hr)
    hr_sigma = hr_sigma0 * (1.0 + 0.15 * np.cos(2 * np.pi * xx) * np.cos(np.pi * yy))

    # --- sources ---------------------------------------------------------------------------
    src = _make_sources(rng, size_arcsec, star_fraction=star_fraction, star_mags=star_mags,
                        galaxy_mags=galaxy_mags, galaxies=galaxies, density=density)
    nsrc = len(src["x_arcsec"])
    ra_img, dec_img = hr_wcs.wcs_pix2world(src["x_arcsec"] / HR_SCALE, src["y_arcsec"] / HR_SCALE, 0)
    ra, dec = conventions.image_to_reference(ra_img, dec_img, hr_offset_mas)
    x_hr, y_hr = hr_wcs.wcs_world2pix(*conventions.reference_to_image(ra, dec, hr_offset_mas), 0)
    x_lr, y_lr = lr_wcs.wcs_world2pix(*conventions.reference_to_image(ra, dec, lr_offset_mas), 0)
    hr_flux, lr_flux = src["hr_flux"], src["lr_flux"]

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
    hr_acf = cosmos_acf(galsim) if hr_noise == "cosmos" else np.ones((1, 1))
    lr_stamps = {}      # i -> (LR pixel slice, stamp / sigma over unmasked pixels): S/N once the warp is drawn
    for i in range(nsrc):
        if src["kind"][i] == "point":
            hr_profile = lr_profile = galsim.DeltaFunction()
            radius = 0.0
        else:
            hr_profile, lr_profile, radius = galaxy_profiles(galsim, {k: v[i] for k, v in src.items()})
        stamp = _draw(galsim, hr_profile, hr_psf, hr_flux[i], hr_jac, hr_img, x_hr[i], y_hr[i],
                      radius + 6 * hr_fwhm_arcsec, HR_SCALE)
        if stamp is not None:
            b = stamp.bounds
            hr_img[b] += stamp
            var = hr_sigma[b.ymin - 1:b.ymax, b.xmin - 1:b.xmax] ** 2
            hr_snr[i] = matched_filter_snr(stamp.array.astype(float) / np.sqrt(var), hr_acf)
        stamp = _draw(galsim, lr_profile, lr_psf, lr_flux[i], lr_jac, lr_img, x_lr[i], y_lr[i],
                      radius + (psf_stamp_half(lr_fwhm_arcsec, LR_SCALE) + 1) * LR_SCALE, LR_SCALE)
        if stamp is not None:
            b = stamp.bounds
            lr_img[b] += stamp
            cut = np.s_[b.ymin - 1:b.ymax, b.xmin - 1:b.xmax]
            lr_stamps[i] = stamp.array * lr_valid[cut] / lr_sigma
            lr_masked[i] = np.sum(stamp.array * ~lr_valid[cut]) / lr_flux[i]

    # --- noise, defects, files -------------------------------------------------------------
    hr_unit = cosmos_noise(galsim, (n_hr, n_hr), rng) if hr_noise == "cosmos" else rng.standard_normal((n_hr, n_hr))
    hr_data = hr_img.array + hr_unit * hr_sigma
    if poisson:
        hr_data += shot_noise(hr_img.array, ELECTRONS_PER_COUNT["hr"], rng)
    in_gap = np.abs(src["x_arcsec"] - HR_GAP_CENTRE * size_arcsec) < hr_gap_arcsec / 2.0
    gap_columns = np.abs(np.arange(n_hr) * HR_SCALE - HR_GAP_CENTRE * size_arcsec) < hr_gap_arcsec / 2.0
    hr_data[:, gap_columns] = 0.0
    hr_snr[in_gap] = 0.0
    hr_data = hr_data.astype(np.float32)
    lr_model = lr_img.array
    mask[lr_model > 2.0 * lr_sigma] |= bits["DETECTED"]
    if lr_noise == "warped":
        lr_shift = rng.uniform(*WARP_SHIFT, 2)
        lr_kernel = warp_kernel(*lr_shift)
        lr_unit = fftconvolve(rng.standard_normal((n_lr + lr_kernel.shape[0] - 1,) * 2), lr_kernel, mode="valid")
    else:
        lr_kernel = np.ones((1, 1))
        lr_unit = rng.standard_normal((n_lr, n_lr))
    lr_acf = fftconvolve(lr_kernel, lr_kernel[::-1, ::-1])
    for i, stamp in lr_stamps.items():
        lr_snr[i] = matched_filter_snr(stamp, lr_acf)
    lr_data = lr_model + lr_unit * lr_sigma
    variance = np.full((n_lr, n_lr), lr_sigma ** 2)
    if poisson:
        lr_data += shot_noise(lr_model, ELECTRONS_PER_COUNT["lr"], rng)
        variance += np.clip(lr_model, 0.0, None) / ELECTRONS_PER_COUNT["lr"]
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
    fits.PrimaryHDU(np.where(gap_columns, 0.0, 1.0 / hr_sigma ** 2).astype(np.float32), header=wht_header).writeto(paths["hr_wht"], overwrite=True)
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
    if density is not None:
        meta["DENSITY"] = (density, "[arcmin^-2] sources asked for (jointphot simulate --density)")
    if hr_gap_arcsec > 0:
        meta["HR_GAP"] = (hr_gap_arcsec, "[arcsec] width of the HR no-data strip (column in_hr_gap)")
        meta["HR_GAPX"] = (HR_GAP_CENTRE * size_arcsec, "[arcsec] x of its centre from the field's left edge")
    options = (galaxies, hr_noise, lr_noise, poisson, tuple(psf_light_fraction), star_fraction, tuple(star_mags),
               tuple(galaxy_mags))
    if options != ("sersic", "white", "white", False, (1.0, 1.0), STAR_FRACTION, STAR_MAGS, GALAXY_MAGS):
        hr_correlation = cosmos_correlation(galsim) if hr_noise == "cosmos" else (0.0, 1.0)
        meta.update({
            "GALAXIES": (galaxies, "galaxy model: sersic, truncated or composite"),
            "TRUNC": (TRUNCATION, "[r_e] truncation radius of truncated profiles"),
            "STARFRAC": (star_fraction, "fraction of stars"),
            "STARMAG1": (star_mags[0], "[mag] brightest HR mag of the stars"),
            "STARMAG2": (star_mags[1], "[mag] faintest HR mag of the stars"),
            "GALMAG1": (galaxy_mags[0], "[mag] brightest HR mag of the galaxies"),
            "GALMAG2": (galaxy_mags[1], "[mag] faintest HR mag of the galaxies"),
            "HR_NOISE": (hr_noise, "HR noise: white or cosmos (correlated)"),
            "HR_NCORR": (hr_correlation[0], "HR noise x-adjacent correlation"),
            "HR_NVF": (hr_correlation[1], "HR sum of noise correlations (1 = white)"),
            "LR_NOISE": (lr_noise, "LR noise: white or warped (correlated)")})
        if lr_noise == "warped":
            meta.update({
                "LR_WARPX": (float(lr_shift[0]), "[px] x shift of the Lanczos-3 warp kernel"),
                "LR_WARPY": (float(lr_shift[1]), "[px] y shift of the Lanczos-3 warp kernel"),
                "LR_NCORR": (float(np.sum(lr_kernel[:, 1:] * lr_kernel[:, :-1])), "LR noise x-adjacent correlation"),
                "LR_NVF": (float(lr_kernel.sum() ** 2), "LR sum of noise correlations (1 = white)")})
        else:
            meta.update({"LR_NCORR": (0.0, "LR noise x-adjacent correlation"),
                         "LR_NVF": (1.0, "LR sum of noise correlations (1 = white)")})
        meta.update({
            "POISSON": (poisson, "source shot noise added"),
            "HR_GAIN": (ELECTRONS_PER_COUNT["hr"] if poisson else 0.0, "[e-/count] HR shot noise (0 = none)"),
            "LR_GAIN": (ELECTRONS_PER_COUNT["lr"] if poisson else 0.0, "[e-/count] LR shot noise (0 = none)"),
            "HR_PSFLF": (hr_psf_kept[0], "fraction of the HR PSF light in hr_psf.fits"),
            "LR_PSFLF": (lr_psf_kept[1], "fraction of the LR PSF light in lr_psf.psf")})
    columns = [
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
        ("hr_snr", hr_snr, None, "HR matched-filter S/N, noise correlation included"),
        ("lr_snr", lr_snr, None, "LR matched-filter S/N over unmasked pixels, correlation incl."),
        ("isolated", sep > ISOLATION_RADIUS, None, "no other source within ISO_RAD"),
        ("nearest_arcsec", sep, "arcsec", "distance to the nearest other source"),
        ("pair_id", src["pair_id"], None, "deliberate blend pair number (0 = none)"),
        ("x_hr", x_hr, "pix", "0-based x on hr.fits (offset applied)"),
        ("y_hr", y_hr, "pix", "0-based y on hr.fits (offset applied)"),
        ("x_lr", x_lr, "pix", "0-based x on lr.fits IMAGE (offset applied)"),
        ("y_lr", y_lr, "pix", "0-based y on lr.fits IMAGE (offset applied)"),
        ("lr_masked_frac", lr_masked, None, "fraction of the LR flux on BAD/SAT/NO_DATA pixels"),
    ]
    if hr_gap_arcsec > 0:
        columns.append(("in_hr_gap", in_gap, None, "centre in the HR no-data strip (HR_GAP)"))
    if galaxies != "sersic":
        columns += [(name, src[name], unit, comment) for name, unit, comment in COMPONENT_COLUMNS
                    if galaxies == "composite" or name == "trunc_arcsec"]
    _write_truth(paths["truth"], meta, columns)
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


def psf_stamp_half(fwhm, scale) -> int:
    """Half size [px] of the written PSF images (6 FWHM + 2 px) for a PSF of `fwhm` [arcsec] at `scale`."""
    return int(math.ceil(6.0 * fwhm / scale)) + 2


def _write_psf_files(galsim, psf, scale, fwhm, fits_path, psfex_path, *, light_fraction, polnames, polzero,
                     polscal, poldeg):
    """Write the ePSF image (odd, unit sum) and a PSFEx model with PSF_SAMP 0.5.

    With light_fraction < 1 both are cut at the pixel-centre radius whose enclosed light is nearest to
    that fraction of the PSF's (then renormalised to unit sum), as a PSF model with a finite stamp.
    Returns the whole ePSF (unit sum) and the fraction of the PSF's total light in (the FITS image,
    the PSFEx model).
    """
    half = psf_stamp_half(fwhm, scale)
    epsf = psf.drawImage(nx=2 * half + 1, ny=2 * half + 1, scale=scale, method="auto").array.astype(float)
    written = epsf.copy()
    epsf /= epsf.sum()
    samp = 0.5
    fine = galsim.Convolve(psf, galsim.Pixel(scale)).drawImage(
        nx=4 * half + 1, ny=4 * half + 1, scale=scale * samp, method="no_pixel").array
    kept = (1.0, 1.0)
    if light_fraction < 1.0:
        radius = _light_radius(written, scale, light_fraction)
        written = _cut(written, scale, radius)
        fine = _cut(fine, scale * samp, radius)
        kept = (float(written.sum()), float(fine.sum()))
    written /= written.sum()
    header = fits.Header()
    header["PIXSCALE"] = (scale, "[arcsec/px] pixel scale of the PSF image")
    header["PSF_FWHM"] = (fwhm, "[arcsec] FWHM of the true PSF")
    fits.PrimaryHDU(written.astype(np.float32), header=header).writeto(fits_path, overwrite=True)
    fine /= fine.sum() * samp ** 2
    planes = np.zeros((len(psfex_exponents([0] * len(polnames), [poldeg])),) + fine.shape)
    planes[0] = fine
    write_psfex(psfex_path, planes, psf_samp=samp, polnames=polnames, polzero=polzero, polscal=polscal,
                poldeg=poldeg, fwhm_pix=fwhm / scale)
    return epsf, kept


def _centre_distance(shape, scale):
    """Distance (arcsec) of each pixel centre from the centre of an odd-sized image of `scale` arcsec/px."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return np.hypot(xx - (shape[1] - 1) / 2.0, yy - (shape[0] - 1) / 2.0) * scale


def _light_radius(image, scale, fraction):
    """The pixel-centre radius (arcsec) within which a unit-flux `image` holds the nearest to `fraction`."""
    distance = _centre_distance(image.shape, scale).ravel()
    order = np.argsort(distance, kind="stable")
    r, enclosed = distance[order], np.cumsum(image.ravel()[order])
    ring_ends = np.r_[np.flatnonzero(np.diff(r) > 0), r.size - 1]
    return float(r[ring_ends[np.argmin(np.abs(enclosed[ring_ends] - fraction))]])


def _cut(image, scale, radius):
    """`image` with the pixels whose centres lie beyond `radius` (arcsec) set to zero."""
    return np.where(_centre_distance(image.shape, scale) <= radius, image, 0.0)


def _make_sources(rng, size, *, star_fraction=STAR_FRACTION, star_mags=STAR_MAGS, galaxy_mags=GALAXY_MAGS,
                  galaxies="sersic", density=None):
    """Positions (arcsec from the HR pixel-(0,0) centre), kinds, magnitudes, fluxes (counts) and shapes:
    {truth column name: array}; density [per arcmin^2] None: DEFAULT_DENSITY."""
    lo, hi = 0.3, size - 0.3
    scale = 1.0 if density is None else density / DEFAULT_DENSITY
    n_main = int(round(scale * MAIN_DENSITY * size * size))
    pts = np.empty((0, 2))
    for _ in range(200 * n_main):
        if len(pts) == n_main:
            break
        p = rng.uniform(lo, hi, 2)
        if len(pts) == 0 or np.min(np.hypot(*(pts - p).T)) >= MIN_SEPARATION:
            pts = np.vstack([pts, p])
    pair_id = np.zeros(len(pts), dtype=np.int32)
    n_pairs = int(round(scale * PAIR_DENSITY * size * size))
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
    point = rng.uniform(size=n) < star_fraction
    hr_mag = np.where(point, rng.uniform(*star_mags, n), rng.uniform(*galaxy_mags, n))
    lr_mag = hr_mag + np.clip(rng.normal(0.0, 0.3, n), -0.8, 0.8)
    sersic_n = rng.uniform(0.7, 4.0, n)
    re = np.exp(rng.uniform(np.log(0.05), np.log(0.6), n))
    ab = rng.uniform(0.3, 1.0, n)
    pa = rng.uniform(0.0, 180.0, n)
    src = {"x_arcsec": pts[:, 0], "y_arcsec": pts[:, 1], "kind": np.where(point, "point", "sersic"),
           "hr_mag": hr_mag, "lr_mag": lr_mag, "pair_id": pair_id,
           "hr_flux": 10.0 ** (-0.4 * (hr_mag - HR_ZP)), "lr_flux": 10.0 ** (-0.4 * (lr_mag - LR_ZP)),
           "sersic_n": np.where(point, np.nan, sersic_n), "re_arcsec": np.where(point, 0.0, re),
           "ab": np.where(point, 1.0, ab), "pa_deg": np.where(point, 0.0, pa),
           "trunc_arcsec": np.where(~point & (sersic_n > TRUNCATE_MIN_N), TRUNCATION * re, 0.0)
           if galaxies == "truncated" else np.zeros(n)}
    if galaxies == "composite":
        src.update(_composite_components(rng, src))
    return src


#: Truth columns of --galaxies truncated (trunc_arcsec only) and composite (all).
COMPONENT_COLUMNS = [
    ("trunc_arcsec", "arcsec", "truncation semi-major radius of the Sersic or bulge profile (0 = none)"),
    ("bulge_frac_hr", None, "HR flux fraction of the bulge"),
    ("knot_frac_hr", None, "HR flux fraction of the knots (the disc has the rest)"),
    ("bulge_lr_hr", None, "LR/HR flux ratio (counts/counts) of the bulge"),
    ("disc_lr_hr", None, "LR/HR flux ratio (counts/counts) of the disc"),
    ("knot_lr_hr", None, "LR/HR flux ratio (counts/counts) of the knots"),
    ("bulge_re_arcsec", "arcsec", "bulge half-light semi-major axis"),
    ("bulge_ab", None, "bulge axis ratio b/a"),
    ("bulge_pa_deg", "deg", "bulge major-axis position angle, east of north"),
    ("n_knots", None, "number of knots (0 = none)"),
    ("knot_seed", None, "GalSim seed of the knot positions"),
]


def _composite_components(rng, src):
    """Bulge/disc/knot parameters of every galaxy of `src` (drawn after its other draws), and the
    composite galaxies' kind ('composite'), sersic_n (NaN) and LR fluxes/mags.

    The drawn shape and colour (re_arcsec, ab, pa_deg; lr_flux / hr_flux) become the disc's; the
    bulge is redder (LR/HR ratio 10**(-0.4 U(0.1, 0.6)) times the disc's), the knots bluer
    (10**(0.4 U(0.3, 1.0))).  Truth lr_flux = hr_flux * sum(HR fraction * LR/HR ratio) over components.
    """
    n = len(src["hr_mag"])
    gal = src["kind"] != "point"
    bulge_frac = np.where(gal, rng.uniform(0.1, 0.7, n), 0.0)
    knotty = gal & (rng.uniform(size=n) < 0.5)
    knot_frac = np.where(knotty, rng.uniform(0.05, 0.25, n), 0.0)
    n_knots = np.where(knotty, rng.integers(10, 41, n), 0).astype(np.int32)
    knot_seed = np.where(knotty, rng.integers(1, 2 ** 31 - 1, n), 0).astype(np.int32)
    bulge_re = np.where(gal, src["re_arcsec"] * rng.uniform(0.15, 0.5, n), 0.0)
    bulge_ab = np.where(gal, rng.uniform(0.6, 1.0, n), 1.0)
    bulge_pa = np.where(gal, (src["pa_deg"] + rng.normal(0.0, 10.0, n)) % 180.0, 0.0)
    disc_ratio = src["lr_flux"] / src["hr_flux"]
    bulge_ratio = disc_ratio * 10.0 ** (-0.4 * rng.uniform(0.1, 0.6, n))
    knot_ratio = disc_ratio * 10.0 ** (0.4 * rng.uniform(0.3, 1.0, n))
    lr_flux = np.where(gal, src["hr_flux"] * (bulge_frac * bulge_ratio + (1.0 - bulge_frac - knot_frac) * disc_ratio
                                              + knot_frac * knot_ratio), src["lr_flux"])
    return {"kind": np.where(gal, "composite", "point"), "sersic_n": np.full(n, np.nan),
            "lr_flux": lr_flux, "lr_mag": np.where(gal, LR_ZP - 2.5 * np.log10(lr_flux), src["lr_mag"]),
            "trunc_arcsec": TRUNCATION * bulge_re, "bulge_frac_hr": bulge_frac, "knot_frac_hr": knot_frac,
            "bulge_lr_hr": np.where(gal, bulge_ratio, disc_ratio), "disc_lr_hr": disc_ratio,
            "knot_lr_hr": np.where(knotty, knot_ratio, disc_ratio), "bulge_re_arcsec": bulge_re,
            "bulge_ab": bulge_ab, "bulge_pa_deg": bulge_pa, "n_knots": n_knots, "knot_seed": knot_seed}


def galaxy_profiles(galsim, source):
    """Unit-flux GalSim profiles (HR, LR) of one galaxy and the semi-major radius (arcsec) holding all
    but FLUX_LOSS of its light.  `source`: {truth column name: value} of one row (no trunc_arcsec = 0)."""
    if source["kind"] == "composite":
        return _composite_profiles(galsim, source)
    n, re, ab = source["sersic_n"], source["re_arcsec"], source["ab"]
    beta = (90.0 + source["pa_deg"]) * galsim.degrees
    trunc = source.get("trunc_arcsec", 0.0)
    if trunc > 0.0:   # r_e of the untruncated profile (the Tractor's and jointphot's); flux: the truncated total
        profile = galsim.Sersic(n=n, half_light_radius=re * math.sqrt(ab), trunc=trunc * math.sqrt(ab),
                                flux_untruncated=True).shear(q=ab, beta=beta)
        return profile, profile, trunc
    profile = galsim.Sersic(n=n, half_light_radius=re * math.sqrt(ab)).shear(q=ab, beta=beta)
    return profile, profile, re * (gammaincinv(2 * n, 1.0 - FLUX_LOSS) / gammaincinv(2 * n, 0.5)) ** n


def _composite_profiles(galsim, source):
    """galaxy_profiles of a composite: truncated de Vaucouleurs bulge + exponential disc (+ knots
    following the disc), weighted by their HR flux fractions (HR) or fraction x LR/HR ratio (LR)."""
    re, ab = source["re_arcsec"], source["ab"]
    disc_beta = (90.0 + source["pa_deg"]) * galsim.degrees
    bulge_ab = source["bulge_ab"]
    bulge = galsim.DeVaucouleurs(half_light_radius=source["bulge_re_arcsec"] * math.sqrt(bulge_ab),
                                 trunc=source["trunc_arcsec"] * math.sqrt(bulge_ab), flux_untruncated=True)
    disc = galsim.Exponential(half_light_radius=re * math.sqrt(ab))
    bulge_frac, knot_frac = source["bulge_frac_hr"], source["knot_frac_hr"]
    parts = [(bulge.shear(q=bulge_ab, beta=(90.0 + source["bulge_pa_deg"]) * galsim.degrees), bulge_frac,
              source["bulge_lr_hr"]),
             (disc.shear(q=ab, beta=disc_beta), 1.0 - bulge_frac - knot_frac, source["disc_lr_hr"])]
    radius = max(source["trunc_arcsec"], re * gammaincinv(2, 1.0 - FLUX_LOSS) / gammaincinv(2, 0.5))
    if source["n_knots"] > 0:
        knots = galsim.RandomKnots(int(source["n_knots"]), profile=disc,
                                   rng=galsim.BaseDeviate(int(source["knot_seed"])))
        radius = max(radius, float(np.hypot(*knots.points.T).max()) / math.sqrt(ab))
        parts.append((knots.shear(q=ab, beta=disc_beta), knot_frac, source["knot_lr_hr"]))
    lr_total = sum(frac * ratio for _, frac, ratio in parts)
    hr = galsim.Add([p.withFlux(frac) for p, frac, _ in parts])
    lr = galsim.Add([p.withFlux(frac * ratio / lr_total) for p, frac, ratio in parts])
    return hr, lr, radius


def shot_noise(model, electrons_per_count, rng):
    """Gaussian source shot noise (counts) of a noise-free `model` (counts, negatives as 0)."""
    return rng.standard_normal(model.shape) * np.sqrt(np.clip(model, 0.0, None) / electrons_per_count)


def cosmos_noise(galsim, shape, rng):
    """Unit-variance noise of `shape` with the correlation of ACS F814W drizzled images at 0.03"/px
    (GalSim's COSMOS noise, which is sampled at HR_SCALE)."""
    noise = galsim.getCOSMOSNoise(rng=galsim.BaseDeviate(int(rng.integers(1, 2 ** 31 - 1)))).withVariance(1.0)
    image = galsim.ImageD(shape[1], shape[0], scale=HR_SCALE)
    image.addNoise(noise)
    return image.array


def cosmos_correlation(galsim):
    """(x-adjacent correlation, sum of all correlations) of the COSMOS noise at HR_SCALE: the second is the
    variance of a large aperture's sum over that of white noise with the same per-pixel variance."""
    cf = cosmos_acf(galsim, max_lag=200)
    return float(cf[200, 201]), float(cf.sum())


def cosmos_acf(galsim, max_lag=8):
    """Autocorrelation of the COSMOS noise at HR_SCALE, lags up to `max_lag` px (noise.NoiseModel layout)."""
    size = 2 * max_lag + 1
    return galsim.getCOSMOSNoise().withVariance(1.0).drawImage(galsim.ImageD(size, size, scale=HR_SCALE)).array


def matched_filter_snr(model_over_sigma, acf):
    """S/N of a source's matched-filter flux: `model_over_sigma` its noise-free image / per-pixel sigma
    (0 on unused pixels), `acf` the noise's autocorrelation ([[1]] for white noise).  The white-noise
    S/N sqrt(sum(m^2 / var)) divided by the square root of the filter's variance factor."""
    white = math.sqrt(float(np.sum(model_over_sigma ** 2)))
    if white == 0:
        return 0.0
    return white / math.sqrt(variance_factor(NoiseModel(1.0, np.asarray(acf, float), 0), model_over_sigma))


def warp_kernel(dx, dy):
    """6x6 separable Lanczos-3 interpolation kernel for a sub-pixel shift (dx, dy) px, scaled so that
    white noise convolved with it keeps its per-pixel variance (sum of squares 1)."""
    def weights(shift):
        x = np.arange(-2, 4) - shift
        w = np.sinc(x) * np.sinc(x / 3.0)
        return w / w.sum()
    kernel = np.outer(weights(dy), weights(dx))
    return kernel / math.sqrt(np.sum(kernel ** 2))


#: Extra LR bands of `add_band` (jointphot simulate --extra-bands): each differs from the main LR band
#: ('lr') in pixel scale, rotation, PSF, depth, zeropoint, astrometric offset and footprint (the part
#: of the HR field it covers: x and y ranges as fractions of the field, from its lower-left corner).
#: A source's flux in a band is its LR flux times 10**(-0.4 colour), colour ~ N(mean, sigma) per source.
EXTRA_BANDS = {
    "g": {"pixel_scale": 0.2, "rotation_deg": 30.0, "fwhm_arcsec": 0.8, "moffat_beta": 2.5, "depth_mag": 25.6,
          "zp": 27.5, "offset_mas": (20.0, -35.0), "footprint": ((0.3, 1.0), (0.0, 1.0)), "colour": (0.3, 0.3)},
    "z": {"pixel_scale": 0.22, "rotation_deg": -15.0, "fwhm_arcsec": 0.75, "moffat_beta": 3.5, "depth_mag": 25.0,
          "zp": 26.5, "offset_mas": (-10.0, 25.0), "footprint": ((0.0, 1.0), (0.0, 0.75)), "colour": (-0.2, 0.3)},
}


def add_band(outdir, band, *, seed=1):
    """Draw LR band `band` (EXTRA_BANDS) of the field simulated in `outdir`: <band>.fits (IMAGE, MASK,
    VARIANCE; white noise), <band>_psf.fits and .psf (the whole Moffat PSF), <band>_astro.txt; the truth
    gains <band>_flux [band counts], <band>_snr, x_<band>, y_<band> (0-based pixels) and <band>_covered;
    job.json gains the band in lr_bands (the main LR band first, as 'lr').  Galaxies keep their LR shape
    (composites their LR colour gradient)."""
    import galsim

    spec = EXTRA_BANDS[band]
    paths = {name: os.path.join(outdir, fname) for name, fname in (
        ("image", f"{band}.fits"), ("psf", f"{band}_psf.fits"), ("psfex", f"{band}_psf.psf"),
        ("astro", f"{band}_astro.txt"), ("truth", "truth.fits"), ("job", "job.json"), ("hr", "hr.fits"))}
    rng = np.random.default_rng([seed, sum(map(ord, band))])
    with fits.open(paths["truth"]) as hdul:
        truth = hdul["TRUTH"].data
        truth_header = hdul["TRUTH"].header.copy()
    with fits.open(paths["hr"]) as hdul:
        n_hr = hdul[0].header["NAXIS1"]
    size = n_hr * HR_SCALE
    scale = spec["pixel_scale"]
    (fx0, fx1), (fy0, fy1) = spec["footprint"]
    # the band's pixel grid covers the footprint (HR field arcsec from its lower-left corner) plus a margin
    theta = math.radians(spec["rotation_deg"])
    width, height = (fx1 - fx0) * size, (fy1 - fy0) * size
    span = (width * abs(math.cos(theta)) + height * abs(math.sin(theta)) + 2 * LR_MARGIN,
            width * abs(math.sin(theta)) + height * abs(math.cos(theta)) + 2 * LR_MARGIN)
    nx, ny = (int(math.ceil(v / scale)) + 1 for v in span)
    hr_wcs = _tan_wcs(n_hr, n_hr, HR_SCALE, 0.0, ((n_hr + 1) / 2.0, (n_hr + 1) / 2.0))
    centre = hr_wcs.wcs_pix2world([[(fx0 + fx1) / 2 * n_hr - 0.5, (fy0 + fy1) / 2 * n_hr - 0.5]], 0)[0]
    wcs = _tan_wcs(nx, ny, scale, spec["rotation_deg"], ((nx + 1) / 2.0, (ny + 1) / 2.0))
    wcs.wcs.crval = [float(centre[0]), float(centre[1])]
    psf = galsim.Moffat(beta=spec["moffat_beta"], fwhm=spec["fwhm_arcsec"],
                        trunc=psf_stamp_half(spec["fwhm_arcsec"], scale) * scale)
    epsf, _ = _write_psf_files(galsim, psf, scale, spec["fwhm_arcsec"], paths["psf"], paths["psfex"],
                               light_fraction=1.0, polnames=["X_IMAGE", "Y_IMAGE"], polzero=[(nx + 1) / 2.0,
                               (ny + 1) / 2.0], polscal=[float(nx), float(ny)], poldeg=2)
    sigma = _sigma_for_depth(spec["depth_mag"], spec["zp"], epsf)
    mean, spread = spec["colour"]
    colour = rng.normal(mean, spread, len(truth))
    flux = truth["lr_flux"] * 10.0 ** (0.4 * (spec["zp"] - LR_ZP - colour))
    x, y = wcs.wcs_world2pix(*conventions.reference_to_image(truth["ra"], truth["dec"], spec["offset_mas"]), 0)
    covered = (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5)
    image = galsim.ImageD(nx, ny)
    jac = _galsim_jacobian(galsim, wcs)
    snr = np.zeros(len(truth))
    names = truth.columns.names
    for i, row in enumerate(truth):
        if row["kind"] == "point":
            profile, radius = galsim.DeltaFunction(), 0.0
        else:
            _, profile, radius = galaxy_profiles(galsim, {k: row[k] for k in names})
        stamp = _draw(galsim, profile, psf, flux[i], jac, image, x[i], y[i],
                      radius + (psf_stamp_half(spec["fwhm_arcsec"], scale) + 1) * scale, scale)
        if stamp is not None:
            image[stamp.bounds] += stamp
            snr[i] = matched_filter_snr(stamp.array / sigma, np.ones((1, 1)))
    data = image.array + rng.standard_normal((ny, nx)) * sigma
    _write_lr(paths["image"], wcs, data.astype(np.float32), np.zeros((ny, nx), np.int32),
              np.full((ny, nx), sigma ** 2, np.float32), seed, spec["zp"])
    _write_offsets(paths["astro"], spec["offset_mas"], rng)
    columns = [(c.name, truth[c.name], c.unit, truth_header.get(f"TCOMM{k}", ""))
               for k, c in enumerate(truth.columns, start=1) if not c.name.startswith((f"{band}_", f"x_{band}", f"y_{band}"))]
    columns += [(f"{band}_flux", flux, "count", f"total flux in {band}.fits counts (zeropoint {spec['zp']})"),
                (f"{band}_snr", snr, None, f"{band} matched-filter S/N"),
                (f"x_{band}", x, "pix", f"0-based x on {band}.fits IMAGE (offset applied)"),
                (f"y_{band}", y, "pix", f"0-based y on {band}.fits IMAGE (offset applied)"),
                (f"{band}_covered", covered, None, f"inside the {band} image")]
    meta = {k: (truth_header[k], truth_header.comments[k]) for k in truth_header
            if k not in ("XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT", "TFIELDS", "EXTNAME")
            and not k.startswith(("TTYPE", "TFORM", "TUNIT", "TCOMM"))}
    meta[f"{band.upper()}_ZP"] = (spec["zp"], f"[mag] AB zeropoint of {band}.fits")
    _write_truth(paths["truth"], meta, columns)
    job = json.load(open(paths["job"]))
    bands = [b for b in job.get("lr_bands", [{"lr_band": "lr"}]) if b["lr_band"] != band]
    bands.append({"lr_band": band, "lr_large_image_name": os.path.basename(paths["image"]), "lr_zp": spec["zp"],
                  "lr_image_psf": os.path.basename(paths["psfex"]), "lr_psf_type": "psfex",
                  "lr_astrometry_correction_name": os.path.basename(paths["astro"])})
    job["lr_bands"] = bands
    with open(paths["job"], "w") as fh:
        fh.write("{" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in job.items()) + "\n}\n")
    return paths


def _nearest_distance(x, y):
    """Distance (same units) from each point to its nearest neighbour (inf for a lone point)."""
    xy = np.c_[x, y]
    if len(xy) < 2:
        return np.full(len(xy), np.inf)
    return cKDTree(xy).query(xy, k=2)[0][:, 1]


def _write_lr(path, wcs, image, mask, variance, seed, zp=LR_ZP):
    """HSC-like MEF: header-only primary, IMAGE, MASK (MP_* keys), VARIANCE, all with the same WCS."""
    primary = fits.PrimaryHDU()
    primary.header["ORIGIN"] = ("jointphot simulate", "HSC-like simulated coadd")
    primary.header["SEED"] = seed
    primary.header["FLUXMAG0"] = (10.0 ** (0.4 * zp), "counts of a 0 mag AB source")
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
    # job.json: jointphot's packaged SExtractor files (the original's sexinputdir does not exist here)
    job = dict({k: v for k, v in seed_job.items() if k != "sexinputdir"}, sex_command="source-extractor",
               hr_large_image_wht_name=name["hr_wht"], hr_wht_image_type="MAP_WEIGHT")
    for key, content in (("job_seed", seed_job), ("job", job)):
        with open(paths[key], "w") as fh:   # one key per line, like the original README's example
            fh.write("{" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in content.items()) + "\n}\n")
