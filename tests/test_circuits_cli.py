"""`affectlens circuits …` end to end on the planted model; bad input is one line + exit 2."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from affectlens.circuits.hallucination import is_hallucination, paired_diff_ci
from affectlens.cli import main
from affectlens.evaluate.metrics import bootstrap_ci

from circuits_helpers import PLANT_LAYER, save_planted, write_pairs
from conftest import TINYSTORIES


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("circ")
    model_dir = root / "planted"
    _, _, v = save_planted(model_dir)
    pairs = write_pairs(root / "pairs.jsonl")
    task = root / "task.jsonl"
    rows = [{"text": t, "label": lab} for t, lab in [
        ("i am furious the bus was late", "anger"), ("we won the game so happy", "joy"),
        ("the bus was late again", "neutral"), ("my boss called today", "neutral"),
        ("seething about the report", "anger"), ("delighted , we won", "joy"),
        ("the meeting moved", "neutral"), ("the report says it was late", "neutral")]]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    vec = root / "vec"
    assert main(["circuits", "vectors", str(model_dir), "--pairs", str(pairs), "--out", str(vec),
                 "--min-score", "0", "--export", "lm-eval,steering-vectors", "--export-layers", "1-2"]) == 0
    return root, model_dir, pairs, task, vec, v


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_vectors_run_dir(setup):
    root, model_dir, pairs, task, vec, v = setup
    for name in ("vectors.safetensors", "vectors.csv", "vectors.png", "summary.json", "manifest.json",
                 "lm_eval/anger.pt", "steering_vectors/joy.pt"):
        assert (vec / name).is_file(), name
    man = json.loads((vec / "manifest.json").read_text())
    assert man["command"] == "circuits vectors" and man["seed"] == 0
    assert sorted(torch.load(vec / "lm_eval/anger.pt", weights_only=True)) == ["layers.1", "layers.2"]


def test_vectors_fallback_reported(setup, capsys):
    """τ leaves nothing: the run succeeds on the best pairs, and says so in stdout, summary and manifest."""
    root, model_dir, pairs, task, vec, v = setup
    out = root / "vec_fallback"
    assert main(["circuits", "vectors", str(model_dir), "--pairs", str(pairs), "--min-score", "1",
                 "--min-pairs", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fallback: best above chance" in text and "note: anger: 0/4 pairs pass --min-score 1" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"anger": 3, "joy": 3} and sorted(summary["fallback"]) == ["anger", "joy"]
    assert summary["selection"]["joy"]["pass_rate"] == 0.0
    man = json.loads((out / "manifest.json").read_text())
    assert man["options"]["min_pairs"] == 3
    assert sorted(man["pair_selection"]["fallback"]) == ["anger", "joy"]


def test_layers_rerun_reuses_finished_emotions(setup, capsys):
    """A rerun of the same sweep (here into another OUT) reuses the cached emotions and says so."""
    root, model_dir, pairs, task, vec, v = setup
    argv = ["circuits", "layers", str(model_dir), "--pairs", str(pairs), "--vectors", str(vec), "--alpha", "1.7"]
    assert main([*argv, "--out", str(root / "lay1")]) == 0
    assert "reused" not in capsys.readouterr().out
    assert json.loads((root / "lay1" / "manifest.json").read_text())["resumed_emotions"] == []
    assert main([*argv, "--out", str(root / "lay2")]) == 0
    assert "note: reused the finished sweeps of anger, joy" in capsys.readouterr().out
    assert json.loads((root / "lay2" / "manifest.json").read_text())["resumed_emotions"] == ["anger", "joy"]
    assert _csv(root / "lay1" / "layers.csv") == _csv(root / "lay2" / "layers.csv")


def test_layers_heads_neurons_run_dirs(setup, capsys):
    root, model_dir, pairs, task, vec, v = setup
    out = root / "layers"
    assert main(["circuits", "layers", str(model_dir), "--pairs", str(pairs), "--vectors", str(vec),
                 "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["critical_layer"]["mean"] == PLANT_LAYER
    assert (out / "layer_profile.png").is_file() and len(_csv(out / "layers.csv")) == 2 * 4
    out = root / "heads"
    assert main(["circuits", "heads", str(model_dir), "--pairs", str(pairs), "--vectors", str(vec),
                 "--target-layer", str(PLANT_LAYER), "--top-k", "1", "--out", str(out)]) == 0
    summ = json.loads((out / "summary.json").read_text())
    assert summ["top_heads"] == {"anger": [f"L{PLANT_LAYER}.H0"], "joy": [f"L{PLANT_LAYER}.H2"]}
    assert summ["specific"] == [f"L{PLANT_LAYER}.H0", f"L{PLANT_LAYER}.H2"]
    assert (out / "heads.png").is_file() and (out / "overlap.png").is_file()
    out = root / "neurons"
    assert main(["circuits", "neurons", str(model_dir), "--pairs", str(pairs), "--vectors", str(vec),
                 "--top-k", "5", "--out", str(out)]) == 0
    assert len(_csv(out / "neurons.csv")) == 2 * 5 and (out / "neurons.png").is_file()
    # units ranked in those CSVs feed `intervene` directly
    iv = root / "iv_csv"
    assert main(["circuits", "intervene", str(model_dir), "--task", f"jsonl:{task}", "--amplify-heads",
                 str(root / "heads" / "heads.csv"), "--top-k", "1", "--emotions", "anger", "--beta", "0",
                 "--amplify-neurons", str(out / "neurons.csv"), "--gamma", "2", "--bootstrap", "50",
                 "--out", str(iv)]) == 0
    res = json.loads((iv / "results.json").read_text())
    assert res["intervention"] == "1 heads β=0 (after); 1 neurons γ=2"
    capsys.readouterr()


def test_intervene_takes_each_named_emotions_units(setup, capsys):
    """--emotions names several emotions (comma-separated or repeated): each one's top units are amplified."""
    root, model_dir, pairs, task, vec, v = setup
    heads = root / "heads_two"
    assert main(["circuits", "heads", str(model_dir), "--pairs", str(pairs), "--vectors", str(vec),
                 "--target-layer", str(PLANT_LAYER), "--top-k", "1", "--out", str(heads)]) == 0
    argv = ["circuits", "intervene", str(model_dir), "--task", f"jsonl:{task}", "--amplify-heads",
            str(heads / "heads.csv"), "--top-k", "1", "--beta", "0", "--bootstrap", "20"]
    # by construction (circuits_helpers): in the planted layer, query head 0 writes anger, head 2 joy
    planted = {"anger": [f"L{PLANT_LAYER}.H0"], "joy": [f"L{PLANT_LAYER}.H2"]}
    for i, spelling in enumerate((["--emotions", "anger,joy"], ["--emotions", "anger", "--emotions", "joy"])):
        capsys.readouterr()
        out = root / f"iv_two_{i}"
        assert main([*argv, *spelling, "--out", str(out)]) == 0
        res = json.loads((out / "results.json").read_text())
        assert res["intervention"] == "2 heads β=0 (after)"
        assert res["units"] == {"heads": planted}
        assert json.loads((out / "manifest.json").read_text())["options"]["emotions"] == ["anger", "joy"]
        assert f"heads from the CSV: anger L{PLANT_LAYER}.H0; joy L{PLANT_LAYER}.H2" in capsys.readouterr().out
    assert main([*argv, "--emotions", "anger,fear", "--out", str(root / "iv_fear")]) == 2
    assert "selects no heads of fear (its emotions: anger, joy)" in capsys.readouterr().err
    assert not (root / "iv_fear").exists()


def test_intervene_through_evaluation(setup):
    root, model_dir, pairs, task, vec, v = setup
    out = root / "iv"
    assert main(["circuits", "intervene", str(model_dir), "--task", f"jsonl:{task}", "--vectors", str(vec),
                 "--steer", f"anger@{PLANT_LAYER}*3", "--bootstrap", "200", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    (name, r), = res["tasks"].items()
    after = [json.loads(x) for x in (out / f"predictions_{name.replace(':', '_')}_after.jsonl").open()]
    before = [json.loads(x) for x in (out / f"predictions_{name.replace(':', '_')}_before.jsonl").open()]
    assert sum(p["pred"] == "anger" for p in after) > sum(p["pred"] == "anger" for p in before)
    # the reported rates are those of the written predictions
    halluc = [is_hallucination(p["gold"], p["pred"]) for p in after]
    assert r["hallucination"]["after"] == pytest.approx(sum(halluc) / len(halluc))
    assert r["hallucination"]["ci_low"] <= r["hallucination"]["change"] <= r["hallucination"]["ci_high"]
    assert res["perplexity"]["after"] > 0 and (out / "changes.png").is_file()
    # β = γ = 1 and α = 0: identical predictions, zero change
    out0 = root / "iv0"
    assert main(["circuits", "intervene", str(model_dir), "--task", f"jsonl:{task}", "--vectors", str(vec),
                 "--steer", "anger@1*0", "--amplify-heads", "1.0,1.2", "--beta", "1",
                 "--amplify-neurons", "0.1", "--gamma", "1", "--bootstrap", "50", "--out", str(out0)]) == 0
    r0 = json.loads((out0 / "results.json").read_text())
    (_, t0), = r0["tasks"].items()
    assert t0["accuracy"]["change"] == 0 and t0["hallucination"]["change"] == 0
    assert r0["perplexity"]["ratio"] == 1.0


@pytest.mark.parametrize("argv, msg", [
    (["vectors", "{model}", "--pairs", "{root}/missing.jsonl"], "does not exist"),
    (["vectors", "{model}", "--pairs", "{root}/bad.jsonl"], "missing field"),
    (["vectors", "{model}", "--pairs", "{pairs}", "--min-score", "1.5"], "--min-score must be a finite number in [0, 1]"),
    (["vectors", "{model}", "--pairs", "{pairs}", "--min-score", "1", "--min-pairs", "0"], "no usable pair for anger"),
    (["vectors", "{model}", "--pairs", "{pairs}", "--min-pairs", "-1"], "--min-pairs must be 0 or more"),
    (["layers", "{model}", "--pairs", "{pairs}", "--vectors", "{vec}", "--layers", "9"], "out of range"),
    (["heads", "{model}", "--pairs", "{pairs}", "--vectors", "{vec}", "--target-layer", "7"], "out of range"),
    (["intervene", "{model}", "--task", "jsonl:{task}"], "nothing to do"),
    (["intervene", "{model}", "--task", "jsonl:{task}", "--steer", "anger"], "bad --steer"),
    (["intervene", "{model}", "--task", "jsonl:{task}", "--amplify-heads", "1.9"], "out of range"),
    (["intervene", "{model}", "--task", "jsonl:{task}", "--steer", "anger@1*2"], "needs --vectors"),
])
def test_bad_input_is_one_line(setup, capsys, argv, msg):
    root, model_dir, pairs, task, vec, v = setup
    (root / "bad.jsonl").write_text('{"emotional": "x", "label": "anger"}\n')
    fill = {"model": model_dir, "root": root, "pairs": pairs, "vec": vec, "task": task}
    out = root / "never"
    rc = main(["circuits", *[a.format(**fill) for a in argv], "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and msg in err and err.startswith("affectlens: error:")
    assert not out.exists()


@pytest.mark.parametrize("verb", ["heads", "neurons"])
def test_attribution_through_a_peft_adapter(setup, verb):
    """PEFT freezes the base weights: gradients must still reach the captured activations.

    A LoRA adapter with B = 0 (PEFT's default init) is the identity, so the
    attribution through it equals the plain model's, row for row.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root, model_dir, pairs, task, vec, v = setup
    adapter = root / f"identity_adapter_{verb}"
    base = AutoModelForCausalLM.from_pretrained(str(model_dir))
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(str(adapter))
    rows = {}
    for name, extra in (("plain", []), ("adapter", ["--adapter", str(adapter)])):
        out = root / f"{verb}_{name}"
        assert main(["circuits", verb, str(model_dir), "--pairs", str(pairs), "--vectors", str(vec),
                     "--top-k", "3", "--out", str(out), *extra]) == 0
        rows[name] = _csv(out / f"{verb}.csv")
    assert len(rows["adapter"]) == len(rows["plain"]) > 0
    for a, b in zip(rows["adapter"], rows["plain"], strict=True):
        assert (a["emotion"], a["layer"]) == (b["emotion"], b["layer"])
        assert float(a["score"]) == pytest.approx(float(b["score"]), rel=1e-4, abs=1e-6)
    if verb == "heads":  # the planted heads carry the signal (planted MLPs write nothing)
        assert any(float(r["score"]) != 0 for r in rows["plain"])


def test_existing_output_needs_force(setup, capsys):
    root, model_dir, pairs, task, vec, v = setup
    assert main(["circuits", "vectors", str(model_dir), "--pairs", str(pairs), "--out", str(vec),
                 "--min-score", "0"]) == 2
    assert "--force" in capsys.readouterr().err


def test_hallucination_definition_and_cis():
    assert is_hallucination("neutral", "joy") and not is_hallucination("neutral", "neutral")
    assert is_hallucination("anger", "joy") and is_hallucination("joy", "sadness")
    assert not is_hallucination("anger", "disgust") and not is_hallucination("anger", "neutral")
    assert not is_hallucination("joy", "surprise") and not is_hallucination(["anger", "joy"], "joy")
    est, lo, hi = bootstrap_ci([0, 1, 1, 1], n_boot=2000, seed=1)
    assert est == 0.75 and 0 <= lo < 0.75 < hi <= 1
    d, lo, hi = paired_diff_ci([0, 0, 1, 1], [1, 1, 1, 1], n_boot=500)
    assert d == 0.5 and lo <= 0.5 <= hi
    assert paired_diff_ci([1, 0], [1, 0]) == (0.0, 0.0, 0.0)


def test_python_runs_return_what_they_write(setup):
    """The library `*_run` calls behind the CLI return typed results equal to their files."""
    from affectlens.circuits import HeadRanking, InterventionRun, heads_run, intervene_run

    root, model_dir, pairs, task, vec, v = setup
    rk = heads_run(str(model_dir), str(root / "py_heads"), str(pairs), vectors=str(vec),
                   target_layer=PLANT_LAYER, top_k=1)
    assert isinstance(rk, HeadRanking) and rk.names("specific") == [f"L{PLANT_LAYER}.H0", f"L{PLANT_LAYER}.H2"]
    summ = json.loads((root / "py_heads" / "summary.json").read_text())
    assert summ["top_heads"] == {e: sorted(f"L{la}.H{h}" for la, h in s) for e, s in rk.tops.items()}
    overlap = _csv(root / "py_heads" / "overlap.csv")
    assert overlap[0]["jaccard_pairwise"] == ""  # no top head in layer 0: an empty cell, never "nan"
    res = intervene_run(str(model_dir), str(root / "py_iv"), [f"jsonl:{task}"], amplify_heads="1.0",
                        beta=3.0, n_boot=20)
    assert isinstance(res, InterventionRun)
    assert json.loads((root / "py_iv" / "results.json").read_text()) == res.to_dict()
    assert [r["metric"] for r in _csv(root / "py_iv" / "results.csv")] == ["accuracy", "hallucination"]
    man = json.loads((root / "py_iv" / "manifest.json").read_text())
    assert man["command"] == "circuits intervene" and man["options"]["intervention"] == res.intervention


@pytest.mark.parametrize("step", ["heads", "neurons"])
def test_attribution_does_not_depend_on_the_batch_size(step, tmp_path):
    """--batch-size 1 and 4 (padded batches of pairs whose prompts differ in length) give the same scores."""
    rows = {}
    for b in (1, 4):
        out = tmp_path / f"{step}{b}"
        assert main(["circuits", step, str(TINYSTORIES), "--emotions", "anger,joy", "--limit", "3",
                     "--min-score", "0", "--top-k", "5", "--batch-size", str(b), "--out", str(out)]) == 0
        assert json.loads((out / "manifest.json").read_text())["options"]["batch_size"] == b
        rows[b] = _csv(out / f"{step}.csv")
    assert len(rows[1]) == len(rows[4]) > 0
    unit = "head" if step == "heads" else "neuron"
    for a, b in zip(rows[1], rows[4], strict=True):  # the same units, in the same order
        assert (a["emotion"], a["layer"], a[unit]) == (b["emotion"], b["layer"], b[unit])
    # Equal up to float32 rounding: padding changes the kernels' summation order (~1e-7 relative per
    # activation), and drop/gain are sums of products of differences, so the bound is relative to the
    # column's largest value. A pair scored with another pair's tokens would be off by O(1) of it.
    for col in ("drop", "gain", "score") + (("cos",) if step == "heads" else ("direct", "direct_diff")):
        scale = max(abs(float(r[col])) for r in rows[1])
        worst = max(abs(float(a[col]) - float(b[col])) for a, b in zip(rows[1], rows[4], strict=True))
        assert worst <= 1e-4 * scale, (col, worst, scale)
