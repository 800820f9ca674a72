"""Source profiles and rendering (models.py): the Sersic mixtures, the shape matrix and the
analytic derivatives the native engine fits with."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate

galsim = pytest.importorskip("galsim")

from jointphot import models
from jointphot.engines.base import PSF, Source, from_standard, to_standard
from jointphot.psf import gaussian_epsf


@pytest.mark.parametrize("n", [0.7, 1.0, 2.5, 4.0, 6.0])
def test_mixture_encloses_the_sersic_light(n):
    """Light inside r of the mixture (sum a_k (1 - exp(-r^2 / 2 s_k^2))) against the truncated
    Sersic profile: < 2e-4 at 0.1 and 1 r_e, < 2e-3 at 5 r_e, < 1.2 % spilled beyond 8 r_e."""
    amps = models.sersic_mixture(n)
    for r, tol in ((0.1, 2e-4), (1.0, 2e-4), (5.0, 2e-3), (models.TRUNCATION_RADIUS, 1.2e-2)):
        mix = float(np.sum(amps * (1 - np.exp(-r * r / (2 * models.MOG_SIGMAS ** 2)))))
        exact = integrate.quad(lambda x: 2 * np.pi * x * models.sersic_profile(x, n), 0, r,
                               points=[0.01, 0.1, 1.0], limit=400)[0]
        assert mix == pytest.approx(exact, abs=tol), (n, r)


def test_stored_mixture_table_is_the_fit():
    """data/sersic_mixtures.npy holds fit_mixture of every node of the n grid (regenerate with
    `python -m jointphot.models` when the mixture or the grid changes)."""
    table = np.load(models.MIXTURE_TABLE)
    nodes = models._grid_nodes()
    assert table.shape == (len(nodes), len(models.MOG_SIGMAS))
    for i in (0, 1, 25, 50, 137, len(nodes) - 1):
        np.testing.assert_allclose(table[i], models.fit_mixture(nodes[i]), rtol=0, atol=1e-10, err_msg=str(nodes[i]))


def test_stored_truncation_table_is_the_correction():
    """data/sersic_truncation_ft.npy holds truncation_correction of every node (float32; regenerate with
    `python -m jointphot.models`)."""
    table = np.load(models.CORRECTION_TABLE)
    nodes = models._grid_nodes()
    assert table.shape == (len(nodes), 2, models._CORRECTION_NT)
    for i in (0, 75, len(nodes) - 1):
        want = models.truncation_correction(nodes[i])
        np.testing.assert_allclose(table[i], want, rtol=0, atol=1e-6 * np.abs(want).max() + 1e-9, err_msg=str(nodes[i]))


@pytest.mark.parametrize("n", [1.0, 4.0])
def test_profiles_are_cut_at_8_re_like_galsim_trunc(n):
    """The profile integrates to 1 and is zero beyond 8 r_e; its flux fraction of the
    untruncated profile is GalSim's for Sersic(n, trunc=8 re) (0.943 at n = 4)."""
    total = integrate.quad(lambda x: 2 * np.pi * x * models.sersic_profile(x, n), 0, models.TRUNCATION_RADIUS,
                           points=[0.01, 0.1, 1.0], limit=400)[0]
    assert total == pytest.approx(1.0, abs=1e-6)
    assert models.sersic_profile(np.array([8.0, 9.0, 50.0]), n).max() == 0.0
    trunc = galsim.Sersic(n, half_light_radius=1.0, trunc=models.TRUNCATION_RADIUS, flux_untruncated=True)
    assert models.truncated_flux_fraction(n) == pytest.approx(trunc.flux, abs=1e-5)


def test_shape_covariance_derivatives_match_the_shape_matrix():
    """d(A A^T)/d(ln re, e1, e2) against central differences of shape_matrix, including a round source."""
    for src in (Source("exp", 0, 0, 1, re=2.0, ab=0.4, phi=30.0), Source("exp", 0, 0, 1, re=1.3, ab=0.9, phi=-70.0)):
        v = to_standard(src)
        got = models.shape_covariance_derivatives(src)
        for j in range(3):
            h = 1e-6
            vp, vm = v.copy(), v.copy()
            vp[3 + j] += h
            vm[3 + j] -= h
            cov = [models.shape_matrix(s.re, s.ab, s.phi) @ models.shape_matrix(s.re, s.ab, s.phi).T
                   for s in (from_standard(src, vp), from_standard(src, vm))]
            np.testing.assert_allclose(got[j], (cov[0] - cov[1]) / (2 * h), atol=1e-6)


@pytest.mark.parametrize("src", [
    Source("point", 20.3, 19.7, 1.0),
    Source("exp", 20.3, 19.7, 1.0, re=3.0, ab=0.4, phi=30.0),
    Source("sersic", 20.2, 19.6, 1.0, re=2.5, ab=0.7, phi=-50.0, n=3.3),
    Source("sersic", 20.2, 19.6, 1.0, re=0.4, ab=1.0, phi=0.0, n=1.7),       # round: e = 0
    Source("dev", 20.0, 20.0, 1.0, re=12.0, ab=0.5, phi=80.0),               # wide components drawn in real space
], ids=["point", "exp", "sersic", "compact-round", "wide-dev"])
def test_analytic_derivatives_match_finite_differences(src):
    """render_unit(with_gradient=True) against differences of the rendered stamp: positions to
    1e-6, shape parameters (ln re, e1, e2) to 2e-3 (the FT table is interpolated), n exactly
    (the mixture is linear in n between grid nodes: a forward difference inside the cell)."""
    renderer = models.PSFRenderer(PSF(image=gaussian_epsf(1.4)))
    half = renderer.stamp_half_size(src)
    stamp, grads, _, _ = renderer.render_unit(src, half, with_gradient=True)
    v = to_standard(src)
    params = [k for k in range(len(v)) if k != 2]
    assert len(grads) == len(params)
    for grad, k in zip(grads, params):
        vp, vm = v.copy(), v.copy()
        if k == 6:
            vp[k] += 1e-3
        else:
            vp[k] += 1e-4
            vm[k] -= 1e-4
        fd = (renderer.render_unit(from_standard(src, vp), half)[0]
              - renderer.render_unit(from_standard(src, vm), half)[0]) / (vp[k] - vm[k])
        rel = np.abs(grad - fd).max() / np.abs(fd).max()
        assert rel < (1e-6 if k < 2 or k == 6 else 2e-3), (k, rel)


@pytest.mark.parametrize("src", [
    Source("point", 3.3, 30.6, 1.0),
    Source("sersic", 31.2, 4.4, 1.0, re=2.5, ab=0.7, phi=-50.0, n=3.3),
    Source("comp", 16.0, 17.0, 1.0, re=3.0, ab=0.6, phi=20.0, fracdev=0.3, re_ratio=0.4),
    Source("dev", 20.0, 20.0, 1.0, re=12.0, ab=0.5, phi=80.0),               # wide components drawn in real space
    Source("exp", -40.0, 10.0, 1.0, re=2.0, ab=0.8, phi=0.0),                # the stamp misses the image
], ids=["point-corner", "sersic-edge", "comp", "wide-dev", "off-image"])
def test_a_clipped_render_is_the_part_of_the_whole_stamp_on_the_image(src):
    """render_unit(clip=shape) returns the pixels of the whole stamp that fall on an image of that shape, and
    their gradients, to the bit (the native engine renders only its fit box)."""
    renderer = models.PSFRenderer(PSF(image=gaussian_epsf(1.4)))
    half = renderer.stamp_half_size(src)
    shape = (35, 38)
    whole, whole_grads, x0, y0 = renderer.render_unit(src, half, with_gradient=True)
    part, part_grads, cx0, cy0 = renderer.render_unit(src, half, with_gradient=True, clip=shape)
    plain, px0, py0 = renderer.render_unit(src, half, clip=shape)
    assert (px0, py0) == (cx0, cy0) and np.array_equal(plain, part)
    rows = slice(cy0 - y0, cy0 - y0 + part.shape[0])
    cols = slice(cx0 - x0, cx0 - x0 + part.shape[1])
    assert part.size == 0 or (0 <= cx0 and cx0 + part.shape[1] <= shape[1] and 0 <= cy0 and cy0 + part.shape[0] <= shape[0])
    on_image = np.zeros(shape)
    models.add_stamp(on_image, whole, x0, y0)
    assert np.array_equal(whole[rows, cols], part)
    covered = np.zeros(shape, bool)
    covered[cy0:cy0 + part.shape[0], cx0:cx0 + part.shape[1]] = part.size > 0
    assert np.array_equal(on_image[covered], part.ravel()) and not on_image[~covered].any()
    for g_whole, g_part in zip(whole_grads, part_grads):
        assert np.array_equal(g_whole[rows, cols], g_part)
    assert (part.size == 0) == (src.x < -half)
