"""``affectlens evaluate`` on image+text tasks, with tiny random Qwen2-VL and LLaVA-OneVision models.

Each model is saved with its own processor (as in test_vlm_families) and
evaluated through the CLI on a contrast-pairs file (each pair: the emotional
image with its emotion, the neutral image with ``neutral``), a JSONL file
with an ``image`` column (one row without an image), and the same JSONL as
a text task. Every label log-likelihood in predictions.jsonl is checked
against the processor's own encoding of prompt + label run through the
built model (not the reloaded one, not our scorer).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from affectlens.tasks.prompts import render
from test_vlm_families import saved_family

from conftest import STORIES260K
from faults import assert_refused, run_cli

# The family's image placeholder, spelled out here (what its processor expands per image).
PLACEHOLDER = {"qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>", "llava_onevision": "<image>"}
QUESTION_LABELS = ["anger", "joy", "neutral"]


@pytest.fixture(scope="module", params=sorted(PLACEHOLDER))
def saved(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(f"eval-{family}")
    model, proc, tok, pairs = saved_family(family, root)
    # a JSONL task: image paths relative to the file, one row without an image (scored as text)
    data = root / "data"
    data.mkdir()
    shutil.copy(root / "e0.png", data / "a.png")
    shutil.copy(root / "n2.png", data / "b.png")
    rows = [{"text": "it is red", "label": "anger", "image": "a.png"},
            {"text": "a grey sky", "label": "neutral", "image": "b.png"},
            {"text": "so happy", "label": "joy", "image": ""}]
    jsonl = data / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"family": family, "model": model.eval(), "proc": proc, "tok": tok, "dir": root / "model",
            "pairs": pairs, "jsonl": jsonl, "root": root}


def _reference(saved, text: str, image: str | None, label: str) -> float:
    """log p(label | prompt[, image]) from the processor's encoding of prompt + ' ' + label."""
    proc, model = saved["proc"], saved["model"]
    ph = PLACEHOLDER[saved["family"]] if image else ""
    prompt = render(saved["tok"], text, "emotion", QUESTION_LABELS, image=ph)
    if image:
        with Image.open(image) as pic:
            x = proc(text=[prompt + " " + label], images=[pic.convert("RGB")], return_tensors="pt")
    else:
        x = proc.tokenizer([prompt + " " + label], return_tensors="pt")
    n = len(proc.tokenizer(" " + label, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model(**x).logits[0].double(), -1)
    ids = x["input_ids"][0]
    return sum(float(logp[t - 1, ids[t]]) for t in range(len(ids) - n, len(ids)))


def test_image_tasks_score_like_the_processor(saved, tmp_path, capfd):
    out = tmp_path / "run"
    pairs_task, img_task, text_task = (f"pairs:{saved['pairs']}", f"jsonl:{saved['jsonl']},image=image",
                                       f"jsonl:{saved['jsonl']}")
    rc, _, err = run_cli(capfd, "evaluate", saved["dir"], "--task", pairs_task, "--task", img_task,
                         "--task", text_task, "--out", out, "--bootstrap", "0", "--device", "cpu",
                         "--dtype", "float32")
    assert rc == 0, err
    preds = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines()]
    scores = json.loads((out / "scores.json").read_text())
    names = sorted(scores["tasks"])
    assert len(names) == 3
    by_task: dict[str, list[dict]] = {n: [r for r in preds if r["task"] == n] for n in names}
    pairs_name = next(n for n in names if n.startswith("pairs:"))
    img_name = next(n for n in names if "image=" in n)
    text_name = next(n for n in names if n not in (pairs_name, img_name))
    # pairs: two rows per pair, emotional image + emotion, neutral image + neutral
    src = [json.loads(ln) for ln in saved["pairs"].read_text().splitlines()]
    expect = [x for p in src for x in ((p["image_emotional"], p["label"]), (p["image_neutral"], "neutral"))]
    assert [(r["image"], r["gold"]) for r in by_task[pairs_name]] == expect
    data = saved["jsonl"].parent
    assert [r.get("image") for r in by_task[img_name]] == [str(data / "a.png"), str(data / "b.png"), None]
    assert all("image" not in r for r in by_task[text_name])
    for name in names:
        rows = by_task[name]
        labels = sorted(rows[0]["loglik"])
        assert labels == sorted(QUESTION_LABELS)
        for r in rows:
            for lab in labels:
                ref = _reference(saved, r["text"], r.get("image"), lab)
                assert r["loglik"][lab] == pytest.approx(ref, abs=1e-4, rel=1e-4), (name, r["index"], lab)
            assert r["pred"] == max(labels, key=lambda lab, r=r: r["loglik"][lab])
        task = scores["tasks"][name]
        acc = sum(r["pred"] == r["gold"] for r in rows) / len(rows)
        assert task["n"] == len(rows) and task["metrics"]["accuracy"] == pytest.approx(acc)
    # the image changes the scores: the same text with and without its image differs
    a_img, a_txt = by_task[img_name][0]["loglik"], by_task[text_name][0]["loglik"]
    assert max(abs(a_img[k] - a_txt[k]) for k in a_img) > 1e-4


def test_missing_image_is_refused_naming_the_row(saved, tmp_path, capfd):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x", "label": "anger", "image": "a.png"}) + "\n"
                   + json.dumps({"text": "y", "label": "joy", "image": "gone.png"}) + "\n")
    shutil.copy(saved["jsonl"].parent / "a.png", tmp_path / "a.png")
    out = tmp_path / "run"
    line = assert_refused(run_cli(capfd, "evaluate", saved["dir"], "--task", f"jsonl:{bad},image=image",
                                  "--out", out, "--device", "cpu"), out=out, contains="gone.png")
    assert "line 2" in line and "does not exist" in line
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"emotional": "", "neutral": "", "label": "joy",
                                 "image_emotional": str(tmp_path / "a.png"),
                                 "image_neutral": str(tmp_path / "nope.png")}) + "\n")
    line = assert_refused(run_cli(capfd, "evaluate", saved["dir"], "--task", f"pairs:{pairs}", "--out", out,
                                  "--device", "cpu"), out=out, contains="nope.png")
    assert "pair 1" in line


def test_image_tasks_need_a_vlm_and_closed_mode(saved, tmp_path, capfd):
    out = tmp_path / "run"
    task = f"jsonl:{saved['jsonl']},image=image"
    assert_refused(run_cli(capfd, "evaluate", str(STORIES260K), "--task", task, "--out", out),
                   out=out, contains="vision-language model")
    assert_refused(run_cli(capfd, "evaluate", saved["dir"], "--task", task, "--mode", "generative",
                           "--out", out), out=out, contains="closed mode only")
    assert_refused(run_cli(capfd, "evaluate", saved["dir"], "--task", task, "--calibration", "pmi",
                           "--out", out), out=out, contains="text tasks only")
