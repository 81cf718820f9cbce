"""`affectlens evaluate` / `export-task` end to end, perplexity and generation vs oracles."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForCausalLM, AutoTokenizer

from affectlens.cli import main
from affectlens.evaluate import evaluate, perplexity, weight_fingerprint
from affectlens.evaluate.generative import open_prompt
from affectlens.tasks.corpus import bundled_path
from test_evaluate_loaders import write_meld

from conftest import TINYSTORIES
from tiny import save_tiny

STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. "
         "One day, she saw a big red ball in the park. She ran to get it, but a dog took it first. "
         "Lily was sad, but then the dog brought the ball back and they played together all day.")


@pytest.fixture(scope="module")
def model_tok():
    return (AutoModelForCausalLM.from_pretrained(str(TINYSTORIES)).eval(),
            AutoTokenizer.from_pretrained(str(TINYSTORIES)))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("affectlens: error:") and "\n" not in err, err
    return err


def test_cli_closed_run_dir(tmp_path, capsys):
    meld = tmp_path / "meld.csv"
    write_meld(meld)
    ppl = tmp_path / "held_out.txt"
    ppl.write_text(STORY + "\n\nTom had a dog. The dog liked to run.\n")
    out = tmp_path / "run"
    argv = [str(TINYSTORIES), "--task", "emotion", "--task", f"meld:{meld}", "--task", f"ppl:{ppl}",
            "--limit", "10", "--batch-size", "4", "--bootstrap", "50", "--out", str(out)]
    assert main(["evaluate", *argv]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion.csv", "confusion_emotion.png", "confusion_meld_meld.csv.png", "manifest.json", "per_class.csv",
        "predictions.jsonl", "scores.json", "scores.npz"]
    scores = json.loads((out / "scores.json").read_text())
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert set(scores["tasks"]) == {"emotion", "meld:meld.csv", "ppl:held_out.txt"}
    assert scores["mean_over"] == ["emotion", "meld:meld.csv"]
    for name in scores["mean_over"]:
        rows = [p for p in preds if p["task"] == name]
        t = scores["tasks"][name]
        assert t["n"] == len(rows) == (10 if name == "emotion" else 4)
        for r in rows:
            assert r["pred"] == max(r["loglik"], key=r["loglik"].get)
        gold, pred = [r["gold"] for r in rows], [r["pred"] for r in rows]
        assert t["metrics"]["accuracy"] == pytest.approx(accuracy_score(gold, pred))
        assert t["primary"] == pytest.approx(f1_score(gold, pred, average="weighted", zero_division=0))
    assert scores["mean"] == pytest.approx(sum(scores["tasks"][k]["primary"] for k in scores["mean_over"]) / 2)
    assert scores["tasks"]["ppl:held_out.txt"]["primary_metric"] == "perplexity"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights_sha256"] == scores["weights_sha256"] and manifest["seed"] == 0
    # an existing run is never replaced without --force, and the error is one line
    capsys.readouterr()
    assert main(["evaluate", *argv]) == 2
    assert "--force" in _one_line_error(capsys)
    assert main(["evaluate", *argv, "--force"]) == 0


@pytest.mark.parametrize("bad", ["missing_column", "unknown_label", "empty", "no_tokenizer", "bad_mode"])
def test_cli_bad_inputs(tmp_path, capsys, bad):
    model = str(TINYSTORIES)
    task = "emotion"
    extra: list[str] = []
    if bad == "missing_column":
        (tmp_path / "d.csv").write_text("utterance,label\nhi,joy\nbye,fear\n")
        task = f"csv:{tmp_path / 'd.csv'}"
    elif bad == "unknown_label":
        write_meld(tmp_path / "m.csv", b"9,Hm.,Phoebe,bored,neutral,2,0,3,21,0,1\n")
        task = f"meld:{tmp_path / 'm.csv'}"
    elif bad == "empty":
        (tmp_path / "e.jsonl").write_text("\n")
        task = f"jsonl:{tmp_path / 'e.jsonl'}"
    elif bad == "no_tokenizer":
        save_tiny(tmp_path / "tiny", "llama", vocab=2048)
        model = str(tmp_path / "tiny")
    else:
        extra = ["--limit", "0"]
    out = tmp_path / "out"
    assert main(["evaluate", model, "--task", task, *extra, "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert {"missing_column": "no text column", "unknown_label": "'bored'", "empty": "is empty",
            "no_tokenizer": "tokenizer", "bad_mode": "--limit"}[bad] in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_perplexity_matches_hf_loss(model_tok):
    model, tok = model_tok
    texts = [STORY, "Tom had a dog. The dog liked to run.", "Hi"]
    res = perplexity(model, tok, texts, batch_size=2)
    nll, count = 0.0, 0
    for t in texts:
        ids = torch.tensor([tok(t).input_ids])
        with torch.no_grad():
            loss = model(ids, labels=ids).loss.item()
        nll += loss * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    assert res["tokens"] == count
    assert res["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    # sliding windows (context 16, stride 8): each token scored once with its window's context
    ids = tok(STORY).input_ids
    win = perplexity(model, tok, [STORY], max_length=16, stride=8)
    assert win["tokens"] == len(ids) - 1
    ref, prev = 0.0, 1
    for begin in range(0, len(ids), 8):
        end = min(begin + 16, len(ids))
        x = torch.tensor([ids[begin:end]])
        with torch.no_grad():
            lp = model(x).logits[0].double().log_softmax(-1)
        for pos in range(max(prev, begin + 1), end):
            ref -= lp[pos - begin - 1, ids[pos]].item()
        prev = end
        if end == len(ids):
            break
    assert win["nll_per_token"] == pytest.approx(ref / (len(ids) - 1), rel=1e-5)
    assert win["perplexity"] > res["perplexity"] * 0.5


def test_generative_answers_equal_unbatched_greedy(model_tok):
    model, tok = model_tok
    res = evaluate(model, tok, ["emotion"], mode="generative", limit=5, batch_size=3, progress=False,
                   n_boot=0, max_new_tokens=12)
    rows = res.predictions
    assert len(rows) == 5 and res.scores["tasks"]["emotion"]["primary_metric"] == "hit"
    for r in rows:
        prompt = open_prompt(tok, r["text"], "Please recognize all possible emotional states of the character.")
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            g = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        assert r["answer"] == tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True)
        assert isinstance(r["parsed"], list) and "basic" in r["categories"]


def test_weight_fingerprint_tracks_weights(model_tok):
    model, _ = model_tok
    a = weight_fingerprint(model)
    with torch.no_grad():
        p = next(model.parameters())
        p[0, 0] += 1.0
        b = weight_fingerprint(model)
        p[0, 0] -= 1.0
    assert a != b and weight_fingerprint(model) == a


def test_export_task_lm_eval(tmp_path, capsys):
    out = tmp_path / "lm"
    assert main(["export-task", "emotion", "--to", "lm-eval", "--limit", "6", "--out", str(out)]) == 0
    doc = yaml.safe_load((out / "affectlens_emotion.yaml").read_text())
    assert doc["output_type"] == "multiple_choice" and doc["task"] == "affectlens_emotion"
    assert doc["doc_to_choice"] == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    assert doc["target_delimiter"] == " "
    data = doc["dataset_kwargs"]["data_files"]["test"]
    assert data == "affectlens_emotion.jsonl"  # relative to the YAML, so the export moves to a cluster
    moved = tmp_path / "elsewhere" / "lm"
    moved.parent.mkdir()
    out.rename(moved)
    assert str(tmp_path) not in (moved / "affectlens_emotion.yaml").read_text()
    rows = [json.loads(x) for x in (moved / data).read_text("utf-8").splitlines()]
    bundled = [json.loads(x) for x in bundled_path("emotion_test").read_text("utf-8").splitlines()][:6]
    assert [r["text"] for r in rows] == [b["text"] for b in bundled]
    assert all(doc["doc_to_choice"][r["gold"]] == r["label"] for r in rows)
    assert all(r["prompt"].endswith("Emotion:") and r["text"] in r["prompt"] for r in rows)
    assert main(["export-task", "ppl:/etc/hostname", "--out", str(tmp_path / "x")]) == 2
    _one_line_error(capsys)
