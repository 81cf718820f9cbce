"""Figures for ``circuits``."""

from __future__ import annotations

from typing import Any

from ._base import pyplot


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
    """One [layer, head] heat map per emotion, all on one symmetric colour scale around 0 with one colour
    bar: the panels are read against each other (which emotion's heads matter more), so a colour must
    mean the same score in each."""
    import numpy as np

    plt = pyplot()
    maps = {e: np.asarray(m, dtype=float) for e, m in scores.items()}
    lim = max((float(np.nanmax(np.abs(m))) for m in maps.values() if m.size and not np.isnan(m).all()),
              default=0.0) or 1.0
    cols = min(3, len(maps))
    nrow = (len(maps) + cols - 1) // cols
    fig, axes = plt.subplots(nrow, cols, figsize=(4 * cols + 0.8, 3.2 * nrow), squeeze=False, layout="constrained")
    im = None
    for ax, (e, m) in zip(axes.flat, maps.items(), strict=False):
        im = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
        ax.set_title(e)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    for ax in list(axes.flat)[len(maps):]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8)
    fig.suptitle(title)
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


def intervention_runs(rows: list[dict[str, Any]], title: str = "") -> Any:
    """Every intervention run before and after amplification, with 95 % CIs: one panel per metric.

    ``rows``: ``{"run", "task", "metric", "before", "after", "before_ci", "after_ci"}`` (the CIs as
    (low, high)); a run is e.g. "heads, top 8" or "neurons, random 20". Each run x task is a pair
    of bars, so a null run and a real effect sit side by side on one scale per metric; the change
    is written above each pair.
    """
    from .layout import wrap

    plt = pyplot()
    metrics = list(dict.fromkeys(r["metric"] for r in rows)) or ["accuracy"]
    groups = list(dict.fromkeys((r["run"], r["task"]) for r in rows))
    several_tasks = len({t for _, t in groups}) > 1
    pw = max(4.0, 1.2 * len(groups) + 1.0)  # one panel: the y label and ticks, then ~1.2 in per pair
    fig, axes = plt.subplots(1, len(metrics), figsize=(pw * len(metrics), 4.2), squeeze=False,
                             layout="constrained")
    fs = 8 if len(groups) <= 6 else 7
    for ax, metric in zip(axes[0], metrics, strict=True):
        by = {(r["run"], r["task"]): r for r in rows if r["metric"] == metric}
        xs = [i for i, g in enumerate(groups) if g in by]
        for off, side, color in ((-0.2, "before", "0.65"), (0.2, "after", "tab:blue")):
            vals = [by[groups[i]][side] for i in xs]
            cis = [by[groups[i]][f"{side}_ci"] for i in xs]
            err = [[v - lo for v, (lo, _) in zip(vals, cis, strict=True)],
                   [hi - v for v, (_, hi) in zip(vals, cis, strict=True)]]
            ax.bar([x + off for x in xs], vals, width=0.4, yerr=err, capsize=3, color=color, label=side)
        for i in xs:
            r = by[groups[i]]
            top = max(r["before_ci"][1], r["after_ci"][1])
            ax.annotate(f"{r['after'] - r['before']:+.3f}", (i, top), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize=fs - 1)
        span = 0.85 * (pw - 1.0) / max(len(groups), 1)  # a tick label's share of the panel, with a gap
        ax.set_xticks(range(len(groups)), [wrap(f"{run}{f', {task}' if several_tasks else ''}", span, fs,
                                                (", ", " ")) for run, task in groups], fontsize=fs)
        ax.set_ylim(0, 1.12)
        ax.set_ylabel(f"{metric} (95 % CI)")
        ax.set_title(metric, fontsize=10)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, [f"{n} amplification" for n in names], loc="outside lower center", ncol=2, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
