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
