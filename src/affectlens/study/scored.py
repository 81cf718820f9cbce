"""Per-example predictions of the scored stages: calibration chosen on dev, paired evidence on test.

The grid keeps, per cell and task, every example's label log-likelihoods
(and the calibration's content-free reference log-likelihoods), so any
calibration can be applied afterwards without another forward pass:
``none`` is the raw argmax, ``contextual`` (Zhao et al. 2021) subtracts the
normalised mean label distribution of the content-free inputs, ``pmi``
(Holtzman et al. 2021) the label log-likelihoods of the empty input -- the
same formulas as :mod:`affectlens.evaluate.calibration`.

Calibration is *chosen, not imposed*: with ``calibration: auto`` each model
(variant and seed) gets the mode that scores best on the affective tasks'
dev split and that mode is applied on test; a task without a dev split gets
``none`` (a model trained on the label distribution would have what it
learned removed by a prior fitted on nothing), and the stage says so. A mode
named in the config is used as given. The uncalibrated predictions are
always kept beside the chosen ones, for ``raw_verdict``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .bootstrap import (
    METRICS,
    N_BOOT,
    TaskPreds,
    confusions,
    identity,
    metric_of,
    scores,
    summarise,
)

MODES = ("none", "contextual", "pmi")


def dev_task(task: str, per_class: int | None = None) -> str | None:
    """The dev split of an evaluation task as a task spec, or None when its data has none.

    ``per_class``: keep at most that many dev rows per label (a seeded, balanced sample): choosing among
    three calibrations needs far fewer rows than the test claims do, and every model scores the dev split."""
    from ..tasks.spec import get_task, spec_text
    from ..tasks.tables import sibling_split

    try:
        dev = sibling_split(get_task(task), "dev")
    except Exception:  # a task whose data cannot say: it has no usable dev split
        return None
    if dev is None:
        return None
    text = spec_text(dev)
    if per_class and dev.option("per_class") is None:  # a spec's own per_class wins
        text += f",per_class={int(per_class)}"
    return text


def grid_calibration(mode: str, dev: Sequence[str]) -> str:
    """What the grid scores with: ``contextual`` when choosing (its reference passes give every mode)."""
    if mode != "auto":
        return mode
    return "contextual" if dev else "none"


def cells_of(grid_out: Path) -> dict[str, dict[str, Any]]:
    """{variant: {task: per-example record or None}} from a grid dir's cell files."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted((grid_out / "cells").glob("*.json")):
        c = json.loads(f.read_text(encoding="utf-8"))
        out[c["variant"]] = {t: e.get("examples") for t, e in c["tasks"].items()}
    return out


def predict(ex: Mapping[str, Any], mode: str) -> np.ndarray | None:
    """Predicted label indices under ``mode``; None when the references that mode needs were not kept.

    The same maths as ``evaluate`` (its calibration functions), so a study's choice on dev scores what
    ``evaluate --calibration`` would.
    """
    from ..evaluate.calibration import (
        apply_calibration,
        calibration_vector,
        check_mode,
        reference_texts,
    )

    check_mode(mode)
    ll = np.asarray(ex["loglik"], dtype=np.float64)
    if mode == "none":
        return ll.argmax(1)
    ref = ex.get("reference") or {}
    texts = reference_texts(mode)
    if not all(t in ref for t in texts):
        return None
    vec = calibration_vector(np.asarray([ref[t] for t in texts], dtype=np.float64), mode)
    return apply_calibration(ll, vec, mode).argmax(1)


def metric(gold: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray, n_labels: int, name: str) -> float:
    codes = (np.asarray(gold) * n_labels + np.asarray(pred))[None, :]
    return float(metric_of(confusions(codes, n_labels), name)[0])


def collect(per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]], tasks: Sequence[str],
            dev: Mapping[str, str], mode: str) -> dict[str, Any] | None:
    """The stage's per-example block from ``{seed: cells_of(grid)}``; None when any scored cell lacks
    per-example records (an evaluator without prediction rows) or a task's metric has no resampled form.

    ``dev`` maps an affective task to its dev task (both scored in the grid)."""
    seeds = sorted(per_seed)
    variants = list(per_seed[seeds[0]])
    block: dict[str, Any] = {"tasks": {}, "preds": {v: {} for v in variants}, "choice": {}, "dev_scores": {}}
    for t in tasks:
        found = [per_seed[s].get(v, {}).get(t) for s in seeds for v in variants]
        recs: list[Mapping[str, Any]] = [r for r in found if r is not None]
        if len(recs) < len(found) or recs[0].get("metric") not in METRICS:
            return None
        first = recs[0]
        if any(r["gold"] != first["gold"] or r["labels"] != first["labels"] for r in recs):
            return None
        block["tasks"][t] = {"labels": first["labels"], "gold": first["gold"], "metric": first["metric"]}
    for v in variants:
        block["choice"][v] = {}
        block["dev_scores"][v] = {}
        for s in seeds:
            chosen, why, dev_scores = _choose(per_seed[s][v], dev, mode)
            block["choice"][v][str(s)] = chosen
            if dev_scores:
                block["dev_scores"][v][str(s)] = dev_scores
            block.setdefault("why", why)
        for t in tasks:
            raw, cal = [], []
            for s in seeds:
                ex = per_seed[s][v][t]
                plain, under = predict(ex, "none"), predict(ex, block["choice"][v][str(s)])
                if plain is None or under is None:
                    return None
                raw.append(plain.tolist())
                cal.append(under.tolist())
            block["preds"][v][t] = {"chosen": cal, "raw": raw}
    return block


def _choose(cells: Mapping[str, Any], dev: Mapping[str, str], mode: str) -> tuple[str, str, dict[str, float]]:
    """(mode, why, dev score per mode) for one model."""
    if mode != "auto":
        return mode, f"calibration {mode} as the config names it (not chosen on a dev split)", {}
    have = {t: d for t, d in dev.items() if cells.get(d) is not None}
    if not have:
        return "none", ("no affective task has a dev split to choose a calibration on, so none is used (a "
                        "prior fitted on the test set itself would leak it)"), {}
    got: dict[str, float] = {}
    for m in MODES:
        vals = []
        for d in have.values():
            ex = cells[d]
            pred = predict(ex, m)
            if pred is None or ex.get("metric") not in METRICS:
                break
            vals.append(metric(ex["gold"], pred, len(ex["labels"]), ex["metric"]))
        else:
            got[m] = sum(vals) / len(vals)
    best = max(got, key=lambda m: (got[m], -MODES.index(m)))  # ties: the simpler mode
    return best, f"chosen per model on the dev split of {', '.join(have)} (best mean dev score), applied on test", got


def task_preds(res: Mapping[str, Any], which: str, tasks: Sequence[str] | None = None,
               majority: bool = False) -> list[TaskPreds]:
    """The stage's paired predictions (``which``: ``chosen`` or ``raw``) as bootstrap inputs; with
    ``majority`` a constant pseudo-variant ``majority`` (always the most frequent gold label) is added."""
    block = res["per_example"]
    out = []
    for t in tasks or res["tasks"]:
        info = block["tasks"][t]
        gold = np.asarray(info["gold"], dtype=np.int64)
        preds = {v: np.asarray(p[t][which], dtype=np.int64) for v, p in block["preds"].items() if t in p}
        if majority:
            k = next(iter(preds.values())).shape[0]
            top = int(np.bincount(gold).argmax())
            preds["majority"] = np.full((k, gold.size), top, dtype=np.int64)
        out.append(TaskPreds(gold, len(info["labels"]), info["metric"], preds))
    return out


def seed_scores(tp: Sequence[TaskPreds], variant: str) -> list[float]:
    """Per seed, the mean over tasks of each task's metric (the table's scores)."""
    k = tp[0].preds[variant].shape[0]
    return [float(np.mean([metric(t.gold, t.preds[variant][s], t.n_labels, t.metric) for t in tp])) for s in range(k)]


Combine = Callable[[dict[str, np.ndarray]], np.ndarray]


def score_evidence(res: Mapping[str, Any], variants: Sequence[str], combine: Combine, *,
                   tasks: Sequence[str] | None = None, majority: bool = False, seed: int = 0,
                   b: int = N_BOOT, **detail: Any) -> dict[str, Any]:
    """An evidence record for ``combine(per-variant seed-mean scores)``: the paired hierarchical bootstrap
    over seeds x test examples on the chosen-calibration predictions, with the same on the raw ones in
    ``raw``. ``{"undefined": why}`` when the statistic is undefined."""
    recs = {}
    for which in ("chosen", "raw"):
        tp = task_preds(res, which, tasks, majority)
        k = tp[0].preds[variants[0]].shape[0]

        def stat(d: Any, tp: list[TaskPreds] = tp) -> np.ndarray:
            return combine(scores(tp, variants, d))

        recs[which] = summarise(stat, k, [t.gold.size for t in tp], b, seed, unit="examples", **detail)
    if "undefined" in recs["chosen"]:
        return recs["chosen"]
    ev = recs["chosen"]
    if "undefined" not in recs["raw"]:
        ev["raw"] = {k: recs["raw"][k] for k in ("value", "ci", "n", "replicates", "components")}
    else:
        ev["raw_undefined"] = recs["raw"]["undefined"]
    return ev


def point(res: Mapping[str, Any], variants: Sequence[str], which: str = "chosen",
          tasks: Sequence[str] | None = None, majority: bool = False) -> dict[str, float]:
    """Seed-mean score per variant on all examples."""
    tp = task_preds(res, which, tasks, majority)
    k = tp[0].preds[variants[0]].shape[0]
    return {v: float(s[0]) for v, s in scores(tp, variants, identity(k, [t.gold.size for t in tp])).items()}


__all__ = ["MODES", "cells_of", "collect", "dev_task", "grid_calibration", "point", "predict", "score_evidence",
           "seed_scores", "task_preds"]
