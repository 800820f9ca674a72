"""Forced LR photometry's flux solve (jointphot.fit_lr) against known truth."""
from __future__ import annotations

import math

import numpy as np

import truthcheck
from jointphot.engines.base import PSF, Source
from jointphot.fit_lr import flux_components, source_fluxes
from jointphot.psf import gaussian_epsf


def _forced(engine, image, invvar, psf, sources):
    parts, first = flux_components(sources)
    return source_fluxes(engine.flux_design(invvar, psf, parts).solve(image), first, sources)  # (fit, fracdev)


def test_a_bulge_redder_than_its_disc_gets_its_own_lr_flux(engine):
    """Bulge + disc galaxies whose LR bulge fraction differs from the HR one (a red bulge: x1.5-2.5, S/N 100-300
    in LR, r_e 1.5-4 LR px under a PSF of sigma 1.5 px): forced with the HR comp's bulge fraction the total LR
    flux is biased; with the bulge and the disc each taking a flux it is unbiased (< 1 %) with chi sigma
    0.8-1.25, and a neighbouring point source keeps its flux."""
    rng = np.random.default_rng(29)
    sigma = 1.5
    psf = PSF(image=gaussian_epsf(sigma), kind="fits")
    shape = (48, 48)
    chi, ratio, fixed_ratio, star_chi, fracdev_offset = [], [], [], [], []
    for _ in range(150):
        re, ab = rng.uniform(1.5, 4.0), rng.uniform(0.4, 1.0)
        fracdev_hr = rng.uniform(0.15, 0.5)
        fracdev_lr = min(fracdev_hr * rng.uniform(1.5, 2.5), 0.95)
        hr = Source("comp", 23.5 + rng.uniform(-0.5, 0.5), 23.5 + rng.uniform(-0.5, 0.5), 1.0, re=re, ab=ab,
                    phi=rng.uniform(-90, 90), fracdev=fracdev_hr, re_ratio=rng.uniform(0.15, 0.4))
        star = Source("point", hr.x + rng.uniform(5.0, 8.0), hr.y + rng.uniform(-3.0, 3.0), 1.0)
        lr_truth = [hr.copy(flux=1000.0, fracdev=fracdev_lr), star.copy(flux=rng.uniform(200.0, 2000.0))]
        image = truthcheck.galsim_image(shape, lr_truth, psf_sigma=sigma)
        area = 4 * math.pi * (re * re * ab + sigma * sigma)
        noise = 1000.0 / rng.uniform(100.0, 300.0) / math.sqrt(area)
        image = image + rng.normal(0, noise, shape)
        invvar = np.full(shape, noise ** -2)
        fit, fracdev = _forced(engine, image, invvar, psf, [hr, star])
        fracdev_offset.append(fracdev[0] - fracdev_lr)
        fixed = engine.solve_fluxes(image, invvar, psf, [hr, star])
        err = fit.flux_err
        chi.append((fit.flux[0] - 1000.0) / err[0])
        ratio.append(fit.flux[0] / 1000.0)
        fixed_ratio.append(fixed.flux[0] / 1000.0)
        star_chi.append((fit.flux[1] - lr_truth[1].flux) / err[1])
    med, rsig, _ = truthcheck.robust_stats(chi)
    print(f"split: flux ratio median {np.median(ratio):.4f}, chi {med:+.3f} / {rsig:.3f}; HR bulge fraction "
          f"forced: {np.median(fixed_ratio):.4f}; point source chi {truthcheck.robust_stats(star_chi)}; LR fracdev "
          f"- truth median {np.median(fracdev_offset):+.3f}")
    assert abs(np.median(ratio) - 1) < 0.01 and abs(med) < 0.2 and 0.8 < rsig < 1.25
    assert abs(np.median(fixed_ratio) - 1) > 0.02
    assert abs(np.median(fracdev_offset)) < 0.05
    star_med, star_sig, _ = truthcheck.robust_stats(star_chi)
    assert abs(star_med) < 0.2 and 0.8 < star_sig < 1.25


def test_a_comp_at_a_bulge_fraction_bound_keeps_one_flux():
    disc_only = Source("comp", 10.0, 10.0, 1.0, re=3.0, fracdev=0.0)
    parts, first = flux_components([Source("point", 3.0, 4.0, 1.0), disc_only,
                                    disc_only.copy(fracdev=0.4, re_ratio=0.25)])
    assert [p.kind for p in parts] == ["point", "comp", "exp", "dev"] and list(first) == [0, 1, 2]
    assert parts[3].re == 0.75 and parts[2].re == 3.0
