"""The smooth local background (background.py)."""
import numpy as np

from jointphot.background import mesh_background


def test_mesh_background_follows_a_smooth_halo_and_leaves_white_noise_alone():
    rng = np.random.default_rng(4)
    ny, nx = 400, 500
    yy, xx = np.mgrid[:ny, :nx]
    halo = 0.5 * np.exp(-((xx - 250) ** 2 + (yy - 200) ** 2) / (2 * 150.0 ** 2))   # a wide halo
    noise = rng.normal(0.0, 1.0, (ny, nx))
    invvar = np.ones((ny, nx))
    invvar[:, :40] = 0.0                                                     # no data on one side
    inner = (slice(60, 340), slice(100, 400))
    assert np.abs(mesh_background(halo, invvar, cell_pix=50) - halo)[inner].max() < 0.01   # 2 % of the peak
    # with noise: a cell's median has an error of 1.25 / 50 = 0.025
    bg = mesh_background(halo + noise, invvar, cell_pix=50)
    assert np.abs(bg - halo)[inner].max() < 0.08 and np.abs(bg - halo)[inner].mean() < 0.02
    flat = mesh_background(noise, invvar, cell_pix=50)
    assert np.abs(flat[invvar > 0]).max() < 0.1 and abs(np.mean(flat[inner])) < 0.01
    # fewer than 2 x 2 cells: one constant, the clipped median
    assert np.ptp(mesh_background(noise, invvar, cell_pix=400)) == 0.0


def test_sextractor_sky_follows_the_noise_peak_under_faint_light():
    """Gaussian noise (sigma 1) around a sky of 2, plus 15 % of pixels lifted by faint, exponentially
    distributed light (mean 0.6 sigma): the median is lifted by 0.07 sigma, SExtractor's mode by 0.05; on
    pure noise both are within 0.02 (1e5 pixels); a strongly skewed distribution gives the clipped median."""
    from astropy.stats import sigma_clipped_stats
    from jointphot.background import MODE_SKEW_LIMIT, sextractor_sky
    rng = np.random.default_rng(3)
    noise = 2.0 + rng.standard_normal(100000)
    assert abs(sextractor_sky(noise) - 2.0) < 0.02
    lifted = noise.copy()
    faint = rng.random(noise.size) < 0.15
    lifted[faint] += rng.exponential(0.6, faint.sum())
    median = sigma_clipped_stats(lifted, sigma=3.0, maxiters=10)[1]
    assert median - 2.0 > 0.065 and sextractor_sky(lifted) < median - 0.015
    skewed = 2.0 + rng.exponential(1.0, 100000) ** 2
    mean, median, sigma = sigma_clipped_stats(skewed, sigma=3.0, maxiters=10)
    assert (mean - median) / sigma > MODE_SKEW_LIMIT and sextractor_sky(skewed) == median


def test_clipped_mean_median_is_astropys_to_the_bit():
    """background.clipped_mean_median (one sort, then ranges of it) against astropy's sigma_clipped_stats:
    noise with outliers (odd and even sizes), with non-finite values, a constant, and one value."""
    import warnings

    from astropy.stats import sigma_clipped_stats

    from jointphot.background import clipped_mean_median

    rng = np.random.default_rng(7)
    noisy = np.concatenate([rng.normal(3.0, 1.0, 20000), rng.exponential(5.0, 3000) + 3.0])
    with_nan = noisy.copy()
    with_nan[::97] = np.nan
    with_nan[5] = np.inf
    for values in (noisy, noisy[:-1], with_nan, np.full(10, 2.5), np.array([1.5])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = sigma_clipped_stats(values, sigma=3.0, maxiters=10)[:2]
        assert clipped_mean_median(values) == expected
