"""The study end to end on tiny models: sections, verdicts from numbers, planted locus, resume, invalidation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from affectlens.study import load_study_config, run_study
from affectlens.study.papers import CLAIMS
from affectlens.study.verdicts import checked_verdicts
from affectlens.tune.run import tune as real_tune

from circuits_helpers import PAIRS, save_planted, write_pairs
from conftest import STORIES260K, TINYSTORIES
from faults import assert_refused, run_cli

IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 64, 100]])
ROOT = Path(__file__).resolve().parents[1]


class Killed(KeyboardInterrupt):
    """A simulated kill (an interrupt is never turned into a 'failed stage' note)."""


LABELS = {"emotion": ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"],
          "control": ["a", "b", "c", "d"]}
REFS = ("N/A", "", "[MASK]")


class StubEvaluator:
    """Fast stand-in for evaluate(): per-example label log-likelihoods that are a fixed function of the
    logits (so planted deltas move them), scored closed-set with evaluate()'s own calibration formulas; it
    returns per-example prediction rows and the reference log-likelihoods as evaluate() does."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, model, tokenizer, tasks, mode="closed", limit=None, batch_size=16, seed=0,
                 calibration="none"):
        from affectlens.evaluate import classification_metrics
        from affectlens.evaluate.calibration import apply_calibration, calibration_vector

        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Killed("simulated kill")
        self.calls += 1
        with torch.no_grad():
            lg = model(IDS).logits.double()[0]
        n, vocab = limit or 8, lg.shape[-1]
        out, rows = {}, []
        for t in tasks:
            labels = LABELS["control" if "control" in t else "emotion"]
            ll = torch.stack([torch.stack([lg[i % lg.shape[0], (5 + 11 * i + 17 * j) % vocab] * 10
                                           for j in range(len(labels))]) for i in range(n)])
            ref = torch.stack([torch.stack([lg[0, (3 + 19 * k + 17 * j) % vocab] * 10 for j in range(len(labels))])
                               for k in range(len(REFS))])
            vec = None if calibration == "none" else calibration_vector(ref if calibration == "contextual" else ref[1:2],
                                                                         calibration)
            scores = apply_calibration(ll, vec, calibration)
            gold = [(3 * i) % len(labels) for i in range(n)]
            pred = scores.argmax(-1).tolist()
            metric = "accuracy" if "control" in t else "weighted_f1"
            m = classification_metrics(gold, pred, labels, n_boot=0)
            out[t] = {"primary": m[metric], "primary_metric": metric, "metrics": {"accuracy": m["accuracy"]}, "n": n}
            if calibration != "none":
                raw = classification_metrics(gold, ll.argmax(-1).tolist(), labels, n_boot=0)
                out[t]["metrics"]["uncalibrated"] = {metric: raw[metric]}
                refs = REFS if calibration == "contextual" else ("",)
                rr = ref if calibration == "contextual" else ref[1:2]
                out[t]["reference_loglik"] = {r: {lab: float(rr[k, j]) for j, lab in enumerate(labels)}
                                              for k, r in enumerate(refs)}
            rows += [{"task": t, "index": i, "gold": labels[gold[i]], "pred": labels[pred[i]],
                      "loglik": {lab: float(ll[i, j]) for j, lab in enumerate(labels)}} for i in range(n)]
        return type("R", (), {"scores": {"tasks": out}, "predictions": rows})


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
                    if "layers." in name and name.endswith("proj.weight"):
                        p.add_((0.05 if "gate_proj" in name else 0.0005) * torch.randn(p.shape, generator=g))
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
        "name": "tiny", "model": str(STORIES260K), "tasks": ["emotion"], "control_tasks": ["control"],
        "eval": {"limit": 8, "batch_size": 8}, "seeds": [0, 1, 2], "calibration": "contextual",
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
    assert {"locate.gate-largest", "locate.emotion-specific", "locate.sft-same-locus", "sufficiency.gate-transfer",
            "sufficiency.gate-over-attention", "sufficiency.fluency-kept", "efficiency.gate-lora",
            "necessity.gate-reset"} <= ids
    assert {r["id"] for r in on_disk["not_judged"]} | ids == set(CLAIMS)
    checked = checked_verdicts(on_disk["claims"])  # Holm re-run over the stored p-values
    for rec, (v, rv) in zip(on_disk["claims"], checked, strict=True):
        assert rec["ci"][0] <= rec["ours"] <= rec["ci"][1] or rec["ci"][0] == rec["ci"][1]
        assert (rec["verdict"], rec["raw_verdict"]) == (v, rv), rec["id"]
        assert rec["design"]["seeds"] == 3 or not CLAIMS[rec["id"]].training
        assert set(rec["power"]["after"]) >= {"se", "mde"}
        if v == "inconclusive":
            assert rec["n_to_settle"]["text"]
    assert on_disk["family"]["method"] == "Holm" and on_disk["family"]["tests"] >= len(ids)
    m = on_disk["methods"]
    assert "expected about" in echoed[0] and " min" in echoed[0]  # said before the first stage runs
    assert m["seeds"] == [0, 1, 2] and m["expected_time_s"] > 0 and m["packages"]["torch"]
    assert on_disk["smoke_test"] and on_disk["smoke_test_reasons"] and "SMOKE TEST" in html_head(out)
    assert (out / "manifest.json").is_file() and (out / "stages" / "adapters" / "result.json").is_file()
    html = (out / "report.html").read_text()
    figures = [rel for sec in on_disk["sections"].values() for rel in sec["figures"].values()]
    assert html.count("data:image/png;base64,") >= len(figures) >= 5
    assert "src=\"figures/" not in html and "http://" not in html and "https://" not in html
    for rec in on_disk["claims"]:
        assert rec["id"] in html and rec["verdict"] in html
    assert (out / "report.md").is_file()


def html_head(out: Path) -> str:
    page = (out / "report.html").read_text()
    return page[:page.index('id="verdicts"')]


def test_planted_gate_is_recovered_as_the_locus(study):
    tmp, _, result, _ = study
    loc = json.loads((tmp / "out" / "stages" / "locate" / "result.json").read_text())["result"]
    for metric in ("l2", "relative", "rms"):
        assert loc["stability"]["emotion"][metric] == {"locus": "gate_proj", "share_of_seeds": 1.0, "n_seeds": 3}
        assert loc["stability"]["control"][metric]["locus"] == "up_proj"
        assert loc["stability"]["full"][metric]["locus"] == "gate_proj"
    by_id = {c["id"]: c for c in result["claims"]}
    for cid in ("locate.gate-largest", "locate.emotion-specific", "locate.sft-same-locus"):
        assert by_id[cid]["verdict"] == "supported", cid
        assert by_id[cid]["design"] == {**by_id[cid]["design"], "seeds": 3, "units": [5], "unit": "layers"}
    # the planted B factor is 250x the others': gate_proj leads the runner-up many times over
    assert by_id["locate.gate-largest"]["ours"] > 10
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
    # (8 stage variants + Att.+gate on the control task) x 3 seeds, 3 cells finished before the kill; base and
    # all-module come from the shared reference grids, which the kill did not touch (so they are not scored again)
    assert ev.calls == 3 * (8 + 1) - 3


def test_reference_models_are_scored_once_per_study(study):
    """The base is scored once, the all-module LoRA once per seed, and the scored stages read both from
    the shared reference grids instead of scoring them in each stage's grid."""
    tmp, cfg, _, _ = study
    stages = tmp / "out" / "stages"
    variants = {}
    for f in sorted(stages.glob("*/grid-s*/cells/*.json")):
        c = json.loads(f.read_text())
        variants.setdefault(c["variant"], []).append((f.parts[-4], c["seed"]))
    seeds = sorted(cfg["seeds"])
    assert variants["base"] == [("references", seeds[0])]
    assert sorted(variants["all-module"]) == [("references", s) for s in seeds]
    for stage in ("sufficiency", "efficiency", "necessity"):  # yet every stage has them, for every seed
        on_disk = json.loads((stages / stage / "result.json").read_text())["result"]["per_example"]["preds"]
        assert "all-module" in on_disk and (stage == "necessity" or "base" in on_disk), stage
        assert all(len(p["chosen"]) == len(seeds) for p in on_disk["all-module"].values())
    # sufficiency scores the control task only where a claim reads it: Att.+gate (fluency) and the references
    suff = json.loads((stages / "sufficiency" / "result.json").read_text())["result"]
    ctrl = suff["control_tasks"]
    assert ctrl and {v for v, p in suff["per_example"]["preds"].items() if ctrl[0] in p} == {"Att.+gate", "base",
                                                                                              "all-module"}
    for c in sorted((stages / "sufficiency").glob("grid-s*-control/cells/*.json")):
        assert set(json.loads(c.read_text())["tasks"]) == set(ctrl)
    by_id = {c["id"]: c for c in json.loads((tmp / "out" / "study.json").read_text())["claims"]}
    assert by_id["sufficiency.fluency-kept"]["verdict"] in ("supported", "contradicted", "inconclusive")


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
    failed = {x["id"] for x in result["not_judged"] if "sufficiency stage failed" in x["reason"]}
    assert failed == {c for c in CLAIMS if c.startswith("sufficiency.")}
    assert (out / "report.html").is_file()


def test_circuits_retry_all_pairs_when_tau_leaves_none(tmp_path):
    cfg = study_cfg(tmp_path)
    cfg = {**cfg, "stages": ["circuits"], "circuits": {**cfg["circuits"], "min_score": 1.0}}
    result = run_study(cfg, tmp_path / "out", evaluator=StubEvaluator(), echo=lambda s: None)
    # No pair reaches tau = 1: the vectors fall back (the library's best-pairs fallback, else the study's
    # all-pairs retry, each noted) and the circuits sections still get their numbers and figures.
    assert result["sections"]["circuits-layers"]["figures"]
    assert result["sections"]["circuits-layers"]["numbers"]["peak_depth"]
    # a claim about image information flow is not judged on this text-only model, whatever its numbers
    why = {r["id"]: r for r in result["not_judged"]}["circuits-layers.middle-peak"]
    assert why["design"] == "images" and "text-only" in why["reason"]


# --- raw and calibrated side by side -----------------------------------------------------------------------


def test_scored_stages_show_raw_beside_calibrated(study):
    """The tables' calibrated and raw columns are the evaluator's own primary and uncalibrated primary of
    every cell (the study re-derives them from the per-example log-likelihoods it keeps), and every claim
    carries the same statistic on raw scores with its own verdict."""
    tmp, _, result, _ = study
    secs = result["sections"]
    for stage in ("sufficiency", "efficiency", "necessity"):
        table = secs[stage]["tables"][0]
        cols = table["columns"]
        cal, raw = cols.index("affective mean (contextual)"), cols.index("affective mean (raw)")
        cells: dict[str, list[dict]] = {}
        names = {row[0] for row in table["rows"]}
        for sub in (stage, "references"):  # base and all-module are scored once, in the shared reference grids
            for f in sorted((tmp / "out" / "stages" / sub).glob("grid-s*/cells/*.json")):
                c = json.loads(f.read_text())
                if c["variant"] in names and "emotion" in c["tasks"]:  # not the control-only cells
                    cells.setdefault(c["variant"], []).append(c["tasks"]["emotion"])
        cells["base"] = cells.get("base", []) * 3  # one seed-free scoring stands for every seed
        assert table["rows"] and names <= set(cells)
        for row in table["rows"]:
            got = cells[row[0]]
            assert len(got) == 3
            assert row[cal] == pytest.approx(sum(e["primary"] for e in got) / 3, abs=1e-4), (stage, row[0])
            assert row[raw] == pytest.approx(sum(e["metrics"]["uncalibrated_primary"] for e in got) / 3, abs=1e-4)
    assert "control mean (raw)" in secs["necessity"]["tables"][0]["columns"]
    assert "mean (raw)" in secs["frontier"]["tables"][0]["columns"]
    scoring = result["methods"]["scoring"]
    assert scoring["calibration"] == "contextual" and "as the config names it" in scoring["rule"]
    assert scoring["efficiency"]["scores"] == "contextual"
    by_id = {c["id"]: c for c in result["claims"]}
    table = {r[0]: r for r in secs["efficiency"]["tables"][0]["rows"]}
    cols = secs["efficiency"]["tables"][0]["columns"]
    raw = cols.index("affective mean (raw)")
    want = table["gate_proj"][raw] - max(table["up_proj"][raw], table["down_proj"][raw])
    assert by_id["efficiency.gate-lora"]["raw"]["ours"] == pytest.approx(want, abs=1e-3)
    assert by_id["efficiency.gate-lora"]["calibration"].startswith("contextual")
    assert all(c["raw_verdict"] in ("supported", "contradicted", "equivalent", "inconclusive", "not_judged")
               for c in result["claims"])
    md = (tmp / "out" / "report.md").read_text()
    assert "raw verdict" in md and "Uncalibrated, the same models score" in md


def test_grid_calibration_key_is_opt_in():
    """Without eval.calibration a grid's cell keys and columns are as before; with it the raw metrics of the
    evaluator's calibrated entry are kept beside the primary, flattened."""
    from affectlens.grid.config import load_config
    from affectlens.grid.results import TaskResult

    grid = {"base": "b", "tasks": ["emotion"], "variants": [{"name": "base", "kind": "reference", "model": "base"}]}
    plain, cal = load_config(grid), load_config({**grid, "eval": {"calibration": "pmi"}})
    assert plain.eval.to_dict() == {"mode": "closed", "limit": None, "batch_size": 16}
    assert cal.eval.to_dict()["calibration"] == "pmi" and cal.variants[0].hash != plain.variants[0].hash
    with pytest.raises(Exception, match="eval.calibration must be one of"):
        load_config({**grid, "eval": {"calibration": "pmi", "mode": "generative"}})
    entry = {"primary": 0.5, "primary_metric": "weighted_f1",
             "metrics": {"accuracy": 0.6, "uncalibrated": {"accuracy": 0.2, "weighted_f1": 0.1}}}
    got = TaskResult.from_evaluator(entry, "emotion").metrics
    assert got == {"accuracy": 0.6, "uncalibrated_accuracy": 0.2, "uncalibrated_weighted_f1": 0.1,
                   "uncalibrated_primary": 0.1}
    assert TaskResult.from_evaluator({"primary": 0.5, "metrics": {"accuracy": 0.6}}, "e").metrics == {"accuracy": 0.6}


def test_calibrated_study_score_is_evaluates_own(study, tmp_path):
    """The real evaluator through the study's grid: the calibrated and raw columns are exactly what
    ``evaluate(..., calibration=...)`` and ``evaluate(...)`` give for the same model."""
    from affectlens.evaluate import evaluate
    from affectlens.models.loading import load_model

    src_tmp, cfg, _, _ = study
    out = tmp_path / "out"
    shutil.copytree(src_tmp / "out", out)
    changed = {**cfg, "calibration": "pmi", "stages": ["sufficiency"], "seeds": [0]}
    result = run_study(changed, out, tuner=PlantingTuner(), echo=lambda s: None)
    table = result["sections"]["sufficiency"]["tables"][0]
    rows = {r[0]: r for r in table["rows"]}
    cal, raw = table["columns"].index("affective mean (pmi)"), table["columns"].index("affective mean (raw)")
    kw = {"limit": 8, "batch_size": 8, "progress": False, "n_boot": 0}
    adapter = out / json.loads((out / "stages" / "adapters" / "result.json").read_text())["result"]["emotion"]["0"]
    for variant, model_dir in (("base", None), ("all-module", adapter)):
        model, tok = load_model(Path(cfg["model"]), adapter=model_dir)
        direct_cal = evaluate(model, tok, ["emotion"], calibration="pmi", **kw).scores["tasks"]["emotion"]
        direct_raw = evaluate(model, tok, ["emotion"], **kw).scores["tasks"]["emotion"]
        assert direct_cal["calibration"] == "pmi"
        if variant == "base":  # calibration moves this score, so an unforwarded option would show
            assert direct_cal["primary"] != pytest.approx(direct_raw["primary"], abs=1e-3)
        assert rows[variant][cal] == pytest.approx(direct_cal["primary"], abs=1e-4), variant
        assert rows[variant][raw] == pytest.approx(direct_raw["primary"], abs=1e-4), variant
    assert result["methods"]["scoring"]["sufficiency"]["scores"] == "pmi"


def test_study_config_calibration_and_models_keys():
    cfg = load_study_config({"models": [str(TINYSTORIES), str(STORIES260K)]})
    assert (cfg.model, cfg.bases, cfg.calibration) == (str(TINYSTORIES), [str(TINYSTORIES), str(STORIES260K)],
                                                       "auto")
    cfg = load_study_config({"model": "a", "models": ["b", "a"], "calibration": "none"}, model="c")
    assert (cfg.model, cfg.bases, cfg.other_bases, cfg.calibration) == ("c", ["c", "b", "a"], ["b", "a"], "none")
    with pytest.raises(Exception, match="calibration must be one of auto, none, contextual, pmi"):
        load_study_config({"calibration": "platt"})


# --- several bases -----------------------------------------------------------------------------------------


class BasePlanting(PlantingTuner):
    """PlantingTuner whose affective locus depends on the base: ``loci`` maps a base dir name to it."""

    def __init__(self, loci: dict[str, str]) -> None:
        super().__init__()
        self.loci = loci

    def __call__(self, base, data, config=None, out=None, method="lora", **kw):
        from safetensors.torch import load_file, save_file

        res = super().__call__(base, data, config=config, out=out, method=method, **kw)
        planted = self.loci.get(Path(base).name)
        if method == "lora" and config.modules == "all" and planted and "control" not in str(data):
            f = Path(out) / "adapter_model.safetensors"
            sd = load_file(str(f))
            g = torch.Generator().manual_seed(config.seed + 7)
            for k, v in sd.items():
                if "lora_B" in k:
                    sd[k] = torch.randn(v.shape, generator=g) * (0.5 if f".{planted}." in k else 0.002)
            save_file(sd, str(f))
        return res


def _heat_max(result_file: Path) -> float:
    r = json.loads(result_file.read_text())["result"]
    first = [lab for lab in r["labels"] if lab.endswith("-s0")]
    return max(v for lab in first for mods in r["heat"][lab].values() for v in mods.values())


def test_several_bases_each_locus_one_scale_and_cached_per_base(tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = {**study_cfg(tmp_path), "model": str(TINYSTORIES), "models": [str(STORIES260K)], "seeds": [0],
           "stages": ["locate"]}
    loci = {"stories260k": "down_proj", "third": "o_proj"}
    out = tmp_path / "out"
    result = run_study(cfg, out, tuner=BasePlanting(loci), evaluator=StubEvaluator(), echo=lambda s: None)
    sec = result["sections"]["locate"]
    by_base = sec["numbers"]["loci_by_base"]
    assert set(by_base) == {"tinystories-656k", "stories260k"}
    for metric in ("l2", "relative", "rms"):
        assert by_base["tinystories-656k"]["emotion"][metric] == "gate_proj"
        assert by_base["stories260k"]["emotion"][metric] == "down_proj"
        assert by_base["stories260k"]["control"][metric] == "up_proj"
    # One figure, every base's panels (emotion, control, full FT) on one colour scale: the global max.
    scale = sec["numbers"]["heatmap_scale"]
    maxes = [_heat_max(out / "stages" / key / "result.json") for key in ("locate", "locate@stories260k")]
    assert scale["shared"] and scale["panels"] == 6 and scale["vmin"] == 0.0
    assert scale["vmax"] == pytest.approx(max(maxes)) and maxes[0] != pytest.approx(maxes[1])
    assert any("first base, tinystories-656k, only" in n for n in sec["notes"])
    md = (out / "report.md").read_text()
    assert "tinystories-656k gate_proj, stories260k down_proj" in md
    # One seed: no locate claim is judged; the first base's evidence (gate_proj planted) leads with gate_proj,
    # the second base's (down_proj planted) does not, and the claims would read the first.
    assert {r["id"] for r in result["not_judged"]} >= {"locate.gate-largest", "locate.cross-architecture"}
    first, second = (json.loads((out / "stages" / k / "result.json").read_text())["result"]["evidence"]
                     for k in ("locate", "locate@stories260k"))
    assert first["locate.gate-largest"]["value"] > 0 > second["locate.gate-largest"]["value"]
    # A third base: only its own adapters and locate run.
    third = tmp_path / "third"
    shutil.copytree(STORIES260K, third, copy_function=shutil.copyfile)
    sd = load_file(str(third / "model.safetensors"))
    save_file({k: v * 1.01 for k, v in sd.items()}, str(third / "model.safetensors"))
    echoed: list[str] = []
    tuner = BasePlanting(loci)
    result = run_study({**cfg, "models": [str(STORIES260K), str(third)]}, out, tuner=tuner,
                       evaluator=StubEvaluator(), echo=echoed.append)
    assert lines_of(echoed, "running") == {"adapters@third", "locate@third"}
    assert lines_of(echoed, "cached") >= {"adapters", "locate", "adapters@stories260k", "locate@stories260k"}
    assert tuner.calls == 3  # emotion, control, full FT of the third base only
    assert result["sections"]["locate"]["numbers"]["loci_by_base"]["third"]["emotion"]["relative"] == "o_proj"
    assert result["sections"]["locate"]["numbers"]["heatmap_scale"]["panels"] == 9


def test_locate_heatmap_panels_share_one_scale():
    import numpy as np

    from affectlens import plots

    a, b = np.array([[0.0, 1.0], [0.5, 0.2]]), np.array([[5.0, 0.1], [np.nan, 2.0]])
    fig = plots.locate_heatmap([("a", a, ["q", "k"], [0, 1]), ("b", b, ["q", "k"], [0, 1])], "relative")
    assert plots.image_limits(fig) == [(0.0, 5.0), (0.0, 5.0)]
