"""Figures for ``study``'s report: every claim against its threshold, and how stable a locus is over seeds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._base import pyplot

VERDICT_COLORS = {"supported": "#1a7f37", "contradicted": "#c62828", "inconclusive": "#b7791f",
                  "equivalent": "#1f5fa8"}


def verdict_forest(rows: Sequence[Mapping[str, Any]]) -> Any:
    """One row per claim: our value with its 95 % CI, the threshold (and band) it is judged against.

    ``rows``: ``{"label", "value", "ci": (lo, hi), "threshold", "upper" (or None), "verdict"}``.
    The claims measure different quantities, so each row has its own x-axis;
    the marker colour is the verdict and the shaded side is the claim's side.
    Tick labels stay legible whatever the values: at most four per axis, in
    3 significant digits (no offset text), and claim ids wrapped and sized by
    how many claims there are.
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    from .layout import wrap

    plt = pyplot()
    n = max(len(rows), 1)
    fs = 8 if n <= 10 else 7
    label_in = 2.4  # the claim ids' column
    fig, axes = plt.subplots(n, 1, figsize=(8, 0.95 * n + 0.7), squeeze=False)
    ticks = FuncFormatter(lambda x, _: f"{x:.3g}")
    for ax, r in zip(axes[:, 0], rows, strict=False):
        lo, hi = float(r["ci"][0]), float(r["ci"][1])
        t, up = float(r["threshold"]), r.get("upper")
        xs = [lo, hi, t] + ([float(up)] if up is not None else [])
        pad = 0.15 * (max(xs) - min(xs)) or 0.1 * (abs(t) or 1.0)
        left, right = min(xs) - pad, max(xs) + pad
        if up is not None:
            ax.axvspan(t, float(up), color="#d0e8d0", zorder=0)
        elif r.get("direction", ">") == ">":
            ax.axvspan(t, right, color="#d0e8d0", zorder=0)
        else:
            ax.axvspan(left, t, color="#d0e8d0", zorder=0)
        for b in [t] + ([float(up)] if up is not None else []):
            ax.axvline(b, color="gray", lw=1, ls="--")
        color = VERDICT_COLORS.get(str(r["verdict"]), "black")
        ax.errorbar([float(r["value"])], [0], xerr=[[float(r["value"]) - lo], [hi - float(r["value"])]],
                    fmt="o", color=color, capsize=4)
        ax.set_xlim(left, right)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.xaxis.set_major_formatter(ticks)
        ax.set_yticks([])
        ax.set_ylabel(wrap(str(r["label"]), label_in, fs, (".", "-", " ")), rotation=0, ha="right", va="center",
                      fontsize=fs)
        ax.tick_params(axis="x", labelsize=7)
        ax.text(1.01, 0.5, str(r["verdict"]), transform=ax.transAxes, color=color, fontsize=8, va="center")
    if not rows:
        axes[0, 0].text(0.5, 0.5, "no claims tested", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.suptitle("Each claim: ours (95 % CI) vs its threshold; shaded = the claim's side", fontsize=9)
    fig.tight_layout()
    return fig


def locus_stability(loci: Mapping[str, Sequence[str]], modules: Sequence[str], title: str = "") -> Any:
    """Per adapter, how many seeds each module was the most-changed one (grouped bars).

    ``loci``: adapter label -> the locus of each seed; ``modules``: the bar order.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    labels = list(loci)
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        counts = [sum(1 for x in loci[label] if x == m) for m in modules]
        ax.bar([j + i * width for j in range(len(modules))], counts, width=width,
               label=f"{label} ({len(loci[label])} seeds)")
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(modules))])
    ax.set_xticklabels(list(modules), rotation=30, fontsize=8)
    ax.set_ylabel("seeds where it changed most")
    ax.legend(fontsize=8)
    ax.set_title(title or "Locus stability over seeds (size-fair change)")
    fig.tight_layout()
    return fig


def image_limits(fig: Any, metric: str | None = None) -> list[tuple[float, float]]:
    """The colour limits (vmin, vmax) of every image panel in ``fig``: one pair when they share a scale.

    ``metric``: only the panels of that row of ``locate_heatmaps`` (axes labelled ``heatmap:<metric>:<i>``)."""
    out: list[tuple[float, float]] = []
    for ax in fig.axes:
        if metric is not None and not ax.get_label().startswith(f"heatmap:{metric}:"):
            continue
        for im in ax.get_images():
            lo, hi = im.get_clim()
            out.append((float(lo), float(hi)))
    return out
