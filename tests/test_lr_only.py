"""Sources only the LR images see (issue 14): simulated 60" fields with three LR bands and a 10" strip
where the HR image has no data (`jointphot simulate --hr-gap 10 --extra-bands g,z`), run by the real
CLI with the real SExtractor.  Sources in the strip have no HR detection; the residual pass of each
band's forced fit (jointphot.lr_residual) must find them, measure them, and find little else.

The figures pool SEEDS, as the other truth tests pool several fields: one field holds 12-22 stars and
37-65 galaxies in the strip, and its figures scatter between fields by more than the criteria's
margins (seed 43 alone: lr 29/30 recovered, seed 44: 16/20; stars' chi sigma 0.92-1.26, galaxies' 0.79-1.93)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from astropy.table import vstack

import truthcheck
from jointphot import conventions as cv
from jointphot.simulate import HR_SCALE

pytestmark = pytest.mark.statistical

SEEDS = (43, 44, 45, 46, 47)   # never used to tune anything
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
def gap_runs(tmp_path_factory):
    """[(catalogue, truth)] of the fields of SEEDS, each run with --jobs 2."""
    out = []
    for seed in SEEDS:
        d = tmp_path_factory.mktemp(f"lr_only{seed}")
        sim = jp(["simulate", str(d), "--seed", str(seed), "--size-arcsec", str(SIZE_ARCSEC), "--hr-gap",
                  str(GAP_ARCSEC), "--extra-bands", "g,z"], d)
        assert sim.returncode == 0, sim.stderr
        run = jp(["-q", "run", "job.json", "--tiles", "all", "--jobs", "2", "--no-qa"], d)
        assert run.returncode == 0, run.stderr
        cat, _ = truthcheck.load(str(d / "work" / "catalog.fits"))
        truth, header = truthcheck.load(str(d / "truth.fits"), "TRUTH")
        truth.meta["gap_centre"] = header["HR_GAPX"]
        out.append((cat, truth))
    return out


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
def test_sources_where_hr_has_no_data_are_found_as_lr_only(gap_runs, band):
    """>= 90 % of the strips' sources with S/N > 10 in a band are LR-only rows with a flux in it."""
    found = gap = 0
    for cat, truth in gap_runs:
        sources = _gap_sources(truth, band)
        found += len(_matched(cat, sources, band)[0])
        gap += len(sources)
    print(band, f"recovered {found}/{gap}")
    assert gap >= 100
    assert found >= MIN_RECOVERED * gap, (band, found, gap)


def test_few_spurious_lr_only_sources(gap_runs):
    """<= 1 LR-only source per arcmin^2 with no true source within 0.5"."""
    n = rows = 0
    for cat, truth in gap_runs:
        lr_only = _lr_only(cat)
        idx, _ = truthcheck.match(truth, lr_only, MATCH_ARCSEC)
        n += int(np.sum(idx < 0))
        rows += len(lr_only)
    print(f"{rows} LR-only sources, {n} spurious")
    assert n / (len(gap_runs) * (SIZE_ARCSEC / 60.0) ** 2) <= MAX_SPURIOUS_PER_ARCMIN2


def test_lr_only_rows_have_no_hr_measurement(gap_runs):
    rows = vstack([_lr_only(cat) for cat, _ in gap_runs])
    assert len(rows) > 0
    assert np.all(np.isnan(np.asarray(rows["hr_flux"], float)))
    types = np.asarray(rows["type"])
    assert set(types) <= {"psf", "rex", "exp", "dev", "ser"}
    # the data resolve some of them: every galaxy model is chosen somewhere, with its candidates' dchisq
    assert {"rex", "exp", "dev"} <= set(types), set(types)
    dchisq = np.asarray(rows["dchisq"], float)
    assert np.all(np.isfinite(dchisq[:, :2])) and np.all(dchisq[:, 0] > 0)
    galaxy = types != "psf"
    assert np.all(np.asarray(rows["re_arcsec"])[galaxy] > 0) and np.all(np.asarray(rows["re_arcsec"])[~galaxy] == 0)
    # each has a flux in at least one band, and NaN with a flag in a band that did not find it
    for row in rows:
        assert any(np.isfinite(row[f"{b}_flux"]) for b in BANDS)
        for b in BANDS:
            if not np.isfinite(row[f"{b}_flux"]):
                assert row[f"{b}_flags"] & (cv.FLAGS["LR_NOT_DETECTED"] | cv.FLAGS["LR_OFF_IMAGE"]), (b, row[f"{b}_flags"])
    # a galaxy's flux error holds its fitted shape's uncertainty (err_shape), within the total error
    for b in BANDS:
        gal = rows[galaxy & np.isfinite(np.asarray(rows[f"{b}_flux"], float))]
        shape, total = np.asarray(gal[f"{b}_flux_err_shape"]), np.asarray(gal[f"{b}_flux_err"])
        assert len(gal) and np.all(shape > 0) and np.all(shape < total), (b, shape, total)


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


def _gap_chi(gap_runs, kind):
    """(median, robust sigma, N) of the chi of the strips' sources of `kind` (three bands, the fields pooled)."""
    chi = []
    for cat, truth in gap_runs:
        for band in BANDS:
            gap = _gap_sources(truth, band)
            gap = gap[(np.asarray(gap["kind"]) == "point") == (kind == "star")]
            found, rows = _matched(cat, gap, band)
            chi.append((np.asarray(rows[f"{band}_flux"]) - np.asarray(found[f"{band}_flux"]))
                       / np.asarray(rows[f"{band}_flux_err"]))
    return truthcheck.robust_stats(np.concatenate(chi))


def test_lr_only_star_fluxes_against_the_truth(gap_runs):
    """Stars in the strips (three bands, the fields pooled): chi median within +-0.3 (N >= 80: about two
    standard errors of a median) and robust sigma 0.8-1.3."""
    med, sig, n = _gap_chi(gap_runs, "star")
    print("LR-only stars: chi median, sigma, N", med, sig, n)
    assert n >= 80 and abs(med) <= 0.3 and 0.8 <= sig <= 1.3, (med, sig, n)


def test_lr_only_galaxy_fluxes_against_the_truth(gap_runs):
    """Galaxies in the strips (three bands, the fields pooled): chi robust sigma 0.8-1.3 (the issue's criterion;
    -0.47 / 1.15, N = 284 on 2026-12-03, -0.88 / 2.02 when they were fitted as a point source or a REX only and
    without the other LR-only sources subtracted).  The median is not asserted: galaxies the ladder keeps as
    point sources (compact ones, whose REX does not beat the PSF by 1 % of its dchisq) are ~4 % low."""
    med, sig, n = _gap_chi(gap_runs, "galaxy")
    print("LR-only galaxies: chi median, sigma, N", med, sig, n)
    assert n >= 250 and 0.8 <= sig <= 1.3, (med, sig, n)
