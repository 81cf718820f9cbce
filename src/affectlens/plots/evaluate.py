"""Figures for ``evaluate``."""

from __future__ import annotations

from typing import Any

from ._base import pyplot


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
