"""Generative metrics from saved answers: MER-UniBench HIT, sentiment WAF, control exact match.

Kept apart from the model so a run's ``predictions.jsonl`` can be re-scored
offline (``rescore``), e.g. with another emotion wheel, and get exactly the
numbers ``evaluate`` would report from the same answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from ..runs import parse_jsonl
from .generative import Wheel, answer_polarity, load_wheel, map_words, parse_answer
from .metrics import binary_sentiment_metrics, classification_metrics, confusion, hit_rate


def score_generative_rows(rows: list[dict], kind: str, labels: Sequence[str], wheel: Wheel,
                          n_boot: int = 1000, seed: int = 0) -> tuple[dict, dict]:
    """Metrics from saved answers (fills ``parsed``/``categories``/``pred``): re-scorable offline."""
    for r in rows:
        r["parsed"] = parse_answer(r["answer"])
    if kind == "emotion":
        per_wheel, n_counted = {}, 0
        for name, table in wheel.wheels.items():
            gold = [table.get(r["gold"], r["gold"]) for r in rows]
            pred_sets = []
            for r in rows:
                cats = sorted(map_words(r["parsed"], table))
                r.setdefault("categories", {})[name] = cats
                pred_sets.append(set(cats))
            per_wheel[name], n_counted = hit_rate(gold, pred_sets)
        hit = sum(per_wheel.values()) / len(per_wheel)
        first = next(iter(wheel.wheels))
        cats = sorted(set(labels) | {c for r in rows for c in r["categories"][first]})
        cols = [*cats, "(none)"]
        g = [cats.index(r["gold"]) if r["gold"] in cats else len(cats) for r in rows]
        p = [cats.index(r["categories"][first][0]) if r["categories"][first] else len(cats)
             for r in rows]
        for r in rows:
            r["pred"] = r["categories"][first]
        cm = confusion(g, p, len(cols))
        metrics = {"hit": hit, "hit_per_wheel": per_wheel, "n_counted": n_counted,
                   "neutral_skipped": len(rows) - n_counted, "wheel": wheel.source}
        fig = {"labels": cols, "pred_labels": cols, "confusion": cm.tolist(),
               "title": "gold vs first mapped category"}
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
    metrics = classification_metrics([labs.index(r["gold"]) for r in rows],
                                     [labs.index(r["pred"]) for r in rows], labs, n_boot, seed)
    return metrics, {"labels": labs, "pred_labels": labs, "confusion": metrics["confusion"]}


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
