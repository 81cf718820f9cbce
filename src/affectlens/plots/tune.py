"""Figures for ``tune``."""

from __future__ import annotations

from typing import Any

from ._base import pyplot


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


def loss_curves(curves: dict[str, list[float]], title: str = "Training loss of the study's adapters") -> Any:
    """Several runs' loss per step on one axis: one colour per kind (the label before ``-s``), one line
    style per seed, every run in the legend. A run that did not learn shows as a flat line beside one
    that did."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.0), layout="constrained")
    kinds = list(dict.fromkeys(lab.rsplit("-s", 1)[0] for lab in curves))
    styles = ["-", "--", ":", "-."]
    seen: dict[str, int] = {}
    for lab, ys in curves.items():
        kind = lab.rsplit("-s", 1)[0]
        i = seen[kind] = seen.get(kind, -1) + 1
        ax.plot(range(1, len(ys) + 1), ys, color=f"C{kinds.index(kind) % 10}", ls=styles[i % len(styles)],
                lw=1.2, marker="." if len(ys) <= 30 else None, label=f"{lab} ({len(ys)} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (label tokens)")
    ax.set_title(title, fontsize=10)
    if curves:
        fig.legend(fontsize=7, ncol=max(1, len(curves) // 12), loc="outside right upper")
    return fig
