"""RunDir: all-or-nothing run directories with a manifest, strict about non-finite numbers."""

from __future__ import annotations

import json
import math

import pytest

from affectlens.errors import AffectlensError
from affectlens.plots import pyplot
from affectlens.runs import RunDir


def test_rundir_writes_everything_then_renames(tmp_path):
    out = tmp_path / "run"
    with RunDir(out, command="unit", options={"k": 1}, seed=7) as run:
        assert run.path != out and run.path.parent == tmp_path and not out.exists()
        run.json("scores.json", {"acc": 0.5})
        run.jsonl("rows.jsonl", [{"i": 1}, {"i": 2}])
        run.csv("table.csv", [{"a": 1, "b": 2.5}, {"a": 2, "b": None}])
        run.text("table.md", "| a |\n")
        fig, ax = pyplot().subplots()
        ax.plot([0, 1], [1, 0])
        run.figure("fig.png", fig)
        run.extra["note"] = "x"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["fig.png", "manifest.json", "rows.jsonl", "scores.json", "table.csv", "table.md"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["command"] == "unit" and man["seed"] == 7 and man["options"] == {"k": 1} and man["note"] == "x"
    assert (out / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "table.csv").read_text().splitlines() == ["a,b", "1,2.5", "2,"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no claim or temp left


@pytest.mark.parametrize("writer", ["json", "jsonl", "csv"])
def test_rundir_refuses_non_finite_and_leaves_nothing(tmp_path, writer):
    out = tmp_path / "run"
    with pytest.raises(AffectlensError, match="non-finite"), RunDir(out, command="unit") as run:
        if writer == "json":
            run.json("s.json", {"acc": math.nan})
        elif writer == "jsonl":
            run.jsonl("r.jsonl", [{"x": 1.0}, {"x": math.inf}])
        else:
            run.csv("t.csv", [{"x": -math.inf}])
    assert list(tmp_path.iterdir()) == []


def test_rundir_never_replaces_without_force(tmp_path):
    out = tmp_path / "run"
    with RunDir(out, command="unit") as run:
        run.json("a.json", {"v": 1})
    with pytest.raises(AffectlensError, match="--force"), RunDir(out, command="unit") as run:
        run.json("a.json", {"v": 2})
    assert json.loads((out / "a.json").read_text()) == {"v": 1}
    with RunDir(out, command="unit", force=True) as run:
        run.json("a.json", {"v": 3})
    assert json.loads((out / "a.json").read_text()) == {"v": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
