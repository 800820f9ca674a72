"""Model choice by the fit (modelselect.py, the Legacy Surveys' rules) and the HR fit's use of it."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from jointphot import modelselect as ms
from jointphot.engines.base import PSF, Source
from jointphot.engines.native import NativeEngine
from jointphot.fit_hr import GroupFitter
from jointphot.psf import gaussian_epsf

sys.path.insert(0, os.path.dirname(__file__))
import truthcheck  # noqa: E402


@pytest.mark.parametrize("dchisq,kind", [
    ({"point": 20.0, "rex": 24.0}, "point"),                                 # not detected: simplest model
    ({"point": 1e6, "rex": 1.005e6, "dev": 1.006e6, "exp": 1.006e6}, "point"),  # bright star, PSF mismatch
    ({"point": 100.0, "rex": 110.0}, "rex"),
    ({"point": 100.0, "rex": 110.0, "dev": 115.0, "exp": 121.0}, "rex"),       # exp gains 11 < 12
    ({"point": 100.0, "rex": 110.0, "dev": 115.0, "exp": 123.0}, "exp"),
    ({"point": 1e5, "rex": 1.2e5, "dev": 1.25e5, "exp": 1.21e5, "sersic": 1.25002e5}, "dev"),
    ({"point": 1e5, "rex": 1.2e5, "dev": 1.25e5, "exp": 1.21e5, "sersic": 1.2503e5}, "sersic"),
    ({"point": 2.25e6, "rex": 2.42e6, "dev": 2.435e6, "exp": 2.42e6}, "dev"),  # rex -> dev: no 1 % cut
])
def test_select_model_follows_the_legacy_surveys_rules(dchisq, kind):
    assert ms.select_model(dchisq) == kind


def test_dchisq_vector_is_in_the_legacy_surveys_order():
    v = ms.dchisq_vector({"point": 1.0, "rex": 2.0, "dev": 3.0, "exp": 4.0})
    assert list(v[:4]) == [1.0, 2.0, 3.0, 4.0] and np.isnan(v[4])


@pytest.mark.parametrize("truth,kinds", [
    (Source("point", 25.3, 24.8, 2.0e5), {"point"}),
    (Source("sersic", 25.3, 24.8, 2.0e5, re=4.0, ab=0.5, phi=30.0, n=1.0), {"exp", "sersic"}),
    (Source("sersic", 25.3, 24.8, 2.0e5, re=4.0, ab=0.6, phi=-20.0, n=4.0), {"dev", "sersic"}),
    (Source("sersic", 25.3, 24.8, 300.0, re=1.0, ab=0.8, phi=0.0, n=1.0), {"point", "rex"}),
], ids=["bright-star", "exp-disc", "dev", "faint-compact"])
def test_the_fit_chooses_the_model_and_keeps_the_flux(truth, kinds):
    """On GalSim images (noise sigma 1): the chosen kind, and the flux within 3 sigma (1 % for
    the bright ones)."""
    sigma = 1.5
    psf = PSF(image=gaussian_epsf(sigma), kind="fits")
    shape = (51, 51)
    rng = np.random.default_rng(3)
    image = truthcheck.galsim_image(shape, [truth], psf_sigma=sigma) + rng.normal(0.0, 1.0, shape)
    invvar = np.ones(shape)
    segmap = np.zeros(shape, np.int32)
    segmap[15:36, 15:36] = 1
    job = {"hr_compl_niter": 15, "hr_ps_niter": 5, "hr_models": "legacy"}
    fitter = GroupFitter(image, invvar, segmap, np.array([1]), np.array([40.0]), psf, NativeEngine(), job)
    start = Source("exp", truth.x + 0.3, truth.y - 0.2, truth.flux * 0.8, re=2.0, ab=0.8, phi=0.0)
    (res,) = fitter.fit_group([start], [0], choose=True)
    assert res.source.kind in kinds, (res.source, res.dchisq)
    assert abs(res.source.flux - truth.flux) < max(3 * res.errors["flux"], 0.01 * truth.flux), (res.source, res.errors)
    assert np.isfinite(res.dchisq[:2]).all()


def test_model_choice_variance_weighs_the_candidates_by_their_akaike_weights():
    dchisq = {"point": 100.0, "rex": 500.0, "exp": 600.0, "dev": 600.0}
    fluxes = {"point": 50.0, "rex": 90.0, "exp": 100.0, "dev": 120.0}
    # exp and dev: equal weights; rex: exp(-(100 - 4) / 2) ~ 1e-21; psf: nothing
    assert ms.model_choice_variance(dchisq, fluxes, "exp") == pytest.approx(0.5 * 20.0 ** 2, rel=1e-9)
    assert ms.model_choice_variance({"point": 1e4, "rex": 10.0}, {"point": 5.0, "rex": 9.0}, "point") == 0.0


def test_candidates_flux_variance_leaves_out_candidates_on_a_bound():
    """A dev whose r_e ran to its cap over a neighbour's light (flux 300, chi^2 as good) adds no spread."""
    from jointphot.engines.base import GroupFit

    def fit(kind, flux, bound):
        return GroupFit([Source(kind, 0.0, 0.0, flux)], [{}], 1, True, 0.0, 1, [bound])

    dchisq = {"point": 100.0, "rex": 500.0, "exp": 600.0, "dev": 600.0}
    fits = {"point": fit("point", 50.0, False), "rex": fit("rex", 90.0, False), "exp": fit("exp", 100.0, False),
            "dev": fit("dev", 300.0, True)}
    assert ms.candidates_flux_variance("exp", fits, dchisq) == pytest.approx(0.0, abs=1e-12)
    fits["dev"] = fit("dev", 120.0, False)
    assert ms.candidates_flux_variance("exp", fits, dchisq) == pytest.approx(0.5 * 20.0 ** 2, rel=1e-9)


@pytest.mark.parametrize("truth,kind", [
    (Source("comp", 25.3, 24.8, 2.0e4, re=6.0, ab=0.6, phi=30.0, fracdev=0.4, re_ratio=0.2), "comp"),
    (Source("sersic", 25.3, 24.8, 2.0e4, re=4.0, ab=0.6, phi=30.0, n=1.0), "sersic"),
    (Source("sersic", 25.3, 24.8, 2.0e4, re=4.0, ab=0.6, phi=30.0, n=2.5), "sersic"),
], ids=["bulge-disc", "exp-disc", "sersic-2.5"])
def test_hr_models_sersic_keeps_a_bulge_disc_as_comp_and_a_sersic_as_ser(truth, kind):
    """hr_models 'sersic': every Sersic galaxy is tried as a bulge + disc; a GalSim bulge + disc (S/N ~ 1000)
    becomes a comp with its flux within 1 %, single Sersic profiles stay ser (a comp at fracdev 0 is an exp)."""
    sigma = 1.5
    psf = PSF(image=gaussian_epsf(sigma), kind="fits")
    shape = (61, 61)
    rng = np.random.default_rng(4)
    image = truthcheck.galsim_image(shape, [truth], psf_sigma=sigma) + rng.normal(0.0, 1.0, shape)
    segmap = np.zeros(shape, np.int32)
    segmap[10:41, 10:41] = 1
    job = {"hr_compl_niter": 15, "hr_ps_niter": 5, "hr_models": "sersic"}
    fitter = GroupFitter(image, np.ones(shape), segmap, np.array([1]), np.array([40.0]), psf, NativeEngine(), job)
    start = Source("sersic", truth.x + 0.3, truth.y - 0.2, truth.flux * 0.8, re=3.0, ab=0.8, phi=0.0, n=2.0)
    (res,) = fitter.fit_group([start], [0], choose=True)
    assert res.source.kind == kind, res.source
    assert abs(res.source.flux / truth.flux - 1) < 0.01, res.source


class _CountingEngine(NativeEngine):
    """The native engine, recording the number of sources of every group fit."""

    def __init__(self):
        self.fitted = []

    def fit_group(self, image, invvar, psf, sources, **kwargs):
        self.fitted.append(len(sources))
        return super().fit_group(image, invvar, psf, sources, **kwargs)


def test_a_groups_trials_fit_one_source_each_and_keep_the_models():
    """hr_models 'sersic' on a blended group (a GalSim bulge + disc, an exponential disc and a star, S/N ~ 1000,
    2.5-4 r_e apart): each trial refits its source alone with the others held (legacypipe's model selection:
    the trials' cost is linear in the group's size, not quadratic), then the group once jointly; the bulge + disc
    becomes a comp, the disc stays ser, the star a point source, each flux within 1 %."""
    sigma = 1.5
    psf = PSF(image=gaussian_epsf(sigma), kind="fits")
    shape = (81, 101)
    truths = [Source("comp", 35.3, 40.2, 2.0e4, re=6.0, ab=0.6, phi=30.0, fracdev=0.4, re_ratio=0.2),
              Source("sersic", 60.6, 38.7, 2.0e4, re=4.0, ab=0.6, phi=-40.0, n=1.0),
              Source("point", 49.2, 55.4, 2.0e4)]
    rng = np.random.default_rng(5)
    image = truthcheck.galsim_image(shape, truths, psf_sigma=sigma) + rng.normal(0.0, 1.0, shape)
    segmap = np.zeros(shape, np.int32)
    segmap[25:56, 20:51], segmap[28:50, 52:72], segmap[50:61, 44:55] = 1, 2, 3
    job = {"hr_compl_niter": 15, "hr_ps_niter": 5, "hr_models": "sersic"}
    engine = _CountingEngine()
    fitter = GroupFitter(image, np.ones(shape), segmap, np.array([1, 2, 3]), np.full(3, 40.0), psf, engine, job)
    starts = [Source("sersic", t.x + 0.3, t.y - 0.2, t.flux * 0.8, re=3.0, ab=0.8, phi=0.0, n=2.0) for t in truths[:2]]
    starts.append(Source("point", truths[2].x - 0.2, truths[2].y + 0.3, truths[2].flux * 0.8))
    results = fitter.fit_group(starts, [0, 1, 2], choose=True)
    assert [r.source.kind for r in results] == ["comp", "sersic", "point"], [r.source for r in results]
    for res, truth in zip(results, truths):
        assert abs(res.source.flux / truth.flux - 1) < 0.01, (res.source, truth)
    # the first joint fit, one trial per candidate (the star as a Sersic, each Sersic as a comp), one joint refit
    assert engine.fitted == [3, 1, 1, 1, 3], engine.fitted
