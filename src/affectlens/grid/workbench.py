"""One loaded base model that builds and scores each grid cell: used in this process and by the workers.

Below both ``runner`` (which plans the cells) and ``executors`` (which ship them
to Ray or Slurm), so that the worker side imports it without a circle.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from .config import GridConfig
from .report import cell_path
from .results import Cell, TaskResult, per_example
from .stats import affective_mean
from .variants import Variant

Evaluator = Callable[..., Any]


def adapter_dir(out: Path, v: Any, seed: int) -> Path:
    """Where a tuned variant's adapter for ``seed`` lives in the grid dir."""
    from ..runs import slug

    return out / "adapters" / f"{slug(v.name, 'variant')}__s{seed}__{v.hash}"


def cell_done(out: Path, v: Variant, seed: int) -> bool:
    """A cell is done when its file exists and carries the variant's current key (files are the truth)."""
    cp = cell_path(out, v, seed)
    if not cp.is_file():
        return False
    try:
        return json.loads(cp.read_text()).get("hash") == v.hash
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


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
        from ..models.loading import load_model
        from ..tune.run import tune
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
        from ..models.merged import MergedStore, as_store
        from ..weights import LoraAdapter

        if ref == "base":
            return self.base_store
        if ref in {v.name for v in self.cfg.variants}:
            ad, _ = self.adapter(self.cfg.variant(ref), seed)
            return MergedStore(self.base_store, LoraAdapter(ad))
        return as_store(ref, base=self.base_store, allow_pickle=self.allow_pickle)

    def all_of(self, src: Any) -> dict[str, Any]:
        """Every tensor in which a whole source model differs from the loaded base."""
        from ..models.merged import MergedStore

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
        from ..interventions.transfer import applied

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


__all__ = ["Evaluator", "Workbench", "adapter_dir", "cell_done", "task_results"]
