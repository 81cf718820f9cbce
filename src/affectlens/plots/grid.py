"""Figures for ``grid``."""

from __future__ import annotations

from typing import Any

from ._base import pyplot


def frontier(points: list[dict[str, Any]], pareto: list[str], fixed: dict[str, float], reference: str | None,
             title: str) -> Any:
    """Trainable parameters (log) vs mean score x100 with 95 % CIs; the Pareto front dashed.

    ``points``: ``{"variant", "kind", "params", "mean", "ci95"}`` (ci95 NaN or None when
    there is none); ``fixed``: variants without trained parameters (the base), drawn as
    horizontal lines at their mean.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = {"tune": "o", "reference": "s", "transfer": "^"}
    for p in points:
        ci = p.get("ci95")
        err = None if ci is None or ci != ci else 100 * ci
        ax.errorbar(p["params"], 100 * p["mean"], yerr=err, fmt=markers.get(p["kind"], "o"), capsize=3,
                    color="C3" if p["variant"] == reference else "C0")
        ax.annotate(p["variant"], (p["params"], 100 * p["mean"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    front = sorted((p for p in points if p["variant"] in pareto), key=lambda p: p["params"])
    if len(front) > 1:
        ax.plot([p["params"] for p in front], [100 * p["mean"] for p in front], "--", color="gray", lw=1)
    for name, mean in fixed.items():
        ax.axhline(100 * mean, color="gray", lw=0.8, ls=":")
        ax.annotate(name, (ax.get_xlim()[0] if points else 0, 100 * mean), fontsize=8)
    if points:
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("mean affective score (x100)")
    ax.set_title(title)
    fig.tight_layout()
    return fig
