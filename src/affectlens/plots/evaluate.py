"""Figures for ``evaluate``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._base import pyplot


def _row_normalised(confusion: Any) -> tuple[Any, Any]:
    import numpy as np

    cm = np.asarray(confusion, dtype=float)
    rows = cm.sum(1, keepdims=True)
    return cm, np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)


def _draw(ax: Any, cm: Any, norm: Any, labels: list[str], pred_labels: list[str] | None) -> Any:
    """One confusion matrix on ``ax``: gold rows, predicted columns, shade = share of the row, counts in."""
    n = len(labels)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
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
    return im


def confusion_matrix(confusion: Any, labels: list[str], pred_labels: list[str] | None = None,
                     title: str = "", subtitle: str | None = None) -> Any:
    """Row-normalised confusion matrix (gold rows, predicted columns) with the counts written in."""
    plt = pyplot()
    cm, norm = _row_normalised(confusion)
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    _draw(ax, cm, norm, labels, pred_labels)
    ax.set_title(f"{title}\n{subtitle}" if subtitle else title, fontsize=9)
    fig.tight_layout()
    return fig


def confusion_panels(panels: Sequence[tuple[str, Any]], labels: list[str], pred_labels: list[str] | None = None,
                     title: str = "") -> Any:
    """Confusion matrices side by side (e.g. raw | calibrated) on one colour scale and one colour bar.

    Every panel is row-normalised onto the same 0-1 scale, so equal shades are
    equal recall shares whichever panel they are in; the counts are written in.
    """
    plt = pyplot()
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels) + 1, size + 0.4), squeeze=False,
                             layout="constrained")
    im = None
    for ax, (name, confusion) in zip(axes[0], panels, strict=True):
        cm, norm = _row_normalised(confusion)
        im = _draw(ax, cm, norm, labels, pred_labels)
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.7, label="share of the gold row")
    fig.suptitle(title, fontsize=10)
    return fig
