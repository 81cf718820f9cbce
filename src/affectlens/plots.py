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


# --- locate

LOCATE_METRIC_TITLES = {"l2": "‖ΔW‖_F (Eq. 1)", "relative": "‖ΔW‖_F / ‖W‖_F (Eq. 2)", "rms": "‖ΔW‖_F / √n"}


def locate_heatmap(panels: list[tuple[str, Any, list[str], list[int]]], metric: str) -> Any:
    """Layers × modules, one panel per model, one shared colour scale (paper Fig. 5).

    ``panels``: (model label, layers × modules matrix with NaN where absent,
    module names, layer indices) per model.
    """
    import numpy as np

    plt = pyplot()
    vmax = max((np.nanmax(g) for _, g, _, _ in panels if g.size), default=1.0) or 1.0
    n_layers = max((len(la) for _, _, _, la in panels), default=1)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 + 2.3 * len(panels), 1.5 + 0.18 * n_layers),
                             squeeze=False, constrained_layout=True)
    im = None
    for ax, (lab, g, mods, layers) in zip(axes[0], panels, strict=True):
        im = ax.imshow(g, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, origin="lower")
        ax.set_xticks(range(len(mods)), [m.replace("_proj", "") for m in mods], rotation=45)
        step = max(1, len(layers) // 12)
        ax.set_yticks(range(0, len(layers), step), [str(x) for x in layers[::step]])
        ax.set_title(lab)
        ax.set_xlabel("module")
    axes[0][0].set_ylabel("layer")
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), label=LOCATE_METRIC_TITLES.get(metric, metric))
    return fig


def locate_distribution(hists: dict[str, dict[str, Any]], edges: Any, bf16_resolution: float) -> Any:
    """Element-wise relative change per module (paper Fig. 10), with the bf16 caveat drawn in.

    ``hists[model][module]``: counts ``[zeros, underflow, bins..., overflow]``
    over the log10 bin ``edges``.
    """
    import numpy as np

    plt = pyplot()
    labels = list(hists)
    fig, axes = plt.subplots(1, max(1, len(labels)), figsize=(5.2 * max(1, len(labels)), 3.6),
                             squeeze=False, constrained_layout=True)
    centres = (edges[:-1] + edges[1:]) / 2
    for ax, lab in zip(axes[0], labels, strict=False):
        for mod, counts in hists[lab].items():
            zeros, inner = counts[0], counts[2:-1]
            total = counts.sum()
            if total == 0:
                continue
            # Per decade: the quarter-octave bins differ in width (0.058-0.097 decades).
            ax.plot(centres, inner / total / np.diff(edges), label=f"{mod.replace('_proj', '')} ({100 * zeros / total:.0f}% =0)")
        ax.axvline(np.log10(bf16_resolution), color="grey", ls="--", lw=1)
        ax.text(np.log10(bf16_resolution), ax.get_ylim()[1] * 0.95, " bf16: changes < ~0.4 %\n are quantised",
                fontsize=7, va="top", color="grey")
        ax.set_xlabel("log10 |ΔW| / (|W_base| + ε)")
        ax.set_ylabel("share of elements per decade")
        ax.set_title(lab)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


# --- evaluate


def confusion_matrix(confusion: Any, labels: list[str], pred_labels: list[str] | None = None,
                     title: str = "", subtitle: str | None = None) -> Any:
    """Row-normalised confusion matrix (gold rows, predicted columns) with the counts written in."""
    import numpy as np

    plt = pyplot()
    cm = np.asarray(confusion, dtype=float)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(labels)
    size = max(4.0, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), pred_labels if pred_labels is not None else labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(f"{title}\n{subtitle}" if subtitle else title, fontsize=9)
    fig.tight_layout()
    return fig


# --- circuits


def vector_norms(norms: dict[str, list[float]], counts: dict[str, Any], relative: bool) -> Any:
    """Steering-vector norm by layer, one line per emotion (``relative``: divided by mean ‖h_l‖)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for e, ys in norms.items():
        ax.plot(range(len(ys)), ys, label=f"{e} (n={counts.get(e, '?')})")
    ax.set_xlabel("layer")
    ax.set_ylabel("‖S_l‖ / mean ‖h_l‖" if relative else "‖S_l‖")
    ax.set_title("Emotion steering vectors by layer")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def layer_profile(layers: list[int], effects: dict[str, list[float]], mean: list[float], critical: int) -> Any:
    """Per-emotion relative change of p(emotion) by steered layer, and the scaled mean with its argmax."""
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    for e, ys in effects.items():
        ax.plot(layers, ys, alpha=0.8, label=e)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("layer l (steering injected after block l)")
    ax.set_ylabel("relative change of p(emotion)")
    ax.set_title("per emotion")
    ax.legend(fontsize=7, ncol=2)
    ax2.plot(layers, mean, color="black", lw=2)
    ax2.axvline(critical, color="black", ls="--", lw=1)
    ax2.set_xlabel("layer l")
    ax2.set_ylabel("mean scaled profile (max |effect| = 1 each)")
    ax2.set_title(f"critical layer {critical}")
    fig.tight_layout()
    return fig


def head_scores(scores: dict[str, Any], title: str) -> Any:
    """One [layer, head] heat map per emotion (symmetric colour scale around 0)."""
    import numpy as np

    plt = pyplot()
    emos = list(scores)
    cols = min(3, len(emos))
    nrow = (len(emos) + cols - 1) // cols
    fig, axes = plt.subplots(nrow, cols, figsize=(4 * cols, 3.2 * nrow), squeeze=False)
    for ax, e in zip(axes.flat, emos, strict=False):
        m = np.asarray(scores[e], dtype=float)
        lim = np.abs(m).max() or 1.0
        im = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
        ax.set_title(e)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, shrink=0.8)
    for ax in list(axes.flat)[len(emos):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def head_overlap(layers: list[int], pairwise: list[float], overall: list[float]) -> Any:
    """Overlap of the emotions' top-K head sets per layer (NaN: no top head in that layer)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(layers, pairwise, marker="o", label="mean pairwise Jaccard")
    ax.plot(layers, overall, marker="s", label="|∩| / |∪| over emotions")
    ax.set_xlabel("layer")
    ax.set_ylabel("overlap of top-K head sets")
    ax.set_ylim(-0.05, 1.05)
    ax.legend()
    fig.tight_layout()
    return fig


def neuron_layers(counts: dict[str, tuple[list[int], list[int]]], top_k: Any, target_layer: int) -> Any:
    """How many of each emotion's top-K neurons sit in each layer (``counts``: emotion -> (layers, n))."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for e, (xs, ys) in counts.items():
        ax.plot(xs, ys, marker=".", label=e)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"neurons in the top {top_k}")
    ax.set_title(f"Top emotion neurons by layer (target layer {target_layer})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def intervention_changes(rows: list[dict[str, Any]], title: str, ppl_ratio: float | None = None) -> Any:
    """Change (after − before) with its 95% CI per task and metric (rows of ``results.csv``)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows)), 3.8))
    xs = range(len(rows))
    ch = [r["change"] for r in rows]
    err = [[r["change"] - r["ci_low"] for r in rows], [r["ci_high"] - r["change"] for r in rows]]
    ax.bar(xs, ch, yerr=err, capsize=4, color=["tab:blue" if r["metric"] == "accuracy" else "tab:red"
                                                for r in rows])
    ax.set_xticks(list(xs), [f"{r['task']}\n{r['metric']}" for r in rows], fontsize=7)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("change (after − before), 95% CI")
    ax.set_title(title if ppl_ratio is None else f"{title}\nperplexity ×{ppl_ratio:.3f}", fontsize=8)
    fig.tight_layout()
    return fig




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
