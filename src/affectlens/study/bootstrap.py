"""The paired, hierarchical bootstrap behind every claim: resample seeds, then units, paired across variants.

The replicate of anything that depends on training is the *seed* (a new
training run), and the replicate of a measurement is the *unit* it averages
over (test examples, layers, emotions). One bootstrap replicate draws ``k``
seeds with replacement, then ``n`` units with replacement per unit group (per
task), and evaluates the claim's statistic on that draw for every variant it
compares -- with the *same* drawn units for every variant, so the comparison
is paired (a hard example is hard for both).

Units are drawn once per replicate and shared by the drawn seeds
(``shared=True``, the default): every seed is scored on the same test set, so
that set's sampling error is common to the seeds; drawing the units afresh
per seed (``shared=False``, nested) would average it away over the seeds and
make the interval too narrow. Both are here because a brute-force check
tests both.

With few seeds the seed level is coarse -- 3 seeds give 10 distinct draws,
and the bootstrap's between-seed variance is low by a factor (k - 1) / k --
which is why 3 seeds are the floor for a training-dependent claim, not the
target.

The statistic gets a :class:`Draws` and returns one number per replicate;
the point estimate is the statistic on the identity draw (every seed, every
unit, once). :func:`summarise` adds the two variance components -- seeds
alone resampled, units alone resampled -- from which the power module says
how many more seeds or units would settle a claim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

N_BOOT = 2000
CHUNK = 250  # replicates evaluated at once: bounds memory on large test sets


@dataclass(frozen=True)
class Draws:
    """``seeds``: [B, k] drawn seed indices; ``units[j][g]``: [B, n_g] drawn unit indices of group ``g``
    for the ``j``-th drawn seed (the same array for every ``j`` when the draw is shared)."""

    seeds: np.ndarray
    units: list[list[np.ndarray]]

    @property
    def size(self) -> int:
        return int(self.seeds.shape[0])


def identity(k: int, n_units: Sequence[int]) -> Draws:
    """The one "draw" that is the data itself: the point estimate."""
    return Draws(np.arange(k)[None, :], [[np.arange(n)[None, :] for n in n_units] for _ in range(k)])


def draw(k: int, n_units: Sequence[int], b: int, rng: np.random.Generator, *, seeds: bool = True,
         units: bool = True, shared: bool = True) -> Draws:
    """``b`` replicates; ``seeds``/``units`` False keeps that level fixed (the variance components)."""
    s = rng.integers(0, k, size=(b, k)) if seeds else np.broadcast_to(np.arange(k), (b, k))

    def one() -> list[np.ndarray]:
        return [rng.integers(0, n, size=(b, n)) if units else np.broadcast_to(np.arange(n), (b, n))
                for n in n_units]

    first = one()
    return Draws(np.asarray(s), [first if shared or j == 0 else one() for j in range(k)])


Statistic = Callable[[Draws], np.ndarray]


def replicates(stat: Statistic, k: int, n_units: Sequence[int], b: int = N_BOOT, seed: int = 0, *,
               seeds: bool = True, units: bool = True, shared: bool = True) -> np.ndarray:
    """``b`` bootstrap replicates of ``stat`` (NaN where the statistic is undefined on a draw)."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, b, CHUNK):
        d = draw(k, n_units, min(CHUNK, b - start), rng, seeds=seeds, units=units, shared=shared)
        out.append(np.asarray(stat(d), dtype=float).reshape(-1))
    return np.concatenate(out)


MAX_UNDEFINED = 0.05  # more undefined replicates than this and the interval is not trusted


def summarise(stat: Statistic, k: int, n_units: Sequence[int], b: int = N_BOOT, seed: int = 0, *,
              unit: str = "examples", shared: bool = True, **detail: Any) -> dict[str, Any]:
    """An evidence record: the point estimate, the 95 % percentile CI, the replicates (for the p-values
    and Holm), the seed and unit variance components, and the design (how many seeds and units)."""
    value = float(np.asarray(stat(identity(k, n_units))).reshape(-1)[0])
    reps = replicates(stat, k, n_units, b, seed, shared=shared)
    ok = reps[np.isfinite(reps)]
    undefined = 1.0 - ok.size / max(reps.size, 1)
    if not np.isfinite(value) or ok.size < 2 or undefined > MAX_UNDEFINED:
        why = ("the statistic is undefined on the data" if not np.isfinite(value) else
               f"the statistic is undefined in {100 * undefined:.0f} % of the bootstrap resamples")
        return {"undefined": why}
    n_total = k * int(sum(n_units))
    design = {"seeds": k, "units": [int(n) for n in n_units], "unit": unit, "B": int(b),
              "resampling": "seeds, then " + unit + (" (shared by the drawn seeds)" if shared else
                                                     " (drawn afresh per seed)")}
    if float(np.ptp(ok)) == 0.0:
        return _no_spread(value, int(sum(n_units)), n_total, unit, design, detail)
    comps = {}
    for name, kw in (("seeds", {"units": False}), ("units", {"seeds": False})):
        if name == "seeds" and k < 2:
            comps[name] = 0.0
            continue
        r = replicates(stat, k, n_units, max(b // 4, 200), seed + 1, shared=shared, **kw)
        r = r[np.isfinite(r)]
        comps[name] = float(r.var(ddof=1)) if r.size > 1 else 0.0
    lo, hi = np.quantile(ok, [0.025, 0.975])
    return {"value": value, "ci": [float(lo), float(hi)], "n": max(n_total, 1),
            "replicates": [round(float(x), 7) for x in ok], "undefined_share": round(undefined, 4),
            "components": comps, "design": design, "detail": dict(detail)}


def _no_spread(value: float, n: int, n_total: int, unit: str, design: dict[str, Any],
               detail: dict[str, Any]) -> dict[str, Any]:
    """Every resample gave the same number (no example changed, say): the bootstrap has no spread, which is
    not certainty. Over examples, the rule of three bounds a rate of change never seen in ``n`` examples by
    3 / n (95 %), so the interval is value +/- 3 / n; over other units no interval is claimed."""
    if "example" not in unit:
        return {"undefined": f"the statistic is the same on every resample of the {n} {unit}: no interval"}
    h = 3.0 / max(n, 1)
    return {"value": value, "ci": [value - h, value + h], "n": max(n_total, 1), "replicates": None,
            "components": {"seeds": 0.0, "units": (h / 1.959964) ** 2}, "design": design,
            "detail": {**detail, "interval": f"rule of three: no resample moved the statistic, so +/- 3/{n}"}}


# --- closed-set metrics on many resamples at once ---------------------------------------------------------


def confusions(codes: np.ndarray, n_labels: int) -> np.ndarray:
    """[B, L, L] confusion counts from [B, n] codes ``gold * L + pred``."""
    b = codes.shape[0]
    flat = (np.arange(b)[:, None] * n_labels * n_labels + codes).ravel()
    return np.bincount(flat, minlength=b * n_labels * n_labels).reshape(b, n_labels, n_labels)


def metric_of(cm: np.ndarray, metric: str) -> np.ndarray:
    """accuracy / weighted_f1 / macro_f1 per confusion matrix (scikit-learn's zero_division=0 convention)."""
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(2), cm.sum(1)
    total = support.sum(1)
    if metric == "accuracy":
        return tp.sum(1) / np.maximum(total, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.where(support > 0, support, 1), 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    if metric == "weighted_f1":
        return (f1 * support).sum(1) / np.maximum(total, 1)
    if metric == "macro_f1":
        present = (support > 0) | (predicted > 0)
        return (f1 * present).sum(1) / np.maximum(present.sum(1), 1)
    raise ValueError(f"no resampled form of metric {metric!r}")


METRICS = ("accuracy", "weighted_f1", "macro_f1")


@dataclass
class TaskPreds:
    """One task's paired predictions: ``gold`` [n], and per variant [k seeds, n] predicted label indices."""

    gold: np.ndarray
    n_labels: int
    metric: str
    preds: dict[str, np.ndarray]


def scores(tasks: Sequence[TaskPreds], variants: Sequence[str], d: Draws) -> dict[str, np.ndarray]:
    """Per variant, [B] seed-mean scores (mean over tasks of each task's metric) on the draw ``d``."""
    out: dict[str, np.ndarray] = {}
    for v in variants:
        total = np.zeros(d.size)
        for g, t in enumerate(tasks):
            codes = t.gold[None, :] * t.n_labels + t.preds[v]  # [k, n]
            per_seed = [metric_of(confusions(codes[d.seeds[:, j][:, None], d.units[j][g]], t.n_labels), t.metric)
                        for j in range(d.seeds.shape[1])]
            total += np.mean(per_seed, axis=0)
        out[v] = total / len(tasks)
    return out


__all__ = ["Draws", "METRICS", "N_BOOT", "TaskPreds", "confusions", "draw", "identity", "metric_of",
           "replicates", "scores", "summarise"]
