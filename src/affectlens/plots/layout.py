"""Text that fits: wrapping to a width, nudging labels apart, and finding texts that collide.

Figures are drawn from data whose labels we do not choose (a base model's
name, a claim id, a task spec), so a fixed layout lets long labels run into
each other. These helpers size text by what it must fit, and ``overlaps``
measures the drawn result, so a test can prove a figure is readable.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

CHAR_EM = 0.6  # a character's mean width in ems (DejaVu Sans, mixed case and digits)


def chars_fitting(width_in: float, fontsize: float) -> int:
    """About how many characters of ``fontsize`` points fit in ``width_in`` inches (at least 4)."""
    return max(4, int(width_in * 72 / (CHAR_EM * fontsize)))


def wrap(text: str, width_in: float, fontsize: float, breaks: Sequence[str] = (": ", " ")) -> str:
    """``text`` broken into lines that fit ``width_in`` inches: first after ``breaks[0]`` (a label's
    "base: adapter" parts), then at spaces, then hard at ``width``."""
    n = chars_fitting(width_in, fontsize)
    if len(text) <= n:
        return text
    head, sep, tail = text.partition(breaks[0]) if breaks else (text, "", "")
    if sep and len(head) + len(sep.rstrip()) <= n:
        return head + sep.rstrip() + "\n" + wrap(tail, width_in, fontsize, breaks[1:])
    return "\n".join(textwrap.wrap(text, n, break_long_words=True, break_on_hyphens=True)) or text


def _shown(t: Any) -> bool:
    return bool(t.get_visible() and t.get_text().strip())


def drawn_texts(fig: Any) -> list[Any]:
    """Every text the figure shows: titles, labels, legends, annotations, and the tick labels inside
    their axis' view (a locator also makes ticks beyond it, which are never drawn)."""
    from matplotlib.text import Text

    tick_labels: set[int] = set()
    out = []
    for ax in fig.axes:
        for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = min(lim), max(lim)
            tol = 1e-9 * (hi - lo)
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                for lab in (tick.label1, tick.label2):
                    tick_labels.add(id(lab))
                    if _shown(lab) and lo - tol <= tick.get_loc() <= hi + tol:
                        out.append(lab)
    return out + [t for t in fig.findobj(Text) if id(t) not in tick_labels and _shown(t)]


def overlaps(fig: Any, texts: Iterable[Any] | None = None, pad: float = 0.0) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose boxes intersect (by ``pad`` pixels or more), as (text, text).

    Draws the figure first, so the boxes are the rendered ones (fonts, layout engines applied)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    items = [(t.get_text(), t.get_window_extent(renderer)) for t in (texts if texts is not None
                                                                    else drawn_texts(fig))]
    out = []
    for i, (a, ba) in enumerate(items):
        for b, bb in items[i + 1:]:
            w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
            h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
            if w > pad and h > pad:
                out.append((a, b))
    return out


def spread(fig: Any, labels: Sequence[Any], step_pt: float = 9.0, tries: int = 12) -> None:
    """Move annotation ``labels`` up (in ``step_pt`` point steps) until none overlaps one placed before it:
    points at the same x (three one-module LoRAs of one size) get stacked, legible labels."""
    if len(labels) < 2:
        return
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    for t in labels:
        for _ in range(tries):
            box = t.get_window_extent(renderer)
            if not any(box.overlaps(p) for p in placed):
                break
            x, y = t.xyann
            t.xyann = (x, y + step_pt)
        placed.append(t.get_window_extent(renderer))


__all__ = ["chars_fitting", "drawn_texts", "overlaps", "spread", "wrap"]
