"""Shared fixtures: the simulated field (made once, deterministic) and one pipeline run on it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATED = os.path.join(REPO, "test-data", "generated")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from testlock import exclusive  # noqa: E402

#: Modules that take minutes, collected first: `make test`'s two workers (pytest-xdist, --dist loadscope) take
#: whole modules (or test classes) in collection order, and a long one started last would end the run alone.
SLOW_MODULES = ("test_statistics.py", "test_bands.py", "test_nextflow.py", "test_slurm.py", "test_containers.py",
                "test_lr_only.py", "test_real_data.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return SLOW_MODULES.index(name) if name in SLOW_MODULES else len(SLOW_MODULES)
    items.sort(key=rank)


def ensure_field() -> str:
    """test-data/generated: the 60" field of `jointphot simulate` (seed 1), made if missing."""
    with exclusive("field"):
        if not os.path.exists(os.path.join(GENERATED, "truth.fits")):
            subprocess.run([sys.executable, "-m", "jointphot.cli", "simulate", GENERATED], check=True)
    return GENERATED


@pytest.fixture(scope="module", params=["native", "tractor"])
def engine(request):
    """Each fitting engine; the Tractor's tests are skipped with the reason where it does not import."""
    if request.param == "tractor":
        from jointphot.engines.tractor_engine import TractorEngine, tractor_available
        ok, reason = tractor_available()
        if not ok:
            pytest.skip(f"the Tractor is not importable here: {reason}")
        return TractorEngine()
    from jointphot.engines.native import NativeEngine
    return NativeEngine()


@pytest.fixture(scope="session")
def field() -> str:
    return ensure_field()


@pytest.fixture(scope="session")
def field_copy(field, tmp_path_factory) -> str:
    """A private copy of the field's inputs (jobs write their work dir next to them)."""
    dest = tmp_path_factory.mktemp("field")
    for name in os.listdir(field):
        if os.path.isfile(os.path.join(field, name)):
            shutil.copy(os.path.join(field, name), dest / name)
    return str(dest)


@pytest.fixture(scope="session")
def native_run(field_copy):
    """`jointphot run job.json --tiles all -j 2 --engine native` on the field; returns (dir, CompletedProcess)."""
    proc = subprocess.run([sys.executable, "-m", "jointphot.cli", "run", "job.json", "--tiles", "all", "-j", "2",
                           "--engine", "native"], cwd=field_copy, capture_output=True, text=True)
    return field_copy, proc
