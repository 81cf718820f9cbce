"""Figures for ``grid``."""

from __future__ import annotations

from typing import Any

from ._base import pyplot


def _interval(mean: float, ci: Any) -> tuple[float, float] | None:
    """A CI given as a half-width or as (low, high); None when there is none (None or NaN)."""
    if ci is None:
        return None
    lo, hi = (ci[0], ci[1]) if isinstance(ci, tuple | list) else (mean - ci, mean + ci)
    if lo != lo or hi != hi:
        return None
    return float(lo), float(hi)


def frontier(points: list[dict[str, Any]], pareto: list[str], fixed: dict[str, Any], reference: str | None,
             title: str) -> Any:
    """Trainable parameters (log) vs mean score x100 with 95 % CIs; the Pareto front dashed.

    ``points``: ``{"variant", "kind", "params", "mean", "ci95"}`` (ci95: a half-width or (low, high);
    NaN or None when there is none); ``fixed``: variants without trained parameters (the base, a
    yardstick), drawn as horizontal lines at their mean -- a value or (mean, ci95), the CI a band. Every line and marker kind is in the
    legend, and labels of points at one size are stacked rather than printed over each other.
    """
    from .layout import spread

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    markers = {"tune": "o", "reference": "s", "transfer": "^"}
    kinds = {"tune": "targeted LoRA", "reference": "reference", "transfer": "module transfer"}
    shown: set[str] = set()
    labels = []
    for p in sorted(points, key=lambda q: (q["params"], q["mean"])):
        iv = _interval(p["mean"], p.get("ci95"))
        err = None if iv is None else [[100 * (p["mean"] - iv[0])], [100 * (iv[1] - p["mean"])]]
        ref = p["variant"] == reference
        what = f"{reference} (reference)" if ref else kinds.get(p["kind"], str(p["kind"]))
        what += " ± 95 % CI" if err is not None else ""
        ax.errorbar(p["params"], 100 * p["mean"], yerr=err, fmt=markers.get(p["kind"], "o"), capsize=3,
                    color="C3" if ref else "C0", label=None if what in shown else what)
        shown.add(what)
        last = p["params"] >= max(q["params"] for q in points)  # its label goes left, inside the axes
        labels.append(ax.annotate(p["variant"], (p["params"], 100 * p["mean"]), textcoords="offset points",
                                  xytext=(-6, 4) if last else (6, 4), ha="right" if last else "left", fontsize=8))
    front = sorted((p for p in points if p["variant"] in pareto), key=lambda p: p["params"])
    if len(front) > 1:
        ax.plot([p["params"] for p in front], [100 * p["mean"] for p in front], "--", color="gray", lw=1,
                label="Pareto front")
    styles = [":", "-.", (0, (1, 3)), (0, (5, 2))]
    for i, (name, value) in enumerate(fixed.items()):
        mean, ci = value if isinstance(value, tuple) else (value, None)
        iv = _interval(mean, ci)
        ax.axhline(100 * mean, color=f"C{2 + i}", lw=1, ls=styles[i % len(styles)],
                   label=f"{name} ({100 * mean:.1f}{', band: 95 % CI' if iv is not None else ''})")
        if iv is not None:
            ax.axhspan(100 * iv[0], 100 * iv[1], color=f"C{2 + i}", alpha=0.12, lw=0)
    if points:
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("mean affective score (x100)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the labelled points
    fig.tight_layout()
    spread(fig, labels)
    return fig
