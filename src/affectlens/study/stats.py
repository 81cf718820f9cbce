"""Evidence over one level of units (no training in the loop): examples, emotions or layers.

The circuits claims read a fixed base model, so their replicates are the
units a statistic averages over: test examples for the interventions (paired:
the same example before and after, or under targeted and random units),
emotions for the steering peak, layers for the depth trend. They use the same
bootstrap as the training claims (:mod:`.bootstrap`) with one "seed", so the
p-values, Holm and the power calculation treat every claim alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .bootstrap import N_BOOT, Draws, summarise


def mean_evidence(values: Sequence[float], unit: str, seed: int = 0, *, b: int = N_BOOT,
                  **detail: Any) -> dict[str, Any]:
    """The mean of per-unit values (a paired difference when they are differences) and its bootstrap."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"undefined": f"no {unit} to average"}

    def stat(d: Draws) -> np.ndarray:
        return arr[d.units[0][0]].mean(1)

    return summarise(stat, 1, [arr.size], b, seed, unit=unit, **detail)


def spearman_evidence(xs: Sequence[float], ys: Sequence[float], unit: str = "layers", seed: int = 0, *,
                      b: int = N_BOOT, **detail: Any) -> dict[str, Any]:
    """Spearman's rho of (x, y) points (average ranks for ties) and its bootstrap over the points."""
    from scipy.stats import rankdata

    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if x.size < 3:
        return {"undefined": f"only {x.size} {unit}; a rank correlation needs at least 3"}

    def stat(d: Draws) -> np.ndarray:
        idx = d.units[0][0]
        rx, ry = rankdata(x[idx], axis=1), rankdata(y[idx], axis=1)
        rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
        den = np.sqrt((rx ** 2).sum(1) * (ry ** 2).sum(1))
        return np.where(den > 0, (rx * ry).sum(1) / np.where(den > 0, den, 1.0), np.nan)

    return summarise(stat, 1, [x.size], b, seed, unit=unit, **detail)


__all__ = ["mean_evidence", "spearman_evidence"]
