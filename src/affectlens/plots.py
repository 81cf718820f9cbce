"""Figures from plain data: the one place that imports matplotlib.

Every function takes numbers/labels (never a model or a run) and returns a
figure, so a figure can be re-made from the JSON/CSV beside it. ``save``
writes a PNG and closes the figure (open figures are never leaked across the
many plots a study makes). The non-interactive Agg backend is chosen once,
here, so plotting works on machines without a display.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path`` and close it."""
    plt = pyplot()
    p = Path(path)
    try:
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return p


# --- tune


def loss_curve(losses: list[float], title: str) -> Any:
    """Training loss per step, with a running mean of ~1/20 of the run when it is long enough."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(1, len(losses) + 1)
    ax.plot(xs, losses, lw=0.8, alpha=0.5, label="per step")
    k = max(1, len(losses) // 20)
    if k > 1:
        smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1])
                  for i in range(len(losses))]
        ax.plot(xs, smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (label tokens)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


# --- grid


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
