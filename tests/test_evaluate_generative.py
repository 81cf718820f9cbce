"""MER-UniBench protocol (wheels, parsing, metrics vs hand counts) and the generation-backend contract."""

from __future__ import annotations

import json
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from affectlens.evaluate import evaluate, load_wheel, parse_answer, score_generative_rows
from affectlens.evaluate.backends import HFBackend, get_backend
from affectlens.evaluate.generative import open_prompt
from affectlens.tasks.prompts import OPEN_QUESTION

from conftest import TINYSTORIES
from faults import assert_refused, run_cli

ANSWERS = [
    "The character is experiencing a mix of emotions:\n\n- Anger\n- Sadness",
    "Happy, then scared.",
    "I cannot tell from the text; the tone is flat.",
    "- **Frustration**: he waits too long\n- Grief - she lost it",
    "Blorptastic and scared",
]
GOLD = ["sadness", "joy", "anger", "anger", "neutral"]


def two_wheels(tmp_path):
    doc = {"wheels": {
        "a": {"anger": "anger", "sadness": "sadness", "happy": "joy", "scared": "fear", "grief": "sadness",
              "frustration": "anger", "joy": "joy"},
        "b": {"anger": "bad", "sadness": "bad", "happy": "good", "frustration": "bad", "joy": "good",
              "scared": "bad"},
    }}
    p = tmp_path / "w.json"
    p.write_text(json.dumps(doc))
    return load_wheel(p)


def test_parsing_reads_bulleted_lists_after_a_blank_line():
    assert parse_answer(ANSWERS[0]) == ["anger", "sadness"]
    assert parse_answer(ANSWERS[3]) == ["frustration", "grief"]
    assert parse_answer("Surprise.\n\nAlso:\n* Joy\n* Fear") == ["surprise", "joy", "fear"]


def test_emotion_metrics_equal_hand_counts(tmp_path):
    wheel = two_wheels(tmp_path)
    rows = [{"answer": a, "gold": g} for a, g in zip(ANSWERS, GOLD, strict=True)]
    m, fig = score_generative_rows(rows, "emotion", ["anger", "joy", "neutral", "sadness"], wheel, n_boot=200)
    # wheel a: categories (answer order) per row; gold neutral (row 5) is skipped
    assert [r["categories"]["a"] for r in rows] == [["anger", "sadness"], ["joy", "fear"], [],
                                                   ["anger", "sadness"], ["fear"]]
    # hits a: 1, 1, 0, 1 of 4; wheel b (gold grief->? 'sadness'->bad, joy->good, anger->bad): 1, 1, 0, 1
    assert m["hit_per_wheel"] == {"a": 0.75, "b": 0.75} and m["hit"] == 0.75 and m["n_counted"] == 4
    lo, hi = m["ci"]["hit"]
    assert 0.0 <= lo <= 0.75 <= hi <= 1.0
    # set F on wheel a: precision 1/2, 1/2, 0, 1/2 -> 0.375; recall 0.75
    fa = m["f_set_per_wheel"]["a"]
    assert fa["precision"] == pytest.approx(0.375) and fa["recall"] == 0.75
    assert fa["f"] == pytest.approx(2 * 0.375 * 0.75 / 1.125)
    assert m["mean_categories_per_wheel"]["a"] == pytest.approx(7 / 5)
    assert m["mean_categories_per_wheel"]["b"] == pytest.approx(5 / 5)  # {bad}, {good, bad}, {}, {bad}, {bad}
    assert m["no_emotion_share"] == pytest.approx(1 / 5)
    # missing words are counted and listed, per wheel
    assert m["unmapped_words"]["b"]["words"]["grief"] == 1 and "blorptastic" in m["unmapped_words"]["a"]["words"]
    assert m["unmapped_words"]["a"]["count"] == sum(m["unmapped_words"]["a"]["words"].values())
    assert m["unmapped_gold"] == {"a": ["neutral"], "b": ["neutral"]}
    # the confusion's predicted column is the first category *named* ("joy" before "fear" in row 2)
    cols = fig["labels"]
    assert fig["confusion"][cols.index("joy")][cols.index("joy")] == 1
    assert fig["confusion"][cols.index("sadness")][cols.index("anger")] == 1


def test_shipped_wheels_name_their_sources():
    doc = json.loads((__import__("importlib.resources").resources.files("affectlens") / "data" /
                      "emotion_wheels.json").read_text())
    w = load_wheel()
    assert len(w.wheels) == 5 and set(doc["sources"]) == set(w.wheels)
    for name, table in w.wheels.items():  # every basic gold label but surprise on Willcox's wheel is mapped
        gold = {"anger", "disgust", "fear", "joy", "sadness", "surprise"} - ({"surprise"} if name == "willcox" else set())
        assert gold <= set(table), name


class EchoBackend:
    """An in-process backend: answers from the prompt text alone (deterministic, batch-free)."""

    name = "echo"

    def __init__(self, batch_size: int = 8) -> None:
        self.seen: list[str] = []

    def generate(self, prompts, max_new_tokens, seed):
        self.seen.extend(prompts)
        return [f"- {'Happy' if 'smiled' in p else 'Sad'}\n- Scared" for p in prompts]


@pytest.fixture(scope="module")
def model_tok():
    return (AutoModelForCausalLM.from_pretrained(str(TINYSTORIES)).eval(),
            AutoTokenizer.from_pretrained(str(TINYSTORIES)))


@pytest.mark.parametrize("which", ["hf", "echo"])
def test_backend_contract(model_tok, which):
    model, tok = model_tok

    def make(bs):
        return HFBackend(model, tok, batch_size=bs) if which == "hf" else EchoBackend(bs)

    res = evaluate(model, tok, "emotion", mode="generative", limit=5, n_boot=0, progress=False,
                   max_new_tokens=8, backend=make(3))
    prompts = [open_prompt(tok, r["text"], OPEN_QUESTION) for r in res.predictions]
    batched = make(3).generate(prompts, 8, 0)
    assert batched == make(3).generate(prompts, 8, 0)  # greedy: deterministic
    assert batched == [make(1).generate([p], 8, 0)[0] for p in prompts]  # left-padded batch = unbatched
    assert [r["answer"] for r in res.predictions] == batched  # evaluate asks exactly these prompts
    rows = [{"answer": a, "gold": r["gold"]} for a, r in zip(batched, res.predictions, strict=True)]
    m, _ = score_generative_rows(rows, "emotion", ["x"], load_wheel(), n_boot=0)
    assert m["hit"] == res.tasks["emotion"].primary  # same answers -> same parsing and scores
    if which == "hf":  # the default path is this backend
        ref = evaluate(model, tok, "emotion", mode="generative", limit=5, n_boot=0, progress=False,
                       max_new_tokens=8)
        assert [r["answer"] for r in ref.predictions] == batched


def test_sample_is_seeded_and_limit_takes_the_first_rows(model_tok):
    model, tok = model_tok
    echo = EchoBackend()

    def texts(**kw):
        res = evaluate(model, tok, "emotion", mode="generative", n_boot=0, progress=False, backend=echo, **kw)
        return [r["text"] for r in res.predictions]

    everything = texts()
    assert texts(limit=4) == everything[:4]
    a, b = texts(sample=6, seed=1), texts(sample=6, seed=1)
    assert a == b and len(a) == 6 and set(a) <= set(everything)
    assert a == [t for t in everything if t in a]  # file order kept
    assert any(texts(sample=6, seed=s) != a for s in range(2, 5))


def test_vllm_backend_refused_without_vllm(monkeypatch, tmp_path, capfd, model_tok):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, as where it is absent
    out = tmp_path / "o"
    assert_refused(run_cli(capfd, "evaluate", str(TINYSTORIES), "--mode", "generative", "--backend", "vllm",
                           "--out", str(out)), out=out, contains="pip install 'affectlens[vllm]'")
    with pytest.raises(Exception, match=r"affectlens\[vllm\]"):
        get_backend("vllm", *model_tok)


def test_vllm_backend_refuses_an_adapter(monkeypatch, tmp_path):
    from affectlens.errors import AffectlensError
    from affectlens.evaluate import backends, evaluate_run

    monkeypatch.setattr(backends, "vllm_missing", lambda: None)  # as where vLLM is installed
    with pytest.raises(AffectlensError, match="adapter"):
        evaluate_run(str(TINYSTORIES), tmp_path / "o", ["emotion"], adapter=str(tmp_path), mode="generative",
                     backend="vllm")
    assert not (tmp_path / "o").exists()
