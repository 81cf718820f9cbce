"""Running (or resuming) a grid: one loaded base, each cell built in memory and scored.

A grid dir is recognised by its ``grid_config.json`` marker; a grid never
writes into any other non-empty directory, even with ``force``. The whole
config is validated before the first cell, and the report files are removed
before any cell is computed, so an interrupted run never leaves an old table
looking complete. Each cell's result is one JSON file written atomically,
keyed by its variant's content hash, so an interrupted grid resumes where it
stopped and a changed variant or input is recomputed alone. A cell with a
non-finite score stops the grid (one line naming the cell); it is not written.
The cells run here one after another (``serial``) or on Ray / Slurm
(``grid.executors``); either way the cell files decide what is done.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from .config import GridConfig, assign_keys, load_config
from .eta import cell_costs, job_cost
from .executors import ExecutorSpec, Job, run_waves, waves
from .inputs import fingerprint_inputs, validate_config
from .report import REPORT_FILES, cell_path, report
from .variants import Variant
from .workbench import Evaluator, Workbench, cell_done, task_results

MARKER = "grid_config.json"
MARKER_KIND = "affectlens-grid"


@dataclass(frozen=True)
class Placement:
    """Where the cells run: the engine, and the device/dtype of each cell's model."""

    executor: ExecutorSpec
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class GridResult:
    out: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    computed: int
    reused: int


def run_grid(config: str | os.PathLike | dict, out: str | os.PathLike, force: bool = False,
             evaluator: Evaluator | None = None, tuner: Callable[..., Any] | None = None,
             echo: Callable[[str], None] = print, allow_pickle: bool = False, *,
             executor: str | ExecutorSpec = "serial", device: str = "auto", dtype: str = "auto") -> GridResult:
    """Run (or resume) a grid; ``evaluator``/``tuner`` default to affectlens' own.

    ``allow_pickle`` lets a pickle (``.bin``) base load (``weights_only``); off by default.
    ``out`` is claimed for the whole run (a second run on it is refused). Only an
    empty dir or a grid dir is used; ``force`` allows a grid dir whose config
    differs (changed cells are recomputed), never another command's output.
    ``executor`` runs the cells in this process (``serial``) or on Ray / Slurm
    (an ``ExecutorSpec`` says where and what each cell needs); an ``evaluator`` or
    ``tuner`` given then must pickle. ``device``/``dtype`` are where each cell's model runs.
    """
    from ..runs import claim_output

    spec = executor if isinstance(executor, ExecutorSpec) else ExecutorSpec(executor)
    spec.check()
    from ..models.devices import dtype_name, resolve_device

    dtype_name(dtype)
    if spec.name == "serial":  # a remote cell resolves its device where it runs (the driver may have no GPU)
        resolve_device(device)
    cfg = load_config(config)
    with claim_output(out):
        return _run(cfg, Path(out), force, evaluator, tuner, echo, allow_pickle,
                    Placement(spec, device, dtype))


def read_marker(out: Path) -> dict[str, Any] | None:
    """The grid marker of ``out``; None for an empty dir; an error for any other directory."""
    marker = out / MARKER
    if not marker.is_file():
        if any(out.iterdir()):
            raise AffectlensError(f"output {out} exists and is not a grid run dir (no {MARKER}); "
                                  "a grid never writes into another command's output: choose another --out")
        return None
    try:
        old = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        old = None
    if not isinstance(old, dict) or "config" not in old or old.get("kind", MARKER_KIND) != MARKER_KIND:
        raise AffectlensError(f"{marker} is not a grid marker; choose another --out")
    return old


def _prepare(cfg: GridConfig, out: Path, force: bool, allow_pickle: bool) -> Path:
    """Check the dir and the config, key the cells by content, and clear the stale report."""
    from ..runs import write_json

    if out.exists():
        old = read_marker(out)
        if old is not None and old.get("config") != json.loads(json.dumps(cfg.raw, default=str)) and not force:
            raise AffectlensError(
                f"{out} holds a grid with another config; pass --force to recompute the changed cells")
    base_path = validate_config(cfg, allow_pickle)
    assign_keys(cfg, fingerprint_inputs(cfg, base_path))
    for name in REPORT_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    # Half-written files of a killed run are swept when its claim is taken over (claims.sweep):
    # only the ones whose names carry a run id that the claim names, never a user's look-alike.
    out.mkdir(exist_ok=True)
    write_json(out / MARKER, {"kind": MARKER_KIND, "config": cfg.raw, "config_path": cfg.path})
    (out / "cells").mkdir(exist_ok=True)
    return base_path


def _run(cfg: GridConfig, out: Path, force: bool, evaluator: Evaluator | None, tuner: Callable[..., Any] | None,
         echo: Callable[[str], None], allow_pickle: bool, where: Placement) -> GridResult:
    from ..runs import write_manifest

    base_path = _prepare(cfg, out, force, allow_pickle)
    todo = [(v, s) for v, s in cfg.cells() if not cell_done(out, v, s)]
    reused = len(cfg.cells()) - len(todo)
    echo(f"grid {cfg.name}: {len(cfg.cells())} cells ({len(cfg.variants)} variants x seeds {cfg.seeds}); "
         f"{reused} done, {len(todo)} to run")
    if todo and where.executor.name == "serial":
        _serial(cfg, out, todo, evaluator, tuner, echo, base_path, allow_pickle, where)
    elif todo:
        def make(v: Variant, seed: int, adapter_only: bool = False) -> Job:
            return Job(config=json.loads(json.dumps(cfg.raw, default=str)), keys={x.name: x.hash for x in cfg.variants},
                       out=str(out.resolve()), base_path=str(base_path.resolve()), cwd=os.getcwd(), variant=v.name,
                       seed=seed, adapter_only=adapter_only, device=where.device, dtype=where.dtype,
                       threads=where.executor.cpus_per_cell, allow_pickle=allow_pickle, evaluator=evaluator,
                       tuner=tuner, cost=job_cost(cfg, out, v, seed, adapter_only))

        run_waves(where.executor, waves(cfg, out, todo, make), out, echo)
        missing = [f"'{v.name}' seed {s}" for v, s in todo if not cell_done(out, v, s)]
        if missing:  # the files decide, not what the workers said
            raise AffectlensError(f"grid cell {missing[0]} has no result file after the run; rerun to resume")
        for v, s in todo:
            c = json.loads(cell_path(out, v, s).read_text())
            echo(f"  {v.name} seed {s}: mean {c['mean']:.4f} ({c['cell_seconds']:.1f} s)")
    rows, summary = report(cfg, out, echo)
    write_manifest(out, "grid", {"config": cfg.path or "<dict>", "base": str(base_path)},
                   {"config": cfg.raw, "executor": where.executor.name, "device": where.device,
                    "dtype": where.dtype}, seed=cfg.seeds[0],
                   extra={"seeds": cfg.seeds, "train_overlap": cfg.train_overlap})
    return GridResult(out, rows, summary, len(todo), reused)


def _serial(cfg: GridConfig, out: Path, todo: list[tuple[Variant, int]], evaluator: Evaluator | None,
            tuner: Callable[..., Any] | None, echo: Callable[[str], None], base_path: Path, allow_pickle: bool,
            where: Placement) -> None:
    """Today's runner: one loaded base in this process, the cells in config order."""
    from ..runs import progress

    bench = Workbench(cfg, out, tuner, echo, base_path, allow_pickle, device=where.device, dtype=where.dtype)
    try:
        for v, seed in progress(todo, "grid cells", total=len(todo), unit="cell", weights=cell_costs(cfg, out, todo)):
            cell = bench.run_cell(v, seed, evaluator)
            echo(f"  {v.name} seed {seed}: mean {cell.mean:.4f} ({cell.cell_seconds:.1f} s)")
    finally:
        bench.close()


__all__ = ["MARKER", "GridResult", "Placement", "Workbench", "cell_done", "read_marker", "run_grid", "task_results"]
