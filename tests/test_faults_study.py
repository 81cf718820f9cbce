"""Fault audit of ``affectlens study``: exit codes that tell the truth, claims that never judge NaN,
and bad input refused in one line before any work.

Each test drives one defect the audit found; the stages run on the tiny model only where the defect
needs a real stage (a broken data file, a NaN base), else on constructed stage results.
"""

from __future__ import annotations

import importlib.machinery
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from affectlens.errors import AffectlensError
from affectlens.study import load_study_config
from affectlens.study.assemble import write_study
from affectlens.study.cache import StageStore
from affectlens.study.context import Context

from conftest import TINYSTORIES
from faults import assert_refused, run_cli


def _yaml(tmp: Path, name: str, body: dict) -> Path:
    import yaml

    p = tmp / name
    p.write_text(yaml.safe_dump(body), encoding="utf-8")
    return p


def _last_line(err: str) -> str:
    return [ln for ln in err.splitlines() if ln.strip()][-1]


# --- 1. exit codes tell the truth -------------------------------------------------------------------------


def test_failing_stages_exit_1_with_report_and_failures_on_stderr(tmp_path, capfd, monkeypatch):
    """A study whose training fails: every stage fails or is skipped, yet it used to exit 0 with the
    failure on stdout. Now: exit 1, the failures on stderr, the last line counts them, the report has them.
    (A broken data file no longer gets this far: it is refused before any work, see test_study_data.py.)"""
    import affectlens.tune.run

    def diverges(*a, **kw):
        raise AffectlensError("training diverged")

    monkeypatch.setattr(affectlens.tune.run, "tune", diverges)
    cfg = _yaml(tmp_path, "study.yaml", {"model": str(TINYSTORIES), "stages": ["locate"],
                                          "seeds": [0], "budget": {"steps": 1, "rank": 2, "batch_size": 2}})
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capfd, "study", cfg, "--out", out)
    assert rc == 1, (stdout, err)
    assert "adapters: failed" in err and "locate: was skipped" in err
    assert "failed" not in stdout and "Traceback" not in err
    assert _last_line(err) == (f"study: 2 of 2 stages failed (adapters, locate); report written to "
                               f"{out}/report.html, report.md and study.json")
    study = json.loads((out / "study.json").read_text())
    assert study["failures"]["failed"] == 2 and study["failures"]["stages"] == 2
    assert set(study["failures"]["by_stage"]) == {"adapters", "locate"}
    assert {c["reason"] for c in study["not_judged"]} == {
        "the locate stage was skipped: it needs the adapters stage"}
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "## Failed stages" in md and "2 of 2 stages failed" in md and "adapters" in md
    assert 'id="failures"' in page and "2 of 2 stages failed" in page


def _nan_base(tmp: Path) -> Path:
    from safetensors.torch import load_file, save_file

    base = tmp / "nan-base"
    base.mkdir()
    for f in TINYSTORIES.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            (base / f.name).write_bytes(f.read_bytes())
    sd = load_file(str(TINYSTORIES / "model.safetensors"))
    save_file({k: torch.full_like(v, math.nan) if "layers.0.mlp" in k else v for k, v in sd.items()},
              str(base / "model.safetensors"))
    return base


def test_nan_base_does_not_exit_0(tmp_path, capfd):
    """A base whose weights hold NaN used to give a report and exit 0; a failing stage now exits 1."""
    out = tmp_path / "out"
    cfg = _yaml(tmp_path, "study.yaml", {"seeds": [0], "stages": ["locate"],
                                          "budget": {"steps": 1, "rank": 2, "batch_size": 2, "max_length": 32}})
    rc, stdout, err = run_cli(capfd, "study", cfg, "--model", _nan_base(tmp_path), "--out", out)
    assert rc == 1, (stdout, err)
    assert "Traceback" not in err and "stages failed" in _last_line(err)
    study = json.loads((out / "study.json").read_text())
    assert study["failures"]["failed"] >= 1 and study["claims"] == []


def test_pickle_base_is_refused_before_any_work(tmp_path, capfd):
    """A .bin pickle base refused by the pickle policy used to fail every stage and exit 0: one line, exit 2."""
    base = tmp_path / "pickle-base"
    base.mkdir()
    (base / "config.json").write_text((TINYSTORIES / "config.json").read_text())
    torch.save({"w": torch.zeros(2)}, base / "pytorch_model.bin")
    out = tmp_path / "out"
    assert_refused(run_cli(capfd, "study", "--model", base, "--out", out), out=out, contains="allow-pickle")


# --- 2. a claim whose evidence is non-finite is not judged, first run and rerun alike ---------------------


def _efficiency(raw_all_gains: bool = False) -> dict:
    """An efficiency stage result like the tiny quick study's, with per-example predictions for 3 seeds: the
    all-module LoRA gains over the yardstick on the chosen (calibrated) scores, while on the raw ones it
    answers the majority class like the base (so the raw share of its gain is undefined), unless
    ``raw_all_gains``."""
    from affectlens.study.scored import seed_scores, task_preds

    gold = np.arange(14) % 7
    rng = np.random.default_rng(0)

    def right(n_ok: int) -> list[list[int]]:
        out = []
        for _ in range(3):
            p = (gold + 1) % 7
            ok = rng.choice(14, n_ok, replace=False)
            p[ok] = gold[ok]
            out.append(p.tolist())
        return out

    zeros = [[0] * 14 for _ in range(3)]
    chosen = {"base": zeros, "all-module": right(12), "gate_proj": right(11), "up_proj": right(5)}
    raw = {**chosen, "all-module": right(9) if raw_all_gains else zeros, "base": zeros}
    res = {"per_example": {"tasks": {"emotion": {"labels": [f"l{i}" for i in range(7)], "gold": gold.tolist(),
                                                 "metric": "weighted_f1"}},
                           "preds": {v: {"emotion": {"chosen": chosen[v], "raw": raw[v]}} for v in chosen},
                           "choice": {v: {str(s): "contextual" for s in range(3)} for v in chosen}},
           "tasks": ["emotion"], "control_tasks": [], "calibration": "contextual",
           "params": {"base": None, "all-module": 38912, "gate_proj": 8192, "up_proj": 8192}, "n": {"emotion": 14}}
    tc, tr = task_preds(res, "chosen"), task_preds(res, "raw")
    res["scores"] = {v: {"emotion": seed_scores(tc, v)} for v in chosen}
    res["raw_scores"] = {v: {"emotion": seed_scores(tr, v)} for v in chosen}
    return res


def _ctx(tmp: Path, stages: list[str], **cfg: object) -> Context:
    conf = load_study_config({"model": str(TINYSTORIES), "stages": stages, "seeds": [0, 1, 2],
                              "eval": {"limit": 14, "batch_size": 8}, **cfg})
    store = StageStore(tmp / "out")
    store.init()
    return Context(conf, tmp / "out", store, TINYSTORIES, {}, echo=lambda s: None)


def _write(ctx: Context, results: dict) -> dict:
    ctx.results = dict(results)
    timing = {k: {"seconds": 0.0, "cached": False} for k in results}
    return write_study(ctx, ctx.root, {"total": 1.0, "basis": "test"}, timing, {}, 0.0, {})


def test_frontier_raw_share_undefined_is_words_not_nan(tmp_path):
    """The tiny quick study died with 'non-finite number nan at detail.uncalibrated.value': the raw share of
    the gain is undefined when the raw all-module LoRA does not beat the yardstick. It is now said in words:
    the claim is judged on the chosen scores and its raw verdict is not_judged, with the reason."""
    from affectlens.runs import find_non_finite
    from affectlens.study.stages_grid import run_frontier

    ctx = _ctx(tmp_path, ["frontier"])
    res = run_frontier(ctx, _efficiency())
    ev = res["evidence"]["frontier.get-share"]
    assert find_non_finite(ev) is None
    assert "undefined" in ev["raw_undefined"]
    assert any("raw share of its gain is undefined" in n for n in res["notes"])
    study = _write(ctx, {"frontier": res})
    by_id = {c["id"]: c for c in study["claims"]}
    assert set(by_id) == {"frontier.get-share", "frontier.get-ratio"}
    assert by_id["frontier.get-share"]["raw_verdict"] == "not_judged"
    assert "undefined" in by_id["frontier.get-share"]["raw"]["undefined"]
    assert "not_judged" in (ctx.root / "report.md").read_text()
    # where the raw share is defined it is judged beside the claim's
    res = run_frontier(ctx, _efficiency(raw_all_gains=True))
    assert math.isfinite(res["evidence"]["frontier.get-share"]["raw"]["value"])


def test_nan_evidence_is_not_judged_on_first_run_and_rerun(tmp_path):
    """A NaN anywhere in a claim's evidence goes to not_judged with its reason -- on the first run (which used to
    raise) and on a rerun from the cache (which used to read null and judge the claim)."""
    from affectlens.study.stages_grid import run_frontier

    ctx = _ctx(tmp_path, ["frontier"])
    res = run_frontier(ctx, _efficiency(raw_all_gains=True))
    res["evidence"]["frontier.get-share"]["detail"]["yardstick"] = math.nan
    reason = "non-finite evidence: detail.yardstick is nan"
    first = _write(ctx, {"frontier": res})
    assert [c["id"] for c in first["claims"]] == ["frontier.get-ratio"]
    assert [{k: r[k] for k in ("id", "stage", "reason")} for r in first["not_judged"]] == [
        {"id": "frontier.get-share", "stage": "frontier", "reason": reason}]
    assert any(reason in n for n in first["sections"]["frontier"]["notes"])
    assert reason in (ctx.root / "report.md").read_text()
    ctx.store.put("frontier", "fp", res, 1.0)
    cached = ctx.store.get("frontier", "fp")
    assert cached is not None
    assert math.isnan(cached["result"]["evidence"]["frontier.get-share"]["detail"]["yardstick"])
    again = _write(ctx, {"frontier": cached["result"]})
    assert [c["id"] for c in again["claims"]] == ["frontier.get-ratio"] and again["not_judged"] == first["not_judged"]


@pytest.mark.parametrize("ev,why", [
    ({"value": 0.5, "ci": [0.1, 0.9], "n": 3, "detail": {"uncalibrated": {"value": None}}},
     "non-finite evidence: detail.uncalibrated.value is missing (null)"),  # a cache from before the fix
    ({"value": 0.5, "ci": [None, 0.9], "n": 3}, "non-finite evidence: ci[0] is missing (null)"),
    ({"value": math.inf, "ci": [0.1, 0.9], "n": 3}, "non-finite evidence: value is inf"),
    ({"value": 0.5, "ci": [0.9, 0.1], "n": 3}, "reversed"),
    ({"value": "0.5", "ci": [0.1, 0.9], "n": 3}, "not a number"),
])
def test_evidence_problem_names_the_number(ev, why):
    from affectlens.study.assemble import evidence_problem

    assert why in (evidence_problem(ev) or "")


# --- 3. validate once, fully, before work ------------------------------------------------------------------


def test_single_gate_proj_alone_runs_efficiency(tmp_path, monkeypatch):
    """``modules: {single: [gate_proj]}`` passed validation and then failed efficiency with
    'zip() argument 2 is shorter than argument 1'; its claim is now not judged, with the reason."""
    from affectlens.study import stages_grid

    ctx = _ctx(tmp_path, ["efficiency", "frontier"], modules={"single": ["gate_proj"], "groups": {}})
    assert ctx.cfg.single == ["gate_proj"]
    eff = _efficiency()
    for key in ("scores", "raw_scores", "params"):
        eff[key].pop("up_proj")
    eff["per_example"]["preds"].pop("up_proj")
    monkeypatch.setattr(stages_grid, "_run", lambda *a, **k: eff)
    res = stages_grid.run_efficiency(ctx)
    assert res["evidence"] == {} and "gate_proj alone" in res["unjudged"]["efficiency.gate-lora"]
    study = _write(ctx, {"efficiency": res, "frontier": stages_grid.run_frontier(ctx, res)})
    assert {c["id"] for c in study["claims"]} == {"frontier.get-share", "frontier.get-ratio"}
    nj = {r["id"]: r for r in study["not_judged"]}
    assert nj["efficiency.gate-lora"]["reason"] == ("modules.single lists gate_proj alone, so there is no other "
                                                   "single module to compare it with")
    assert "modules.groups has no group tuning attn" in nj["efficiency.down-negative"]["reason"]
    assert any("gate_proj alone" in n for n in study["sections"]["efficiency"]["notes"])


@pytest.mark.parametrize("over,msg", [
    ({"seeds": [-1]}, "seeds must be integers from 0 to 4294967295, not -1"),
    ({"seeds": [0, 2**32]}, "not 4294967296"),
    ({"modules": {"single": ["gate_proj", "gate_proj"]}}, "lists gate_proj twice"),
    ({"modules": {"single": ["gate_proj"], "groups": {"base": "attn"}}}, "cannot be named 'base'"),
    ({"circuits": {"top_k": "8"}}, "circuits.top_k must be a positive integer"),
    ({"circuits": {"min_score": 2}}, "circuits.min_score is a probability"),
    ({"circuits": {"beta": float("nan")}}, "circuits.beta must be a finite number"),
    ({"circuits": {"layers": "3-1"}}, "reversed layer range"),
    ({"circuits": {"emotions": "joy,"}}, None),  # a string is one name: accepted
])
def test_study_config_is_checked_up_front(over, msg):
    if msg is None:
        load_study_config(over)
        return
    with pytest.raises(AffectlensError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_study_config(over)


def test_seed_range_edges_and_seed_count():
    assert load_study_config({"seeds": [0, 2**32 - 1]}).seeds == [0, 2**32 - 1]
    with pytest.raises(AffectlensError, match="--seeds must be from 1 to 1000"):
        load_study_config(None, seeds=1001)


def test_unknown_dtype_is_one_line_before_work(tmp_path, capfd):
    out = tmp_path / "out"
    assert_refused(run_cli(capfd, "study", "--model", TINYSTORIES, "--dtype", "int4", "--out", out), out=out,
                   contains="unknown --dtype 'int4'; choose from auto, float32, bfloat16, float16")


@pytest.mark.parametrize("executor,blocked,contains", [
    ("ray", "ray", "--executor ray needs ray"),
    ("slurm", "submitit", "--executor slurm needs submitit"),
])
def test_executor_without_its_engine_is_one_line(tmp_path, capfd, monkeypatch, executor, blocked, contains):
    """``--executor ray``/``slurm`` with the engine not importable used to exit 0 (every scoring stage failed)."""
    monkeypatch.setitem(sys.modules, blocked, None)  # importlib finds no module named in sys.modules as None
    out = tmp_path / "out"
    assert_refused(run_cli(capfd, "study", "--model", TINYSTORIES, "--executor", executor, "--out", out),
                   out=out, contains=contains)


def test_slurm_without_sbatch_is_one_line(tmp_path, capfd, monkeypatch):
    fake = types.ModuleType("submitit")  # installed or not here: present, so the sbatch check is what refuses
    fake.__spec__ = importlib.machinery.ModuleSpec("submitit", None)
    monkeypatch.setitem(sys.modules, "submitit", fake)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    out = tmp_path / "out"
    assert_refused(run_cli(capfd, "study", "--model", TINYSTORIES, "--executor", "slurm", "--out", out),
                   out=out, contains="needs Slurm's sbatch on PATH")


# --- 4. write_report on a study.json with wrong types ------------------------------------------------------


@pytest.mark.parametrize("study,field", [
    ([], "the top level must be a mapping, not list"),
    ({"claims": {"a": 1}}, "claims must be a list, not dict"),
    ({"claims": [{"id": "locate.gate-largest", "ours": "0.5", "ci": [0, 1], "n": 3}]}, "claims[0].ours"),
    ({"sections": {"locate": {"numbers": [1, 2]}}}, "sections.locate.numbers must be a mapping, not list"),
    ({"sections": {"necessity": {"tables": ["x"]}}}, "sections.necessity.tables[0] must be a mapping, not str"),
    ({"sections": {"frontier": "x"}}, "sections.frontier must be a mapping, not str"),
    ({"methods": "x"}, "methods must be a mapping, not str"),
    ({"failures": {"failed": "2"}}, "failures.failed must be an integer, not str"),
])
def test_write_report_names_the_wrongly_typed_field(tmp_path, study, field):
    from affectlens.runs import RunDir
    from affectlens.study.report import write_report

    with RunDir(tmp_path / "r", command="study") as run, pytest.raises(AffectlensError) as e:
        write_report(run, study)
    assert str(e.value) == f"study.json: {field}" or str(e.value).startswith(f"study.json: {field}")
