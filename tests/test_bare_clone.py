"""A clone without ../shared runs every test that does not need it; CI=true still refuses to.

The real conftest and its marker finder run in a subprocess on a generated
test dir whose tests reach the assets in each way the finder knows (a name
from conftest, a constant built from one, a helper, a parameter, the marker)
plus one it cannot see, which must fail loudly, never pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

TESTS = '''
import os
from pathlib import Path

import pytest

from conftest import DATA, STORIES260K, TINYSTORIES

MODEL = TINYSTORIES / "config.json"
CONFIG = {"base": str(STORIES260K), "steps": 2}


def load_it():
    return MODEL.read_text()


def test_by_name():
    assert (TINYSTORIES / "config.json").is_file()


def test_by_constant():
    assert Path(CONFIG["base"]).is_dir()


def test_by_helper():
    assert load_it()


@pytest.mark.parametrize("where", [DATA, "x"])
def test_by_parameter(where):
    assert where


@pytest.mark.shared_assets
def test_by_marker():
    pass


@pytest.fixture
def model_dir():
    return TINYSTORIES


def test_by_fixture(model_dir):
    assert model_dir.is_dir()


def test_without_assets():
    assert Path(__file__).is_file()


def test_unmarked_but_needs_them():
    assert (Path(os.environ["AFFECTLENS_SHARED"]) / "models").is_dir(), os.environ["AFFECTLENS_SHARED"]
'''


def run(tmp_path: Path, shared: Path, **env: str) -> subprocess.CompletedProcess:
    proj = tmp_path / "proj"
    if not proj.exists():
        (proj / "tests").mkdir(parents=True)
        for f in ("conftest.py", "shared_assets.py"):
            shutil.copy(HERE / f, proj / "tests" / f)
        (proj / "tests" / "test_generated.py").write_text(TESTS)
        (proj / "pytest.ini").write_text("[pytest]\nmarkers = shared_assets: needs ../shared\n")
    clean = {k: v for k, v in os.environ.items() if k != "CI"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=proj,
                          env={**clean, "AFFECTLENS_SHARED": str(shared), **env}, capture_output=True, text=True,
                          timeout=300)


def test_bare_clone_deselects_what_needs_assets_and_says_so_last(tmp_path):
    empty = tmp_path / "no-shared"
    res = run(tmp_path, empty)
    out = res.stdout.strip().splitlines()
    # 6 found and deselected (the DATA case of the parameter only); the one nobody can see fails
    # (loudly, naming the missing marker)
    assert "1 failed, 2 passed, 6 deselected" in out[-2], res.stdout
    assert out[-1] == (f"6 tests need the shared test assets, which are missing: {empty} (../shared beside the "
                       "project root: the tiny models tinystories-656k and stories260k in shared/models, the data "
                       "sets in shared/data); they were deselected (CI=true requires them)")
    assert "test_unmarked_but_needs_them" in res.stdout and "add @pytest.mark.shared_assets" in res.stdout
    assert res.returncode == 1


def test_ci_requires_the_assets_and_present_assets_run_everything(tmp_path):
    empty = tmp_path / "no-shared"
    res = run(tmp_path, empty, CI="true")
    assert res.returncode == 4  # a usage error: nothing ran
    assert f"the shared test assets are missing (CI requires them): expected {empty}" in res.stderr

    shared = tmp_path / "shared"
    for m in ("tinystories-656k", "stories260k"):
        (shared / "models" / m).mkdir(parents=True)
        (shared / "models" / m / "config.json").write_text("{}")
    (shared / "data").mkdir()
    res = run(tmp_path, shared, CI="true")
    assert res.returncode == 0 and "9 passed" in res.stdout and "deselected" not in res.stdout, res.stdout
