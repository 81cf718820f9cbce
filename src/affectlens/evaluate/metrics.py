"""Metrics from a confusion matrix, with seeded bootstrap confidence intervals.

Everything (accuracy, weighted F1 = WAF, macro F1, per-class P/R/F1) is a
function of the confusion matrix, so a bootstrap resample costs a
``bincount`` instead of a scikit-learn call: 1000 resamples take
milliseconds. Tests check the point estimates against scikit-learn.
HIT (MER-UniBench) lives here too, and the one bootstrap of the project:
``resample`` draws the example indices (seeded) and ``bootstrap_ci`` /
``classification_ci`` / ``circuits.hallucination.paired_diff_ci`` all use it,
so every confidence interval resamples the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import AffectlensError
from ..runs import find_non_finite

CI_METRICS = ("accuracy", "weighted_f1", "macro_f1")


def confusion(gold: Sequence[int], pred: Sequence[int], n: int) -> np.ndarray:
    """``cm[i, j]`` = number of examples with gold i predicted j."""
    g, p = np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    return np.bincount(g * n + p, minlength=n * n).reshape(n, n)


def _from_confusion(cm: np.ndarray, macro_mask: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy / WAF / macro F1 / per-class P, R, F1 with sklearn's zero_division=0 convention.

    Macro F1 averages the labels in ``macro_mask`` (default: every label), so a
    label the data never holds counts as 0 instead of leaving the average.
    """
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(1)
    predicted = cm.sum(0)
    total = cm.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    over = np.ones(len(f1), dtype=bool) if macro_mask is None else macro_mask
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "weighted_f1": float((f1 * support).sum() / support.sum()) if support.sum() else 0.0,
        "macro_f1": float(f1[over].mean()) if over.any() else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
    }


def classification_metrics(gold: Sequence[int], pred: Sequence[int], labels: Sequence[str],
                           n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                           macro_over: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy, weighted F1 (WAF), macro F1, per-class P/R/F1, confusion, bootstrap CIs.

    Macro F1 averages over every task label (scikit-learn's ``labels=labels``),
    not only those that occur in this sample: a label never gold nor predicted
    scores 0, so macro F1 does not rise when a class is missing. ``macro_over``
    narrows it to those labels (e.g. without a catch-all '(other)' answer);
    ``macro_f1_over`` says which were averaged.
    """
    n = len(labels)
    if len(gold) != len(pred):
        raise AffectlensError("gold and predictions differ in length")
    if len(gold) == 0:
        raise AffectlensError("no examples to score")
    keep = set(labels if macro_over is None else macro_over)
    mask = np.array([lab in keep for lab in labels])
    cm = confusion(gold, pred, n)
    m = _from_confusion(cm, mask)
    out: dict[str, Any] = {k: m[k] for k in CI_METRICS}
    left = [lab for lab in labels if lab not in keep]
    out["macro_f1_over"] = (f"all {n} task labels" if not left else
                            f"the {n - len(left)} task labels ({', '.join(left)} not counted)")
    out["per_class"] = {
        lab: {"precision": float(m["precision"][i]), "recall": float(m["recall"][i]),
              "f1": float(m["f1"][i]), "support": int(m["support"][i])}
        for i, lab in enumerate(labels)
    }
    out["confusion"] = cm.tolist()
    out["labels"] = list(labels)
    if n_boot > 0:
        out["ci"] = classification_ci(gold, pred, n, n_boot, seed, ci, mask)
        out["ci_level"] = ci
        out["n_boot"] = n_boot
    return out


def resample(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` example indices drawn with replacement: the percentile bootstrap's resamples."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 stat: Callable[[np.ndarray], float] = np.mean) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of ``stat`` over per-example ``values`` by the percentile bootstrap."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    idx = resample(values.size, n_boot, seed)
    boots = values[idx].mean(1) if stat is np.mean else np.array([stat(values[i]) for i in idx])
    a = (1 - level) / 2
    return float(stat(values)), float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def classification_ci(gold: Sequence[int], pred: Sequence[int], n_labels: int, n_boot: int = 1000,
                      seed: int = 0, ci: float = 0.95, macro_mask: np.ndarray | None = None
                      ) -> dict[str, list[float]]:
    """Percentile bootstrap over examples (seeded), for accuracy / WAF / macro F1 at once."""
    g, p = np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    codes = (g * n_labels + p)[resample(len(g), n_boot, seed)]
    stats = {k: np.empty(n_boot) for k in CI_METRICS}
    for b in range(n_boot):
        cm = np.bincount(codes[b], minlength=n_labels * n_labels).reshape(n_labels, n_labels)
        m = _from_confusion(cm, macro_mask)
        for k in CI_METRICS:
            stats[k][b] = m[k]
    lo, hi = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    return {k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for k, v in stats.items()}


def hit_rate(gold: Sequence[str], predicted: Sequence[set[str] | Sequence[str]],
             skip: str = "neutral") -> tuple[float, int]:
    """HIT: share of samples (gold != ``skip``) whose gold category is in the predicted set.

    Returns (hit, number of samples counted).
    """
    pairs = [(g, set(p)) for g, p in zip(gold, predicted, strict=True) if g != skip]
    if not pairs:
        return 0.0, 0
    return sum(g in p for g, p in pairs) / len(pairs), len(pairs)


def binary_sentiment_metrics(scores: Sequence[float], predicted_positive: Sequence[bool],
                             n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """MER-UniBench sentiment: drop gold 0, gold positive iff > 0; WAF and accuracy."""
    keep = [(s > 0, bool(p)) for s, p in zip(scores, predicted_positive, strict=True)
            if s is not None and s != 0]
    if not keep:
        raise AffectlensError("no non-zero sentiment scores to evaluate")
    gold = [int(g) for g, _ in keep]
    pred = [int(p) for _, p in keep]
    out = classification_metrics(gold, pred, ["negative", "positive"], n_boot=n_boot, seed=seed)
    out["dropped_zero"] = len(scores) - len(keep)
    return out


YARDSTICK_METRICS = ("accuracy", "weighted_f1", "macro_f1", "hit")


def majority_baseline(gold: Sequence[int], n_labels: int) -> tuple[int, dict[str, float]]:
    """Always answering the most frequent gold class (ties: the first label): ``(class, scores)``.

    Computed on the evaluated gold labels, so it is exactly the score of the
    constant answer on this data, not an estimate from a training split.
    """
    counts = np.bincount(np.asarray(gold, dtype=np.int64), minlength=n_labels)
    if counts.sum() == 0:
        raise AffectlensError("no examples to score")
    top = int(counts.argmax())
    cm = np.zeros((n_labels, n_labels))
    cm[:, top] = counts
    m = _from_confusion(cm)
    return top, {k: m[k] for k in CI_METRICS}


def chance_baseline(gold: Sequence[int], n_labels: int) -> dict[str, float]:
    """A uniformly random answer among the ``n_labels``: metrics of the expected confusion matrix.

    Each gold class is spread evenly over the answers (``cm[i, j] = n_i / K``), so
    accuracy is ``1/K``, class j's precision its gold share ``p_j`` and its recall
    ``1/K``: F1_j = ``2 p_j / (1 + K p_j)``.
    """
    counts = np.bincount(np.asarray(gold, dtype=np.int64), minlength=n_labels).astype(np.float64)
    if counts.sum() == 0:
        raise AffectlensError("no examples to score")
    m = _from_confusion(np.repeat(counts[:, None] / n_labels, n_labels, axis=1))
    return {k: m[k] for k in CI_METRICS}


def yardsticks(gold: Sequence[str], labels: Sequence[str], metrics: Sequence[str],
               skip: str = "neutral") -> dict[str, dict[str, Any]]:
    """``{"majority": {"class", metric...}, "chance": {metric...}}`` for the ``metrics`` named.

    Closed-set metrics (accuracy, weighted F1, macro F1) compare the constant
    answer / a uniform guess over ``labels`` with every gold label; HIT skips
    gold ``skip`` (MER-UniBench), so its majority class is the most frequent
    other gold label and a uniform one-label guess hits with probability 1/K.
    """
    labels = list(labels)
    idx = [labels.index(g) for g in gold]
    want = [m for m in YARDSTICK_METRICS if m in metrics]
    major: dict[str, Any] = {}
    chance: dict[str, Any] = {}
    if any(m in CI_METRICS for m in want):
        top, m_scores = majority_baseline(idx, len(labels))
        c_scores = chance_baseline(idx, len(labels))
        major["class"] = labels[top]
        major.update({k: m_scores[k] for k in want if k in CI_METRICS})
        chance.update({k: c_scores[k] for k in want if k in CI_METRICS})
    if "hit" in want:
        counted = [g for g in gold if g != skip]
        top_hit = max(labels, key=lambda lab: (counted.count(lab), -labels.index(lab))) if counted else labels[0]
        if major.setdefault("class", top_hit) != top_hit:
            major["hit_class"] = top_hit
        major["hit"] = counted.count(top_hit) / len(counted) if counted else 0.0
        chance["hit"] = 1 / len(labels)
    return {"majority": major, "chance": chance}


class NonFiniteResult(AffectlensError):
    """A computed number is NaN/Inf: the run stops instead of reporting it."""


def require_finite(obj: Any, what: str) -> None:
    """Refuse ``obj`` when it holds a non-finite number: a NaN is never a result."""
    hit = find_non_finite(obj)
    if hit:
        path, value = hit
        raise NonFiniteResult(f"non-finite value {value} in {what} ({path}); not a result")


__all__ = ["chance_baseline", "majority_baseline", "yardsticks", "YARDSTICK_METRICS", "classification_metrics", "classification_ci", "bootstrap_ci", "resample", "confusion", "hit_rate",
           "binary_sentiment_metrics", "find_non_finite", "require_finite", "NonFiniteResult"]
