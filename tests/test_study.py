"""The study end to end on tiny models: sections, verdicts from numbers, planted locus, resume, invalidation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from affectlens.study import load_study_config, run_study
from affectlens.tune import tune as real_tune

from circuits_helpers import PAIRS, save_planted, write_pairs
from conftest import TINYSTORIES
from faults import assert_refused, run_cli

IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 64, 100]])
ROOT = Path(__file__).resolve().parents[1]


class Killed(KeyboardInterrupt):
    """A simulated kill (an interrupt is never turned into a 'failed stage' note)."""


class StubEvaluator:
    """Fast stand-in for evaluate(): a fixed function of the logits (so planted deltas move it)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, model, tokenizer, tasks, mode="closed", limit=None, batch_size=16, seed=0):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Killed("simulated kill")
        self.calls += 1
        with torch.no_grad():
            lg = model(IDS).logits.double()
        out = {t: {"primary": float(torch.sigmoid(lg[0, i].mean() * 10)), "metrics": {}, "n": 20}
               for i, t in enumerate(tasks)}
        return type("R", (), {"scores": {"tasks": out}})


class PlantingTuner:
    """Real tune (for the adapter's files), then the all-module adapters' change planted in one module:
    gate_proj for the affective data, up_proj for the control data. Targeted LoRAs are left as trained.
    ``method="full"`` writes the base with only gate_proj changed (a planted full fine-tune)."""

    supports_full = True

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, base, data, config=None, out=None, method="lora", **kw):
        from safetensors.torch import load_file, save_file
        from transformers import AutoModelForCausalLM

        self.calls += 1
        if method == "full":
            model = AutoModelForCausalLM.from_pretrained(base)
            g = torch.Generator().manual_seed(config.seed)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "gate_proj" in name:
                        p.add_(0.05 * torch.randn(p.shape, generator=g))
            model.save_pretrained(out, safe_serialization=True)
            return None
        res = real_tune(base, data, config=config, out=out, **kw)
        if config.modules == "all" and out is not None:
            planted = "up_proj" if "control" in str(data) else "gate_proj"
            f = Path(out) / "adapter_model.safetensors"
            sd = load_file(str(f))
            g = torch.Generator().manual_seed(config.seed)
            for k, v in sd.items():
                if "lora_B" in k:
                    scale = 0.5 if f".{planted}." in k else 0.002
                    sd[k] = torch.randn(v.shape, generator=g) * scale
            save_file(sd, str(f))
        return res


def study_cfg(tmp: Path) -> dict:
    planted = tmp / "planted"
    if not planted.exists():
        save_planted(planted)
        write_pairs(tmp / "pairs.jsonl", PAIRS)
    return {
        "name": "tiny", "model": str(TINYSTORIES), "tasks": ["emotion"], "control_tasks": ["control"],
        "eval": {"limit": 8, "batch_size": 8}, "seeds": [0, 1],
        "budget": {"steps": 2, "rank": 2, "alpha": 4, "lr": 1.0e-2, "batch_size": 2, "max_length": 48},
        "modules": {"single": ["gate_proj", "up_proj", "down_proj"], "groups": {"mlp": "mlp"}},
        "circuits": {"model": str(planted), "pairs": str(tmp / "pairs.jsonl"), "emotions": ["anger", "joy"],
                     "max_pairs": 4, "min_score": 0.0, "top_k": 2, "top_neurons": 4, "limit": 6,
                     "batch_size": 8},
    }


def lines_of(echoed: list[str], word: str) -> set[str]:
    return {ln.split(":")[0].strip() for ln in echoed if ln.strip().endswith(word) or f": {word}" in ln}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    cfg = study_cfg(tmp)
    echoed: list[str] = []
    result = run_study(cfg, tmp / "out", tuner=PlantingTuner(), evaluator=StubEvaluator(), echo=echoed.append)
    return tmp, cfg, result, echoed


def expected_verdict(rec: dict) -> str:
    """The rule, written independently: the whole CI on the claim's side (or inside its band)."""
    lo, hi, t, up = rec["ci"][0], rec["ci"][1], rec["threshold"], rec.get("upper")
    if up is not None:
        return "supported" if t < lo and hi < up else "contradicted" if hi < t or lo > up else "inconclusive"
    if rec["direction"] == ">":
        return "supported" if lo > t else "contradicted" if hi < t else "inconclusive"
    return "supported" if hi < t else "contradicted" if lo > t else "inconclusive"


def test_study_writes_every_section_and_derived_verdicts(study):
    tmp, _, result, echoed = study
    out = tmp / "out"
    on_disk = json.loads((out / "study.json").read_text())
    assert on_disk["claims"] == result["claims"]
    assert set(on_disk["sections"]) == {"locate", "sufficiency", "efficiency", "necessity", "frontier",
                                        "circuits-layers", "circuits-heads", "circuits-intervention"}
    for key in ("locate", "sufficiency", "efficiency", "necessity"):
        assert on_disk["sections"][key]["tables"], key
    for sec in on_disk["sections"].values():
        for rel in sec["figures"].values():
            assert (out / rel).is_file() and (out / rel).read_bytes()[:4] == b"\x89PNG"
    assert on_disk["sections"]["locate"]["figures"] and on_disk["sections"]["frontier"]["figures"]
    ids = {c["id"] for c in on_disk["claims"]}
    assert {"locate.gate-largest", "locate.emotion-specific", "sufficiency.gate-transfer",
            "efficiency.gate-lora", "necessity.gate-reset"} <= ids
    for rec in on_disk["claims"]:
        assert rec["ci"][0] <= rec["ours"] <= rec["ci"][1] or rec["ci"][0] == rec["ci"][1]
        assert rec["verdict"] == expected_verdict(rec), rec["id"]
    m = on_disk["methods"]
    assert "expected about" in echoed[0] and " min" in echoed[0]  # said before the first stage runs
    assert m["seeds"] == [0, 1] and m["expected_time_s"] > 0 and m["packages"]["torch"]
    assert (out / "manifest.json").is_file() and (out / "stages" / "adapters" / "result.json").is_file()
    html = (out / "report.html").read_text()
    figures = [rel for sec in on_disk["sections"].values() for rel in sec["figures"].values()]
    assert html.count("data:image/png;base64,") >= len(figures) >= 5
    assert "src=\"figures/" not in html and "http://" not in html and "https://" not in html
    for rec in on_disk["claims"]:
        assert rec["id"] in html and rec["verdict"] in html
    assert (out / "report.md").is_file()


def test_planted_gate_is_recovered_as_the_locus(study):
    tmp, _, result, _ = study
    loc = json.loads((tmp / "out" / "stages" / "locate" / "result.json").read_text())["result"]
    for metric in ("l2", "relative", "rms"):
        assert loc["stability"]["emotion"][metric] == {"locus": "gate_proj", "share_of_seeds": 1.0, "n_seeds": 2}
        assert loc["stability"]["control"][metric]["locus"] == "up_proj"
        assert loc["stability"]["full"][metric]["locus"] == "gate_proj"
    by_id = {c["id"]: c for c in result["claims"]}
    assert by_id["locate.gate-largest"]["verdict"] == "supported"
    assert by_id["locate.emotion-specific"]["verdict"] == "supported"
    # gate_proj carries ~all of the emotion adapter's change and ~none of the control adapter's (up_proj).
    assert 0.9 < by_id["locate.emotion-specific"]["ours"] <= 1.0


def test_verdict_flips_with_the_numbers():
    from affectlens.study.verdicts import Evidence, claim_record

    sup = claim_record("necessity.gate-reset", Evidence(0.2, (0.1, 0.3), 10))
    con = claim_record("necessity.gate-reset", Evidence(-0.2, (-0.3, -0.1), 10))
    assert (sup["verdict"], con["verdict"]) == ("supported", "contradicted")


def test_resume_after_kill_recomputes_only_the_missing_stage(study, tmp_path):
    src_tmp, cfg, _, _ = study
    out = tmp_path / "out"
    shutil.copytree(src_tmp / "out", out)
    shutil.rmtree(out / "stages" / "necessity")  # killed before necessity finished
    tuner, echoed = PlantingTuner(), []
    run_study(cfg, out, tuner=tuner, evaluator=StubEvaluator(), echo=echoed.append)
    assert lines_of(echoed, "running") == {"necessity"}
    assert tuner.calls == 0
    # A kill in the middle of a stage: finished stages survive, the rerun picks up from there.
    shutil.rmtree(out / "stages" / "sufficiency")
    with pytest.raises(Killed):
        run_study(cfg, out, tuner=tuner, evaluator=StubEvaluator(fail_after=3), echo=echoed.append)
    echoed.clear()
    ev = StubEvaluator()
    run_study(cfg, out, tuner=tuner, evaluator=ev, echo=echoed.append)
    assert lines_of(echoed, "running") == {"sufficiency"}
    assert ev.calls == 2 * 9 - 3  # 9 variants x 2 seeds, 3 cells were finished before the kill


def test_config_change_invalidates_only_dependent_stages(study, tmp_path):
    src_tmp, cfg, _, _ = study
    out = tmp_path / "out"
    shutil.copytree(src_tmp / "out", out)
    echoed: list[str] = []
    changed = {**cfg, "circuits": {**cfg["circuits"], "top_k": 3}}
    run_study(changed, out, tuner=PlantingTuner(), evaluator=StubEvaluator(), echo=echoed.append)
    assert lines_of(echoed, "running") == {"circuits"}
    echoed.clear()
    changed = {**changed, "eval": {"limit": 6, "batch_size": 8}, "stages": ["locate", "necessity"]}
    study = run_study(changed, out, tuner=PlantingTuner(), evaluator=StubEvaluator(), echo=echoed.append)
    assert lines_of(echoed, "running") == {"necessity"}  # scoring changed; the adapters and locate did not
    assert lines_of(echoed, "cached") >= {"adapters", "locate"}
    assert set(study["sections"]) == {"locate", "necessity"}


def test_study_refuses_foreign_dir_and_bad_config(tmp_path, capfd):
    foreign = tmp_path / "x"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert_refused(run_cli(capfd, "study", "--out", str(foreign), "--model", str(TINYSTORIES)),
                   contains="not a study dir")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nbudgett: {}\n")
    assert_refused(run_cli(capfd, "study", str(bad), "--out", str(tmp_path / "y")), contains="unknown field")
    assert_refused(run_cli(capfd, "study", "--stages", "locate,nope", "--out", str(tmp_path / "z")),
                   contains="unknown stage")
    assert (foreign / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("profile", ["quick", "default"])
def test_example_study_config_is_valid(profile):
    cfg = load_study_config(ROOT / "examples" / "study.yaml", profile=profile, model=str(TINYSTORIES))
    assert cfg.model == str(TINYSTORIES)
    assert len(cfg.seeds) == (1 if profile == "quick" else 3)
    assert "gate_proj" in cfg.single and cfg.budget.steps >= 1


class Boom:
    def __call__(self, *a, **kw):
        raise ValueError("boom")


def test_failed_stage_is_a_noted_skipped_section(study, tmp_path):
    src_tmp, cfg, _, _ = study
    out = tmp_path / "out"
    shutil.copytree(src_tmp / "out", out)
    changed = {**cfg, "eval": {"limit": 5, "batch_size": 8}, "stages": ["locate", "sufficiency"]}
    result = run_study(changed, out, tuner=PlantingTuner(), evaluator=Boom(), echo=lambda s: None)
    assert any("failed (ValueError: boom)" in n for n in result["sections"]["sufficiency"]["notes"])
    assert result["sections"]["locate"]["tables"]
    assert {c["stage"] for c in result["claims"]} == {"locate"}
    assert {x["id"] for x in result["not_judged"]} == {"sufficiency.gate-transfer"}
    assert (out / "report.html").is_file()


def test_evidence_intervals_match_hand_formulas():
    import math

    import numpy as np

    from affectlens.study.stats import bootstrap_mean, score_difference, share_of_gain

    a, b, n = [0.6, 0.7], [0.4, 0.45], 200
    d = [0.2, 0.25]
    between = ((0.2 - 0.225) ** 2 + (0.25 - 0.225) ** 2) / 1 / 2
    within = sum(p * (1 - p) for p in a + b) / n / 4
    v, (lo, hi), _ = score_difference(a, b, n)
    assert v == pytest.approx(sum(d) / 2)
    assert hi - v == pytest.approx(1.96 * math.sqrt(between + within))
    xs = np.random.default_rng(5).normal(3.0, 2.0, 400)
    m, (blo, bhi), k = bootstrap_mean(list(xs))
    half = 1.96 * xs.std(ddof=1) / math.sqrt(len(xs))
    assert k == 400 and m == pytest.approx(xs.mean())
    assert (bhi - blo) / 2 == pytest.approx(half, rel=0.1)
    s, (slo, shi), _ = share_of_gain([0.5], [0.8], 0.2, 100_000)
    assert s == pytest.approx(0.5) and slo < 0.5 < shi and shi - slo < 0.02


def test_circuits_retry_all_pairs_when_tau_leaves_none(tmp_path):
    cfg = study_cfg(tmp_path)
    cfg = {**cfg, "stages": ["circuits"], "circuits": {**cfg["circuits"], "min_score": 1.0}}
    result = run_study(cfg, tmp_path / "out", evaluator=StubEvaluator(), echo=lambda s: None)
    # No pair reaches tau = 1: the vectors fall back (the library's best-pairs fallback, else the study's
    # all-pairs retry, each noted) and the circuits sections still get their numbers and figures.
    assert result["sections"]["circuits-layers"]["figures"]
    assert "circuits-layers.middle-peak" in {c["id"] for c in result["claims"]}
