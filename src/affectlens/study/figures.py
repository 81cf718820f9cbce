"""The study's figures drawn from its stage results: the frontier with CIs, every intervention run,
Eq. 1 beside Eq. 2, and the adapters' loss curves.

A stage's own run dir holds one figure per run (the heads intervention's
``changes.png``), but a reader needs the runs side by side on one scale, each
point with its uncertainty. So these are drawn here from the numbers the
stages recorded (reading a run's JSON only where an older cache lacks one),
and ``plots`` draws them from plain numbers. The error bars are descriptive;
a claim's verdict comes from its own statistic in ``stats``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from .context import Context

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def score_half_width(scores: Sequence[float], n_examples: int | None) -> float:
    """Half-width of a normal 95 % CI of a seed-mean score: between-seed spread plus example sampling.

    se² = s²/k (s² the sample variance over the k seeds, 0 for one seed) + Σ p(1-p)/n / k² (each
    seed's score a proportion of ``n_examples``, p kept half an example from 0 and 1), so one seed
    still shows how far n examples can be trusted."""
    xs = [float(x) for x in scores]
    k = len(xs)
    if not k:
        return float("nan")
    m = sum(xs) / k
    between = sum((x - m) ** 2 for x in xs) / (k - 1) / k if k > 1 else 0.0
    within = 0.0
    if n_examples:
        eps = 0.5 / n_examples
        within = sum(p * (1 - p) for p in (min(max(x, eps), 1 - eps) for x in xs)) / n_examples / k ** 2
    return Z95 * math.sqrt(between + within)


def wilson(p: float, n: int | None) -> tuple[float, float]:
    """Wilson's 95 % interval of a proportion ``p`` of ``n`` (no n: the point itself)."""
    if not n:
        return p, p
    z2 = Z95 ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))  # p in it despite rounding


def frontier_figure(sec: dict[str, Any], ctx: Context, run: Any) -> None:
    """Fig. 9 with a 95 % CI on every point and the base, and every line in the legend."""
    from .. import plots
    from .stages_grid import ALL, affective

    r, eff = ctx.results["frontier"], ctx.results.get("efficiency") or {}
    ns = [eff.get("n", {}).get(t) for t in eff.get("tasks", [])]
    n = min(x for x in ns if x) if any(ns) else None

    def half(variant: str) -> tuple[float, float] | None:
        """The variant's 95 % CI, cut to the score's range [0, 1]."""
        try:
            xs = affective(eff, variant)
        except (KeyError, TypeError, ValueError):  # a stage result without per-seed scores: no bar
            return None
        m, h = sum(xs) / len(xs), score_half_width(xs, n)
        return max(0.0, m - h), min(1.0, m + h)

    pts = [{**p, "ci95": half(p["variant"])} for p in r["points"]]
    pareto = [p["variant"] for p in pts if not any(q["params"] <= p["params"] and q["mean"] > p["mean"]
                                                    for q in pts if q is not p)]
    fixed: dict[str, Any] = {"untuned base": (r["base"], half("base"))}
    majority = r.get("majority")
    if isinstance(majority, dict) and majority:
        fixed["majority class"] = sum(majority.values()) / len(majority)
    run.figure("figures/frontier.png", plots.frontier(pts, pareto, fixed, ALL, "GET frontier (mean, 95 % CI)"))
    sec["figures"]["frontier"] = "figures/frontier.png"


def _task_n(ctx: Context, rel: str | None, task: str) -> int | None:
    """An intervention run's example count, from its results.json (an older stage result lacks it)."""
    if not rel:
        return None
    try:
        return int(json.loads((ctx.root / rel / "results.json").read_text())["tasks"][task]["n"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def intervention_rows(ctx: Context, interventions: dict[str, Any]) -> list[dict[str, Any]]:
    """Before/after with Wilson 95 % CIs for every run (heads and neurons, top and random), task, metric."""
    rows = []
    for unit, got in interventions.items():
        for side in ("top", "random"):
            res = got.get(f"{side}_results") or {}
            count = (got.get("n_units") or {}).get(side)
            if count is None:
                count = len([u for u in str(got.get(f"{side}_units") or "").split(",") if u])
            for task, m in (res.get("tasks") or {}).items():
                n = m.get("n") or _task_n(ctx, got.get(side), task)
                for metric in ("accuracy", "hallucination"):
                    if metric not in m:
                        continue
                    b, a = float(m[metric]["before"]), float(m[metric]["after"])
                    rows.append({"run": f"{unit}, {side} {count}", "task": task, "metric": metric, "n": n,
                                 "before": b, "after": a, "before_ci": wilson(b, n), "after_ci": wilson(a, n)})
    return rows


def intervention_figure(sec: dict[str, Any], ctx: Context, run: Any) -> None:
    """Every intervention run in one figure (a null heads run beside a real neuron effect)."""
    from .. import plots

    rows = intervention_rows(ctx, (ctx.results.get("circuits") or {}).get("interventions") or {})
    if not rows:
        return
    c = ctx.cfg.circuits
    title = (f"Amplifying the top vs random units (heads β={c.get('beta', 2.0):g}, neurons γ={c.get('gamma', 2.0):g}); "
             "bars: Wilson 95 % CIs")
    run.figure("figures/circuits-intervention.png", plots.intervention_runs(rows, title))
    sec["figures"]["interventions"] = "figures/circuits-intervention.png"


def adapter_losses(ctx: Context, adapters: dict[str, Any]) -> dict[str, list[float]]:
    """``{"<kind>-s<seed>": losses}`` of the adapters stage: recorded in its result, else read from each
    adapter's ``affectlens_tune.json`` (a cache written before the result kept them)."""
    kept = adapters.get("losses") or {}
    out: dict[str, list[float]] = {}
    for kind in ("emotion", "control", "full"):
        for seed, rel in sorted((adapters.get(kind) or {}).items()):
            ys = (kept.get(kind) or {}).get(seed)
            if ys is None:
                try:
                    ys = json.loads((ctx.root / rel / "affectlens_tune.json").read_text())["loss_curve"]
                except (OSError, KeyError, TypeError, ValueError):
                    continue
            out[f"{kind}-s{seed}"] = [float(y) for y in ys]
    return out


def loss_figure(sec: dict[str, Any], ctx: Context, run: Any) -> None:
    from .. import plots

    curves = adapter_losses(ctx, ctx.results.get("adapters") or {})
    if curves:
        run.figure("figures/adapter_losses.png", plots.loss_curves(curves))
        sec["figures"]["adapter loss curves"] = "figures/adapter_losses.png"


def add_figures(sections: dict[str, Any], ctx: Context, run: Any) -> None:
    """Draw the study's figures into the sections that show them (those that exist in this study)."""
    res = ctx.results
    if "frontier" in res and "frontier" in sections:
        frontier_figure(sections["frontier"], ctx, run)
    if "circuits" in res and "circuits-intervention" in sections:
        intervention_figure(sections["circuits-intervention"], ctx, run)
    home = next((k for k in ("locate", "sufficiency", "efficiency", "necessity") if k in sections), None)
    if "adapters" in res and home is not None:
        loss_figure(sections[home], ctx, run)


__all__ = ["add_figures", "adapter_losses", "intervention_rows", "score_half_width", "wilson"]
