"""A grid's report from its cells: grid.csv, table.md, summary.json and frontier.png.

Every report file is derived from the cells and written whole (temp file +
rename); the runner removes them before computing any cell, so an
interrupted run never leaves an old table looking complete.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..claims import temp_file
from ..errors import AffectlensError
from .config import GridConfig
from .results import Cell
from .stats import control_task_names, lower_is_better, summarise

REPORT_FILES = ("grid.csv", "table.md", "summary.json", "frontier.png", "manifest.json")
# grid.csv columns that time a run rather than score it (they differ between any two runs).
TIMING_COLUMNS = ("seconds", "examples_per_s", "seconds_per_step")


def cell_path(out: Path, v: Any, seed: int) -> Path:
    from ..runs import slug

    return out / "cells" / f"{slug(v.name, 'variant')}__s{seed}.json"


def read_cells(cfg: GridConfig, out: Path) -> dict[tuple[str, int], Cell]:
    cells = {}
    for v, seed in cfg.cells():
        cp = cell_path(out, v, seed)
        if not cp.is_file():
            raise AffectlensError(f"cell {v.name} seed {seed} has no result in {out}/cells")
        cells[(v.name, seed)] = Cell.from_json(json.loads(cp.read_text()))
    return cells


def csv_rows(cfg: GridConfig, cells: dict[tuple[str, int], Cell]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per (variant, seed, task) with every scalar metric any cell reported."""
    metric_keys: list[str] = []
    for c in cells.values():
        for t in cfg.tasks:
            metric_keys.extend(k for k in (c.tasks[t].metrics if t in c.tasks else {}) if k not in metric_keys)
    rows = []
    for (vname, seed), c in cells.items():
        for t in cfg.tasks:
            e = c.tasks.get(t)
            row = {"variant": vname, "kind": c.kind, "seed": seed, "task": t,
                   "primary": None if e is None else e.primary, "n": None if e is None else e.n,
                   "trainable_params": c.cost.trainable_params, "seconds_per_step": c.cost.seconds_per_step}
            row.update({k: None if e is None else e.metrics.get(k) for k in metric_keys})
            rows.append(row)
    fields = ["variant", "kind", "seed", "task", "primary", *metric_keys, "n", "trainable_params",
              "seconds_per_step"]
    return rows, fields


def report(cfg: GridConfig, out: Path, echo: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """grid.csv, table.md, summary.json and the frontier from the finished cells."""
    from ..plots import frontier as frontier_figure
    from ..runs import write_json

    cells = read_cells(cfg, out)
    rows, fields = csv_rows(cfg, cells)
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    write_text(out / "grid.csv", buf.getvalue())
    summary = summarise(cfg, cells)
    md = markdown(cfg, summary)
    write_text(out / "table.md", md)
    # NaN in the summary means "no value" (a 95 % CI over one seed): written as null.
    write_json(out / "summary.json", summary, nonfinite="null")
    fr = summary["frontier"]
    fixed = {n: s["mean"]["mean"] for n, s in summary["variants"].items()
             if s["kind"] == "reference" and not s["trainable_params"]}
    fig = frontier_figure(fr["points"], fr.get("pareto", []), fixed, cfg.reference,
                          f"{cfg.name}: cost-performance frontier")
    save_figure(fig, out / "frontier.png")
    echo(md)
    for line in fr.get("lines", []):
        echo(line)
    echo(f"wrote {out}/grid.csv, table.md, summary.json, frontier.png")
    return rows, summary


def write_text(path: Path, text: str) -> None:
    """Temp file + rename: a report file is whole or absent (the temp is ``claims.temp_file``'s: never a user's)."""
    tmp = temp_file(path)
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write(text)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def save_figure(fig: Any, path: Path) -> None:
    """plots.save to a temp PNG, then rename: the figure is whole or absent too."""
    from ..plots import save

    tmp = temp_file(path, path.suffix)  # the suffix stays last: it picks the image format
    try:
        save(fig, tmp)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _fmt(x: float | None, scale: float = 100.0) -> str:
    if x is None or x != x:
        return "—"
    return f"{x * scale:.2f}"


def markdown(cfg: GridConfig, summary: dict[str, Any]) -> str:
    """The table (best per column in bold, ± 95 % CI with several seeds), necessity and frontier."""
    tasks, ctrl, variants = list(cfg.tasks), control_task_names(cfg), summary["variants"]
    cols = [*tasks, "Mean"]
    best: dict[str, float] = {}
    for col in cols:
        vals = [(variants[v]["tasks"][col]["mean"] if col != "Mean" else variants[v]["mean"]["mean"])
                for v in variants]
        vals = [x for x in vals if x == x]
        if vals:
            best[col] = min(vals) if col != "Mean" and lower_is_better(col) else max(vals)
    multi = len(cfg.seeds) > 1
    lines = [f"# {cfg.name}", "",
             f"Primary metric x100 (mean over seeds{' ± 95 % CI' if multi else ''}); "
             f"Mean = affective tasks only" + (f" (control: {', '.join(ctrl)})" if ctrl else "") + "; best in bold.",
             "", "| variant | kind | params | " + " | ".join(cols) + " |",
             "|---|---|---:|" + "---:|" * len(cols)]
    for name, s in variants.items():
        cells = []
        for col in cols:
            e = s["mean"] if col == "Mean" else s["tasks"][col]
            scale = 1.0 if col != "Mean" and lower_is_better(col) else 100.0
            txt = _fmt(e["mean"], scale)
            if multi and e.get("ci95") == e.get("ci95") and e.get("ci95") is not None:
                txt += f" ± {_fmt(e['ci95'], scale)}"
            if col in best and e["mean"] == best[col]:
                txt = f"**{txt}**"
            cells.append(txt)
        p = s["trainable_params"] if s["kind"] != "ablate" else s["params_ablated"]
        ptxt = "—" if p is None else f"{p:,}" + (" (abl.)" if s["kind"] == "ablate" else "")
        lines.append(f"| {name} | {s['kind']} | {ptxt} | " + " | ".join(cells) + " |")
    abl = {n: s for n, s in variants.items() if s["kind"] == "ablate"}
    if abl:
        lines += ["", "## Necessity: drop on affective vs control tasks (same ablation)", "",
                  "| ablation | ablated modules | params | affective Mean (drop) | control (drop) |",
                  "|---|---|---:|---:|---:|"]
        for n, s in abl.items():
            src = variants.get(s["source"] or "", None)
            da = dc = "—"
            if src is not None:
                da = _fmt(src["mean"]["mean"] - s["mean"]["mean"])
                if s["control_mean"] and src["control_mean"]:
                    dc = _fmt(src["control_mean"]["mean"] - s["control_mean"]["mean"])
            cm = _fmt(s["control_mean"]["mean"]) if s["control_mean"] else "—"
            lines.append(f"| {n} | {','.join(s['ablated'] or [])} | {s['params_ablated'] or 0:,} | "
                         f"{_fmt(s['mean']['mean'])} ({da}) | {cm} ({dc}) |")
    fr = summary.get("frontier", {})
    if fr.get("lines"):
        lines += ["", "## Cost-performance frontier", "", *[f"- {x}" for x in fr["lines"]]]
    return "\n".join(lines) + "\n"


__all__ = ["REPORT_FILES", "TIMING_COLUMNS", "cell_path", "markdown", "read_cells", "report"]
