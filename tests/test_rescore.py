"""`affectlens rescore`: a saved closed-set run re-decided under another calibration equals a fresh
`evaluate` under it, metric for metric, without the model; what it refuses, it refuses in one line."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from affectlens.errors import AffectlensError
from affectlens.evaluate import evaluate_run
from affectlens.evaluate.calibration import CONTENT_FREE
from affectlens.evaluate.decisions import closed_decision
from affectlens.evaluate.scorefile import read_scores
from affectlens.tasks.prompts import render
from affectlens.vocab import CALIBRATIONS
from test_evaluate_scorer import brute

from conftest import TINYSTORIES
from faults import assert_refused, run_cli, tree_digest

LIMIT, BOOT = 28, 200
TIMING = ("seconds", "examples_per_s")  # the model's time: a re-scored run keeps its source's


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One fresh `evaluate` run of the tiny model on the bundled emotion task per calibration."""
    root = tmp_path_factory.mktemp("evaluated")
    out = {}
    for cal in CALIBRATIONS:
        out[cal] = root / cal
        evaluate_run(str(TINYSTORIES), out[cal], ["emotion"], limit=LIMIT, batch_size=8, n_boot=BOOT,
                     calibration=cal)
    return out


def _scores(run: Path) -> dict:
    s = json.loads((run / "scores.json").read_text())
    for t in s["tasks"].values():
        for k in TIMING:
            t["metrics"].pop(k, None)
    return s


def _assert_same(a, b, where: str = "scores") -> None:
    """Equal, floats to 1e-12: float64 recomputation of the same numbers; all else exactly."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, int | float) and isinstance(b, int | float), where
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]


def test_the_calibrations_decide_differently(runs):
    """The premise of the comparisons below: each calibration changes the predictions here."""
    preds = {cal: [r["pred"] for r in _rows(run)] for cal, run in runs.items()}
    assert preds["none"] != preds["pmi"] and preds["none"] != preds["contextual"]
    # every run scored the same raw log-likelihoods and references (bit for bit: same batches, CPU)
    saved = {cal: read_scores(run / "scores.npz")[0]["emotion"] for cal, run in runs.items()}
    for a in saved.values():
        assert np.array_equal(a.loglik, saved["none"].loglik) and np.array_equal(a.reference, saved["none"].reference)


@pytest.mark.parametrize("src", CALIBRATIONS)
@pytest.mark.parametrize("dst", CALIBRATIONS)
def test_rescore_equals_a_fresh_evaluate(runs, tmp_path, capfd, src, dst):
    out = tmp_path / "rescored"
    rc, stdout, err = run_cli(capfd, "rescore", runs[src], "--calibration", dst, "--out", out)
    assert rc == 0, err
    assert f"-> {out}" in stdout and err == ""
    fresh = runs[dst]
    _assert_same(_scores(out), _scores(fresh))
    assert (out / "predictions.jsonl").read_text() == (fresh / "predictions.jsonl").read_text()
    for name in ("confusion.csv", "per_class.csv"):
        assert (out / name).read_text() == (fresh / name).read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in fresh.iterdir())
    src_scores = json.loads((runs[src] / "scores.json").read_text())["tasks"]["emotion"]["metrics"]
    got = json.loads((out / "scores.json").read_text())["tasks"]["emotion"]["metrics"]
    assert {k: got[k] for k in TIMING} == {k: src_scores[k] for k in TIMING}  # the model time it came from
    man = json.loads((out / "manifest.json").read_text())
    assert man["command"] == "rescore" and man["options"]["calibration"] == dst
    assert man["rescored_from"]["run"] == str(runs[src].resolve())
    assert man["rescored_from"]["calibration"] == {"emotion": src}
    assert man["rescored_from"]["options"]["model"] == str(TINYSTORIES)
    assert man["weights_sha256"] == json.loads((fresh / "manifest.json").read_text())["weights_sha256"]
    assert ("calibration" in man) == (dst != "none")


def test_saved_scores_are_the_scorers_numbers(runs):
    """scores.npz holds the log-likelihoods the predictions show, the gold labels, and the content-free
    prompts' scores (float64 brute force: one full forward per prompt and label)."""
    run = runs["none"]
    man = json.loads((run / "manifest.json").read_text())
    rec = man["scores_npz"]
    assert rec["file"] == "scores.npz" and rec["sha256"] == hashlib.sha256((run / "scores.npz").read_bytes()).hexdigest()
    saved, meta = read_scores(run / "scores.npz", rec)
    a = saved["emotion"]
    assert meta["n_boot"] == BOOT and meta["seed"] == 0
    assert rec["tasks"]["emotion"] == {"n": LIMIT, "labels": a.labels, "reference_texts": list(CONTENT_FREE)}
    rows = _rows(run)
    assert a.loglik.shape == (LIMIT, 7) and a.loglik.dtype == np.float64
    assert a.loglik.tolist() == [[r["loglik"][lab] for lab in a.labels] for r in rows]  # exact: JSON round-trips
    assert [a.labels[g] for g in a.gold] == [r["gold"] for r in rows]
    model = AutoModelForCausalLM.from_pretrained(str(TINYSTORIES)).eval()
    tok = AutoTokenizer.from_pretrained(str(TINYSTORIES))
    want = brute(model, tok, [render(tok, t, "emotion", a.labels) for t in CONTENT_FREE], a.labels)
    assert a.reference is not None and torch.allclose(torch.from_numpy(a.reference), want, atol=1e-4)


def test_rescore_needs_no_model(runs, tmp_path, capfd, monkeypatch):
    import affectlens.models
    import affectlens.models.vlm

    def refuse(*a, **k):
        raise AssertionError("rescore loaded a model")

    for mod, name in ((affectlens.models, "load_model"), (affectlens.models, "load_tokenizer"),
                      (affectlens.models.vlm, "load_vlm")):
        monkeypatch.setattr(mod, name, refuse)
    monkeypatch.setattr(torch.nn.Module, "__call__", refuse)
    rc, _, err = run_cli(capfd, "rescore", runs["none"], "--calibration", "pmi", "--out", tmp_path / "r")
    assert rc == 0, err


def test_rescore_writes_only_new_results(runs, tmp_path, capfd):
    out = tmp_path / "r"
    assert run_cli(capfd, "rescore", runs["none"], "--calibration", "pmi", "--out", out)[0] == 0
    before = tree_digest(out)
    assert_refused(run_cli(capfd, "rescore", runs["none"], "--calibration", "contextual", "--out", out),
                   out=out, survivor=before, contains="--force")
    rc, _, err = run_cli(capfd, "rescore", runs["none"], "--calibration", "contextual", "--bootstrap", "0",
                         "--out", out, "--force")
    assert rc == 0, err
    scores = json.loads((out / "scores.json").read_text())["tasks"]["emotion"]
    assert scores["calibration"] == "contextual" and "ci" not in scores["metrics"]  # --bootstrap 0: no CIs
    assert "ci" not in scores["metrics"]["uncalibrated"]
    # a rescored run is itself a run that can be re-scored, back to the source's numbers
    again = tmp_path / "again"
    assert run_cli(capfd, "rescore", out, "--calibration", "none", "--bootstrap", str(BOOT), "--out", again)[0] == 0
    _assert_same(_scores(again), _scores(runs["none"]))
    src = tmp_path / "src"
    shutil.copytree(runs["none"], src)
    digest = tree_digest(src)
    assert_refused(run_cli(capfd, "rescore", src, "--calibration", "pmi", "--out", src, "--force"),
                   out=src, survivor=digest, contains="source run")


def _broken(run: Path, tmp_path: Path, how: str) -> Path:
    """A copy of ``run`` made unusable in one way."""
    bad = tmp_path / "bad"
    if how == "missing":
        return bad
    shutil.copytree(run, bad)
    if how == "generative":
        s = json.loads((bad / "scores.json").read_text())
        s["mode"] = "generative"
        (bad / "scores.json").write_text(json.dumps(s))
    elif how == "no_npz":
        (bad / "scores.npz").unlink()
    elif how == "tampered":
        with np.load(bad / "scores.npz") as z:
            data = {k: z[k] for k in z.files}
        data["t0.loglik"] = data["t0.loglik"] + 1.0
        np.savez_compressed(bad / "scores.npz", **data)
    elif how == "not_npz":
        (bad / "scores.npz").write_text("not a zip")
        m = json.loads((bad / "manifest.json").read_text())
        del m["scores_npz"]
        (bad / "manifest.json").write_text(json.dumps(m))
    elif how == "other_rows":
        rows = _rows(bad)[:-1]
        (bad / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif how == "no_manifest":
        (bad / "manifest.json").unlink()
    return bad


@pytest.mark.parametrize("how,contains", [
    ("missing", "does not exist"), ("generative", "closed-set runs"), ("no_npz", "evaluate it once more"),
    ("tampered", "sha256"), ("not_npz", "not a scores file"), ("other_rows", "disagree"),
    ("no_manifest", "not a run directory"), ("bootstrap", "--bootstrap"),
])
def test_rescore_refuses_in_one_line(runs, tmp_path, capfd, how, contains):
    src = _broken(runs["none"], tmp_path, how if how != "bootstrap" else "copy")
    extra = ["--bootstrap", "-1"] if how == "bootstrap" else []
    out = tmp_path / "out"
    assert_refused(run_cli(capfd, "rescore", src, "--calibration", "pmi", *extra, "--out", out), out=out,
                   contains=contains)


def test_a_task_without_references_is_rescored_uncalibrated_only():
    """Image tasks keep no content-free references (their prompts have no text-only frame)."""
    ll = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    dec = closed_decision(ll, None, [0, 2], ["a", "b", "c"], "none", 0, 0, "img")
    assert dec.pred == [0, 2] and dec.vector is None and dec.metrics["accuracy"] == 1.0
    with pytest.raises(AffectlensError, match="task img: no content-free reference scores"):
        closed_decision(ll, None, [0, 2], ["a", "b", "c"], "pmi", 0, 0, "img")


def test_perplexity_tasks_are_carried_over(tmp_path, capfd):
    """A closed run with a perplexity task: the labelled task is re-decided, the perplexity copied as it was."""
    ppl = tmp_path / "held_out.txt"
    ppl.write_text("Tom had a dog. The dog liked to run.\n\nLily saw a big red ball in the park.\n")
    src = tmp_path / "src"
    evaluate_run(str(TINYSTORIES), src, ["emotion", f"ppl:{ppl}"], limit=6, n_boot=0)
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capfd, "rescore", src, "--calibration", "contextual", "--out", out)
    assert rc == 0, err
    before = json.loads((src / "scores.json").read_text())
    after = json.loads((out / "scores.json").read_text())
    assert after["tasks"]["ppl:held_out.txt"] == before["tasks"]["ppl:held_out.txt"]
    assert after["tasks"]["emotion"]["calibration"] == "contextual" and after["mean_over"] == ["emotion"]
    assert after["mean"] == after["tasks"]["emotion"]["primary"] and "contextual" in stdout
