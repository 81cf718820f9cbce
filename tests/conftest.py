"""Shared fixtures: paths to ../shared assets (deselected where missing) and tiny in-process models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import shared_assets

os.environ.setdefault("AFFECTLENS_NO_PROGRESS", "1")
os.environ.setdefault("AFFECTLENS_THREADS", "1")  # cli.main applies the thread policy
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402

transformers.utils.logging.disable_progress_bar()
# Tiny-model tests are dominated by per-op overhead: several torch threads per
# test process only thrash on a shared 2-core box (10-20x slower measured).
torch.set_num_threads(int(os.environ.get("AFFECTLENS_TEST_THREADS", "1")))

ROOT = Path(__file__).resolve().parents[1]
# AFFECTLENS_SHARED moves the assets (an empty path simulates a bare clone).
SHARED = Path(os.environ.get("AFFECTLENS_SHARED") or ROOT.parent / "shared").absolute()
TINYSTORIES = SHARED / "models" / "tinystories-656k"
STORIES260K = SHARED / "models" / "stories260k"
DATA = SHARED / "data"
WHAT = (f"{SHARED} (../shared beside the project root: the tiny models tinystories-656k and "
        "stories260k in shared/models, the data sets in shared/data)")


def pytest_configure(config):
    if not shared_assets.present(SHARED) and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise pytest.UsageError(f"the shared test assets are missing (CI requires them): expected {WHAT}")


def pytest_collection_modifyitems(config, items):
    """Mark the tests that reach ../shared; on a clone without it, deselect them (CI refuses instead)."""
    shared_assets.mark(items, SHARED, ROOT / "tests")
    if shared_assets.present(SHARED):
        return
    kept = [i for i in items if i.get_closest_marker("shared_assets") is None]
    dropped = [i for i in items if i.get_closest_marker("shared_assets") is not None]
    config.stash[shared_assets.DESELECTED] = len(dropped)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_unconfigure(config):
    n = config.stash.get(shared_assets.DESELECTED, 0)
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if n and tr is not None:
        tr.write_line(f"{n} tests need the shared test assets, which are missing: {WHAT}; they were "
                      "deselected (CI=true requires them)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a bare clone, a failure that touched ../shared names the missing marker (it must not pass quietly)."""
    outcome = yield
    shared_assets.explain(outcome.get_result(), SHARED)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One private affectlens cache for the whole test run (the embedded model is
    converted into it once), never the user's ~/.cache."""
    return tmp_path_factory.mktemp("affectlens-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(session_cache, monkeypatch):
    """Point every test's affectlens cache at the private session cache."""
    monkeypatch.setenv("AFFECTLENS_CACHE", str(session_cache))
    monkeypatch.setenv("AFFECTLENS_NO_PROGRESS", "1")
    yield
