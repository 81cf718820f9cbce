"""The study's evidence numbers: a value, its 95 % CI and its n, from stage results.

Three kinds of interval, each stated in the evidence's ``detail``:

- ``bootstrap_mean``: percentile bootstrap of a mean over units (seeds x layers,
  emotions, examples); seeded, so a rerun gives the same interval;
- ``score_difference``: a difference of two scores over seeds, with the
  between-seed spread *and* the example sampling error of each score
  (``p(1-p)/n`` for a proportion-like score in [0, 1], the scores treated as
  independent -- conservative for paired scores), so one seed still gets an
  honest width rather than a zero-width interval;
- ``share_of_gain``: the ratio (x - y) / (r - y) by a parametric bootstrap
  of the three scores from their standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

N_BOOT = 4000


def bootstrap_mean(values: Sequence[float], seed: int = 0) -> tuple[float, tuple[float, float], int]:
    """Mean and its 95 % percentile-bootstrap interval (a single value: a zero-width interval)."""
    xs = np.asarray([float(v) for v in values if math.isfinite(float(v))], dtype=np.float64)
    if xs.size == 0:
        return float("nan"), (float("nan"), float("nan")), 0
    m = float(xs.mean())
    if xs.size == 1:
        return m, (m, m), 1
    rng = np.random.default_rng(seed)
    means = xs[rng.integers(0, xs.size, size=(N_BOOT, xs.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return m, (float(lo), float(hi)), int(xs.size)


def _within(xs: Sequence[float], n_examples: int | None) -> float:
    """Variance of a seed-mean score from sampling ``n_examples`` examples per seed (p(1-p)/n).

    p is kept half an example away from 0 and 1, so a score of exactly 0 or 1 on a few
    examples still gets a non-zero width (as a Wilson interval would)."""
    if not n_examples:
        return 0.0
    eps = 0.5 / n_examples
    ps = [min(max(float(x), eps), 1.0 - eps) for x in xs]
    return sum(p * (1 - p) for p in ps) / n_examples / len(ps) ** 2


def score_se(scores: Sequence[float], n_examples: int | None) -> float:
    """Standard error of a seed-mean score: between-seed spread plus example sampling error."""
    xs = [float(s) for s in scores]
    k = len(xs)
    m = sum(xs) / k
    between = (sum((x - m) ** 2 for x in xs) / (k - 1)) / k if k > 1 else 0.0
    return math.sqrt(between + _within(xs, n_examples))


def score_difference(a: Sequence[float], b: Sequence[float], n_examples: int | None
                     ) -> tuple[float, tuple[float, float], int]:
    """Mean over seeds of a - b and a normal 95 % interval (see the module docstring)."""
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    k = len(diffs)
    m = sum(diffs) / k
    between = sum((d - m) ** 2 for d in diffs) / (k - 1) / k if k > 1 else 0.0
    se = math.sqrt(between + _within(a, n_examples) + _within(b, n_examples))
    return m, (m - 1.96 * se, m + 1.96 * se), k * (n_examples or 1)


def share_of_gain(x: Sequence[float], r: Sequence[float], y: float, n_examples: int | None, seed: int = 0
                  ) -> tuple[float, tuple[float, float], int]:
    """(mean x - y) / (mean r - y): the share of the reference's gain over the yardstick ``y``."""
    mx, mr = float(np.mean(x)), float(np.mean(r))
    gain = mr - y
    if not gain > 0:
        return float("nan"), (float("nan"), float("nan")), 0
    rng = np.random.default_rng(seed)
    sx, sr = rng.normal(mx, score_se(x, n_examples), N_BOOT), rng.normal(mr, score_se(r, n_examples), N_BOOT)
    den = sr - y
    ok = den > 1e-9
    ratios = (sx[ok] - y) / den[ok]
    lo, hi = np.percentile(ratios, [2.5, 97.5]) if ratios.size else (float("nan"), float("nan"))
    return (mx - y) / gain, (float(lo), float(hi)), len(x) * (n_examples or 1)


def spearman_bootstrap(xs: Sequence[float], ys: Sequence[float], seed: int = 0
                       ) -> tuple[float, tuple[float, float], int]:
    """Spearman's rho of (x, y) points and a bootstrap interval over the points."""
    from scipy.stats import spearmanr

    pts = [(float(a), float(b)) for a, b in zip(xs, ys, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len(pts) < 3:
        return float("nan"), (float("nan"), float("nan")), len(pts)
    arr = np.asarray(pts)
    rho = float(spearmanr(arr[:, 0], arr[:, 1]).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(1000):
        s = arr[rng.integers(0, len(arr), len(arr))]
        if np.ptp(s[:, 0]) > 0 and np.ptp(s[:, 1]) > 0:
            boots.append(float(spearmanr(s[:, 0], s[:, 1]).statistic))
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (rho, rho)
    return rho, (float(lo), float(hi)), len(pts)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], seed: int = 0) -> tuple[float, tuple[float, float], int]:
    """Mean of a_i - b_i over paired units and its percentile-bootstrap interval."""
    return bootstrap_mean([float(x) - float(y) for x, y in zip(a, b, strict=True)], seed)


def evidence_dict(value: float, ci: tuple[float, float], n: int, **detail: Any) -> dict[str, Any]:
    return {"value": value, "ci": [ci[0], ci[1]], "n": n, "detail": detail}


__all__ = ["bootstrap_mean", "evidence_dict", "paired_bootstrap", "score_difference", "score_se",
           "share_of_gain", "spearman_bootstrap"]
