"""The Tractor engine and the native engine on the same simulated field (issue 8).

* The optional import (runs everywhere): jointphot imports without the Tractor, `auto`
  falls back to the native engine, `--engine tractor` gives a clear error.
* The cross-engine test (needs the Tractor, see docs/tractor.md): `jointphot simulate` makes
  the example field, `jointphot run --engine native` and `--engine tractor` fit it, and the
  two catalogues must agree -- for isolated sources with HR S/N > 20 the median
  |flux_tractor - flux_native| / error is below 0.3 in HR and in LR -- and both must pass
  the truth thresholds of issue 2 (tests/truthcheck.py).  The figures and the time per
  tile of each engine are printed (pytest -s).
"""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from jointphot.errors import JointphotError

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import truthcheck  # noqa: E402

#: Agreement threshold of issue 8 (median over isolated sources with HR S/N > 20).
MAX_MEDIAN_DELTA = 0.3


# --- the optional import ------------------------------------------------------------------------

def test_engine_module_imports_without_the_tractor(monkeypatch):
    """With `import tractor` failing, the module still imports, `auto` is native and the
    Tractor engine refuses with the reason."""
    monkeypatch.setitem(sys.modules, "tractor", None)     # makes `import tractor` raise ImportError
    from jointphot.engines import tractor_engine as te
    importlib.reload(te)
    ok, reason = te.tractor_available()
    assert not ok and "tractor" in reason.lower()
    with pytest.raises(JointphotError, match="not importable"):
        te.TractorEngine()
    from jointphot.engines import get_engine
    assert get_engine("auto").name == "native"
    with pytest.raises(JointphotError, match="--engine tractor"):
        get_engine("tractor")
    monkeypatch.undo()
    importlib.reload(te)


def test_auto_prefers_the_tractor_when_it_imports():
    from jointphot.engines import get_engine
    from jointphot.engines.tractor_engine import tractor_available
    ok, reason = tractor_available()
    if not ok:
        pytest.skip(f"the Tractor is not importable here: {reason}")
    engine = get_engine("auto")
    assert engine.name == "tractor" and engine.version.startswith("tractor ")


# --- the cross-engine test -----------------------------------------------------------------------

def _jointphot(*args, cwd):
    """Run the jointphot CLI in this interpreter; returns (stdout + stderr, seconds)."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", "import sys; from jointphot.cli import main; sys.exit(main())",
                           *args], cwd=cwd, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out, time.time() - t0


def _tile_seconds(log):
    """Per-tile wall times from the `[i/n] tile N ok, K sources (S s)` lines of `jointphot run`."""
    return [float(s) for s in re.findall(r"tile \d+ ok[^(\n]*\(([\d.]+) s", log)]


@pytest.fixture(scope="module")
def field_runs(tmp_path_factory):
    from jointphot.engines.tractor_engine import tractor_available
    ok, reason = tractor_available()
    if not ok:
        pytest.skip(f"the Tractor is not importable here: {reason}")
    pytest.importorskip("galsim")
    root = tmp_path_factory.mktemp("cross_engine")
    _jointphot("simulate", "sim", "--seed", "1", cwd=root)           # the example field (60")
    with open(root / "sim" / "job.json") as fh:
        job = json.load(fh)
    runs = {}
    for engine in ("native", "tractor"):
        j = dict(job, workdir=str(root / f"work_{engine}") + "/",
                 cutout_output_dir=str(root / f"work_{engine}" / "cutouts") + "/")
        job_path = root / "sim" / f"job_{engine}.json"
        job_path.write_text(json.dumps(j, indent=1))
        log, seconds = _jointphot("run", str(job_path), "--engine", engine, "--tiles", "all", "--jobs", "1", cwd=root)
        runs[engine] = {"catalog": str(root / f"work_{engine}" / "catalog.fits"), "log": log,
                        "seconds": seconds, "tile_seconds": _tile_seconds(log)}
    runs["truth"] = str(root / "sim" / "truth.fits")
    return runs


def cross_engine_figures(native_path, tractor_path, truth_path):
    """Median |delta flux| / error (HR, LR) between two catalogues, for the truth selection
    of issue 2 (isolated sources with HR S/N > 20, LR: masked fraction < 0.2)."""
    a, _ = truthcheck.load(native_path)
    b, _ = truthcheck.load(tractor_path)
    truth, _ = truthcheck.load(truth_path)
    ia, _ = truthcheck.match(a, truth)
    ib, _ = truthcheck.match(b, truth)
    sel = (ia >= 0) & (ib >= 0) & np.asarray(truth["isolated"], bool) & (np.asarray(truth["hr_snr"]) > 20)
    ma, mb = ia[sel], ib[sel]
    out = {"n": int(sel.sum())}
    for band in ("hr", "lr"):
        fa, fb = np.asarray(a[f"{band}_flux"], float)[ma], np.asarray(b[f"{band}_flux"], float)[mb]
        ea, eb = np.asarray(a[f"{band}_flux_err"], float)[ma], np.asarray(b[f"{band}_flux_err"], float)[mb]
        keep = np.isfinite(fa) & np.isfinite(fb) & (ea > 0) & (eb > 0)
        if band == "lr":
            keep &= (np.asarray(a["lr_masked_frac"], float)[ma] < 0.2) & (np.asarray(b["lr_masked_frac"], float)[mb] < 0.2)
        d = np.abs(fa - fb)[keep] / np.sqrt(0.5 * (ea ** 2 + eb ** 2))[keep]
        out[band] = {"n": int(keep.sum()), "median": float(np.median(d)), "p90": float(np.percentile(d, 90)),
                     "error_ratio": float(np.median((eb / ea)[keep]))}
    return out


def test_engines_agree_on_the_example_field(field_runs):
    f = cross_engine_figures(field_runs["native"]["catalog"], field_runs["tractor"]["catalog"], field_runs["truth"])
    for engine in ("native", "tractor"):
        r = field_runs[engine]
        ts = r["tile_seconds"]
        print(f"{engine}: {len(ts)} tiles, {np.mean(ts):.1f} s per tile (min {min(ts):.1f}, max {max(ts):.1f}); "
              f"run {r['seconds']:.1f} s")
    for band in ("hr", "lr"):
        g = f[band]
        print(f"{band.upper()}: n={g['n']} median |dflux|/err = {g['median']:.3f} (90th percentile {g['p90']:.2f}); "
              f"median err_tractor/err_native = {g['error_ratio']:.3f}")
    assert f["hr"]["n"] >= 150 and f["lr"]["n"] >= 150, f
    assert f["hr"]["median"] < MAX_MEDIAN_DELTA, f
    assert f["lr"]["median"] < MAX_MEDIAN_DELTA, f
    # the errors of the two engines describe the same covariance
    assert 0.8 < f["hr"]["error_ratio"] < 1.25 and 0.8 < f["lr"]["error_ratio"] < 1.25, f


@pytest.mark.parametrize("engine", ["native", "tractor"])
def test_both_engines_pass_the_truth_thresholds(field_runs, engine):
    figures = truthcheck.catalog_figures(field_runs[engine]["catalog"], field_runs["truth"])
    print(f"{engine} vs truth: HR chi median {figures['hr_chi'][0]:+.3f} sigma {figures['hr_chi'][1]:.3f} "
          f"(n={figures['hr_chi'][2]}); LR chi median {figures['lr_chi'][0]:+.3f} sigma {figures['lr_chi'][1]:.3f} "
          f"(n={figures['lr_chi'][2]}); completeness {figures['completeness_snr10']:.3f}; "
          f"median offset {figures['median_offset_mas']:.2f} mas")
    truthcheck.check_catalog_against_truth(field_runs[engine]["catalog"], field_runs["truth"])


def test_tractor_run_records_the_engine(field_runs):
    from astropy.io import fits
    with fits.open(field_runs["tractor"]["catalog"]) as hdul:
        hdr = hdul[1].header
    assert hdr["JP_ENGV"].startswith("tractor "), hdr["JP_ENGV"]
    with fits.open(field_runs["native"]["catalog"]) as hdul:
        assert not hdul[1].header["JP_ENGV"].startswith("tractor")
