"""A galaxy larger than the tile overlap, sitting on a tile corner, is one catalogue entry
(issue 12): each tile sees the same detection peak, and only the tile whose core holds it keeps it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from jointphot import simulate
from jointphot.plan import get_tile, make_plan

galsim = pytest.importorskip("galsim")

RE_ARCSEC = 1.2          # half-light radius; 8 r_e = 9.6" >> the 2" overlap
FLUX_COUNTS = {"hr": 4000.0, "lr": 4000.0 * 10 ** (0.4 * (simulate.LR_ZP - simulate.HR_ZP))}


def _add_galaxy(path, ext, ra, dec, flux, fwhm_arcsec):
    """Add an exponential galaxy (truncated at 8 r_e) at (ra, dec) to extension `ext` of `path`."""
    with fits.open(path, mode="update") as hdul:
        hdu = hdul[ext]
        wcs = WCS(hdu.header).celestial
        x, y = wcs.all_world2pix([[ra, dec]], 0)[0]
        jac = simulate._galsim_jacobian(galsim, wcs)
        image = galsim.ImageD(np.ascontiguousarray(hdu.data, dtype=float), xmin=1, ymin=1)
        prof = galsim.Sersic(1.0, half_light_radius=RE_ARCSEC * np.sqrt(0.7), trunc=8 * RE_ARCSEC * np.sqrt(0.7),
                             flux_untruncated=True).shear(q=0.7, beta=30 * galsim.degrees).withFlux(flux)
        stamp = galsim.Convolve(prof, galsim.Gaussian(fwhm=fwhm_arcsec)).drawImage(
            wcs=jac, method="auto", center=galsim.PositionD(x + 1.0, y + 1.0))
        b = stamp.bounds & image.bounds
        image[b] += stamp[b]
        hdu.data = image.array.astype(hdu.data.dtype)


def test_a_galaxy_larger_than_the_overlap_on_a_tile_corner_is_kept_once(tmp_path):
    d = str(tmp_path)
    simulate.simulate_field(d, seed=21, size_arcsec=24.0)
    job = json.load(open(os.path.join(d, "job.json")))
    job.update(cutoutsize_arcsec=[12, 12], cutoutoverlap_arcsec=[2, 2])
    with open(os.path.join(d, "job.json"), "w") as fh:
        json.dump(job, fh)
    # the corner shared by the four tiles of the 2 x 2 grid
    with fits.open(os.path.join(d, "hr.fits")) as hdul:
        hr_wcs = WCS(hdul[0].header).celestial
    from jointphot.jobfile import load_job
    plan = make_plan(load_job(os.path.join(d, "job.json")), os.path.join(d, "job.json"))
    assert len(plan["tiles"]) == 4
    corner = get_tile(plan, 0).core[1], get_tile(plan, 0).core[3]
    ra, dec = hr_wcs.all_pix2world([[corner[0] + 0.3, corner[1] - 0.2]], 0)[0]
    _add_galaxy(os.path.join(d, "hr.fits"), 0, ra, dec, FLUX_COUNTS["hr"], 0.10)
    _add_galaxy(os.path.join(d, "lr.fits"), "IMAGE", ra, dec, FLUX_COUNTS["lr"], 0.6)
    proc = subprocess.run([sys.executable, "-m", "jointphot.cli", "run", "job.json", "--tiles", "all", "-j", "2",
                           "--no-qa", "-o", "catalog.fits"], cwd=d, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    cat = Table.read(os.path.join(d, "catalog.fits"), hdu="CATALOG")
    dist = np.hypot((cat["ra"] - ra) * np.cos(np.radians(dec)), cat["dec"] - dec) * 3600.0
    near = dist < 1.0
    assert near.sum() == 1, cat[near]["id", "tile_id", "x_large", "y_large", "hr_flux", "type"]
    # every tile saw the galaxy: the four tile catalogues hold a detection of it, the merge kept one
    seen = 0
    for t in range(4):
        tile = Table.read(os.path.join(d, "work", "tiles", f"{t:04d}", f"t{t:04d}_lr_fit.fits"))
        tdist = np.hypot((tile["ra"] - ra) * np.cos(np.radians(dec)), tile["dec"] - dec) * 3600.0
        seen += int((tdist < 1.0).any())
    assert seen == 4
