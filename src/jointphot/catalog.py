"""Catalogue columns: units and descriptions (FITS TUNITn/TCOMMn and the README of columns).

Columns named <band>_... exist once per LR band (the band name is the job key lr_band, default
'lr', or that of each object of lr_bands); they are described here with the placeholder '{band}'.
"""
from __future__ import annotations

from typing import List

from astropy.table import Table

from .apcorr import CARD_COMMENTS, CARDS
from .conventions import FLAG_MEANINGS, FLAGS
from .engines.base import SERSIC_N_RANGE, SPLIT_FRACDEV_MARGIN
from .modelselect import COMP_DCHI2
from .modelselect import SELECTION_SUMMARY
from .models import TRUNCATION_RADIUS

COLUMNS = {
    "id": ("", "unique source id = tile_id * 100000 + number"),
    "tile_id": ("", "tile that measured (owns) the source"),
    "number": ("", "SExtractor NUMBER within the tile"),
    "type": ("", "model chosen by the fit: psf, rex, exp, dev, ser or comp (see Models below)"),
    "x": ("pix", "HR position in the tile cutout, 0-based"),
    "y": ("pix", "HR position in the tile cutout, 0-based"),
    "x_err": ("pix", "1-sigma error of x"),
    "y_err": ("pix", "1-sigma error of y"),
    "x_large": ("pix", "HR position in the large HR image, 0-based"),
    "y_large": ("pix", "HR position in the large HR image, 0-based"),
    "ra_hr": ("deg", "right ascension in the HR image's own frame"),
    "dec_hr": ("deg", "declination in the HR image's own frame"),
    "ra": ("deg", "right ascension in the reference frame (HR astrometric offset removed)"),
    "dec": ("deg", "declination in the reference frame (HR astrometric offset removed)"),
    "x_det_large": ("pix", "HR detection peak (SExtractor XPEAK_IMAGE) in the large HR image, 0-based"),
    "y_det_large": ("pix", "HR detection peak (SExtractor YPEAK_IMAGE) in the large HR image, 0-based"),
    "in_core": ("", "detection peak inside the tile's core: the tile owns the source"),
    "re_pix": ("pix", "half-light radius of the major axis, HR pixels (0 for psf)"),
    "re_pix_err": ("pix", "1-sigma error of re_pix"),
    "re_arcsec": ("arcsec", "half-light radius of the major axis (0 for psf)"),
    "ab": ("", "axis ratio b/a (1 for psf)"),
    "ab_err": ("", "1-sigma error of ab"),
    "phi_pix": ("deg", "major-axis angle in the HR pixel frame, counter-clockwise from +x"),
    "pa_deg": ("deg", "position angle of the major axis, east of north, [0, 180)"),
    "sersic_n": ("", "Sersic index (NaN for psf and comp; 1 exp, 4 dev)"),
    "sersic_n_err": ("", "1-sigma error of sersic_n"),
    "fracdev": ("", "comp: fraction of the flux in the de Vaucouleurs bulge (NaN for other types)"),
    "fracdev_err": ("", "1-sigma error of fracdev"),
    "re_ratio": ("", "comp: bulge half-light radius / disc half-light radius re_pix (same ellipse; NaN for other "
                     "types)"),
    "hr_chi2_dof": ("", "chi^2 per degree of freedom of the source's HR group fit"),
    "hr_niter": ("", "optimiser steps taken by the HR group fit"),
    "hr_converged": ("", "HR fit converged (dlnp < 1e-3 before the iteration limit)"),
    "group_id": ("", "HR fit group within the tile"),
    "group_size": ("", "sources fitted together in the HR group"),
    "dchisq": ("", "HR chi^2 improvement over no source of each candidate: psf, rex, dev, exp, ser "
                   "(NaN: not fitted), divided by the noise's variance factor for a point source; LR_ONLY rows: "
                   "in the first LR band that found them"),
    "hr_param_cov": ("", "HR parameter covariance, 7x7 row-major in the order x, y [pix], flux [count], "
                         "ln re [ln pix], e1, e2, n (NaN for parameters the model lacks; comp: the disc's re, "
                         "fracdev and re_ratio not included)"),
    "flags": ("", "bit mask, see the flags table"),
    "sex_flux_auto": ("count", "SExtractor FLUX_AUTO on the HR image"),
    "sex_fluxerr_auto": ("count", "SExtractor FLUXERR_AUTO (no Poisson term)"),
    "sex_mag_auto": ("mag", "SExtractor MAG_AUTO (AB, hr_zp)"),
    "sex_flux_radius": ("pix", "SExtractor FLUX_RADIUS (half-light, PSF included)"),
    "sex_class_star": ("", "SExtractor CLASS_STAR (at the real HR seeing)"),
    "sex_flags": ("", "SExtractor FLAGS"),
    "hr_flux": ("count", "HR total model flux, HR image counts (mag = hr_zp - 2.5 log10 flux)"),
    "hr_flux_err": ("count", "1-sigma error of hr_flux: the full fit covariance (with the noise's variance factor, "
                             "or hr_resid_factor where the model does not describe the data) and (hr_models legacy) "
                             "the model-choice part hr_flux_err_model, in quadrature"),
    "hr_resid_factor": ("", "the source's flux variance estimated from the HR fit's residual under it (pairs of pixels "
                            "within half a PSF FWHM), over the weight map's: ~1 where the model describes the data; "
                            "above 3x the noise's variance factor it replaces that factor in every HR error"),
    "hr_flux_err_model": ("count", "spread of hr_flux over the candidate models (Akaike weights; candidates whose "
                                   "shape ended on a bound left out; 0 when the model was not chosen by the fit)"),
    "hr_mag": ("mag", "HR AB magnitude (NaN when hr_flux <= 0)"),
    "hr_mag_err": ("mag", "1-sigma error of hr_mag"),
    "hr_flux_ujy": ("uJy", "HR flux in microjansky"),
    "hr_flux_ujy_err": ("uJy", "1-sigma error of hr_flux_ujy"),
    "{band}_flux": ("count", "forced LR flux, LR image counts (mag = lr_zp - 2.5 log10 flux); may be negative"),
    "{band}_flux_err": ("count", "1-sigma error of the LR flux: {band}_flux_err_fixed and {band}_flux_err_shape "
                                  "in quadrature"),
    "{band}_flux_err_fixed": ("count", "LR flux error with the HR shapes fixed (joint fit of the tile, full covariance, "
                                        "measured noise correlation): the error of colours between LR bands, which "
                                        "share the HR shapes (SED fitting)"),
    "{band}_flux_err_shape": ("count", "LR flux error from the HR position/shape uncertainty (first order); LR_ONLY "
                                        "rows: from their own position/shape fitted in this band and the spread of "
                                        "their candidate models' fluxes"),
    "{band}_hr_flux_cov": ("count2", "covariance of {band}_flux with hr_flux through the HR shape (first order; LR x HR "
                                     "counts): var(lr/hr) = (err_lr^2 - 2 (lr/hr) cov + (lr/hr)^2 err_hr^2) / hr^2"),
    "{band}_flags": ("", "the band's own flags (LR_MASKED, LR_OFF_IMAGE, LR_BLENDED; also in flags)"),
    "{band}_masked_frac": ("", "fraction of the LR model on ignored (masked) pixels"),
    "{band}_max_corr": ("", "largest |flux correlation| with another source in the LR fit"),
    "{band}_fracdev": ("", "comp: the bulge's share of {band}_flux, the bulge and the disc each fitted in the band "
                           "(their colours may differ); NaN for other types and for comps with fracdev within "
                           f"{SPLIT_FRACDEV_MARGIN} of 0 or 1"),
    "{band}_resid_factor": ("", "as hr_resid_factor, for the band's forced fit (the HR shape not describing the LR "
                                "image: a colour gradient); enters {band}_flux_err_fixed the same way"),
    "{band}_mag": ("mag", "LR AB magnitude (NaN when the flux <= 0)"),
    "{band}_mag_err": ("mag", "1-sigma error of the LR magnitude"),
    "{band}_flux_ujy": ("uJy", "LR flux in microjansky"),
    "{band}_flux_ujy_err": ("uJy", "1-sigma error of the LR flux in microjansky"),
}

#: Columns of the BANDS extension: name -> (unit, description).
BANDS_COLUMNS = {
    "band": ("", "LR band name (prefix of its catalogue columns)"),
    "zeropoint": ("mag", "AB zeropoint of the band's image counts"),
    "pixel_scale": ("arcsec", "pixel scale of the band's image"),
    "apcor": ("", "aperture correction (total / fitted flux) measured on bright isolated stars"),
    "apcor_err": ("", "1-sigma error of apcor (-1: not measured)"),
    "apcor_nstars": ("", "stars that measured apcor"),
    "apcor_radius": ("arcsec", "aperture radius of apcor"),
    "apcor_applied": ("", "the band's fluxes were multiplied by apcor (job key lr_aperture_correction)"),
    "missing_tiles": ("", "tiles whose catalogue of this band is missing (its columns NaN, flag LR_OFF_IMAGE)"),
}


def describe(name: str, bands: List[str]):
    """(unit, description) of a column (LR band names `bands`), or ('', '') when unknown."""
    if name in COLUMNS:
        return COLUMNS[name]
    for band in bands:
        if name.startswith(f"{band}_"):
            unit, desc = COLUMNS.get("{band}_" + name[len(band) + 1:], ("", ""))
            return unit, desc.replace("{band}", band)
    return "", ""


def set_units(table: Table, bands: List[str]) -> Table:
    """Set each column's unit and description (written as TUNITn / TCOMMn by astropy)."""
    for name in table.colnames:
        unit, desc = describe(name, bands)
        table[name].unit = unit or None
        table[name].description = desc
    return table


def readme_text(table: Table, bands: List[str]) -> str:
    """Plain-text README of a catalogue's columns and flags (LR band names `bands`)."""
    lines = ["jointphot catalogue: columns", ""]
    for name in table.colnames:
        unit, desc = describe(name, bands)
        lines.append(f"{name:24s} [{unit or '-':6s}] {desc}")
    lines += ["", "flags (bit value: name: meaning)"]
    for name, bit in FLAGS.items():
        lines.append(f"{bit:6d}: {name}: {FLAG_MEANINGS[name]}")
    lines += ["", "Models (type; the Legacy Surveys' model types and selection rules, legacypipe oneblob.py):",
              "  psf: point source; rex: round exponential (r_e free, b/a = 1); exp: exponential (n = 1);",
              "  dev: de Vaucouleurs (n = 4); ser: Sersic (n free, %.1f-%.1f); comp: bulge + disc, an" % SERSIC_N_RANGE,
              "  exponential disc (re_pix, ab, phi) plus a de Vaucouleurs bulge on the same ellipse with the",
              "  fraction fracdev of the flux and half-light radius re_ratio x re_pix (DR7's COMP with the two",
              "  shapes tied; hr_models sersic only: tried for every ser galaxy, kept when chi^2 improves by",
              "  > %g and it ends on no bound).  Every galaxy profile is" % COMP_DCHI2,
              "  cut at %g r_e (as GalSim's Sersic(trunc=%g r_e); SDSS and the Tractor soften theirs to zero"
              % (TRUNCATION_RADIUS, TRUNCATION_RADIUS),
              "  between 7 and 8 r_e, 0.2-0.8 %% less light for n = 2-6): hr_flux and the LR fluxes are the",
              "  total flux of the truncated profile; r_e is the half-light radius of the untruncated one.",
              "  e1, e2 = e (cos 2 phi, sin 2 phi) with e = (1 - b/a) / (1 + b/a).",
              "  The chosen model is the simplest one that the fit's chi^2 gains justify: %s." % SELECTION_SUMMARY,
              "", "Fluxes: counts at the image zeropoint; uJy = counts * 10**(-0.4 (zp - 23.9)).",
              "Positions ra/dec are in the reference frame of the astrometric offset files (image - reference)."]
    lines += ["", "Header: HR aperture correction (the light the PSF stamp misses, from bright isolated stars; job key",
              "hr_aperture_correction: 'apply' multiplies the fluxes and their errors by it, magnitudes follow)"]
    lines += [f"{card:8s} {CARD_COMMENTS[what].format(band='HR')}" for what, card in CARDS["hr"].items()]
    lines += ["", "Extension BANDS: one row per LR band (job key lr_aperture_correction of each band as above)"]
    lines += [f"{name:14s} [{unit or '-':6s}] {desc}" for name, (unit, desc) in BANDS_COLUMNS.items()]
    lines += ["", "Extension JOB: columns job (the whole job as JSON: every key, defaults filled, inputs by absolute",
              "path) and versions (JSON: jointphot, engine, sextractor, python, numpy, scipy, astropy).",
              "`jointphot rerun CATALOGUE --dir DIR` runs that job again with the same engine."]
    return "\n".join(lines) + "\n"
