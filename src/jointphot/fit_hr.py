"""HR model fit of one tile: every SExtractor detection gets a model (job key hr_models).

Groups: sources whose segments touch after dilation by one PSF FWHM are fitted together on
their bounding box; pixels of other groups' segments in the box are ignored.  Start values
come from SExtractor (position, FLUX_AUTO, FLUX_RADIUS deconvolved from the PSF, B/A, THETA).
hr_models 'sersic' (default): point-source candidates (the original's rule, CLASS_STAR at
the real seeing, or FLUX_RADIUS below 1.3x the PSF's) are fitted both ways and kept as
galaxies only when that lowers chi^2 by more than GALAXY_DCHI2; the others are Sersic, each tried as a
bulge + disc (COMP_DCHI2).  A trial refits its one source with the group's other sources held at
their current models (as legacypipe's model selection); a group whose model changed is fitted again jointly.
chi^2 differences (GALAXY_DCHI2, dchisq) are divided by the noise's variance factor for a point
source at the source (1 for white noise): correlated noise inflates them by that factor.
hr_models 'legacy' (modelselect.py, the Legacy Surveys' rules): in a group, all sources are first
fitted jointly as round exponentials; then, brightest first, each source's neighbours'
current models are subtracted (not masked) and the candidates PSF, REX, and for significant
extended sources DEV, EXP and SER are fitted on the source's own box; the chosen model
replaces the source's current one (never a candidate that ends on a shape bound); finally the
group is refitted jointly with the chosen models (errors from that joint fit), a source that ends
on a bound there taking its best simpler candidate.  The final pass subtracts the other groups'
first-pass models from each box.  A galaxy's r_e is bounded by RE_PER_SEGMENT_RADIUS
times the radius of its detection segment: a model cannot grow to swallow a neighbour's
halo.  The sky is the clipped mode of segmentation-free pixels, refined from the residual
of a first pass; weights are rescaled by the detection step's per-pixel noise scale (measured on
blank sky with the local background removed; job key noise_rescale).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import List

import numpy as np
from astropy.io import fits
from astropy.table import Table, vstack
from scipy import ndimage
from scipy.spatial import cKDTree

from . import apcorr
from .background import clipped_mean_median, mesh_background
from .conventions import FLAGS, SEXTRACTOR_FLAG_BITS, image_to_reference
from .convolution import fftconvolve
from .detect import detection_kernel, detection_settings, noise_scaled_settings, run_sextractor
from .engines.base import (COMP_START_FRACDEV, COMP_START_RE_RATIO, FIXED_SERSIC_N, KIND_OF_TYPE, N_PARAMS,
                           TYPE_OF_KIND, Source)
from .images import celestial_wcs, ellipse_on_sky, read_tile_file, write_fits_atomic
from .modelselect import (COMP_DCHI2, DCHISQ_ORDER, GALAXY_DCHI2, NPARAMS, candidates_flux_variance, dchisq_vector,
                          fit_candidates, select_model)
from .noise import (mismatch_lag, noise_model_from_hdu, residual_variance_factor, variance_factor, white_noise,
                    with_mismatch)
from .plan import get_tile, tile_path, tile_psf

log = logging.getLogger("jointphot.fit_hr")

#: Second detection pass: a residual detection needs this PSF matched-filter S/N (_residual_psf_fit) ...
RESIDUAL_MIN_SNR = 10.0
#: ... and this distance [PSF FWHM] from every fitted source.
RESIDUAL_MIN_SEPARATION_FWHM = 1.5
#: r_e [px] of a residual detection's start model (a point source; a REX start in hr_models 'legacy').
RESIDUAL_START_RE = 0.5
#: A galaxy's r_e may not exceed this many times the radius sqrt(area / pi) of its detection segment ...
RE_PER_SEGMENT_RADIUS = 3.0
#: ... nor fall below this many PSF FWHM as an upper bound (small segments of faint sources).
RE_MAX_MIN_FWHM = 2.0
#: Margin (pixels, beyond one PSF FWHM) around a group's segments in its fitting box.
BOX_MARGIN = 6


def sky_level(image, invvar, source_mask) -> float:
    """Sky level [counts]: the clipped mode of the weighted pixels outside `source_mask`."""
    free = (invvar > 0) & ~source_mask
    if free.sum() < 50:
        return 0.0
    mean, median = clipped_mean_median(image[free])
    return float(2.5 * median - 1.5 * mean)        # SExtractor's mode estimate: robust to faint wings


def start_sources(cat, psf, job, pixel_scale) -> List[Source]:
    """Initial model of each detection (0-based cutout pixels).  hr_models 'legacy': an
    exponential with SExtractor's position, flux and shape (only a start: the fit chooses the
    model).  'sersic': a point source by the original's rule (CLASS_STAR at the real seeing,
    or FLUX_RADIUS below 1.3x the PSF's), else a Sersic galaxy."""
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
        kind, n = ("exp", 1.0) if job["hr_models"] == "legacy" else ("point" if is_point else "sersic", 2.0)
        out.append(Source(kind, float(row["X_IMAGE"]) - 1, float(row["Y_IMAGE"]) - 1,
                          flux, float(re), ab, float(row["THETA_IMAGE"]), n))
    return out


def row_source(row, flux=None) -> Source:
    """The model Source of an HR fit row, in the tile cutout's pixel frame; flux [counts] the row's
    hr_flux unless given."""
    kind = KIND_OF_TYPE[row["type"]]
    n = float(row["sersic_n"]) if np.isfinite(row["sersic_n"]) else 1.0
    comp = dict(fracdev=float(row["fracdev"]), re_ratio=float(row["re_ratio"])) if kind == "comp" else {}
    return Source(kind, float(row["x"]), float(row["y"]), float(row["hr_flux"] if flux is None else flux),
                  float(row["re_pix"]), float(row["ab"]), float(row["phi_pix"]), n, **comp)


def segment_re_max(segmap, numbers, fwhm_pix) -> np.ndarray:
    """Upper bound [px] of each detection's r_e: RE_PER_SEGMENT_RADIUS x its segment radius,
    at least RE_MAX_MIN_FWHM x the PSF FWHM."""
    area = np.bincount(segmap.ravel(), minlength=int(max(np.max(numbers, initial=0), segmap.max())) + 1)
    radius = np.sqrt(area[np.asarray(numbers, int)] / np.pi)
    return np.maximum(RE_PER_SEGMENT_RADIUS * radius, RE_MAX_MIN_FWHM * fwhm_pix)


def with_every_segment(segmap, cat):
    """The segmentation map with each detection of `cat` that has no pixel of its own (its segment
    lost to a neighbour's) given its peak pixel (XPEAK/YPEAK_IMAGE): every source needs a group."""
    present = np.zeros(int(max(segmap.max(), np.max(cat["NUMBER"], initial=0))) + 1, bool)
    present[np.unique(segmap)] = True
    missing = ~present[np.asarray(cat["NUMBER"], int)]
    if not missing.any():
        return segmap
    segmap = segmap.copy()
    ny, nx = segmap.shape
    for row in cat[missing]:
        y = min(max(int(row["YPEAK_IMAGE"]) - 1, 0), ny - 1)
        x = min(max(int(row["XPEAK_IMAGE"]) - 1, 0), nx - 1)
        segmap[y, x] = row["NUMBER"]
    return segmap


def groups_from_segmap(segmap, numbers, dilate_pix):
    """Groups of touching segments (after dilation by `dilate_pix` [px]): a list of each group's indices
    into `numbers` (the sources' NUMBERs)."""
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
    return list(members.values())


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
        segmap = with_every_segment(hdul["SEGMAP"].data.astype(np.int32), cat)
        noise = noise_model_from_hdu(hdul["NOISE_ACF"])
        sex_version = hdul["CATALOG"].header.get("JP_SEXV", "unknown")
    del hdul                                 # its arrays: tile-sized arrays add up
    # the weights are rescaled to the blank sky's scatter below: errors need the correlation only
    correlation = dataclasses.replace(noise, scale=1.0)
    wcs = celestial_wcs(header, "hr cutout", f"tile {tile_id}")
    psf = tile_psf(plan, tile_id, "hr")
    sky = sky_level(image, invvar, ndimage.binary_dilation(segmap > 0, iterations=int(3 * psf.fwhm_pix) + 3))
    # the per-pixel noise scale of the detection step's noise model (measured on blank sky with the local
    # background removed: a halo or a sky gradient does not count as noise)
    wfactor = 1.0 / noise.scale ** 2 if job["noise_rescale"] else 1.0
    image = image - sky
    invvar = invvar * wfactor
    sources = start_sources(cat, psf, job, scale)
    groups = groups_from_segmap(segmap, cat["NUMBER"], psf.fwhm_pix)
    numbers = np.asarray(cat["NUMBER"])
    re_max = segment_re_max(segmap, numbers, psf.fwhm_pix)
    fitter = GroupFitter(image, invvar, segmap, numbers, re_max, psf, engine, job, correlation)
    # (the second pass always follows when there is a source: this pass's errors would not be used)
    results = fitter.fit_all(sources, groups, choose=True, errors=False)
    # second pass: the sky from the residual of the first (source light no longer biases it), and
    # every group refitted with its models chosen in the first pass, from the first pass's solution
    fitted = [r.source for r in results]
    n_residual = 0
    if fitted:
        resid = image - engine.render(image.shape, psf, [s for s, r in zip(fitted, results) if not r.failed])
        if job["hr_background_cell_arcsec"] > 0:
            background = mesh_background(resid, invvar, int(round(job["hr_background_cell_arcsec"] / scale)))
        else:
            background = np.full(image.shape, clipped_mean_median(resid[invvar > 0])[1])
        image = image - background
        fitter.image = image                 # (the first pass's image is not kept: tile-sized arrays add up)
        sky += float(np.median(background[invvar > 0])) if (invvar > 0).any() else 0.0
        resid -= background
        del background
        # second detection pass: objects the first missed (inside a halo, merged into a segment)
        extra, extra_seg, extra_starts = residual_detections(resid, image, invvar, fitted, psf, plan, directory,
                                               header, noise, start_number=int(numbers.max(initial=0)) + 1)
        del resid
        n_residual = len(extra)
        new = set(range(len(fitted), len(fitted) + n_residual))
        if n_residual:
            # the new segments are painted over the old map, except the old detections' peak pixels:
            # every source keeps a segment (groups and fit boxes come from the map)
            peaks = (np.asarray(cat["YPEAK_IMAGE"], int) - 1, np.asarray(cat["XPEAK_IMAGE"], int) - 1)
            old_at_peaks = segmap[peaks]
            segmap = np.where(extra_seg > 0, extra_seg, segmap)
            segmap[peaks] = old_at_peaks
            cat = vstack([cat, extra], metadata_conflicts="silent")
            segmap = with_every_segment(segmap, cat)
            numbers = np.asarray(cat["NUMBER"])
            fitted = fitted + extra_starts
            groups = groups_from_segmap(segmap, numbers, psf.fwhm_pix)
            choices = fitter.choices
            fitter = GroupFitter(image, invvar, segmap, numbers, segment_re_max(segmap, numbers, psf.fwhm_pix),
                                 psf, engine, job, correlation)
            fitter.choices = choices
        fitter.use_previous([r.source if not r.failed else None for r in results] + [None] * n_residual)
        # every group refitted with its chosen models; groups that gained a residual detection choose again
        rechoose = [bool(new.intersection(g)) for g in groups]
        results = fitter.fit_all(fitted, groups, choose=rechoose)
    near_edge = _near_coverage_edge(invvar, header, plan, 2.0 * psf.fwhm_pix, [r.source.x for r in results],
                                    [r.source.y for r in results])
    table = _hr_table(cat, results, wcs, header, plan, tile_id, near_edge)
    table["flags"][len(table) - n_residual:] |= FLAGS["HR_RESIDUAL_DETECTION"]
    model = engine.render(image.shape, psf, [row_source(r) for r in table if np.isfinite(r["hr_flux"])])
    stars = apcorr.chosen_stars(table, "hr_flux", "hr_flux_err")
    hr_apcor = apcorr.measure(image, invvar, model, table["x"][stars], table["y"][stars], table["hr_flux"][stars],
                              engine, psf, scale, correlation.correlation_sum)
    hdr = fits.Header()
    hdr["JP_TILE"] = (tile_id, "tile id")
    hdr["JP_ENG"] = (engine.name, "fitting engine")
    hdr["JP_ENGV"] = (engine.version, "fitting engine version")
    hdr["JP_SEXV"] = (sex_version, "SExtractor version (detection)")
    hdr["JP_SKY"] = (sky, "[count] HR sky level subtracted (median of the local background)")
    hdr["JP_BGCEL"] = (job["hr_background_cell_arcsec"], "[arcsec] HR local background cell (0: constant)")
    hdr["JP_WFAC"] = (wfactor, "factor applied to the HR inverse variance")
    hdr["JP_NRESD"] = (n_residual, "sources added by the detection on the first fit's residual")
    hdr["JP_PSFFW"] = (psf.fwhm_pix * scale, "[arcsec] HR PSF FWHM")
    hdr["JP_PSFLF"] = (job["hr_psf_light_fraction"], "HR PSF light fraction (share of a star's light in the stamp)")
    hdr.update(apcorr.header_cards("hr", hr_apcor))
    tab_hdu = fits.BinTableHDU(table, header=hdr, name="HR_FIT")
    write_fits_atomic(fits.HDUList([fits.PrimaryHDU(header=hdr), tab_hdu]), tile_path(directory, tile_id, "hr_fit"))
    write_fits_atomic(fits.HDUList([fits.PrimaryHDU(header=hdr),
                                    fits.ImageHDU(image.astype(np.float32), header, name="IMAGE"),
                                    fits.ImageHDU(model.astype(np.float32), header, name="MODEL"),
                                    fits.ImageHDU((image - model).astype(np.float32), header, name="RESIDUAL")]),
                      tile_path(directory, tile_id, "hr_images"))


def residual_detections(resid, image, invvar, sources, psf, plan, directory, header, noise, start_number):
    """(catalogue, segmentation map, start models) of the significant detections on the first fit's
    residual `resid` [counts] that no fitted source explains, numbered from `start_number`
    (SExtractor with the tile's detection settings, thresholds scaled for the noise model `noise`
    as in detect.detect_tile).  Kept: PSF matched-filter S/N (_residual_psf_fit, the error scaled
    by the correlation of `noise`) >= RESIDUAL_MIN_SNR, farther than RESIDUAL_MIN_SEPARATION_FWHM
    PSF FWHM from every fitted source in `sources`, and within one PSF FWHM of a local maximum of
    the PSF-smoothed data `image` (_smoothed_maxima), so that a model's mismatch (rings,
    arms) is not taken for a new object.  Start models: point sources at the matched filter's
    peak with its flux (SExtractor's sizes of a detection on a halo's residual mean nothing)."""
    job = plan["job"]
    scale = plan["hr"]["pixel_scale_arcsec"]
    settings = detection_settings(scale, job["hr_zp"], psf.fwhm_pix * scale, job["sextractor_settings"])
    settings = noise_scaled_settings(settings, noise, detection_kernel(settings, job["sex_command"], job["sexinputdir"]))
    maxima = _smoothed_maxima(image, invvar, psf)     # before SExtractor's arrays exist: tile-sized arrays add up
    cat, seg = run_sextractor(resid, out_dir=directory, settings=settings, sex_command=job["sex_command"],
                              weight=invvar, weight_type="MAP_WEIGHT", sexinputdir=job["sexinputdir"], header=header)
    if len(cat) == 0:
        return cat, np.zeros_like(seg), []
    px = np.asarray(cat["XPEAK_IMAGE"], int) - 1
    py = np.asarray(cat["YPEAK_IMAGE"], int) - 1
    # as in GroupFitter: the weights carry the noise's scale (fit_tile), the errors need its correlation only
    correlation = dataclasses.replace(noise, scale=1.0)
    psf_fits = [_residual_psf_fit(resid, invvar, psf, correlation, x, y) for x, y in zip(px, py)]
    snr = np.array([f[0] for f in psf_fits])
    known = np.array([[s.x, s.y] for s in sources]) if sources else np.zeros((0, 2))
    far = (cKDTree(known).query(np.column_stack([px, py]))[0] > RESIDUAL_MIN_SEPARATION_FWHM * psf.fwhm_pix
           if len(known) else np.ones(len(cat), bool))
    keep = (snr >= RESIDUAL_MIN_SNR) & far & (_distance_to(maxima, px, py, psf.fwhm_pix) <= psf.fwhm_pix)
    starts = [Source("point", x, y, flux, re=RESIDUAL_START_RE) for (_, flux, x, y), k in zip(psf_fits, keep) if k]
    cat = cat[keep]
    renumber = np.zeros(int(seg.max()) + 1, np.int32)
    renumber[np.asarray(cat["NUMBER"], int)] = start_number + np.arange(len(cat))
    cat["NUMBER"] = renumber[np.asarray(cat["NUMBER"], int)]
    log.info("%d of %d detections on the residual added", len(cat), len(keep))
    return cat, renumber[seg], starts


def _residual_psf_fit(resid, invvar, psf, correlation, x, y):
    """(S/N, flux [counts], x, y) of the best of the PSF fits of free flux centred on the pixel
    (x, y) [0-based] and its 8 neighbours: flux = sum(r P w) / sum(P^2 w) for residual r, PSF stamp
    P and weights w = invvar, error 1 / sqrt(sum(P^2 w)) times the square root of the variance
    factor of the weights P w under `correlation` (noise.variance_factor; 1 for white noise)."""
    stamp = np.asarray(psf.image, float)
    half_y, half_x = stamp.shape[0] // 2, stamp.shape[1] // 2
    ny, nx = resid.shape
    best = (0.0, 0.0, float(x), float(y), None)
    for yc in range(y - 1, y + 2):
        for xc in range(x - 1, x + 2):
            y0, y1 = max(yc - half_y, 0), min(yc + half_y + 1, ny)
            x0, x1 = max(xc - half_x, 0), min(xc + half_x + 1, nx)
            if y0 >= y1 or x0 >= x1:
                continue
            p = stamp[y0 - yc + half_y:y1 - yc + half_y, x0 - xc + half_x:x1 - xc + half_x]
            w = invvar[y0:y1, x0:x1]
            p2w = float(np.sum(p * p * w))
            if p2w <= 0:
                continue
            flux = float(np.sum(np.where(w > 0, resid[y0:y1, x0:x1], 0.0) * p * w)) / p2w
            if flux * np.sqrt(p2w) > best[0]:
                best = (flux * np.sqrt(p2w), flux, float(xc), float(yc), (p * w, w))
    snr_white, flux, xb, yb, weights = best
    if weights is None or correlation.max_lag == 0:
        return snr_white, flux, xb, yb
    return snr_white / np.sqrt(variance_factor(correlation, *weights)), flux, xb, yb


def _smoothed_maxima(image, invvar, psf):
    """Bool map of the positive local maxima (3 x 3) of `image` convolved with the PSF (zero-weight
    pixels set to 0)."""
    smooth = fftconvolve(np.where(invvar > 0, image, 0.0), np.asarray(psf.image, float), mode="same")
    return (smooth == ndimage.maximum_filter(smooth, size=3)) & (smooth > 0)


def _distance_to(mask, xs, ys, reach):
    """Distance [px] from each pixel (xs[i], ys[i]) [0-based, inside `mask`] to the nearest True pixel of
    `mask`, inf where none is within `reach` [px]: ndimage.distance_transform_edt(~mask)[ys, xs] to the bit
    up to `reach` (but for a `mask` without a True pixel, where the transform measures to a pixel outside the
    array), without the transform of the whole tile (its time and memory)."""
    r = int(np.ceil(reach))
    out = np.full(len(xs), np.inf)
    for i, (x, y) in enumerate(zip(np.asarray(xs, int), np.asarray(ys, int))):
        y0, x0 = max(y - r, 0), max(x - r, 0)
        yy, xx = np.nonzero(mask[y0:y + r + 1, x0:x + r + 1])
        if yy.size:
            out[i] = np.sqrt(float(np.min((yy + y0 - y) ** 2 + (xx + x0 - x) ** 2)))
    return out


HRResult = collections.namedtuple(
    "HRResult", "source errors covariance n_iter converged chi2_dof at_bound failed group_id group_size dchisq "
                "flux_var_model resid_factor")
#: The model choice of one source: {kind: dchisq} of its candidates, and the variance [counts^2]
#: of its flux over the candidates (modelselect.model_choice_variance).
Choice = collections.namedtuple("Choice", "dchisq flux_var")
NO_CHOICE = Choice({}, 0.0)


class GroupFitter:
    """Fits the groups of one tile: image [counts, sky subtracted], inverse variance, segmentation
    map, SExtractor NUMBERs, per-detection r_e bounds [px], PSF, engine, job, and the noise's
    correlation (noise.NoiseModel with scale 1; errors are scaled by its variance factor)."""

    def __init__(self, image, invvar, segmap, numbers, re_max, psf, engine, job, correlation=None):
        self.image, self.invvar, self.segmap, self.numbers = image, invvar, segmap, numbers
        #: bounding slices of each segment (index NUMBER - 1; None where a NUMBER has no pixel)
        self.segment_slices = ndimage.find_objects(segmap)
        self.re_max, self.psf, self.engine, self.job = re_max, psf, engine, job
        self.correlation = correlation or white_noise()
        #: source index -> Choice, kept from the pass that chose the model
        self.choices = {}
        #: models of a previous pass (source index -> Source or None) and their image: each group is
        #: then fitted with the other groups' light subtracted (use_previous)
        self.previous, self.previous_model = None, None

    def use_previous(self, sources):
        """Subtract, from each group's box, the other sources' models of a previous pass (one Source or
        None per source index, image frame): a halo or a bright neighbour in another group is then not
        taken into a faint source's model (its segment pixels stay masked as well)."""
        self.previous = list(sources)
        self.previous_model = self.engine.render(self.image.shape, self.psf, [s for s in sources if s is not None])

    def fit_all(self, sources, groups, choose, errors=True):
        """One HRResult per source (in the order of `sources`); choose (one bool, or one per group)
        True picks each source's model (hr_models legacy: by its candidates; sersic: by the point ->
        Sersic and Sersic -> comp trials), False refits the sources' kinds as they are.  errors=False:
        the results' errors are the fit's, not scaled for correlated noise or model mismatch (the
        models and `failed` only, for a pass whose errors are not kept)."""
        results = [None] * len(sources)
        choose = [choose] * len(groups) if isinstance(choose, bool) else choose
        for gid, members in enumerate(groups):
            for i, res in zip(members, self.fit_group(sources, members, choose[gid], errors)):
                results[i] = res._replace(group_id=gid, group_size=len(members))
        return results

    def box(self, members, within=None):
        """(y0, y1, x0, x1): bounding box of the members' segments plus one PSF FWHM and
        BOX_MARGIN, clipped to the image (or to the box `within`)."""
        ny, nx = self.image.shape
        slices = [self.segment_slices[n - 1] for n in np.asarray(self.numbers[members], int)
                  if 0 < n <= len(self.segment_slices) and self.segment_slices[n - 1] is not None]
        if not slices:
            raise ValueError(f"no segment pixel for the sources {list(self.numbers[members])}")
        pad = int(np.ceil(self.psf.fwhm_pix)) + BOX_MARGIN
        lo_y, hi_y, lo_x, hi_x = within if within is not None else (0, ny, 0, nx)
        return (max(lo_y, min(s[0].start for s in slices) - pad), min(hi_y, max(s[0].stop for s in slices) + pad),
                max(lo_x, min(s[1].start for s in slices) - pad), min(hi_x, max(s[1].stop for s in slices) + pad))

    def fit_group(self, sources, members, choose: bool, errors: bool = True):
        """Fit one group on its box (other groups' segments masked); returns HRResults (errors: see fit_all)."""
        y0, y1, x0, x1 = self.box(members)
        seg = self.segmap[y0:y1, x0:x1]
        img = self.image[y0:y1, x0:x1]
        if self.previous_model is not None:
            own = [_moved(self.previous[i], x=-x0, y=-y0) for i in members if self.previous[i] is not None]
            img = img - (self.previous_model[y0:y1, x0:x1] - self.engine.render(img.shape, self.psf, own))
        ivar = np.where((seg == 0) | np.isin(seg, self.numbers[members]), self.invvar[y0:y1, x0:x1], 0.0)
        starts = [sources[i].copy(x=sources[i].x - x0, y=sources[i].y - y0) for i in members]
        re_max = [float(self.re_max[i]) for i in members]
        try:
            fit = None
            legacy = self.job["hr_models"] == "legacy"
            if choose and legacy:
                starts, chosen, fit = self._choose_models(img, ivar, starts, re_max, (y0, x0), members)
                self.choices.update(zip(members, chosen))
            if fit is None:
                fit = self.engine.fit_group(img, ivar, self.psf, starts, max_iter=self._max_iter(starts),
                                            re_max=re_max)
                if not legacy:
                    if choose:
                        fit = self._point_sources_as_galaxies(img, ivar, starts, fit, re_max)
                        fit = self._sersics_as_composites(img, ivar, fit, re_max)
                else:
                    fit = self._simpler_where_bounded(img, ivar, starts, fit, re_max, members)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
            log.warning("HR fit of group with sources %s failed: %s", list(self.numbers[members]), exc)
            return [HRResult(s.copy(x=s.x + x0, y=s.y + y0), {}, None, 0, False, np.nan, False, True, 0, 0,
                             dchisq_vector(self.choices.get(i, NO_CHOICE).dchisq), np.nan, np.nan)
                    for s, i in zip(starts, members)]
        covs = fit.covariances or [None] * len(fit.sources)
        flux_weights = fit.flux_weights or [None] * len(fit.sources)
        residual = (img - self.engine.render(img.shape, self.psf, [s for s in fit.sources if np.isfinite(s.flux)])
                    if errors else None)
        out = []
        for s, err, bound, cov, weights, i in zip(fit.sources, fit.errors, fit.at_bound, covs, flux_weights, members):
            choice = self.choices.get(i, NO_CHOICE)
            resid_factor = np.nan
            if errors:
                unit = self.engine.render(img.shape, self.psf, [s.copy(flux=1.0)]) if np.isfinite(s.flux) else None
                # correlated noise: the errors scale with the variance factor of the source's flux weights (its
                # shape marginalised); a model that does not describe the data (clumps, spiral arms): with its
                # residual chi^2
                if unit is not None:
                    resid_factor = residual_variance_factor(unit, residual, ivar, mismatch_lag(self.psf.fwhm_pix))
                factor = with_mismatch(self._noise_factor(img, ivar, s, unit, weights), resid_factor)
                err = {k: v * np.sqrt(factor) for k, v in err.items()}
                cov = None if cov is None else cov * factor
                err = dict(err, flux=float(np.hypot(err.get("flux", np.nan), np.sqrt(choice.flux_var))))
            failed = not (np.isfinite(s.flux) and np.isfinite(err.get("flux", np.nan)))
            out.append(HRResult(s.copy(x=s.x + x0, y=s.y + y0), err, cov, fit.n_iter, fit.converged,
                                fit.chi2 / max(fit.ndof, 1), bound, failed, 0, 0, dchisq_vector(choice.dchisq),
                                choice.flux_var, resid_factor))
        return out

    def _noise_factor(self, img, ivar, src, model=None, flux_weights=None):
        """Variance factor (noise.variance_factor) of the flux weights of `src` on its group's box: 1 for
        white noise, ~3.7 for a point source under ACS drizzle noise.  `flux_weights`: the fit's
        (GroupFit.flux_weights, the shape marginalised), else model x invvar (the flux alone; `model`: the
        unit-flux model on the box, if already rendered)."""
        if not (np.isfinite(src.flux) and (ivar > 0).any()) or self.correlation.max_lag == 0:
            return 1.0
        if flux_weights is not None and np.any(flux_weights):
            return variance_factor(self.correlation, flux_weights, ivar)
        if model is None:
            model = self.engine.render(img.shape, self.psf, [src.copy(flux=1.0)])
        if not np.any(model * ivar):
            return 1.0
        return variance_factor(self.correlation, model * ivar, ivar)

    def _point_sources_as_galaxies(self, img, ivar, starts, fit, re_max):
        """hr_models 'sersic': each point-source candidate refitted as a Sersic galaxy, kept as one
        only when that lowers chi^2 by more than GALAXY_DCHI2."""
        def propose(k, src):
            if starts[k].kind != "point":
                return None
            return starts[k].copy(kind="sersic", x=src.x, y=src.y, flux=src.flux, re=max(starts[k].re, 1.0), n=1.5)
        return self._trials(img, ivar, fit, propose, GALAXY_DCHI2, re_max, bounded_ok=True)

    def _sersics_as_composites(self, img, ivar, fit, re_max):
        """hr_models 'sersic': each Sersic galaxy refitted as a bulge + disc (comp, from the Sersic's
        position, flux and ellipse), kept when chi^2 improves by more than COMP_DCHI2 and
        neither its fracdev nor its shape ends on a bound (a comp at fracdev 0 or 1 is an exp or a dev).
        A single Sersic fitted to a bulge + disc runs to n = 3-6 and extrapolates wings the galaxy
        does not have (HR fluxes +6-12 %)."""
        def propose(k, src):
            if src.kind != "sersic":
                return None
            return src.copy(kind="comp", fracdev=COMP_START_FRACDEV, re_ratio=COMP_START_RE_RATIO)
        return self._trials(img, ivar, fit, propose, COMP_DCHI2, re_max, bounded_ok=False)

    def _trials(self, img, ivar, fit, propose, threshold, re_max, bounded_ok):
        """Each source of the group's fit for which propose(k, source) gives another model refitted as
        that model, the group's other sources held at their current models (a trial costs one source's fit,
        not the group's: the cost stays linear in the group's size); kept when chi^2 on the group's box,
        divided by the noise's variance factor for a point source there, drops by more than `threshold`
        (and, unless bounded_ok, the trial's shape ends on no bound).  A group of several sources of which
        one changed is then fitted again jointly from the kept models.  Returns the group's GroupFit."""
        sources, chi2, changed = list(fit.sources), fit.chi2, False
        for k in range(len(sources)):
            trial = propose(k, sources[k])
            if trial is None:
                continue
            others = [s for j, s in enumerate(sources) if j != k and np.isfinite(s.flux)]
            data = img - self.engine.render(img.shape, self.psf, others) if others else img
            alt = self.engine.fit_group(data, ivar, self.psf, [trial], max_iter=self._max_iter([trial]),
                                        re_max=[re_max[k]])
            gain = (chi2 - alt.chi2) / self._noise_factor(img, ivar, sources[k].copy(kind="point"))
            if gain > threshold and (bounded_ok or not alt.at_bound[0]):
                sources[k], chi2, changed = alt.sources[0], alt.chi2, True
                if len(sources) == 1:
                    fit = alt
        if changed and len(sources) > 1:
            fit = self.engine.fit_group(img, ivar, self.psf, sources, max_iter=self._max_iter(sources),
                                        re_max=re_max)
        return fit

    def _simpler_where_bounded(self, img, ivar, starts, fit, re_max, members):
        """hr_models 'legacy': a source whose chosen model ends on a shape bound in the joint fit (a
        neighbour's halo stretching its r_e to the cap) takes the best of its candidates that are
        simpler (fewer parameters), and the group is fitted again, until none is bounded (a point
        source has no shape to bound)."""
        while True:
            trial = list(fit.sources)
            changed = False
            for k, (src, bounded) in enumerate(zip(fit.sources, fit.at_bound)):
                choice = self.choices.get(members[k])
                if not (bounded and src.kind != "point" and choice and choice.dchisq):
                    continue
                simpler = {kind: d for kind, d in choice.dchisq.items() if NPARAMS[kind] < NPARAMS[src.kind]}
                kind = select_model(simpler) if simpler else "point"
                trial[k] = src.copy(kind=kind, re=min(src.re, 0.5 * re_max[k]), n=FIXED_SERSIC_N.get(kind, src.n),
                                    **(dict(ab=1.0, phi=0.0) if kind in ("point", "rex") else {}))
                changed = True
            if not changed:
                return fit
            fit = self.engine.fit_group(img, ivar, self.psf, trial, max_iter=self._max_iter(trial), re_max=re_max)

    def _max_iter(self, sources):
        job = self.job
        per_source = job["hr_ps_niter"] if all(s.kind == "point" for s in sources) else job["hr_compl_niter"]
        return per_source * len(sources)

    def _choose_models(self, img, ivar, starts, re_max, origin, members):
        """Each source's model by the fit, brightest first, its neighbours' current models
        subtracted.  Returns (chosen sources, their Choices, the GroupFit of a lone source or None)."""
        engine, psf = self.engine, self.psf
        current = [s.copy(kind="rex", ab=1.0, phi=0.0) for s in starts]
        if len(starts) > 1:
            current = engine.fit_group(img, ivar, psf, current, max_iter=self.job["hr_compl_niter"],
                                       re_max=re_max).sources
        model = engine.render(img.shape, psf, current)
        chosen = [NO_CHOICE] * len(starts)
        lone_fit = None
        y_origin, x_origin = origin
        for k in np.argsort([-s.flux for s in current], kind="stable"):
            own = engine.render(img.shape, psf, [current[k]])
            others = model - own
            by0, by1, bx0, bx1 = self.box([members[k]], within=(y_origin, y_origin + img.shape[0],
                                                                x_origin, x_origin + img.shape[1]))
            sl = (slice(by0 - y_origin, by1 - y_origin), slice(bx0 - x_origin, bx1 - x_origin))
            shift = dict(x=-(bx0 - x_origin), y=-(by0 - y_origin))
            local = _moved(current[k], **shift)
            start = _moved(starts[k], **shift)
            fit, chosen[k] = self._candidates(img[sl] - others[sl], ivar[sl], start, local, re_max[k])
            current[k] = _moved(fit.sources[0], x=-shift["x"], y=-shift["y"])
            model = others + engine.render(img.shape, psf, [current[k]])
            if len(starts) == 1 and sl == (slice(0, img.shape[0]), slice(0, img.shape[1])):
                lone_fit = fit
        return current, chosen, lone_fit

    def _candidates(self, img, ivar, start, current, re_max):
        """Fit the candidate models of one source (neighbours already subtracted from `img`;
        modelselect.fit_candidates); returns (GroupFit of the chosen model, its Choice)."""
        good = ivar > 0

        def fit(src):
            return self.engine.fit_group(img, ivar, self.psf, [src], max_iter=self._max_iter([src]), re_max=[re_max])

        kind, fits, dchisq = fit_candidates(fit, current, start, float(np.sum(ivar[good] * img[good] ** 2)),
                                            lambda point: self._noise_factor(img, ivar, point.sources[0]))
        return fits[kind], Choice(dchisq, candidates_flux_variance(kind, fits, dchisq))


def _moved(src: Source, x: float, y: float) -> Source:
    """`src` shifted by (x, y) pixels."""
    return src.copy(x=src.x + x, y=src.y + y)


def _near_coverage_edge(invvar, header, plan, distance_pix, xs, ys):
    """Bool per position (xs[i], ys[i]) [px]: its pixel lies within `distance_pix` of a no-data pixel or of
    the large image's border."""
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
    ix = np.clip(np.floor(np.asarray(xs, float) + 0.5), 0, nx - 1).astype(int)
    iy = np.clip(np.floor(np.asarray(ys, float) + 0.5), 0, ny - 1).astype(int)
    return _distance_to(~cov, ix + 1, iy + 1, distance_pix) < distance_pix


def _padded_cov(cov):
    """A source's parameter covariance as a 7x7 matrix in STANDARD_PARAMS order (NaN where absent; a
    comp's fracdev and ln re_ratio are not kept)."""
    out = np.full((7, 7), np.nan)
    if cov is not None:
        k = 6 if cov.shape[0] == N_PARAMS["comp"] else cov.shape[0]
        out[:k, :k] = cov[:k, :k]
    return out


def _hr_table(cat, results, wcs, header, plan, tile_id, near_edge):
    """Table of the HR fit (one row per detection) with units; near_edge: bool per row (HR_EDGE)."""
    job = plan["job"]
    x_off, y_off = header["JP_X0"], header["JP_Y0"]
    n = len(results)
    flags = np.zeros(n, np.int32)
    for i, (row, res) in enumerate(zip(cat, results)):
        if res.failed:
            flags[i] |= FLAGS["HR_FIT_FAILED"]
        elif not res.converged:
            flags[i] |= FLAGS["HR_NOT_CONVERGED"]
        if res.at_bound:
            flags[i] |= FLAGS["PARAM_AT_BOUND"]
        if job["spurious_pixel_cut"] and row["FLUX_RADIUS"] < job["spurious_pixel_cut"]:
            flags[i] |= FLAGS["SPURIOUS"]
        if int(row["FLAGS"]) & SEXTRACTOR_FLAG_BITS:
            flags[i] |= FLAGS["SEXTRACTOR_FLAGGED"]
        if near_edge[i]:
            flags[i] |= FLAGS["HR_EDGE"]
    srcs = [r.source for r in results]
    errs = [r.errors for r in results]
    xs = np.array([s.x for s in srcs], float)
    ys = np.array([s.y for s in srcs], float)
    world = wcs.all_pix2world(np.column_stack([xs, ys]), 0) if n else np.zeros((0, 2))
    ra_ref, dec_ref = image_to_reference(world[:, 0], world[:, 1], plan["astrometry_offsets_mas"]["hr"])
    gx, gy = xs + x_off, ys + y_off
    # ownership by the detection's peak pixel: the same in every tile that sees the peak, unlike
    # the fitted centre, which a cut-off galaxy pulls towards each tile's interior
    det_x = np.asarray(cat["XPEAK_IMAGE"], float) - 1 + x_off
    det_y = np.asarray(cat["YPEAK_IMAGE"], float) - 1 + y_off
    in_core = get_tile(plan, tile_id).owns(det_x, det_y)
    galaxy = np.array([s.kind != "point" for s in srcs], bool)
    t = Table()
    t["tile_id"] = np.full(n, tile_id, np.int32)
    t["number"] = np.asarray(cat["NUMBER"], np.int32)
    t["type"] = np.array([TYPE_OF_KIND[s.kind] for s in srcs], dtype="U4")
    t["x"], t["y"] = xs, ys
    t["x_err"] = [e.get("x", np.nan) for e in errs]
    t["y_err"] = [e.get("y", np.nan) for e in errs]
    t["x_large"], t["y_large"] = gx, gy
    t["ra_hr"], t["dec_hr"] = world[:, 0], world[:, 1]
    t["ra"], t["dec"] = ra_ref, dec_ref
    t["x_det_large"], t["y_det_large"] = det_x, det_y
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
    t["fracdev"] = [s.fracdev if s.kind == "comp" else np.nan for s in srcs]
    t["fracdev_err"] = [e.get("fracdev", np.nan) for e in errs]
    t["re_ratio"] = [s.re_ratio if s.kind == "comp" else np.nan for s in srcs]
    t["hr_param_cov"] = np.array([_padded_cov(r.covariance) for r in results]).reshape(n, 49)
    sky = [ellipse_on_sky(wcs, s.x, s.y, s.re, s.phi) if s.kind != "point" else (0.0, np.nan) for s in srcs]
    t["re_arcsec"] = [re for re, _ in sky]
    t["pa_deg"] = [pa for _, pa in sky]
    t["hr_chi2_dof"] = [r.chi2_dof for r in results]
    t["hr_niter"] = np.array([r.n_iter for r in results], np.int16)
    t["hr_converged"] = np.array([r.converged for r in results], bool)
    t["group_id"] = np.array([r.group_id for r in results], np.int32)
    t["group_size"] = np.array([r.group_size for r in results], np.int16)
    t["dchisq"] = np.array([r.dchisq for r in results], float).reshape(n, len(DCHISQ_ORDER))
    t["hr_flux_err_model"] = np.sqrt([r.flux_var_model for r in results])
    t["hr_resid_factor"] = np.array([r.resid_factor for r in results], float)
    t["flags"] = flags
    for col in ("FLUX_AUTO", "FLUXERR_AUTO", "MAG_AUTO", "FLUX_RADIUS", "CLASS_STAR", "FLAGS"):
        t["sex_" + col.lower()] = cat[col]
    return t
