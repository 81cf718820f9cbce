"""Shared fixtures: paths to ../shared assets and tiny in-process models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
SHARED = ROOT.parent / "shared"
TINYSTORIES = SHARED / "models" / "tinystories-656k"
STORIES260K = SHARED / "models" / "stories260k"
DATA = SHARED / "data"


def pytest_configure(config):
    if not (TINYSTORIES / "config.json").is_file():
        raise pytest.UsageError(
            f"the shared test assets are missing: expected {SHARED} beside the project root "
            "(tiny models in shared/models, data sets in shared/data)"
        )


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
