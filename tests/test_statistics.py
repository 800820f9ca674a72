"""Per-type, per-S/N-bin flux figures against the truth of simulated fields (issues 12 and 13).

Seeds the code was never tuned on (scripts/validate reports seeds 11-13 by default), 90" fields of
tests/fieldrun.py, stacked: >= 150 isolated sources per (type, true HR S/N bin) for the composite set (21-23),
>= 300 for the correlated set (21-23 and 64-66), whose medians are asserted to +-0.15:

- "correlated": truncated single-Sersic galaxies and stars, HR noise correlated like ACS drizzle
  (GalSim's COSMOS correlation function) and LR noise through a warp kernel (issue 13: chi median and
  robust sigma in HR, LR and the LR/HR colour for stars and galaxies; spurious detections and the
  detections per tile; issue 12: galaxy flux bias within 1 % in HR and LR).
- "composite": galaxies made of a de Vaucouleurs bulge, an exponential disc and RandomKnots clumps, with
  a colour per component, white noise (issue 12: galaxy flux bias within 1 % in HR, 2 % in LR; chi
  robust sigma 0.8-1.25).

The median chi of N sources is uncertain by ~1.25/sqrt(N) whatever the estimator: +-0.15 is 1.5 standard errors
at N = 150 (a perfect pipeline misses it in ~13 % of bins; seeds 21-23 alone: stars' HR +0.16 / -0.14 / +0.16,
the ideal estimator +0.14 / -0.14 / +0.15), 2.1 at N = 300.  For stars the pipeline's own HR bias is also
asserted free of the noise realisation: the median of (catalogue chi - the chi of the ideal estimator, the
true PSF at the true position on the same pixels; truthcheck.ideal_point_chi) within +-0.05.

One test per figure; the ones still open are strict xfails naming the issue and the measured value, so
a fix shows up as an XPASS failure and is then promoted.  About 5 min per field set on 2 cores.
"""
from __future__ import annotations

import math

import pytest
from astropy.table import vstack

import fieldrun
import truthcheck

pytestmark = pytest.mark.statistical

#: field set -> (seeds, `jointphot simulate` options)
FIELDS = {
    "correlated": ((21, 22, 23, 64, 65, 66), ["--hr-noise", "cosmos", "--lr-noise", "warped"]),
    "composite": ((21, 22, 23), ["--galaxies", "composite"]),
}
MIN_SOURCES = 150             # per type and bin: the median chi is then known to +-1.25/sqrt(N) ~ 0.1
MEDIAN_MIN_SOURCES = 300      # where the median chi is asserted to +-0.15: 2.1 of its standard errors
PAIRED_MEDIAN = 0.05          # median of (catalogue chi - ideal estimator's chi) per bin (truthcheck.ideal_point_chi)
SPURIOUS_PER_ARCMIN2 = 1.0    # at measured HR S/N > truthcheck.DETECTION_SNR
DETECTIONS_PER_TRUTH = 1.5    # a tile's detections within this factor of the truth count (both S/N > 5)

BINS = {f"{lo:.0f}-{hi:.0f}" if math.isfinite(hi) else f">{lo:.0f}": (lo, hi) for lo, hi in truthcheck.SNR_BINS}


def _checks():
    """(field, type, bin, figure, band, low, high) of every criterion of the issues."""
    out = []
    for label in BINS:
        for kind in ("star", "galaxy"):
            for band in ("hr", "lr", "colour"):
                out.append(("correlated", kind, label, "n", band, MEDIAN_MIN_SOURCES, math.inf))
                out.append(("correlated", kind, label, "median chi", band, -0.15, 0.15))
                out.append(("correlated", kind, label, "sigma chi", band, 0.85, 1.15))
        # the pipeline's own bias on stars, free of the noise realisation: catalogue chi - ideal estimator's chi
        out.append(("correlated", "star", label, "paired median chi", "hr", -PAIRED_MEDIAN, PAIRED_MEDIAN))
        for band in ("hr", "lr"):
            out.append(("correlated", "galaxy", label, "bias", band, -0.01, 0.01))
            out.append(("composite", "galaxy", label, "n", band, MIN_SOURCES, math.inf))
            out.append(("composite", "galaxy", label, "bias", band, -0.01 if band == "hr" else -0.02,
                        0.01 if band == "hr" else 0.02))
            out.append(("composite", "galaxy", label, "sigma chi", band, 0.8, 1.25))
    return out


#: Criteria not met yet: test id -> the open issue and what was measured (2026-12-02, seeds 21-23, code of the exact
#: truncation at 8 r_e and of the LR sky 4 PSF FWHM inside the tile's edge).
_COMPOSITE = ("issue 12: bulge + disc + knot galaxies are fitted as a Sersic unless a bulge + disc (comp) improves chi^2 by "
              "> 8; where the Sersic stays (most at S/N 20-50) it runs to n = 3-6 and extrapolates wings the galaxy "
              "does not have.  Seeds 21-23: HR bias +6.9 / +1.0 / -0.0 %, LR +5.8 / +0.7 / -0.1 % (S/N 20-50, 50-200, "
              "> 200; 2026-12-03, a comp's bulge and disc each with an LR flux; without comp +11.9 / +6.3 / +3.1 and "
              "+13.5 / +4.8 / +1.3 %); at a threshold of 2 +3.6 / +0.7 / +0.0 % but single-Sersic galaxies at 50-200 got "
              "chi sigma 1.19 (comps miss 4-6 % of a truncated n ~ 3 profile).  HR chi sigma 1.08 / 1.21 / 1.25 (model "
              "mismatch: the knots).  At S/N 20-50 the "
              "fit cannot tell the two apart (2026-12-02, every Sersic's comp trial recorded): the comp improves chi^2 by a "
              "median 1.4 on composites (10-90 %: -0.5 to 7) and -0.1 on truncated single Sersics (-1.7 to 1.8); a comp "
              "kept above a gain t = -2 / 0 / 2 / 8 gives composites +1.2 / +1.5 / +3.2 / +5.6 % and single Sersics "
              "-4.2 / -4.0 / -2.9 / -1.8 %: no threshold meets 1 % for both")
OPEN = {
    "composite-galaxy-20-50-hr-bias": _COMPOSITE,
    "composite-galaxy-20-50-lr-bias": _COMPOSITE,
    "composite-galaxy-50-200-hr-bias": _COMPOSITE,
    "composite-galaxy->200-hr-sigma_chi": _COMPOSITE + "; HR chi sigma 1.254 at S/N > 200 (2026-12-03, a group's "
                                          "model trials one source at a time)",
}


def _param(check):
    name = "{0}-{1}-{2}-{4}-{3}".format(*check).replace(" ", "_")
    reason = OPEN.get(name)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(check, id=name, marks=marks)


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """{field: (per-bin figures {(type, bin label): flux_figures}, [detection figures per seed])}, made once."""
    cache = {}

    def get(name):
        if name not in cache:
            directory = str(tmp_path_factory.mktemp(name))
            seeds, options = FIELDS[name]
            runs = [fieldrun.run_field(seed, directory, options) for seed in seeds]
            assert all(rows is not None for rows, _ in runs), f"a {name} run failed"
            rows = vstack([rows for rows, _ in runs])
            print(f"{name} fields, seeds {seeds} stacked:\n{fieldrun.flux_table(rows)}")
            binned = {(kind, f"{lo:.0f}-{hi:.0f}" if math.isfinite(hi) else f">{lo:.0f}"): f
                      for kind, (lo, hi), f in truthcheck.binned_flux_figures(rows)}
            cache[name] = (binned, [det for _, det in runs])
        return cache[name]
    return get


def _value(f, band, figure):
    """One figure of truthcheck.flux_figures: n, bias, median chi or sigma chi of a band (or the colour)."""
    if band == "colour":
        n, med, sig = f["colour"]
        return {"n": n, "median chi": med, "sigma chi": sig}[figure]
    if figure == "paired median chi":
        return f[f"{band}_paired"][1]
    n, bias, med, sig = f[band]
    return {"n": n, "bias": bias, "median chi": med, "sigma chi": sig}[figure]


def _assert_figure(figures, check):
    field, kind, label, figure, band, low, high = check
    binned, _ = figures(field)
    value = _value(binned[(kind, label)], band, figure)
    assert low <= value <= high, f"{field} {kind} S/N {label} {band} {figure} = {value:.3f}, not in [{low}, {high}]"


class TestCorrelatedNoise:
    """Correlated noise in both images (issue 13; galaxy bias: issue 12).  One class per field set: `make test`'s
    two workers (pytest-xdist --dist loadscope) may run the two sets at the same time."""

    @pytest.mark.parametrize("check", [_param(c) for c in _checks() if c[0] == "correlated"])
    def test_binned_flux_figure(self, figures, check):
        _assert_figure(figures, check)

    def test_spurious_detections(self, figures):
        """Issue 13: <= 1 spurious detection (no truth source within 0.3") per arcmin^2 at HR S/N > 5."""
        _, detections = figures("correlated")
        n = sum(d["n_spurious"] for d in detections)
        area = sum(d["area"] for d in detections)
        assert n / area <= SPURIOUS_PER_ARCMIN2, f"{n} spurious in {area:.2f} arcmin^2"

    def test_detections_per_tile(self, figures):
        """Issue 13: each tile's detections at HR S/N > 5 within 1.5x the truth count above S/N 5."""
        _, detections = figures("correlated")
        counts = [(tile, n_truth, n_det) for d in detections for tile, n_truth, n_det, _ in d["tiles"]]
        off = [c for c in counts if not _within(c[1], c[2])]
        assert not off, f"(tile, truth, detected) outside a factor {DETECTIONS_PER_TRUTH}: {off}"


class TestCompositeGalaxies:
    """Bulge + disc + knot galaxies, white noise (issue 12)."""

    @pytest.mark.parametrize("check", [_param(c) for c in _checks() if c[0] == "composite"])
    def test_binned_flux_figure(self, figures, check):
        _assert_figure(figures, check)


def _within(n_truth, n_detected):
    return n_truth / DETECTIONS_PER_TRUTH <= n_detected <= DETECTIONS_PER_TRUTH * n_truth
