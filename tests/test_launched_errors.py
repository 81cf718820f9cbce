"""Errors under a launcher (accelerate launch / torchrun): the main process says it once, the others are quiet.

Each case runs the CLI as one launched process would (``RANK``/``WORLD_SIZE`` in its
environment); an error met before the processes join needs no real second process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINYSTORIES


def _as_rank(rank: int, tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", PYTHONPATH=str(ROOT / "src"),
               AFFECTLENS_THREADS="1", AFFECTLENS_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "affectlens", *argv], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)


def _tune(tmp_path: Path, *extra: str) -> list[str]:
    return ["tune", str(TINYSTORIES), "--data", str(tmp_path / "missing.jsonl"), "--modules", "gate_proj",
            "--lr", "1e-3", "--device", "cpu", "--out", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize(("case", "contains"), [
    ("user", "--steps must be positive"),  # an AffectlensError, before the processes join
    ("usage", "unrecognized arguments: --bogus"),  # argparse's usage error
    ("join", "cannot join the 2 processes WORLD_SIZE announces"),  # accelerate's ValueError: no MASTER_ADDR
])
def test_rank_0_says_the_error_once_and_the_others_nothing(tmp_path, case, contains):
    argv = {"user": _tune(tmp_path, "--steps", "0"), "usage": _tune(tmp_path, "--bogus"),
            "join": _tune(tmp_path, "--steps", "2")}[case]
    main, other = _as_rank(0, tmp_path, *argv), _as_rank(1, tmp_path, *argv)
    assert main.returncode == 2 and other.returncode == 2, (main.stderr, other.stderr)
    assert other.stderr == "" and other.stdout == ""
    lines = main.stderr.strip().splitlines()
    assert lines[-1].startswith(("affectlens: error:", "affectlens tune: error:")) and contains in lines[-1]
    assert "Traceback" not in main.stderr and (case == "usage" or len(lines) == 1)  # usage: argparse's usage too
    assert not (tmp_path / "out").exists()


def test_a_bug_on_another_rank_is_one_line_without_traceback(monkeypatch, capsys):
    from affectlens import cli
    from affectlens.commands import params

    def broken(args):
        raise RuntimeError("Connection closed by peer\nand more")  # e.g. a collective after rank 0 stopped

    monkeypatch.setattr(params, "run", broken)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["params", str(TINYSTORIES), "--modules", "gate_proj"]) == 1
    assert capsys.readouterr().err == "affectlens: rank 1 failed: RuntimeError: Connection closed by peer\n"
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError):  # on the main process a bug keeps its traceback
        cli.main(["params", str(TINYSTORIES), "--modules", "gate_proj"])
