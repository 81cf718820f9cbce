"""Figures from plain data: the one package that imports matplotlib.

One module per area (``plots.locate``, ``plots.circuits``, …). Every function
takes numbers/labels (never a model or a run) and returns a figure, so a figure can be re-made from the JSON/CSV beside it. ``save``
writes a PNG and closes the figure (open figures are never leaked across the
many plots a study makes). The non-interactive Agg backend is chosen once,
here, so plotting works on machines without a display.
"""

from __future__ import annotations

from ._base import pyplot, save
from .circuits import (
    head_overlap,
    head_scores,
    intervention_changes,
    intervention_runs,
    layer_profile,
    neuron_layers,
    vector_norms,
)
from .evaluate import confusion_matrix, confusion_panels
from .grid import frontier
from .layout import overlaps
from .locate import (
    LOCATE_METRIC_TITLES,
    heatmap_vmax,
    locate_distribution,
    locate_heatmap,
    locate_heatmaps,
)
from .study import image_limits, locus_stability, verdict_forest
from .tune import loss_curve, loss_curves

__all__ = [
    "LOCATE_METRIC_TITLES", "confusion_matrix", "frontier", "head_overlap", "head_scores", "heatmap_vmax", "image_limits",
    "confusion_panels", "intervention_changes", "intervention_runs",
    "layer_profile", "locate_distribution", "locate_heatmap", "locate_heatmaps", "locus_stability", "loss_curve",
    "loss_curves", "neuron_layers", "overlaps", "pyplot", "save", "vector_norms", "verdict_forest",
]
