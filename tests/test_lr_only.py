"""Sources only the LR images see (issue 14): a simulated 60" field with three LR bands and a 10" strip
where the HR image has no data (`jointphot simulate --hr-gap 10 --extra-bands g,z`), run by the real
CLI with the real SExtractor.  Sources in the strip have no HR detection; the residual pass of each
band's forced fit (jointphot.lr_residual) must find them, measure them, and find little else."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import truthcheck
from jointphot import conventions as cv
from jointphot.simulate import HR_SCALE

pytestmark = pytest.mark.statistical

SEED = 43                      # never used to tune anything
SIZE_ARCSEC = 60
GAP_ARCSEC = 10.0
BANDS = ("lr", "g", "z")
#: A source is "where HR has no data" when its centre is this far inside the strip (closer to the strip's
#: edge, the HR image shows part of it: it is an HR detection, cut by the edge, and flagged HR_EDGE).
GAP_MARGIN_ARCSEC = 1.0
MIN_LR_SNR = 10.0
MATCH_ARCSEC = 0.5
MIN_RECOVERED = 0.9
MAX_SPURIOUS_PER_ARCMIN2 = 1.0


def jp(args, cwd):
    return subprocess.run([sys.executable, "-m", "jointphot.cli", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def gap_run(tmp_path_factory):
    """(catalogue, truth) of the field, run with --jobs 2."""
    d = tmp_path_factory.mktemp("lr_only")
    sim = jp(["simulate", str(d), "--seed", str(SEED), "--size-arcsec", str(SIZE_ARCSEC), "--hr-gap", str(GAP_ARCSEC),
              "--extra-bands", "g,z"], d)
    assert sim.returncode == 0, sim.stderr
    run = jp(["-q", "run", "job.json", "--tiles", "all", "--jobs", "2", "--no-qa"], d)
    assert run.returncode == 0, run.stderr
    cat, _ = truthcheck.load(str(d / "work" / "catalog.fits"))
    truth, header = truthcheck.load(str(d / "truth.fits"), "TRUTH")
    truth.meta["gap_centre"] = header["HR_GAPX"]
    return cat, truth


def _lr_only(cat):
    return cat[(np.asarray(cat["flags"]) & cv.FLAGS["LR_ONLY"]) != 0]


def _gap_sources(truth, band):
    """Truth rows well inside the strip, covered by `band`, with S/N > MIN_LR_SNR in it."""
    x = np.asarray(truth["x_hr"]) * HR_SCALE
    inside = np.abs(x - truth.meta["gap_centre"]) < GAP_ARCSEC / 2 - GAP_MARGIN_ARCSEC
    return truth[inside & truthcheck.covered(truth, band) & (np.asarray(truth[f"{band}_snr"]) > MIN_LR_SNR)]


def _matched(cat, truth, band):
    """(truth rows found, their LR-only rows) in `band` (finite flux), within MATCH_ARCSEC."""
    rows = _lr_only(cat)
    rows = rows[np.isfinite(np.asarray(rows[f"{band}_flux"], float))]
    idx, _ = truthcheck.match(rows, truth, MATCH_ARCSEC)
    return truth[idx >= 0], rows[idx[idx >= 0]]


@pytest.mark.parametrize("band", BANDS)
def test_sources_where_hr_has_no_data_are_found_as_lr_only(gap_run, band):
    """>= 90 % of the strip's sources with S/N > 10 in a band are LR-only rows with a flux in it."""
    cat, truth = gap_run
    gap = _gap_sources(truth, band)
    found, _ = _matched(cat, gap, band)
    print(band, f"recovered {len(found)}/{len(gap)}")
    assert len(gap) >= 25
    assert len(found) >= MIN_RECOVERED * len(gap), (band, len(found), len(gap))


def test_few_spurious_lr_only_sources(gap_run):
    """<= 1 LR-only source per arcmin^2 with no true source within 0.5"."""
    cat, truth = gap_run
    rows = _lr_only(cat)
    idx, _ = truthcheck.match(truth, rows, MATCH_ARCSEC)
    n = int(np.sum(idx < 0))
    print(f"{len(rows)} LR-only sources, {n} spurious")
    assert n / (SIZE_ARCSEC / 60.0) ** 2 <= MAX_SPURIOUS_PER_ARCMIN2


def test_lr_only_rows_have_no_hr_measurement(gap_run):
    cat, _ = gap_run
    rows = _lr_only(cat)
    assert len(rows) > 0
    assert np.all(np.isnan(np.asarray(rows["hr_flux"], float)))
    assert set(np.asarray(rows["type"])) <= {"psf", "rex"}
    # each has a flux in at least one band, and NaN with a flag in a band that did not find it
    for row in rows:
        assert any(np.isfinite(row[f"{b}_flux"]) for b in BANDS)
        for b in BANDS:
            if not np.isfinite(row[f"{b}_flux"]):
                assert row[f"{b}_flags"] & (cv.FLAGS["LR_NOT_DETECTED"] | cv.FLAGS["LR_OFF_IMAGE"]), (b, row[f"{b}_flags"])
    # a REX's flux error holds its fitted radius's uncertainty (err_shape), within the total error
    for b in BANDS:
        rex = rows[(np.asarray(rows["type"]) == "rex") & np.isfinite(np.asarray(rows[f"{b}_flux"], float))]
        shape, total = np.asarray(rex[f"{b}_flux_err_shape"]), np.asarray(rex[f"{b}_flux_err"])
        assert len(rex) and np.all(shape > 0) and np.all(shape < total), (b, shape, total)


def test_shape_flux_variance_is_the_flux_variance_the_other_parameters_add():
    """Marginal minus conditional flux variance: with flux and ln r_e correlated (var a, b, covariance c), c^2 / b;
    0 when the flux is independent of the rest."""
    from jointphot.lr_residual import shape_flux_variance
    a, b, c = 4.0, 0.25, 0.6
    cov = np.diag([0.01, 0.02, a, b])
    cov[2, 3] = cov[3, 2] = c
    assert shape_flux_variance(cov) == pytest.approx(c ** 2 / b)
    assert shape_flux_variance(np.diag([0.01, 0.02, a])) == pytest.approx(0.0, abs=1e-12)
    assert shape_flux_variance(np.full((4, 4), np.nan)) == 0.0


def _gap_chi(gap_run, kind):
    cat, truth = gap_run
    chi = []
    for band in BANDS:
        gap = _gap_sources(truth, band)
        gap = gap[(np.asarray(gap["kind"]) == "point") == (kind == "star")]
        found, rows = _matched(cat, gap, band)
        chi.append((np.asarray(rows[f"{band}_flux"]) - np.asarray(found[f"{band}_flux"]))
                   / np.asarray(rows[f"{band}_flux_err"]))
    return truthcheck.robust_stats(np.concatenate(chi))


def test_lr_only_star_fluxes_against_the_truth(gap_run):
    """Stars in the strip (three bands pooled): chi median within +-0.5 (N = 22: about two standard errors
    of a median) and robust sigma 0.8-1.3."""
    med, sig, n = _gap_chi(gap_run, "star")
    print("LR-only stars: chi median, sigma, N", med, sig, n)
    assert n >= 20 and abs(med) <= 0.5 and 0.8 <= sig <= 1.3, (med, sig, n)


@pytest.mark.xfail(strict=True, reason="issue 14: LR-only galaxies are fitted as a point source or a round exponential "
                                       "on the LR residual, whose shapes are not the galaxies'; pooled chi median "
                                       "-0.23, robust sigma 2.6 (N = 65, seed 43; -0.44 and 3.2 before the REX's radius "
                                       "uncertainty entered the error).  The largest chi (+25 to +180) are true pairs "
                                       "0.3-0.5\" apart taken as one LR-only source (each truth compared with both's "
                                       "light); sources with no neighbour within 1.5\": -0.82 / 1.34 (N = 47), and with a "
                                       "free Sersic candidate after the REX -0.38 / 1.02, but the stars' median then went "
                                       "-0.32 -> -0.53 (a star in a pair became a Sersic)")
def test_lr_only_galaxy_fluxes_against_the_truth(gap_run):
    """Galaxies in the strip (three bands pooled): chi robust sigma 0.8-1.3 (the issue's criterion)."""
    med, sig, n = _gap_chi(gap_run, "galaxy")
    print("LR-only galaxies: chi median, sigma, N", med, sig, n)
    assert 0.8 <= sig <= 1.3, (med, sig, n)
