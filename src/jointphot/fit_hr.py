"""HR model fit of one tile: every SExtractor detection becomes a point source or a Sersic galaxy.

Groups: sources whose segments touch after dilation by one PSF FWHM are fitted together on
their bounding box; pixels of other segments in the box are ignored.  Start values come from
SExtractor (position, FLUX_AUTO, FLUX_RADIUS deconvolved from the PSF, B/A, THETA).
Point-source candidates (the original's rule, with CLASS_STAR computed at the real seeing,
or FLUX_RADIUS below 1.3x the PSF's) are fitted both ways and kept as galaxies only when
that lowers chi^2 by more than `GALAXY_DCHI2`.  The sky is the clipped median of
segmentation-free pixels (frozen, as in the original); weights are rescaled so that those
pixels have unit chi scatter (job key noise_rescale).
"""
from __future__ import annotations

import collections
import logging
from typing import List

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from scipy import ndimage

from .conventions import FLAGS, image_to_reference
from .engines.base import FIXED_SERSIC_N, KIND_OF_TYPE, TYPE_OF_KIND, Source
from .images import celestial_wcs, local_jacobian, read_tile_file, write_fits_atomic
from .plan import tile_path, tile_psf

log = logging.getLogger("jointphot.fit_hr")

#: chi^2 improvement needed to prefer a Sersic galaxy over a point source (4 more parameters).
GALAXY_DCHI2 = 12.0
#: Margin (pixels, beyond one PSF FWHM) around a group's segments in its fitting box.
BOX_MARGIN = 6


def sky_and_noise(image, invvar, source_mask, rescale: bool):
    """(sky level, weight factor): clipped mode of source-free pixels and 1/scatter^2 of their chi."""
    free = (invvar > 0) & ~source_mask
    if free.sum() < 50:
        return 0.0, 1.0
    mean, median, _ = sigma_clipped_stats(image[free], sigma=3.0, maxiters=10)
    sky = 2.5 * median - 1.5 * mean        # SExtractor's mode estimate: robust to faint wings
    if not rescale:
        return float(sky), 1.0
    _, _, chi_std = sigma_clipped_stats((image[free] - sky) * np.sqrt(invvar[free]), sigma=3.0, maxiters=10)
    return float(sky), float(1.0 / chi_std ** 2) if chi_std > 0 else 1.0


def start_sources(cat, psf, job, pixel_scale) -> List[Source]:
    """Initial model of each detection (0-based cutout pixels), with the point-source rule."""
    fwhm_pix = psf.fwhm_pix
    rule_fwhm = (job["hr_psf_fwhm_arcsec"] / pixel_scale) if job["hr_psf_fwhm_arcsec"] else fwhm_pix
    r_half_psf = 0.5 * fwhm_pix
    out = []
    for row in cat:
        ab = float(np.clip(row["B_IMAGE"] / max(row["A_IMAGE"], 1e-3), 0.1, 1.0))
        flux = float(row["FLUX_AUTO"]) if row["FLUX_AUTO"] > 0 else max(float(row["FLUX_ISO"]), 1.0)
        frad = float(row["FLUX_RADIUS"])
        re = np.sqrt(max(frad ** 2 - r_half_psf ** 2, 0.25)) / np.sqrt(ab)
        mag = float(row["MAG_AUTO"])
        is_point = ((row["CLASS_STAR"] > 0.8 and mag < 23 and ab > 0.8)
                    or (mag >= 23 and frad < 0.7 * rule_fwhm and ab > 0.8)
                    or frad < 1.3 * r_half_psf)
        out.append(Source("point" if is_point else "sersic", float(row["X_IMAGE"]) - 1, float(row["Y_IMAGE"]) - 1,
                          flux, float(re), ab, float(row["THETA_IMAGE"]), 2.0))
    return out


def groups_from_segmap(segmap, numbers, dilate_pix):
    """List of (label array of the group's source NUMBERs, bounding box) from touching segments."""
    footprint = ndimage.binary_dilation(segmap > 0, iterations=max(1, int(round(dilate_pix))))
    labels, _ = ndimage.label(footprint)
    index = {int(n): i for i, n in enumerate(numbers)}
    flat = segmap.ravel()
    seg_ids, first = np.unique(flat, return_index=True)   # one pixel of every segment
    group_of = dict(zip(seg_ids.tolist(), labels.ravel()[first].tolist()))
    members = {}
    for num in numbers:
        if int(num) in group_of and int(num) != 0:
            members.setdefault(group_of[int(num)], []).append(index[int(num)])
    return list(members.values()), labels


def fit_tile(plan, tile_id: int, directory: str, engine) -> None:
    """Fit all detections of a tile; write tNNNN_hr_fit.fits and tNNNN_hr_images.fits."""
    job = plan["job"]
    scale = plan["hr"]["pixel_scale_arcsec"]
    with read_tile_file(tile_path(directory, tile_id, "hr_cutout"), f"tile {tile_id}") as hdul:
        image = hdul[0].data.astype(float)
        invvar = hdul["WHT"].data.astype(float)
        header = hdul[0].header.copy()
    with read_tile_file(tile_path(directory, tile_id, "hr_detections"), f"tile {tile_id}") as hdul:
        cat = Table(hdul["CATALOG"].data)
        segmap = hdul["SEGMAP"].data.astype(np.int32)
    wcs = celestial_wcs(header, "hr cutout", f"tile {tile_id}")
    psf = tile_psf(plan, tile_id, "hr")
    sky, wfactor = sky_and_noise(image, invvar, ndimage.binary_dilation(segmap > 0, iterations=int(3 * psf.fwhm_pix) + 3),
                                 job["noise_rescale"])
    image = image - sky
    invvar = invvar * wfactor
    sources = start_sources(cat, psf, job, scale)
    groups, _ = groups_from_segmap(segmap, cat["NUMBER"], psf.fwhm_pix)
    numbers = np.asarray(cat["NUMBER"])
    results = _fit_groups(image, invvar, segmap, numbers, sources, groups, psf, engine, job)
    # second pass: the sky from the residual of the first (source light no longer biases it), and
    # every group refitted from the first pass's solution (flux, size and n all respond to the sky)
    fitted = [r.source for r in results]
    if fitted:
        resid = image - engine.render(image.shape, psf, [s for s, r in zip(fitted, results) if not r.failed])
        _, sky_correction, _ = sigma_clipped_stats(resid[invvar > 0], sigma=3.0, maxiters=10)
        image = image - sky_correction
        sky += float(sky_correction)
        results = _fit_groups(image, invvar, segmap, numbers, fitted, groups, psf, engine, job)
    near_edge = _near_coverage_edge(invvar, header, plan, 2.0 * psf.fwhm_pix)
    table = _hr_table(cat, results, wcs, header, plan, tile_id, near_edge)
    model = engine.render(image.shape, psf, [Source(KIND_OF_TYPE[r["type"]], r["x"], r["y"],
                                                    r["hr_flux"], r["re_pix"], r["ab"], r["phi_pix"], r["sersic_n"])
                                             for r in table if np.isfinite(r["hr_flux"])])
    hdr = fits.Header()
    hdr["JP_TILE"] = (tile_id, "tile id")
    hdr["JP_ENG"] = (engine.name, "fitting engine")
    hdr["JP_ENGV"] = (engine.version, "fitting engine version")
    hdr["JP_SKY"] = (sky, "[count] HR sky level subtracted (frozen)")
    hdr["JP_WFAC"] = (wfactor, "factor applied to the HR inverse variance")
    hdr["JP_PSFFW"] = (psf.fwhm_pix * scale, "[arcsec] HR PSF FWHM")
    tab_hdu = fits.BinTableHDU(table, header=hdr, name="HR_FIT")
    write_fits_atomic(fits.HDUList([fits.PrimaryHDU(header=hdr), tab_hdu]), tile_path(directory, tile_id, "hr_fit"))
    write_fits_atomic(fits.HDUList([fits.PrimaryHDU(header=hdr),
                                    fits.ImageHDU(image.astype(np.float32), header, name="IMAGE"),
                                    fits.ImageHDU(model.astype(np.float32), header, name="MODEL"),
                                    fits.ImageHDU((image - model).astype(np.float32), header, name="RESIDUAL")]),
                      tile_path(directory, tile_id, "hr_images"))


HRResult = collections.namedtuple(
    "HRResult", "source errors covariance n_iter converged chi2_dof at_bound failed group_id group_size")


def _fit_groups(image, invvar, segmap, numbers, sources, groups, psf, engine, job):
    """Fit every group; returns one HRResult per source (in the order of `sources`)."""
    results = [None] * len(sources)
    for gid, members in enumerate(groups):
        for i, res in zip(members, _fit_group(image, invvar, segmap, numbers, sources, members, psf, engine, job)):
            results[i] = res._replace(group_id=gid, group_size=len(members))
    return results


def _group_box(image, invvar, segmap, numbers, members, psf):
    """(image, inverse variance, x0, y0) of a group's fitting box; other groups' segments get weight 0."""
    ny, nx = image.shape
    group_numbers = numbers[members]
    ys, xs = np.nonzero(np.isin(segmap, group_numbers))
    pad = int(np.ceil(psf.fwhm_pix)) + BOX_MARGIN
    y0, y1 = max(0, ys.min() - pad), min(ny, ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(nx, xs.max() + pad + 1)
    seg = segmap[y0:y1, x0:x1]
    sub_iv = np.where((seg == 0) | np.isin(seg, group_numbers), invvar[y0:y1, x0:x1], 0.0)
    return image[y0:y1, x0:x1], sub_iv, x0, y0


def _fit_group(image, invvar, segmap, numbers, sources, members, psf, engine, job):
    """Fit one group on its box, other segments masked; point-source candidates tried as galaxies."""
    group_numbers = numbers[members]
    sub_img, sub_iv, x0, y0 = _group_box(image, invvar, segmap, numbers, members, psf)
    starts = [sources[i].copy(x=sources[i].x - x0, y=sources[i].y - y0) for i in members]
    all_point = all(s.kind == "point" for s in starts)
    max_iter = job["hr_ps_niter"] if all_point else job["hr_compl_niter"]
    try:
        fit = engine.fit_group(sub_img, sub_iv, psf, starts, max_iter=max(max_iter, job["hr_ps_niter"]))
        # point-source candidates: keep as galaxy only if a Sersic model is clearly better
        for k, s in enumerate(starts):
            if s.kind != "point":
                continue
            trial = list(fit.sources)
            trial[k] = s.copy(kind="sersic", x=fit.sources[k].x, y=fit.sources[k].y, flux=fit.sources[k].flux,
                              re=max(s.re, 1.0), n=1.5)
            alt = engine.fit_group(sub_img, sub_iv, psf, trial, max_iter=job["hr_compl_niter"])
            if fit.chi2 - alt.chi2 > GALAXY_DCHI2:
                fit = alt
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
        log.warning("HR fit of group with sources %s failed: %s", list(group_numbers), exc)
        return [HRResult(s.copy(x=s.x + x0, y=s.y + y0), {}, None, 0, False, np.nan, False, True, 0, 0)
                for s in starts]
    covs = fit.covariances or [None] * len(fit.sources)
    out = []
    for s, err, bound, cov in zip(fit.sources, fit.errors, fit.at_bound, covs):
        failed = not (np.isfinite(s.flux) and np.isfinite(err.get("flux", np.nan)))
        out.append(HRResult(s.copy(x=s.x + x0, y=s.y + y0), err, cov, fit.n_iter, fit.converged,
                            fit.chi2 / max(fit.ndof, 1), bound, failed, 0, 0))
    return out


def _near_coverage_edge(invvar, header, plan, distance_pix):
    """Boolean map: pixels within `distance_pix` of a no-data pixel or of the large image's border."""
    ny, nx = invvar.shape
    lny, lnx = plan["hr"]["shape"]
    x0, y0 = header["JP_X0"], header["JP_Y0"]
    # pad by one pixel: no-data outside the large image, data beyond a cutout edge inside it
    cov = np.ones((ny + 2, nx + 2), bool)
    cov[1:-1, 1:-1] = invvar > 0
    if x0 == 0:
        cov[:, 0] = False
    if y0 == 0:
        cov[0, :] = False
    if x0 + nx == lnx:
        cov[:, -1] = False
    if y0 + ny == lny:
        cov[-1, :] = False
    return ndimage.distance_transform_edt(cov)[1:-1, 1:-1] < distance_pix


def _padded_cov(cov):
    """A source's parameter covariance as a 7x7 matrix in STANDARD_PARAMS order (NaN where absent)."""
    out = np.full((7, 7), np.nan)
    if cov is not None:
        k = cov.shape[0]
        out[:k, :k] = cov
    return out


def _hr_table(cat, results, wcs, header, plan, tile_id, near_edge):
    """Table of the HR fit (one row per detection) with units."""
    job = plan["job"]
    x_off, y_off = header["JP_X0"], header["JP_Y0"]
    tile = plan["tiles"][tile_id]
    n = len(results)
    flags = np.zeros(n, np.int32)
    for i, (row, res) in enumerate(zip(cat, results)):
        src = res.source
        if res.failed:
            flags[i] |= FLAGS["HR_FIT_FAILED"]
        elif not res.converged:
            flags[i] |= FLAGS["HR_NOT_CONVERGED"]
        if res.at_bound:
            flags[i] |= FLAGS["PARAM_AT_BOUND"]
        if job["spurious_pixel_cut"] and row["FLUX_RADIUS"] < job["spurious_pixel_cut"]:
            flags[i] |= FLAGS["SPURIOUS"]
        if row["FLAGS"] >= 4:
            flags[i] |= FLAGS["SEXTRACTOR_FLAGGED"]
        iy = int(np.clip(np.floor(src.y + 0.5), 0, near_edge.shape[0] - 1))
        ix = int(np.clip(np.floor(src.x + 0.5), 0, near_edge.shape[1] - 1))
        if near_edge[iy, ix]:
            flags[i] |= FLAGS["HR_EDGE"]
    srcs = [r.source for r in results]
    errs = [r.errors for r in results]
    xs = np.array([s.x for s in srcs], float)
    ys = np.array([s.y for s in srcs], float)
    world = wcs.all_pix2world(np.column_stack([xs, ys]), 0) if n else np.zeros((0, 2))
    ra_ref, dec_ref = image_to_reference(world[:, 0], world[:, 1], plan["astrometry_offsets_mas"]["hr"])
    gx, gy = xs + x_off, ys + y_off
    core = tile["core"]
    in_core = (gx >= core[0]) & (gx < core[1]) & (gy >= core[2]) & (gy < core[3])
    galaxy = np.array([s.kind != "point" for s in srcs], bool)
    t = Table()
    t["tile_id"] = np.full(n, tile_id, np.int32)
    t["number"] = np.asarray(cat["NUMBER"], np.int32)
    t["type"] = np.array([TYPE_OF_KIND[s.kind] for s in srcs], dtype="U3")
    t["x"], t["y"] = xs, ys
    t["x_err"] = [e.get("x", np.nan) for e in errs]
    t["y_err"] = [e.get("y", np.nan) for e in errs]
    t["x_large"], t["y_large"] = gx, gy
    t["ra_hr"], t["dec_hr"] = world[:, 0], world[:, 1]
    t["ra"], t["dec"] = ra_ref, dec_ref
    t["in_core"] = in_core
    t["hr_flux"] = [s.flux for s in srcs]
    t["hr_flux_err"] = [e.get("flux", np.nan) for e in errs]
    t["re_pix"] = np.where(galaxy, [s.re for s in srcs], 0.0)
    t["re_pix_err"] = [e.get("re", np.nan) for e in errs]
    t["ab"] = np.where(galaxy, [s.ab for s in srcs], 1.0)
    t["ab_err"] = [e.get("ab", np.nan) for e in errs]
    t["phi_pix"] = np.where(galaxy, [s.phi for s in srcs], 0.0)
    t["sersic_n"] = [s.n if s.kind == "sersic" else FIXED_SERSIC_N.get(s.kind) or np.nan for s in srcs]
    t["sersic_n_err"] = [e.get("n", np.nan) for e in errs]
    t["hr_param_cov"] = np.array([_padded_cov(r.covariance) for r in results]).reshape(n, 49)
    re_as, pa = [], []
    for s in srcs:
        jac = local_jacobian(wcs, s.x, s.y)
        d = jac @ np.array([np.cos(np.radians(s.phi)), np.sin(np.radians(s.phi))])
        pa.append((np.degrees(np.arctan2(d[0], d[1])) + 180.0) % 180.0 if s.kind != "point" else np.nan)
        re_as.append(s.re * np.sqrt(abs(np.linalg.det(jac))) if s.kind != "point" else 0.0)
    t["re_arcsec"] = re_as
    t["pa_deg"] = pa
    t["hr_chi2_dof"] = [r.chi2_dof for r in results]
    t["hr_niter"] = np.array([r.n_iter for r in results], np.int16)
    t["hr_converged"] = np.array([r.converged for r in results], bool)
    t["group_id"] = np.array([r.group_id for r in results], np.int32)
    t["group_size"] = np.array([r.group_size for r in results], np.int16)
    t["flags"] = flags
    for col in ("FLUX_AUTO", "FLUXERR_AUTO", "MAG_AUTO", "FLUX_RADIUS", "CLASS_STAR", "FLAGS"):
        t["sex_" + col.lower()] = cat[col]
    return t
