"""Figures for ``locate``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._base import pyplot

LOCATE_METRIC_TITLES = {"l2": "‖ΔW‖_F (Eq. 1)", "relative": "‖ΔW‖_F / ‖W‖_F (Eq. 2)", "rms": "‖ΔW‖_F / √n"}


Panel = tuple[str, Any, list[str], list[int]]  # (model label, layers x modules, module names, layer indices)
LOCATE_ROW_HEADINGS = {"l2": "Eq. 1, absolute change ‖ΔW‖_F (grows with the matrix's size)",
                       "relative": "Eq. 2, relative change ‖ΔW‖_F / ‖W‖_F (size-fair)"}


def locate_heatmap(panels: list[Panel], metric: str, vmax: float | None = None) -> Any:
    """Layers × modules, one panel per model, one shared colour scale (paper Fig. 5).

    ``panels``: (model label, layers × modules matrix with NaN where absent,
    module names, layer indices) per model. The scale runs from 0 to ``vmax``
    (default: the panels' largest value); a figure of one model that is
    compared with others' gets their common ``vmax``, so one colour is one
    change in every file.
    """
    return locate_heatmaps([(metric, panels)], headings=False, vmax=vmax)


def locate_heatmaps(rows: list[tuple[str, list[Panel]]], headings: bool = True,
                    vmax: float | None = None) -> Any:
    """One row of layers × modules panels per metric (Eq. 1 above Eq. 2), one colour scale per row.

    Columns are models, so a model's absolute and size-fair change sit one above the other. Each
    row's axes are labelled ``heatmap:<metric>`` (``image_limits`` reads one row's scale). ``vmax``
    fixes every row's top (figures of single models compared across files share it).
    """
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    from .layout import chars_fitting, wrap

    plt = pyplot()
    n_col = max((len(p) for _, p in rows), default=1) or 1
    n_layers = max((len(la) for _, p in rows for _, _, _, la in p), default=1)
    # Laid out by hand, in inches: constrained layout measured every text twice and made each heatmap ~40 %
    # slower, and locate draws three per model (issue 13). Margins: layer ticks and label on the left,
    # rotated module names and "module" below, the title above, the colour bar and its label on the right.
    width = 2.2 + 2.3 * n_col
    left, right, bottom, gap, title_fs = 0.55, 1.05, 0.75, 0.35, 10
    pw = (width - left - right - gap * (n_col - 1)) / n_col
    titles = [[wrap(lab, pw + gap * 0.8, title_fs) for lab, _, _, _ in p] for _, p in rows]
    lines = max((t.count("\n") + 1 for ts in titles for t in ts), default=1)
    head = 0.3 if headings else 0.0
    top = head + 0.08 + 0.19 * lines
    body = max(1.2, 0.18 * n_layers)  # tall enough for the colour bar's label
    row_h = top + body + bottom
    height = row_h * len(rows)
    fig = plt.figure(figsize=(width, height))
    fig.set_layout_engine(PlaceHolderLayoutEngine(adjust_compatible=True, colorbar_gridspec=False))
    for k, ((metric, panels), names) in enumerate(zip(rows, titles, strict=True)):
        y0 = (height - (k + 1) * row_h + bottom) / height
        if headings:
            fig.text(left / width, (height - k * row_h - 0.05) / height, LOCATE_ROW_HEADINGS.get(
                metric, LOCATE_METRIC_TITLES.get(metric, metric)), fontsize=10, fontweight="bold", va="top")
        top = vmax if vmax is not None else heatmap_vmax(g for _, g, _, _ in panels)
        im = None
        for i, ((_, g, mods, layers), name) in enumerate(zip(panels, names, strict=True)):
            ax = fig.add_axes(((left + i * (pw + gap)) / width, y0, pw / width, body / height),
                              label=f"heatmap:{metric}:{i}")
            im = ax.imshow(g, aspect="auto", cmap="viridis", vmin=0, vmax=top, origin="lower")
            ax.set_xticks(range(len(mods)), [m.replace("_proj", "") for m in mods], rotation=45)
            step = max(1, len(layers) // 12)
            ax.set_yticks(range(0, len(layers), step), [str(x) for x in layers[::step]])
            ax.set_title(name, fontsize=title_fs)
            ax.set_xlabel("module")
            if i == 0:
                ax.set_ylabel("layer")
        if im is not None:
            cax = fig.add_axes(((width - right + 0.12) / width, y0, 0.12 / width, body / height))
            label = LOCATE_METRIC_TITLES.get(metric, metric)
            fits = len(label) <= chars_fitting(body, 10)  # the label runs along the bar: the row's height
            fig.colorbar(im, cax=cax, label=label if fits else label.replace(" (", "\n("))
    return fig


def heatmap_vmax(grids: Iterable[Any]) -> float:
    """The top of one colour scale over ``grids`` (layers × modules, NaN where absent): their largest value."""
    import numpy as np

    return max((float(np.nanmax(g)) for g in grids if g.size and not np.isnan(g).all()), default=1.0) or 1.0


def locate_distribution(hists: dict[str, dict[str, Any]], edges: Any, bf16_resolution: float,
                        notes: dict[str, str] | None = None) -> Any:
    """Element-wise relative change per module (paper Fig. 10), with the bf16 caveat drawn in.

    ``hists[model][module]``: counts ``[zeros, underflow, bins..., overflow]``
    over the log10 bin ``edges``; ``notes[model]``, a second title line
    (how the distribution was sampled).
    """
    import numpy as np
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    plt = pyplot()
    labels = list(hists)
    n = max(1, len(labels))
    # Laid out by hand (as the heatmaps): ticks and the y label left of each panel, the x label below,
    # one or two title lines above.
    width, height = 5.2 * n, 3.6
    left, right, bottom, top, gap = 0.75, 0.15, 0.55, 0.55, 0.8
    pw = (width - left - right - gap * (n - 1)) / n
    fig = plt.figure(figsize=(width, height))
    fig.set_layout_engine(PlaceHolderLayoutEngine(adjust_compatible=True, colorbar_gridspec=False))
    axes = [[fig.add_axes(((left + i * (pw + gap)) / width, bottom / height, pw / width,
                           (height - bottom - top) / height)) for i in range(n)]]
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
        # left of the line, where the curves are the low tail of small changes: the text hides no peak
        ax.text(np.log10(bf16_resolution), ax.get_ylim()[1] * 0.95, "bf16: changes < ~0.4 % \nare quantised ",
                fontsize=7, va="top", ha="right", color="grey")
        ax.set_xlabel("log10 |ΔW| / (|W_base| + ε)")
        ax.set_ylabel("share of elements per decade")
        ax.set_title(f"{lab}\n{notes[lab]}" if notes and notes.get(lab) else lab, fontsize=None if not notes else 9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig
