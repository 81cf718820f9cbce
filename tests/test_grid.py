"""Grids: variants built right in memory, resume after a kill, tables and frontier from the cells."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from affectlens.cli import main
from affectlens.errors import AffectlensError
from affectlens.grid import load_config, mean_ci, run_grid, validate_config
from affectlens.tune.run import tune as real_tune

from conftest import TINYSTORIES

IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 64, 100]])


class Killed(Exception):
    pass


class StubEvaluator:
    """Fast stand-in for evaluate(): scores are a fixed function of the logits it sees."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[torch.Tensor] = []
        self.fail_after = fail_after

    def __call__(self, model, tokenizer, tasks, mode="closed", limit=None, batch_size=16, seed=0):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise Killed("simulated kill")
        with torch.no_grad():
            lg = model(IDS).logits.double()
        self.calls.append(lg)
        out = {}
        for i, t in enumerate(tasks):
            p = float(torch.sigmoid(lg[0, i].mean() * 10))
            out[t] = {"primary": p, "metrics": {"accuracy": p, "macro_f1": p / 2}, "n": 7}
        return type("R", (), {"scores": {"tasks": out, "mean": sum(v["primary"] for v in out.values()) / len(out)}})


class CountingTuner:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *a, **kw):
        self.calls += 1
        return real_tune(*a, **kw)


def grid_yaml(tmp: Path, **override) -> Path:
    cfg = {
        "name": "tiny",
        "base": str(TINYSTORIES),
        "data": "emotion_train",
        "tasks": ["emotion", "control"],
        "budget": {"steps": 2, "rank": 2, "alpha": 4, "lr": 1e-2, "batch_size": 2, "max_length": 64,
                   "seeds": [0, 1]},
        "variants": [
            {"name": "base", "kind": "reference", "model": "base"},
            {"name": "all-module", "kind": "reference", "modules": "all"},
            {"name": "GET", "kind": "tune", "modules": "gate_proj"},
            {"name": "inherit gate", "kind": "transfer", "donor": "all-module", "modules": "gate_proj"},
            {"name": "gate reset", "kind": "ablate", "model": "all-module", "modules": "gate_proj",
             "mode": "zero-delta"},
            {"name": "gate reset ctrl", "kind": "ablate", "model": "all-module", "modules": "gate_proj",
             "mode": "zero-delta", "control": True},
        ],
    }
    cfg.update(override)
    p = tmp / "grid.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def test_grid_resumes_after_kill_and_reports(tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg_path = grid_yaml(tmp_path)
    out = tmp_path / "run"
    cfg = load_config(cfg_path)
    n_cells = len(cfg.cells())
    assert n_cells == 1 + 2 + 2 + 2 + 2 + 2  # fixed base once; everything depending on training per seed

    tuner = CountingTuner()
    with pytest.raises(Killed):
        run_grid(cfg_path, out, evaluator=StubEvaluator(fail_after=2), tuner=tuner, echo=lambda s: None)
    done = sorted((out / "cells").glob("*.json"))
    assert len(done) == 2
    first = {p.name: p.read_bytes() for p in done}
    trained_before = tuner.calls
    # all-module s0 (second cell) and s1 (third cell: trained, then killed during its evaluation)
    assert trained_before == 2

    ev = StubEvaluator()
    res = run_grid(cfg_path, out, evaluator=ev, tuner=tuner, echo=lambda s: None)
    assert res.reused == 2 and res.computed == n_cells - 2
    assert len(ev.calls) == n_cells - 2
    assert tuner.calls - trained_before == 2  # GET s0/s1 only: saved adapters are not retrained
    for name, data in first.items():
        assert (out / "cells" / name).read_bytes() == data

    with open(out / "grid.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_cells * 2
    assert {(r["variant"], r["seed"], r["task"]) for r in rows} >= {("GET", "1", "control"), ("base", "0", "emotion")}

    # The GET cell saw exactly base + its adapter (PEFT as oracle).
    summary = json.loads((out / "summary.json").read_text())
    get_cell = json.loads((out / "cells" / "GET__s1.json").read_text())
    base_model = AutoModelForCausalLM.from_pretrained(str(TINYSTORIES)).eval()
    peft = PeftModel.from_pretrained(base_model, str(out / get_cell["adapter"])).eval()
    with torch.no_grad():
        want = peft(IDS).logits.double()
    got = torch.sigmoid(want[0, 0].mean() * 10)
    assert abs(get_cell["tasks"]["emotion"]["primary"] - float(got)) < 1e-5

    # Aggregates recomputed from grid.csv by hand: Mean = affective tasks only (control excluded).
    def mean_of(variant: str, task: str) -> list[float]:
        return [float(r["primary"]) for r in rows if r["variant"] == variant and r["task"] == task]

    get_mean = sum(mean_of("GET", "emotion")) / 2
    ref_mean = sum(mean_of("all-module", "emotion")) / 2
    assert summary["variants"]["GET"]["mean"]["mean"] == pytest.approx(get_mean)
    n = 2
    xs = mean_of("GET", "emotion")
    sd = (sum((x - get_mean) ** 2 for x in xs) / (n - 1)) ** 0.5
    assert summary["variants"]["GET"]["mean"]["ci95"] == pytest.approx(12.7062047 * sd / n**0.5, rel=1e-6)
    # trainable params: r * (in + out) per module and layer, counted independently.
    hidden, ffn, layers, r = 128, 384, 2, 2  # tinystories-656k: 8 heads, 4 KV heads of 16
    kv = 4 * 16
    get_params = layers * r * (hidden + ffn)
    all_params = layers * r * ((hidden + hidden) * 2 + 2 * (hidden + kv) + 3 * (hidden + ffn))
    assert summary["variants"]["GET"]["trainable_params"] == get_params
    assert summary["variants"]["all-module"]["trainable_params"] == all_params
    line = next(x for x in summary["frontier"]["lines"] if x.startswith("GET:"))
    assert f"{100 * get_mean / ref_mean:.1f} % of all-module's mean score" in line
    assert f"at {100 * get_params / all_params:.1f} % of its parameters" in line
    assert summary["variants"]["gate reset ctrl"]["ablated"] == ["up_proj"]

    md = (out / "table.md").read_text()
    assert "| GET | tune |" in md and "Necessity" in md and "**" in md
    assert (out / "frontier.png").stat().st_size > 1000
    assert (out / "manifest.json").is_file()

    # A third run recomputes nothing.
    ev3 = StubEvaluator()
    res3 = run_grid(cfg_path, out, evaluator=ev3, tuner=tuner, echo=lambda s: None)
    assert res3.computed == 0 and not ev3.calls
    capsys.readouterr()


def test_mean_ci_matches_t_interval():
    m, h, n = mean_ci([0.5, 0.7, 0.6])
    assert n == 3 and m == pytest.approx(0.6)
    assert h == pytest.approx(4.30265273 * 0.1 / 3**0.5, rel=1e-6)
    assert mean_ci([0.4])[1] != mean_ci([0.4])[1]  # one seed: no interval (nan)


@pytest.mark.parametrize("override,msg", [
    ({"tasks": None}, "missing field 'tasks'"),
    ({"variants": [{"name": "x", "kind": "tune"}]}, "missing field 'modules'"),
    ({"variants": [{"name": "x", "kind": "tune", "modules": "gatez"}]}, "unknown module"),
    ({"variants": [{"name": "x", "kind": "mystery"}]}, "kind must be one of"),
    ({"variants": [{"name": "x", "kind": "transfer", "donor": "nowhere", "modules": "attn"}]}, "neither a variant"),
    ({"budget": {"steps": 2, "seeds": [0]}}, "budget is missing field 'rank'"),
])
def test_bad_grid_yaml_is_one_line_error(tmp_path, capsys, override, msg):
    cfg = grid_yaml(tmp_path, **override)
    assert main(["grid", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("affectlens: error:") and "\n" not in err and msg in err, err
    assert not (tmp_path / "out").exists()


def test_shipped_examples_are_valid_grids():
    examples = sorted(p for p in (Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")
                      if not p.name.startswith("study"))  # study configs: tests/test_study.py
    assert len(examples) >= 3
    for p in examples:
        cfg = load_config(p)
        assert cfg.base == "smollm2" and cfg.reference == "all-module"
        assert "control" in cfg.tasks  # necessity needs the non-affective control beside it
        text = p.read_text()
        assert "flock" not in text and "/tmp/" not in text  # nothing machine-specific
        # The whole validation a run does before its first cell, on a tiny base of the same family.
        raw = yaml.safe_load(text)
        raw["base"] = str(TINYSTORIES)
        tiny = load_config(raw)
        assert validate_config(tiny) == TINYSTORIES
        assert [v.name for v in tiny.variants] == [v.name for v in cfg.variants]
        assert tiny.budget.steps == raw["budget"]["steps"] and tiny.seeds == raw["budget"]["seeds"]


def test_variant_kinds_build_themselves():
    """Each kind is its own class: the runner never branches on the kind."""
    import inspect

    from affectlens.grid import KINDS, runner
    from affectlens.grid.variants import Variant

    assert set(KINDS) == {"tune", "reference", "transfer", "ablate"}
    assert all(cls.build is not Variant.build and k == cls.KIND for k, cls in KINDS.items())
    src = inspect.getsource(runner)
    assert '"tune"' not in src and '"ablate"' not in src and "kind ==" not in src


def test_budget_is_a_tune_config(tmp_path):
    from affectlens.tuneconfig import TuneConfig

    cfg = load_config(grid_yaml(tmp_path))
    assert cfg.budget == TuneConfig(steps=2, rank=2, alpha=4, lr=1e-2, batch_size=2, max_length=64)
    bad = grid_yaml(tmp_path, budget={"steps": 2, "rank": 2, "lr": 1e-2, "rnak": 3})
    with pytest.raises(AffectlensError, match="budget has unknown field"):
        load_config(bad)
    with pytest.raises(AffectlensError, match="steps must be"):
        load_config(grid_yaml(tmp_path, budget={"steps": 0, "rank": 2, "lr": 1e-2}))


def test_evaluator_scores_are_typed(tmp_path):
    from affectlens.grid.runner import task_results

    got = task_results({"tasks": {"emotion": {"primary": 0.5, "metrics": {"accuracy": 0.5, "ci": {}}, "n": 3}}},
                       ["emotion"])
    assert got["emotion"].primary == 0.5 and got["emotion"].metrics == {"accuracy": 0.5}
    with pytest.raises(AffectlensError, match="not a number"):
        task_results({"tasks": {"emotion": {"primary": "accuracy"}}}, ["emotion"])
