"""Calibrated closed-set scoring and few-shot prompts: planted label priors, float64 oracles, no leaks."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from affectlens.evaluate import core, evaluate, evaluate_run
from affectlens.tasks.prompts import render
from test_evaluate_scorer import TEXTS, brute

from conftest import TINYSTORIES
from faults import assert_refused, run_cli

LABELS = ["sad", "happy", "scared", "good", "bad"]  # one token each after the shared " " here
TRAIN = [f"Train story {i}: the cat and the dog played near the tree number {i}." for i in range(20)]


@pytest.fixture(scope="module")
def model_tok():
    return (AutoModelForCausalLM.from_pretrained(str(TINYSTORIES)).eval(),
            AutoTokenizer.from_pretrained(str(TINYSTORIES)))


@pytest.fixture
def task(tmp_path) -> str:
    """A test split of TEXTS and a train split that also holds two test texts (a leak to avoid)."""
    rows = [{"text": t, "label": LABELS[i % 5], "split": "test"} for i, t in enumerate(TEXTS)]
    rows += [{"text": t, "label": LABELS[i % 5], "split": "train"} for i, t in enumerate(TRAIN)]
    rows += [{"text": TEXTS[0], "label": LABELS[0], "split": "train"},
             {"text": TEXTS[1], "label": LABELS[1], "split": "train"}]
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"jsonl:{p},split=test,labels={'|'.join(LABELS)}"


def rest_token(tok, label: str) -> int:
    ids = tok(" " + label, add_special_tokens=False).input_ids
    assert len(ids) == 2 and ids[0] == tok(" ", add_special_tokens=False).input_ids[0]
    return ids[1]


def with_bias(model, tok, bias: dict[str, float]):
    """A copy whose lm_head adds a constant logit to each label's token: a planted label prior."""
    m = copy.deepcopy(model)
    head = m.lm_head
    new = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    new.weight = head.weight
    with torch.no_grad():
        new.bias.zero_()
        for lab, b in bias.items():
            new.bias[rest_token(tok, lab)] = b
    m.lm_head = new
    return m.eval()


def run(model, tok, task, calibration="none", **kw):
    res = evaluate(model, tok, task, calibration=calibration, n_boot=0, progress=False, **kw)
    key = "calibrated" if calibration != "none" else "loglik"
    scores = torch.tensor([[r[key][lab] for lab in LABELS] for r in res.predictions], dtype=torch.float64)
    return res, [r["pred"] for r in res.predictions], scores


@pytest.mark.parametrize("mode", ["contextual", "pmi"])
def test_calibration_removes_a_planted_label_prior(model_tok, task, mode):
    model, tok = model_tok
    boosted = with_bias(model, tok, {"happy": 12.0})
    raw_res, raw_boosted, _ = run(boosted, tok, task)
    _, raw_base, _ = run(model, tok, task)
    assert set(raw_boosted) == {"happy"} and set(raw_base) != {"happy"}  # the prior is planted
    res, cal_boosted, s_boosted = run(boosted, tok, task, mode)
    _, cal_base, s_base = run(model, tok, task, mode)
    assert cal_boosted == cal_base  # the balanced decision is recovered
    diff = s_boosted - s_base  # equal up to a per-example constant
    assert torch.allclose(diff - diff.mean(-1, keepdim=True), torch.zeros_like(diff), atol=1e-3)
    entry = res.scores["tasks"][next(iter(res.tasks))]
    assert entry["calibration"] == mode and set(entry["calibration_vector"]) == set(LABELS)
    assert "fewshot" not in entry  # zero-shot records none
    raw_metrics = raw_res.scores["tasks"][next(iter(raw_res.tasks))]["metrics"]
    # the raw decision beside the calibrated one is scored exactly as an uncalibrated run scores it
    assert entry["metrics"]["uncalibrated"] == {k: v for k, v in raw_metrics.items()
                                                if k not in ("seconds", "examples_per_s")}


def _reference(model, tok, mode: str) -> torch.Tensor:
    """float64 brute-force calibration vector (plain formulas, no affectlens scorer)."""
    texts = ["N/A", "", "[MASK]"] if mode == "contextual" else [""]
    ref = brute(model, tok, [render(tok, t, "label", LABELS) for t in texts], LABELS)
    if mode == "pmi":
        return ref[0]
    g = torch.log_softmax(ref, -1).mean(0)
    return g - torch.logsumexp(g, 0)


@pytest.mark.parametrize("mode", ["contextual", "pmi"])
def test_calibrated_scores_equal_float64_brute_force(model_tok, task, mode):
    model, tok = model_tok
    res, _, got = run(model, tok, task, mode)
    ll = brute(model, tok, [render(tok, t, "label", LABELS) for t in TEXTS], LABELS)
    vec = _reference(model, tok, mode)
    want = (torch.log_softmax(ll, -1) if mode == "contextual" else ll) - vec
    assert torch.allclose(got, want, atol=1e-4)
    stored = res.scores["tasks"][next(iter(res.tasks))]["calibration_vector"]
    assert torch.allclose(torch.tensor([stored[lab] for lab in LABELS], dtype=torch.float64), vec, atol=1e-4)


@pytest.mark.parametrize("mode", ["contextual", "pmi"])
def test_calibration_changes_nothing_on_a_balanced_model(model_tok, task, mode):
    model, tok = model_tok
    vec = _reference(model, tok, mode)  # plant the opposite prior: the label prior becomes flat
    balanced = with_bias(model, tok, {lab: -float(vec[j]) for j, lab in enumerate(LABELS)})
    res, cal, _ = run(balanced, tok, task, mode)
    _, raw, _ = run(balanced, tok, task)
    assert cal == raw
    stored = list(res.scores["tasks"][next(iter(res.tasks))]["calibration_vector"].values())
    assert max(stored) - min(stored) < 1e-3


def test_fewshot_balanced_seeded_and_never_from_the_evaluated_split(model_tok, task, monkeypatch):
    model, tok = model_tok
    seen: list[str] = []
    real = core.score_labels

    def spy(m, t, prompts, labels, **kw):
        seen.extend(prompts)
        return real(m, t, prompts, labels, **kw)

    monkeypatch.setattr(core, "score_labels", spy)
    res, _, _ = run(model, tok, task, num_fewshot=10, seed=3)
    shots = res.scores["tasks"][next(iter(res.tasks))]["fewshot"]
    assert shots["k"] == 10 and shots["seed"] == 3
    assert sorted(e["label"] for e in shots["examples"]) == sorted(LABELS * 2)  # balanced
    assert all(e["text"] in TRAIN for e in shots["examples"])  # train split, duplicates of test excluded
    assert len(seen) == len(TEXTS) + 3  # the examples, then the 3 content-free references (kept for rescore)
    for prompt, own in zip(seen, TEXTS, strict=False):
        shown = [t for t in TEXTS if f"Text: {t}\n" in prompt]
        assert shown == [own]  # no other evaluated text, in any prompt
    for prompt in seen:
        assert all(e["text"] in prompt for e in shots["examples"])
    assert not any(t in p for p in seen[len(TEXTS):] for t in TEXTS)
    again, _, _ = run(model, tok, task, num_fewshot=10, seed=3)
    assert again.scores["tasks"][next(iter(again.tasks))]["fewshot"] == shots  # deterministic per seed
    other = [run(model, tok, task, num_fewshot=3, seed=s)[0] for s in range(4)]
    drawn = {json.dumps(r.scores["tasks"][next(iter(r.tasks))]["fewshot"]["examples"]) for r in other}
    assert len(drawn) > 1  # the seed matters
    picked = [[e["label"] for e in json.loads(d)] for d in drawn]
    assert all(len(set(p)) == 3 for p in picked)  # 3 shots over 5 labels: 3 different labels
    assert len({frozenset(p) for p in picked}) > 1  # which labels is drawn too, not always the first


def test_fewshot_and_calibration_recorded_in_the_manifest(task, tmp_path):
    out = tmp_path / "run"
    evaluate_run(str(TINYSTORIES), out, [task], num_fewshot=5, calibration="pmi", n_boot=0, seed=4)
    man = json.loads((out / "manifest.json").read_text())
    assert man["options"]["num_fewshot"] == 5 and man["options"]["calibration"] == "pmi"
    (entry,) = man["fewshot"].values()
    assert entry["k"] == 5 and entry["seed"] == 4
    (cal,) = man["calibration"].values()
    assert cal["mode"] == "pmi" and set(cal["vector"]) == set(LABELS)


def test_fewshot_without_a_train_split_is_one_line(tmp_path, capfd):
    p = tmp_path / "only.jsonl"
    p.write_text("".join(json.dumps({"text": t, "label": LABELS[i % 2]}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "o"
    assert_refused(run_cli(capfd, "evaluate", str(TINYSTORIES), "--task", f"jsonl:{p}", "--num-fewshot", "2",
                           "--out", str(out)), out=out, contains="train split")
    assert_refused(run_cli(capfd, "evaluate", str(TINYSTORIES), "--task", f"jsonl:{p}", "--calibration",
                           "pmi", "--mode", "generative", "--out", str(out)), out=out, contains="closed")
