"""Cut one tile out of the large images: HR (+ inverse-variance weights) and LR (IMAGE, MASK, VARIANCE).

The HR cutout is the tile's padded region.  The LR cutout covers the sky footprint of
that region plus a margin of half the LR PSF (so LR models of sources at the HR edge are
complete).  Only these sections are read from disk.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats

from .images import (LR_EXTENSIONS, celestial_wcs, image_hdu, open_fits, read_section, sliced_header,
                     write_fits_atomic)
from .plan import band_plan, band_product, get_tile, tile_entry, tile_path

log = logging.getLogger("jointphot.cutout")

#: Extra LR pixels around the HR footprint, on top of half the LR PSF size.
LR_MARGIN_PIX = 4


def hr_invvar(image: np.ndarray, weight, weight_type: str) -> np.ndarray:
    """Inverse variance (counts^-2) from an HR weight map of SExtractor type `weight_type`.

    Without a weight map, a constant 1 / sigma^2 from the 3-sigma clipped scatter of the
    tile's pixels.  Pixels that are non-finite or have no coverage get 0.
    """
    finite = np.isfinite(image)
    if weight is None or weight_type == "NONE":
        data = image[finite & (image != 0)]
        if data.size < 100:
            return np.zeros(image.shape, np.float32)
        _, _, std = sigma_clipped_stats(data, sigma=3.0, maxiters=10)
        invvar = np.where(finite & (image != 0), 1.0 / std ** 2, 0.0)
    else:
        w = np.where(np.isfinite(weight), weight, 0.0).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            if weight_type == "MAP_WEIGHT":
                invvar = np.clip(w, 0, None)
            elif weight_type == "MAP_RMS":
                invvar = np.where(w > 0, 1.0 / w ** 2, 0.0)
            else:  # MAP_VAR
                invvar = np.where(w > 0, 1.0 / w, 0.0)
        invvar = np.where(finite & (invvar < 1e30), invvar, 0.0)
    return invvar.astype(np.float32)


def make_cutouts(plan, tile_id: int, directory: str, band: Optional[str] = None) -> None:
    """Write tNNNN_hr_cutout.fits and, per LR band, tNNNN_<band>_cutout.fits for one tile into `directory`;
    with `band`, that band's cutout only (the HR image is not read)."""
    if band is not None:
        _lr_cutout(band_plan(plan, band), tile_id, directory)
        return
    job = plan["job"]
    tile = get_tile(plan, tile_id)
    x0, x1, y0, y1 = tile.padded
    with open_fits(job["hr_large_image_name"], "hr_large_image_name") as hdul:
        hdu = image_hdu(hdul, job["hr_large_image_name"], "hr_large_image_name")
        hr_wcs = celestial_wcs(hdu.header, job["hr_large_image_name"], "hr_large_image_name")
        sci = read_section(hdu, y0, y1, x0, x1, path=job["hr_large_image_name"], what="hr_large_image_name")
        hr_header = sliced_header(hdu.header, hr_wcs, x0, y0)
    weight = None
    if job["hr_large_image_wht_name"]:
        with open_fits(job["hr_large_image_wht_name"], "hr_large_image_wht_name") as hdul:
            whdu = image_hdu(hdul, job["hr_large_image_wht_name"], "hr_large_image_wht_name")
            weight = read_section(whdu, y0, y1, x0, x1, path=job["hr_large_image_wht_name"],
                                  what="hr_large_image_wht_name")
    invvar = hr_invvar(sci, weight, job["hr_wht_image_type"])
    sci = np.where(np.isfinite(sci), sci, 0.0).astype(np.float32)
    _stamp(hr_header, tile_id, x0, y0, "HR")
    write_fits_atomic(fits.HDUList([fits.PrimaryHDU(sci, hr_header),
                                    fits.ImageHDU(invvar, hr_header, name="WHT")]),
                      tile_path(directory, tile_id, "hr_cutout"))
    for name in plan["bands"]:
        _lr_cutout(band_plan(plan, name), tile_id, directory)


def _lr_cutout(plan, tile_id: int, directory: str) -> None:
    """Write the band's tNNNN_<band>_cutout.fits (`plan`: plan.band_plan): the part of its LR image under
    the tile's padded HR region (its sky corners in the plan), with a margin."""
    job = plan["job"]
    lr_path = job["lr_large_image_name"]
    with open_fits(lr_path, "lr_large_image_name") as hdul:
        hdus = {n: image_hdu(hdul, lr_path, "lr_large_image_name", n) for n in LR_EXTENSIONS}
        lr_wcs = celestial_wcs(hdus["IMAGE"].header, lr_path, "lr_large_image_name")
        lny, lnx = plan["lr"]["shape"]
        # footprint of the HR cutout on the LR image
        lxy = lr_wcs.all_world2pix(np.array(tile_entry(plan, tile_id)["padded_corners_radec"]), 0)
        margin = LR_MARGIN_PIX + int(np.ceil(3.0 / plan["lr"]["pixel_scale_arcsec"]))
        lx0 = max(0, int(np.floor(lxy[:, 0].min())) - margin)
        lx1 = min(lnx, int(np.ceil(lxy[:, 0].max())) + margin + 1)
        ly0 = max(0, int(np.floor(lxy[:, 1].min())) - margin)
        ly1 = min(lny, int(np.ceil(lxy[:, 1].max())) + margin + 1)
        if lx0 >= lx1 or ly0 >= ly1:
            # HR-only tile: keep it (HR photometry, no LR flux, flag LR_OFF_IMAGE); a 1-pixel LR
            # cutout at the nearest edge carries the WCS, and lies outside the HR footprint.
            log.warning("tile %d: outside the %s image %r: no %s fluxes (flag LR_OFF_IMAGE)", tile_id,
                        job["lr_band"], lr_path, job["lr_band"])
            lx0, ly0 = min(max(lx0, 0), lnx - 1), min(max(ly0, 0), lny - 1)
            lx1, ly1 = lx0 + 1, ly0 + 1
        image = read_section(hdus["IMAGE"], ly0, ly1, lx0, lx1, path=lr_path, what="lr_large_image_name")
        mask = read_section(hdus["MASK"], ly0, ly1, lx0, lx1, dtype=np.int32, path=lr_path, what="lr_large_image_name")
        variance = read_section(hdus["VARIANCE"], ly0, ly1, lx0, lx1, path=lr_path, what="lr_large_image_name")
        lr_header = sliced_header(hdus["IMAGE"].header, lr_wcs, lx0, ly0)
        mask_header = sliced_header(hdus["MASK"].header, lr_wcs, lx0, ly0)
        for card in hdus["MASK"].header.cards:
            if card.keyword.startswith("MP_"):
                mask_header.append(card)
    _stamp(lr_header, tile_id, lx0, ly0, "LR")
    _stamp(mask_header, tile_id, lx0, ly0, "LR")
    write_fits_atomic(fits.HDUList([fits.PrimaryHDU(),
                                    fits.ImageHDU(image, lr_header, name="IMAGE"),
                                    fits.ImageHDU(mask, mask_header, name="MASK"),
                                    fits.ImageHDU(variance, lr_header, name="VARIANCE")]),
                      tile_path(directory, tile_id, band_product(job["lr_band"], "cutout")))


def _stamp(header, tile_id, x0, y0, which):
    header["JP_TILE"] = (tile_id, "jointphot tile id")
    header["JP_X0"] = (x0, f"{which} large-image x of pixel 0 (0-based)")
    header["JP_Y0"] = (y0, f"{which} large-image y of pixel 0 (0-based)")
