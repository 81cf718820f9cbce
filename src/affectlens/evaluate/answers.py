"""Generative metrics from saved answers: MER-UniBench HIT, sentiment WAF, control exact match.

Kept apart from the model so a run's ``predictions.jsonl`` can be re-scored
offline (``rescore``), e.g. with another emotion wheel, and get exactly the
numbers ``evaluate`` would report from the same answers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AffectlensError
from ..runs import parse_jsonl
from .generative import Wheel, answer_polarity, load_wheel, map_ordered, parse_answer, unmapped
from .metrics import (
    binary_sentiment_metrics,
    bootstrap_ci,
    classification_metrics,
    confusion,
    hit_rate,
)


def score_generative_rows(rows: list[dict], kind: str, labels: Sequence[str], wheel: Wheel,
                          n_boot: int = 1000, seed: int = 0) -> tuple[dict, dict]:
    """Metrics from saved answers (fills ``parsed``/``categories``/``pred``): re-scorable offline."""
    for r in rows:
        r["parsed"] = parse_answer(r["answer"])
    if kind == "emotion":
        metrics, fig = _emotion_metrics(rows, labels, wheel, n_boot, seed)
        return metrics, fig
    if kind == "sentiment":
        for r in rows:
            r["pred"] = answer_polarity(r["parsed"], wheel)
        missing = [r.get("index") for r in rows if r.get("gold_score") is None]
        if missing:  # evaluate drops unscored rows; a hand-edited predictions file may not
            raise AffectlensError(f"sentiment row(s) {missing[:5]} have no gold_score; cannot score them")
        scores = [r["gold_score"] for r in rows]
        metrics = binary_sentiment_metrics(scores, [r["pred"] == "positive" for r in rows],
                                           n_boot=n_boot, seed=seed)
        fig = {"labels": metrics["labels"], "pred_labels": metrics["labels"],
               "confusion": metrics["confusion"]}
        return metrics, fig
    # control: exact match of the first answer token against the closed label set
    labs = [*labels, "(other)"]
    for r in rows:
        m = re.search(r"\S+", r["answer"])
        word = m.group(0).strip(".,:;!?\"'").lower() if m else ""
        r["pred"] = word if word in labels else "(other)"
    metrics = classification_metrics([labs.index(r["gold"]) for r in rows],  # '(other)' is no task label
                                     [labs.index(r["pred"]) for r in rows], labs, n_boot, seed,
                                     macro_over=labels)
    return metrics, {"labels": labs, "pred_labels": labs, "confusion": metrics["confusion"]}


def _emotion_metrics(rows: list[dict], labels: Sequence[str], wheel: Wheel, n_boot: int,
                     seed: int) -> tuple[dict, dict]:
    """MER-UniBench on the emotion wheels: per-wheel HIT, their mean with a CI, and what HIT hides.

    HIT credits an answer listing every emotion, so beside it: the mean number
    of predicted categories, a set-level F-score (precision |P∩G|/|P|, recall
    |P∩G|/|G|, averaged over samples, then F), the share of answers mapping to
    no emotion, and every parsed word or gold label a wheel does not know.
    Neutral gold samples are skipped (MER-UniBench scores emotions only).
    """
    counted = [i for i, r in enumerate(rows) if r["gold"] != "neutral"]
    per_wheel, n_cats, fscore, missing, gold_missing = {}, {}, {}, {}, {}
    hits = np.zeros((len(counted), len(wheel.wheels)))
    for w, (name, table) in enumerate(wheel.wheels.items()):
        words: Counter[str] = Counter()
        for r in rows:
            r.setdefault("categories", {})[name] = map_ordered(r["parsed"], table)
            words.update(unmapped(r["parsed"], table))
        gold_missing[name] = sorted({r["gold"] for r in rows if r["gold"] not in table})
        gold = [table.get(r["gold"], r["gold"]) for r in rows]
        sets = [set(r["categories"][name]) for r in rows]
        for k, i in enumerate(counted):
            hits[k, w] = gold[i] in sets[i]
        per_wheel[name], _ = hit_rate(gold, sets)
        n_cats[name] = float(np.mean([len(x) for x in sets])) if sets else 0.0
        prec = [hits[k, w] / len(sets[i]) if sets[i] else 0.0 for k, i in enumerate(counted)]
        rec = [hits[k, w] for k in range(len(counted))]
        p_, r_ = (float(np.mean(prec)), float(np.mean(rec))) if counted else (0.0, 0.0)
        fscore[name] = {"precision": p_, "recall": r_, "f": 2 * p_ * r_ / (p_ + r_) if p_ + r_ else 0.0}
        missing[name] = {"count": sum(words.values()), "words": dict(words.most_common())}
    hit = float(np.mean(list(per_wheel.values())))
    metrics: dict[str, Any] = {
        "hit": hit, "hit_per_wheel": per_wheel, "n_counted": len(counted),
        "neutral_skipped": len(rows) - len(counted), "wheel": wheel.source,
        "f_set": float(np.mean([f["f"] for f in fscore.values()])), "f_set_per_wheel": fscore,
        "mean_categories": float(np.mean(list(n_cats.values()))), "mean_categories_per_wheel": n_cats,
        "no_emotion_share": float(np.mean([not any(r["categories"].values()) for r in rows])) if rows else 0.0,
        "unmapped_words": missing, "unmapped_gold": {k: v for k, v in gold_missing.items() if v},
    }
    if n_boot and counted:
        _, lo, hi = bootstrap_ci(hits.mean(1), n_boot=n_boot, seed=seed)
        metrics["ci"] = {"hit": [lo, hi]}
    first = next(iter(wheel.wheels))
    cats = sorted(set(labels) | {c for r in rows for c in r["categories"][first]})
    cols = [*cats, "(none)"]
    g = [cats.index(r["gold"]) if r["gold"] in cats else len(cats) for r in rows]
    p = [cats.index(r["categories"][first][0]) if r["categories"][first] else len(cats) for r in rows]
    for r in rows:
        r["pred"] = r["categories"][first]
    fig = {"labels": cols, "pred_labels": cols, "confusion": confusion(g, p, len(cols)).tolist(),
           "title": "gold vs first category named in the answer"}
    return metrics, fig


def rescore(predictions: str | Path, wheel: str | Path | None = None, n_boot: int = 1000,
            seed: int = 0) -> dict[str, dict[str, Any]]:
    """Re-compute generative metrics from a predictions.jsonl (no model), e.g. with another wheel."""
    p = Path(predictions)
    if not p.is_file():
        raise AffectlensError(f"{p} does not exist")
    rows = parse_jsonl(p.read_text("utf-8"), p)
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        if "answer" not in r:
            raise AffectlensError(f"{p} holds closed-set predictions; only generative runs are re-scored")
        by_task.setdefault(r["task"], []).append(r)
    w = load_wheel(wheel)
    out = {}
    for task, rs in by_task.items():
        out[task], _ = score_generative_rows(rs, rs[0]["kind"], rs[0]["labels"], w, n_boot, seed)
    return out


__all__ = ["rescore", "score_generative_rows"]
