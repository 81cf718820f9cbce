"""The matplotlib entry point shared by the figure modules (Agg backend, save-and-close).

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
    """Write ``fig`` as PNG to ``path`` and close it.

    A figure with a layout engine (constrained layout, or a placeholder for
    a layout made by hand) already fits its canvas; a tight bounding box
    would draw it a second time (~30 % of the cost of a small figure), so
    only figures without one get it.
    """
    plt = pyplot()
    p = Path(path)
    try:
        fig.savefig(p, dpi=dpi, bbox_inches=None if fig.get_layout_engine() is not None else "tight")
    finally:
        plt.close(fig)
    return p
