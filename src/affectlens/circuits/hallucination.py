"""Emotional hallucination and the paired bootstrap CI of a change (``evaluate.metrics.bootstrap_ci``).

A hallucination is a prediction of an emotion the input does not carry: any
emotional label on a neutral input, or a label of the opposite valence on an
emotional one. Predicting ``neutral`` for an emotional input is a miss, not a
hallucination; ``surprise`` has no fixed valence and never conflicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..evaluate.metrics import bootstrap_ci

VALENCE = {
    "anger": -1, "disgust": -1, "fear": -1, "sadness": -1, "sad": -1, "annoyance": -1,
    "disappointment": -1, "disapproval": -1, "embarrassment": -1, "grief": -1, "nervousness": -1,
    "remorse": -1, "worried": -1, "frustrated": -1, "negative": -1,
    "joy": 1, "happy": 1, "happiness": 1, "love": 1, "admiration": 1, "amusement": 1,
    "approval": 1, "caring": 1, "desire": 1, "excitement": 1, "gratitude": 1, "optimism": 1,
    "pride": 1, "relief": 1, "positive": 1,
    "surprise": 0, "surprised": 0, "confusion": 0, "curiosity": 0, "realization": 0,
}
NEUTRAL_NAMES = {"neutral", "none", "no emotion", "calm"}


def _labels(x: Any) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [x.strip().lower()]
    if isinstance(x, Iterable):
        return [str(v).strip().lower() for v in x]
    return [str(x).strip().lower()]


def is_hallucination(gold: Any, pred: Any) -> bool:
    """``gold`` a label or a list of labels, ``pred`` a label (see module docstring)."""
    preds = [p for p in _labels(pred) if p not in NEUTRAL_NAMES]
    if not preds:
        return False
    golds = [g for g in _labels(gold) if g not in NEUTRAL_NAMES]
    if not golds:
        return True
    gold_val = {VALENCE.get(g, 0) for g in golds}
    for p in preds:
        v = VALENCE.get(p, 0)
        if v != 0 and -v in gold_val and v not in gold_val:
            return True
    return False


def hallucination_flags(predictions: Sequence[dict]) -> np.ndarray:
    return np.array([is_hallucination(p.get("gold"), p.get("pred")) for p in predictions], dtype=float)


def correct_flags(predictions: Sequence[dict]) -> np.ndarray:
    out = []
    for p in predictions:
        if "correct" in p:
            out.append(float(bool(p["correct"])))
            continue
        gold, pred = _labels(p.get("gold")), _labels(p.get("pred"))
        out.append(float(bool(pred) and pred[0] in gold))
    return np.array(out, dtype=float)


def paired_diff_ci(before: np.ndarray, after: np.ndarray, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """CI of ``mean(after) - mean(before)`` resampling examples jointly (same inputs both times)."""
    before, after = np.asarray(before, float), np.asarray(after, float)
    if before.shape != after.shape:
        raise ValueError("paired bootstrap needs the same examples before and after")
    return bootstrap_ci(after - before, n_boot, seed, level)
