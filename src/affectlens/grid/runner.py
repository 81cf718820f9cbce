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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from .config import GridConfig, assign_keys, load_config
from .executors import ExecutorSpec, Job, adapter_dir, run_waves, waves
from .inputs import fingerprint_inputs, validate_config
from .report import REPORT_FILES, cell_path, report
from .results import Cell, TaskResult, per_example
from .stats import affective_mean
from .variants import Variant

Evaluator = Callable[..., Any]
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
    from ..devices import dtype_name, resolve_device

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
    from ..runs import note, write_json

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
    # Half-written files of a killed run (this run holds the dir's claim, so no one else writes here).
    for d in (out, out / "cells"):
        for f in sorted(d.glob(".*.tmp-*")) if d.is_dir() else []:
            if f.is_file():
                f.unlink()
                note(f"removed {f.relative_to(out.parent)}, a half-written file of a killed grid run")
    out.mkdir(exist_ok=True)
    write_json(out / MARKER, {"kind": MARKER_KIND, "config": cfg.raw, "config_path": cfg.path})
    (out / "cells").mkdir(exist_ok=True)
    return base_path


def cell_done(out: Path, v: Variant, seed: int) -> bool:
    """A cell is done when its file exists and carries the variant's current key (files are the truth)."""
    cp = cell_path(out, v, seed)
    if not cp.is_file():
        return False
    try:
        return json.loads(cp.read_text()).get("hash") == v.hash
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


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
                       tuner=tuner)

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
                    "dtype": where.dtype}, seed=cfg.seeds[0], extra={"seeds": cfg.seeds})
    return GridResult(out, rows, summary, len(todo), reused)


def _serial(cfg: GridConfig, out: Path, todo: list[tuple[Variant, int]], evaluator: Evaluator | None,
            tuner: Callable[..., Any] | None, echo: Callable[[str], None], base_path: Path, allow_pickle: bool,
            where: Placement) -> None:
    """Today's runner: one loaded base in this process, the cells in config order."""
    from ..runs import progress

    bench = Workbench(cfg, out, tuner, echo, base_path, allow_pickle, device=where.device, dtype=where.dtype)
    try:
        for v, seed in progress(todo, "grid cells", total=len(todo), unit="cell"):
            cell = bench.run_cell(v, seed, evaluator)
            echo(f"  {v.name} seed {seed}: mean {cell.mean:.4f} ({cell.cell_seconds:.1f} s)")
    finally:
        bench.close()


def task_results(res: Any, tasks: list[str]) -> dict[str, TaskResult]:
    """The evaluator's scores as typed results, in the order asked, under the grid's task names."""
    scores = getattr(res, "scores", res)
    if not isinstance(scores, dict) or not isinstance(scores.get("tasks"), dict):
        raise AffectlensError("the evaluator returned no scores")
    got = scores["tasks"]
    if len(got) != len(tasks):
        raise AffectlensError(f"the evaluator scored {len(got)} task(s), the grid asked for {len(tasks)}")
    out = {t: TaskResult.from_evaluator(e, name) for t, (name, e) in zip(tasks, got.items(), strict=True)}
    rows = getattr(res, "predictions", None)
    if isinstance(rows, list):  # per-example records, for paired statistics across variants
        for t, (name, e) in zip(tasks, got.items(), strict=True):
            out[t].examples = per_example(rows, name, e)
    return out


class Workbench:
    """Holds the one loaded base model; trains adapters on demand and scores each variant's model."""

    def __init__(self, cfg: GridConfig, out: Path, tuner: Callable[..., Any] | None, echo: Callable[[str], None],
                 base_path: Path, allow_pickle: bool = False, *, device: str = "auto", dtype: str = "auto") -> None:
        from ..models import load_model
        from ..tune import tune
        from ..weights import open_weights

        self.cfg, self.out, self.echo = cfg, out, echo
        self.tuner: Callable[..., Any] = tuner or tune
        self.base_path, self.allow_pickle = base_path, allow_pickle
        self.device, self.dtype = device, dtype  # adapters train where cells score (a GPU cell trains on it)
        self.model, self.tok = load_model(base_path, allow_pickle=allow_pickle, dtype=dtype, device=device)
        self.base_store = open_weights(base_path, allow_pickle=allow_pickle)

    def close(self) -> None:
        self.base_store.close()

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.out))

    def adapter(self, v: Variant, seed: int) -> tuple[Path, dict[str, Any]]:
        """The trained adapter of a tuned variant (trained now unless already on disk)."""
        ad = adapter_dir(self.out, v, seed)
        if not (ad / "adapter_config.json").is_file():
            budget = self.cfg.budget
            self.echo(f"  training {v.name} seed {seed} ({v.modules}, {budget.steps} steps)")
            self.tuner(str(self.base_path), self.cfg.data,
                       config=budget.replace(modules=str(v.modules), layers=v.layers, seed=int(seed)),
                       out=ad, force=ad.exists(), verbose=False, allow_pickle=self.allow_pickle,
                       device=self.device, dtype=self.dtype)
        info_path = ad / "affectlens_tune.json"
        return ad, (json.loads(info_path.read_text()) if info_path.is_file() else {})

    def source(self, ref: str, seed: int) -> Any:
        """A donor/model reference: 'base', a tuned variant (its adapter for this seed), or a path."""
        from ..weights import LoraAdapter, MergedStore, as_store

        if ref == "base":
            return self.base_store
        if ref in {v.name for v in self.cfg.variants}:
            ad, _ = self.adapter(self.cfg.variant(ref), seed)
            return MergedStore(self.base_store, LoraAdapter(ad))
        return as_store(ref, base=self.base_store, allow_pickle=self.allow_pickle)

    def all_of(self, src: Any) -> dict[str, Any]:
        """Every tensor in which a whole source model differs from the loaded base."""
        from ..weights import MergedStore

        if isinstance(src, MergedStore):
            return {n: src.get(n) for n in src.names() if src.adapted(n)}
        params = dict(self.model.named_parameters())
        return {n: src.get(n) for n in src.names() if n in params}

    def run_cell(self, v: Variant, seed: int, evaluator: Evaluator | None = None) -> Cell:
        """Compute one cell and write its file atomically (the only record of it that counts)."""
        from ..evaluate import evaluate
        from ..runs import write_json

        t0 = time.perf_counter()
        cell = self.cell(v, seed, evaluator or evaluate)
        cell.cell_seconds = time.perf_counter() - t0
        write_json(cell_path(self.out, v, seed), cell.to_json())
        return cell

    def cell(self, v: Variant, seed: int, evaluator: Evaluator) -> Cell:
        """Build ``v``'s model for ``seed`` (its own business), score it, refuse non-finite scores."""
        from ..transfer import applied

        built = v.build(self, seed)
        ev = self.cfg.eval
        t0 = time.perf_counter()
        with applied(self.model, built.tensors):
            cal = {"calibration": ev.calibration} if ev.calibration != "none" else {}
            res = evaluator(self.model, self.tok, list(self.cfg.tasks), mode=ev.mode, limit=ev.limit,
                            batch_size=ev.batch_size, seed=seed, **cal)
        tasks = task_results(res, list(self.cfg.tasks))
        for t, r in tasks.items():
            bad = r.nonfinite()
            if bad is not None:
                raise AffectlensError(f"grid cell '{v.name}' seed {seed}: task {t} scored a non-finite {bad[0]} "
                                      f"({bad[1]}); the cell was not written (finished cells are kept)")
        return Cell(variant=v.name, kind=v.kind, seed=seed, hash=v.hash, modules=v.modules, tasks=tasks,
                    mean=affective_mean(self.cfg, tasks), cost=built.cost,
                    eval_seconds=time.perf_counter() - t0, changed_tensors=len(built.tensors))


__all__ = ["MARKER", "GridResult", "Placement", "Workbench", "cell_done", "read_marker", "run_grid", "task_results"]
