"""Metrics vs scikit-learn; HIT, WAF, answer parsing and re-scoring on hand-made cases."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from affectlens.errors import AffectlensError
from affectlens.evaluate import (
    EvalResult,
    TaskScore,
    binary_sentiment_metrics,
    bootstrap_ci,
    classification_metrics,
    hit_rate,
    load_wheel,
    parse_answer,
    rescore,
)
from affectlens.evaluate.answers import score_generative_rows
from affectlens.evaluate.generative import answer_polarity, map_words


@pytest.mark.parametrize("seed,n,k", [(0, 200, 7), (1, 37, 3), (2, 15, 6)])
def test_classification_metrics_match_sklearn(seed, n, k):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, k - 1, n)  # the last class never occurs in gold
    pred = np.where(rng.random(n) < 0.5, gold, rng.integers(0, k, n))
    labels = [f"c{i}" for i in range(k)]
    m = classification_metrics(gold.tolist(), pred.tolist(), labels, n_boot=0)
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred), abs=1e-12)
    assert m["weighted_f1"] == pytest.approx(f1_score(gold, pred, average="weighted", zero_division=0), abs=1e-12)
    every = list(range(k))  # macro F1 over the whole label set, the never-gold class included
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, labels=every, average="macro", zero_division=0),
                                          abs=1e-12)
    assert m["macro_f1_over"] == f"all {k} task labels"
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=list(range(k)), zero_division=0)
    for i, lab in enumerate(labels):
        assert m["per_class"][lab]["precision"] == pytest.approx(p[i], abs=1e-12)
        assert m["per_class"][lab]["recall"] == pytest.approx(r[i], abs=1e-12)
        assert m["per_class"][lab]["f1"] == pytest.approx(f[i], abs=1e-12)
        assert m["per_class"][lab]["support"] == s[i]
    assert m["confusion"] == confusion_matrix(gold, pred, labels=list(range(k))).tolist()


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(5)
    gold = rng.integers(0, 4, 120).tolist()
    pred = [g if rng.random() < 0.6 else int(rng.integers(0, 4)) for g in gold]
    a = classification_metrics(gold, pred, list("abcd"), n_boot=300, seed=7)
    b = classification_metrics(gold, pred, list("abcd"), n_boot=300, seed=7)
    c = classification_metrics(gold, pred, list("abcd"), n_boot=300, seed=8)
    assert a["ci"] == b["ci"] and a["ci"] != c["ci"]
    for k in ("accuracy", "weighted_f1", "macro_f1"):
        lo, hi = a["ci"][k]
        assert lo < a[k] < hi and hi - lo < 0.4
    # the CI is a percentile of resampled sklearn values: check one resample by hand
    idx = np.random.default_rng(7).integers(0, len(gold), size=(300, len(gold)))
    accs = [accuracy_score(np.array(gold)[i], np.array(pred)[i]) for i in idx]
    assert a["ci"]["accuracy"][0] == pytest.approx(np.percentile(accs, 2.5))


def test_hit_hand_cases():
    gold = ["joy", "neutral", "anger", "sadness", "neutral"]
    pred = [{"joy", "surprise"}, {"joy"}, {"sadness"}, {"sadness", "fear"}, set()]
    hit, n = hit_rate(gold, pred)
    assert n == 3  # neutral skipped
    assert hit == pytest.approx(2 / 3)
    assert hit_rate(["neutral"], [{"joy"}]) == (0.0, 0)


def test_binary_sentiment_drops_zero():
    scores = [1.5, -0.4, 0.0, 2.0, -3.0, 0.0]
    pred_pos = [True, True, True, False, False, False]
    m = binary_sentiment_metrics(scores, pred_pos, n_boot=0)
    # kept: (+,+) (-,+) (+,-) (-,-) -> accuracy 0.5
    assert m["dropped_zero"] == 2
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["weighted_f1"] == pytest.approx(f1_score([1, 0, 1, 0], [1, 1, 0, 0], average="weighted"))
    with pytest.raises(AffectlensError):
        binary_sentiment_metrics([0.0], [True])


@pytest.mark.parametrize("answer,expected", [
    ("The character's emotional state is happy, excited.", ["happy", "excited"]),
    ("Emotions: anger; frustration and a bit of sadness", ["anger", "frustration", "sadness"]),
    ("sad, not happy, worried", ["sad", "worried"]),
    ("He feels nervous.\n\nExplanation: the subtitle says, boring stuff", ["nervous"]),
    ("The character is in a mix of emotions: sadness, anger, and confusion.", ["sadness", "anger", "confusion"]),
    ("1. Anger\n2. Sadness\n3. Fear", ["anger", "sadness", "fear"]),
    ("I stepped into something slimy on the carpet. Absolutely revolting.", ["revolting"]),
    ("", []),
])
def test_parse_answer(answer, expected):
    assert parse_answer(answer) == expected


def test_wheel_mapping_and_polarity(tmp_path):
    w = load_wheel()
    table = w.wheels["basic"]
    assert map_words(["happy", "excited", "terrified"], table) == {"joy", "fear"}
    assert map_words(["deeply ashamed"], table) == {"sadness"}
    assert answer_polarity(["angry", "sad"], w) == "negative"
    assert answer_polarity(["cheerful"], w) == "positive"
    assert answer_polarity(["positive"], w) == "positive"
    custom = tmp_path / "w.csv"
    custom.write_text("glee,joy\nrage,anger\n")
    cw = load_wheel(custom)
    assert map_words(["glee", "happy"], cw.wheels["w"]) == {"joy"}
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(AffectlensError):
        load_wheel(bad)


def test_generative_rows_hit_and_rescore(tmp_path):
    labels = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    rows = [
        {"task": "t", "kind": "emotion", "gold": "joy", "answer": "happy, relieved", "labels": labels},
        {"task": "t", "kind": "emotion", "gold": "anger", "answer": "The character's emotional state is sad.",
         "labels": labels},
        {"task": "t", "kind": "emotion", "gold": "neutral", "answer": "calm", "labels": labels},
        {"task": "t", "kind": "emotion", "gold": "fear", "answer": "scared and surprised", "labels": labels},
    ]
    m, fig = score_generative_rows([dict(r) for r in rows], "emotion", labels, load_wheel(), n_boot=0)
    assert m["hit"] == pytest.approx(2 / 3) and m["n_counted"] == 3
    # a two-wheel file: HIT is averaged over wheels
    wf = tmp_path / "two.json"
    wf.write_text(json.dumps({"wheels": {"a": {"happy": "joy", "sad": "anger", "scared": "fear"},
                                         "b": {"happy": "joy"}}}))
    p = tmp_path / "predictions.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = rescore(p, wheel=wf, n_boot=0)
    assert out["t"]["hit_per_wheel"] == {"a": pytest.approx(1.0), "b": pytest.approx(1 / 3)}
    assert out["t"]["hit"] == pytest.approx(2 / 3)


def test_rescore_sentiment_rows_need_gold_scores(tmp_path):
    row = {"task": "s", "kind": "sentiment", "index": 0, "gold": "positive", "answer": "happy",
           "labels": ["negative", "positive"]}
    p = tmp_path / "predictions.jsonl"
    p.write_text(json.dumps(row) + "\n")
    with pytest.raises(AffectlensError, match=r"row\(s\) \[0\] have no gold_score"):
        rescore(p, n_boot=0)


def test_one_bootstrap_for_classification_and_paired_cis():
    """The accuracy CI of classification_metrics is the bootstrap_ci of the per-example hits
    (same seeded resamples), and a paired change CI is that of the per-example differences."""
    from affectlens.circuits.hallucination import paired_diff_ci

    rng = np.random.default_rng(3)
    gold = rng.integers(0, 3, 80).tolist()
    pred = [g if rng.random() < 0.7 else int(rng.integers(0, 3)) for g in gold]
    hits = (np.array(gold) == np.array(pred)).astype(float)
    m = classification_metrics(gold, pred, ["a", "b", "c"], n_boot=400, seed=11)
    est, lo, hi = bootstrap_ci(hits, n_boot=400, seed=11)
    assert est == pytest.approx(m["accuracy"]) and [lo, hi] == pytest.approx(m["ci"]["accuracy"])
    # independent reference: resample by hand
    idx = np.random.default_rng(11).integers(0, 80, size=(400, 80))
    assert lo == pytest.approx(np.quantile(hits[idx].mean(1), 0.025))
    after = np.roll(hits, 1)
    assert paired_diff_ci(hits, after, 400, 11) == bootstrap_ci(after - hits, 400, 11)


def test_scores_json_keys_from_typed_results():
    t = TaskScore("emotion", "emotion", "weighted_f1", 0.5, {"accuracy": 0.6}, 10, 1, {"loader": "bundled"})
    p = TaskScore("ppl:x.txt", "perplexity", "perplexity", 12.0, {"perplexity": 12.0}, 2)
    res = EvalResult({"emotion": t, "ppl:x.txt": p}, [], "closed", mean=0.5, mean_over=["emotion"],
                     weights_sha256="ab", seed=3, limit=10, batch_size=4, mean_metric="weighted_f1")
    s = res.scores
    assert list(s) == ["mode", "tasks", "mean", "mean_over", "weights_sha256", "seed", "limit", "batch_size",
                       "mean_metric"]
    assert s["tasks"]["emotion"] == {"primary": 0.5, "primary_metric": "weighted_f1", "metrics": {"accuracy": 0.6},
                                     "n": 10, "kind": "emotion", "dropped": 1, "spec": {"loader": "bundled"},
                                     "calibration": "none"}
    lines = res.table().splitlines()
    assert "50.00" in lines[0] and "12.00" in lines[1] and lines[2] == "mean WAF over 1 task (emotion): 50.00"


# ----------------------------------------------------------------------------- yardsticks (hand counts)


def test_majority_and_chance_yardsticks_equal_hand_counts():
    from affectlens.evaluate.metrics import yardsticks
    from affectlens.vocab import EMOTIONS

    y = yardsticks(["a", "a", "a", "b", "c"], ["a", "b", "c"], ["accuracy", "weighted_f1", "macro_f1", "ci"])
    # always "a": P_a = 3/5, R_a = 1, F1_a = 3/4; WAF = 3/5 * 3/4; macro over the 3 gold classes
    assert y["majority"] == pytest.approx({"class": "a", "accuracy": 0.6, "weighted_f1": 0.45, "macro_f1": 0.25})
    # uniform guess over K=3: accuracy 1/3; F1_j = 2 p_j / (1 + 3 p_j) -> 3/7, 1/4, 1/4
    assert y["chance"] == pytest.approx({"accuracy": 1 / 3, "weighted_f1": 5 / 14, "macro_f1": 13 / 42})
    assert yardsticks(["b", "a"], ["a", "b"], ["accuracy"])["majority"]["class"] == "a"  # ties: first label
    hit = yardsticks(["neutral", "joy", "joy", "anger", "neutral"], list(EMOTIONS), ["hit", "hit_per_wheel"])
    assert hit == {"majority": {"class": "joy", "hit": pytest.approx(2 / 3)}, "chance": {"hit": pytest.approx(1 / 7)}}


def test_baselines_and_the_named_mean_in_results():
    from affectlens.evaluate.results import attach_baselines, mean_over_tasks

    tasks = {
        "e": TaskScore("e", "emotion", "hit", 0.3, {"hit": 0.3}, 3),
        "s": TaskScore("s", "sentiment", "weighted_f1", 0.8, {"weighted_f1": 0.8, "accuracy": 0.8}, 3),
        "e2": TaskScore("e2", "emotion", "hit", 0.5, {"hit": 0.5}, 2),
        "p": TaskScore("p", "perplexity", "perplexity", 9.0, {"perplexity": 9.0}, 1),
    }
    rows = [{"task": "e", "gold": g, "answer": "x", "labels": ["anger", "joy", "neutral"]}
            for g in ("joy", "anger", "joy")]
    rows += [{"task": "s", "gold": "x", "answer": "x", "gold_score": s} for s in (0.5, -1.0, 2.0, 0.0)]
    attach_baselines(tasks, rows)
    assert tasks["e"].baselines == {"majority": {"class": "joy", "hit": pytest.approx(2 / 3)},
                                    "chance": {"hit": pytest.approx(1 / 3)}}
    # generative sentiment: the sign of the gold score, zeros dropped -> positive, negative, positive
    assert tasks["s"].baselines["majority"] == pytest.approx({"class": "positive", "accuracy": 2 / 3,
                                                              "weighted_f1": 2 / 3 * 0.8})
    assert tasks["e2"].baselines == {} and tasks["p"].baselines == {}
    assert "baselines" in tasks["e"].to_dict() and "baselines" not in tasks["e2"].to_dict()
    mean, metric, over = mean_over_tasks(tasks)
    assert (metric, over) == ("hit", ["e", "e2"]) and mean == pytest.approx(0.4)
    line = tasks["s"].line()
    assert "| majority (positive) 53.33, chance" in line


# ----------------------------------------------------------------------------- every metric, raw and calibrated


def _brute_macro_ci(gold, pred, labels, n_boot, seed):
    """Percentile CI of macro F1 over every label, one scikit-learn call per resample."""
    g, p = np.asarray(gold), np.asarray(pred)
    idx = np.random.default_rng(seed).integers(0, len(g), size=(n_boot, len(g)))
    vals = [f1_score(g[i], p[i], labels=labels, average="macro", zero_division=0) for i in idx]
    return [np.percentile(vals, 2.5), np.percentile(vals, 97.5)]


def test_macro_f1_averages_every_task_label():
    """6 of 7 labels occur: macro F1 is the mean over all 7 (the 7th counts 0), CIs included."""
    rng = np.random.default_rng(4)
    gold = rng.integers(0, 6, 90)
    pred = np.where(rng.random(90) < 0.6, gold, rng.integers(0, 6, 90))
    labels = [f"c{i}" for i in range(7)]
    m = classification_metrics(gold.tolist(), pred.tolist(), labels, n_boot=150, seed=2)
    every = f1_score(gold, pred, labels=list(range(7)), average="macro", zero_division=0)
    present = f1_score(gold, pred, average="macro", zero_division=0)  # sklearn's default: the labels seen
    assert m["macro_f1"] == pytest.approx(every, abs=1e-12) and every == pytest.approx(present * 6 / 7)
    assert m["macro_f1_over"] == "all 7 task labels"
    assert m["ci"]["macro_f1"] == pytest.approx(_brute_macro_ci(gold, pred, list(range(7)), 150, 2), abs=1e-12)


def test_control_answers_average_macro_f1_over_the_task_labels():
    """A generative control answer outside the label set is '(other)': a miss, never a class of its own."""
    rows = [{"task": "c", "gold": g, "answer": a} for g, a in
            [("yes", "Yes."), ("no", "maybe"), ("no", "no"), ("yes", "no"), ("yes", "perhaps so")]]
    m, _ = score_generative_rows(rows, "control", ["yes", "no"], load_wheel(), n_boot=0)
    gold, pred = [r["gold"] for r in rows], [r["pred"] for r in rows]
    assert pred == ["yes", "(other)", "no", "no", "(other)"]
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, labels=["yes", "no"], average="macro",
                                                   zero_division=0), abs=1e-12)
    assert m["macro_f1_over"] == "the 2 task labels ((other) not counted)"


@pytest.mark.parametrize("mode", ["contextual", "pmi"])
def test_raw_and_calibrated_decisions_are_scored_alike(mode):
    """closed_decision: calibrated scores by the formulas (torch, independently), and for the raw and the
    calibrated argmax alike every metric against scikit-learn and every CI against brute force."""
    import torch

    from affectlens.evaluate.decisions import closed_decision

    rng = np.random.default_rng(9)
    labels = ["anger", "fear", "joy", "neutral", "sadness"]
    ll = rng.normal(-6, 2, (60, 5)) + np.array([3.0, 0, 0, -2, 0])  # a planted prior on 'anger'
    refs = rng.normal(-6, 2, (3, 5)) + np.array([3.0, 0, 0, -2, 0])
    gold = rng.integers(0, 4, 60).tolist()  # 'sadness' is never gold
    dec = closed_decision(ll, refs, gold, labels, mode, n_boot=120, seed=5)
    t_ll, t_ref = torch.tensor(ll), torch.tensor(refs)
    if mode == "contextual":
        vec = t_ref.log_softmax(-1).mean(0).log_softmax(-1)
        want = t_ll.log_softmax(-1) - vec
    else:
        vec = t_ref[1]  # the empty input: PMI's frame
        want = t_ll - vec
    assert np.allclose(dec.vector, vec.numpy(), atol=1e-12) and np.allclose(dec.scores, want.numpy(), atol=1e-12)
    every = list(range(5))
    for m, pred in ((dec.metrics, want.argmax(-1).numpy()), (dec.metrics["uncalibrated"], ll.argmax(-1))):
        assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred), abs=1e-12)
        assert m["weighted_f1"] == pytest.approx(f1_score(gold, pred, labels=every, average="weighted",
                                                          zero_division=0), abs=1e-12)
        assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, labels=every, average="macro",
                                                       zero_division=0), abs=1e-12)
        assert m["confusion"] == confusion_matrix(gold, pred, labels=every).tolist()
        p, r, f, s = precision_recall_fscore_support(gold, pred, labels=every, zero_division=0)
        assert [m["per_class"][lab]["f1"] for lab in labels] == pytest.approx(f, abs=1e-12)
        assert [m["per_class"][lab]["precision"] for lab in labels] == pytest.approx(p, abs=1e-12)
        assert [m["per_class"][lab]["recall"] for lab in labels] == pytest.approx(r, abs=1e-12)
        assert m["ci"]["macro_f1"] == pytest.approx(_brute_macro_ci(gold, pred, every, 120, 5), abs=1e-12)
        assert m["n_boot"] == 120 and m["macro_f1_over"] == "all 5 task labels"
    assert dec.metrics["confusion"] != dec.metrics["uncalibrated"]["confusion"]  # the prior was removed
    titles = [t for t, _ in dec.figure["panels"]]
    assert titles[0].startswith("raw") and titles[1].startswith(mode)


def test_confusion_panels_share_one_colour_scale():
    from affectlens import plots

    fig = plots.confusion_panels([("raw", [[5, 0], [3, 1]]), ("pmi", [[2, 3], [0, 40]])], ["a", "b"], title="t")
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 2 and {im.get_clim() for im in images} == {(0.0, 1.0)}
    assert np.allclose(images[1].get_array(), [[0.4, 0.6], [0.0, 1.0]])  # row shares, not counts
    assert len(fig.axes) == 3  # two panels and one colour bar
    plots.save(fig, "/dev/null")


def _isear_csv(path, n: int = 30, bad=(5, 20)):
    """``text,label`` rows over 4 of 5 declared labels; rows ``bad`` have a third field (malformed)."""
    emos = ["joy", "fear", "anger", "sadness"]
    lines = ["text,label\n"]
    lines += [f"situation {i}{', with a comma' if i in bad else ''},{emos[i % 4]}\n" for i in range(n)]
    path.write_text("".join(lines))
    return path


def test_run_reports_dropped_rows_notes_and_both_decisions(tmp_path, capfd):
    """bad_rows=report: counted in scores.json and the manifest, listed once; --sample above the task
    size: noted; confusion.csv / per_class.csv equal scikit-learn on predictions.jsonl, raw and pmi."""
    from conftest import TINYSTORIES
    from faults import run_cli

    labels = ["joy", "fear", "anger", "sadness", "disgust"]
    p = _isear_csv(tmp_path / "isear.csv")
    out = tmp_path / "run"
    rc, _, err = run_cli(capfd, "evaluate", TINYSTORIES, "--task", f"csv:{p},bad_rows=report,labels={'|'.join(labels)}",
                         "--calibration", "pmi", "--sample", "100", "--bootstrap", "100", "--out", out)
    assert rc == 0, err
    lines = err.splitlines()
    assert sum("skipped 2 malformed row(s)" in ln for ln in lines) == 1, err
    assert sum("--sample 100 keeps all 28" in ln for ln in lines) == 1, err
    scores = json.loads((out / "scores.json").read_text())
    ((name, t),) = scores["tasks"].items()
    assert t["n"] == 28 and t["dropped"] == 2 and t["dropped_by"] == {"malformed": 2}
    assert t["notes"] == [f"task {name} has 28 rows: --sample 100 keeps all 28"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["dropped"] == {name: {"total": 2, "malformed": 2}}
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    gold = [r["gold"] for r in rows]
    decided = {"raw": [max(r["loglik"], key=r["loglik"].get) for r in rows], "pmi": [r["pred"] for r in rows]}
    conf = list(csv.DictReader((out / "confusion.csv").open()))
    per = list(csv.DictReader((out / "per_class.csv").open()))
    for scoring, pred in decided.items():
        m = t["metrics"] if scoring == "pmi" else t["metrics"]["uncalibrated"]
        want = confusion_matrix(gold, pred, labels=labels)
        got = np.zeros((5, 5), dtype=int)
        for c in conf:
            if c["scoring"] == scoring:
                got[labels.index(c["gold"]), labels.index(c["predicted"])] = int(c["count"])
        assert (got == want).all() and m["confusion"] == want.tolist()
        pr, rc_, f, s = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
        table = {c["label"]: c for c in per if c["scoring"] == scoring}
        assert [float(table[lab]["f1"]) for lab in labels] == pytest.approx(f, abs=1e-12)
        assert [float(table[lab]["precision"]) for lab in labels] == pytest.approx(pr, abs=1e-12)
        assert [int(table[lab]["support"]) for lab in labels] == s.tolist()
        assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, labels=labels, average="macro", zero_division=0),
                                              abs=1e-12)
        assert m["macro_f1_over"] == "all 5 task labels" and set(m["ci"]) == {"accuracy", "weighted_f1", "macro_f1"}
        hits = (np.array(gold) == np.array(pred)).astype(float)
        assert m["ci"]["accuracy"] == pytest.approx(list(bootstrap_ci(hits, 100, 0)[1:]), abs=1e-12)


def test_generative_n_is_what_the_metric_counts(tmp_path, capfd):
    """HIT skips neutral gold: n is the rows it counts, the rest are said to be skipped; generative
    sentiment drops gold 0 and counts it; --limit above the task size is noted."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from affectlens.evaluate import evaluate
    from test_evaluate_loaders import write_meld

    from conftest import TINYSTORIES

    model = AutoModelForCausalLM.from_pretrained(str(TINYSTORIES)).eval()
    tok = AutoTokenizer.from_pretrained(str(TINYSTORIES))
    golds = ["joy", "neutral", "anger", "neutral", "fear", "sadness"]
    p = tmp_path / "e.jsonl"
    p.write_text("".join(json.dumps({"text": f"Tom saw a dog {i}.", "label": g}) + "\n" for i, g in enumerate(golds)))
    meld = tmp_path / "meld.csv"
    write_meld(meld)  # polarities positive, neutral, negative, negative
    capfd.readouterr()
    res = evaluate(model, tok, [f"jsonl:{p}", f"meld-sentiment:{meld}"], mode="generative", limit=50, n_boot=0,
                   max_new_tokens=3, progress=False)
    err = capfd.readouterr().err
    emo, sent = res.tasks.values()
    assert emo.n == emo.metrics["n_counted"] == 4 and emo.skipped == {"neutral_gold": 2}
    assert emo.to_dict()["skipped"] == {"neutral_gold": 2} and "(n=4, 2 neutral gold not counted" in emo.line()
    assert sent.n == 3 and sent.dropped_by == {"zero_sentiment": 1} and sent.dropped == 1
    assert "(n=3, 1 dropped" in sent.line()
    assert emo.notes == [f"task {emo.task} has 6 rows: --limit 50 keeps all 6"]
    assert err.count("--limit 50 keeps all") == 2  # one note per task
