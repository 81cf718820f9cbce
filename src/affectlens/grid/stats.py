"""Statistics over a grid's cells: means with 95 % t-intervals over seeds, and the frontier.

Plain numbers in, plain numbers out (no files): ``report`` formats them.
The Mean column averages affective tasks only; control tasks (control /
perplexity kinds, or the config's ``control_tasks``) are reported beside it,
because an ablation that destroys everything is no evidence of specificity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..vocab import TaskKind
from .config import GridConfig
from .results import Cell, TaskResult

CONTROL_KINDS = (TaskKind.CONTROL, TaskKind.PERPLEXITY)


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and the half-width of its 95 % t-interval over seeds (nan for one seed)."""
    xs = [float(x) for x in values if x == x]
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan"), 0
    m = sum(xs) / n
    if n < 2:
        return m, float("nan"), n
    from scipy.stats import t as student_t

    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n), n


def task_kind(name: str) -> str | None:
    try:
        from ..tasks.spec import get_task

        return get_task(name).kind
    except Exception:  # an unknown task name is the evaluator's business, not the report's
        return None


def control_task_names(cfg: GridConfig) -> list[str]:
    if cfg.control_tasks:
        return list(cfg.control_tasks)
    return [t for t in cfg.tasks if task_kind(t) in CONTROL_KINDS]


def lower_is_better(task: str) -> bool:
    return task_kind(task) == TaskKind.PERPLEXITY


def affective_mean(cfg: GridConfig, tasks: dict[str, TaskResult]) -> float:
    """The Mean column: affective tasks only (control tasks are reported beside it)."""
    ctrl = set(control_task_names(cfg))
    keys = [t for t in tasks if t not in ctrl] or list(tasks)
    vals = [tasks[t].primary for t in keys]
    return sum(vals) / len(vals) if vals else float("nan")


def summarise(cfg: GridConfig, cells: dict[tuple[str, int], Cell]) -> dict[str, Any]:
    """Per-variant means with 95 % CIs over seeds, the control mean, costs, and the frontier."""
    ctrl = control_task_names(cfg)
    summary: dict[str, Any] = {"reference": cfg.reference, "tasks": list(cfg.tasks), "control_tasks": ctrl,
                               "variants": {}}
    for v in cfg.variants:
        cs = [cells[(v.name, s)] for s in cfg.seeds_of(v)]
        per_task = {t: mean_ci([c.tasks[t].primary if t in c.tasks else float("nan") for c in cs])
                    for t in cfg.tasks}
        mean = mean_ci([c.mean for c in cs])
        ctrl_mean = mean_ci([sum(c.tasks[t].primary for t in ctrl) / len(ctrl) for c in cs]) if ctrl else None
        sps = [c.cost.seconds_per_step for c in cs if c.cost.seconds_per_step]
        first = cs[0].cost
        summary["variants"][v.name] = {
            "kind": v.kind, "seeds": [c.seed for c in cs],
            "tasks": {t: {"mean": m, "ci95": h, "n_seeds": n} for t, (m, h, n) in per_task.items()},
            "mean": {"mean": mean[0], "ci95": mean[1], "n_seeds": mean[2]},
            "control_mean": None if ctrl_mean is None else {"mean": ctrl_mean[0], "ci95": ctrl_mean[1]},
            "trainable_params": first.trainable_params,
            "params_ablated": first.params_ablated, "ablated": first.ablated,
            "seconds_per_step": sum(sps) / len(sps) if sps else None,
            "source": first.source,
        }
    summary["frontier"] = frontier(cfg.reference, summary["variants"])
    return summary


def frontier(ref: str | None, variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each trained variant's share of the reference's mean score and of its parameters,
    and the Pareto front (no other point has fewer parameters and a higher score)."""
    pts = [{"variant": n, "params": s["trainable_params"], "mean": s["mean"]["mean"], "ci95": s["mean"]["ci95"],
            "kind": s["kind"]} for n, s in variants.items()
           if s["kind"] in ("tune", "reference", "transfer") and s["trainable_params"]]
    out: dict[str, Any] = {"reference": ref, "points": pts, "lines": []}
    r = variants.get(ref or "")
    if r is None or not r["trainable_params"] or not (r["mean"]["mean"] > 0):
        return out
    for p in pts:
        if p["variant"] == ref:
            continue
        p["score_share"] = p["mean"] / r["mean"]["mean"]
        p["param_share"] = p["params"] / r["trainable_params"]
        out["lines"].append(
            f"{p['variant']}: {100 * p['score_share']:.1f} % of {ref}'s mean score at "
            f"{100 * p['param_share']:.1f} % of its parameters ({p['params']:,} vs {r['trainable_params']:,})")
    out["pareto"] = [p["variant"] for p in pts if not any(
        q["params"] <= p["params"] and q["mean"] > p["mean"] for q in pts if q is not p)]
    return out


__all__ = ["affective_mean", "control_task_names", "frontier", "lower_is_better", "mean_ci", "summarise"]
