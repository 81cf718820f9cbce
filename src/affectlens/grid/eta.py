"""What each grid cell is expected to cost, so the grid's ETA weights cells by their work.

Cells differ by an order of magnitude: one that trains its adapter first
costs the budget's steps x batch on top of scoring, one whose adapter is on
disk (or trained by an earlier cell) only scores. Counting cells alike made
the first ETA promise 6 minutes with 18 left. The unit is one scored example;
a training example (forward + backward, ~60 tokens) costs about 0.74 of one,
the ratio of the per-token training and per-example scoring costs measured on
SmolLM2-135M (``study.budget``'s calibration).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .executors import adapter_dir

TRAIN_EXAMPLE = 0.74  # one training example of ~60 tokens, in scored examples
EXAMPLE_TOKENS = 60  # a bundled training example's mean length (prompt + answer)
TASK_SIZE = 140  # examples of a bundled test set (the guess when the grid sets no limit)


def score_cost(cfg: Any) -> float:
    """Scoring one cell: its examples over the grid's tasks."""
    return float((cfg.eval.limit or TASK_SIZE) * max(1, len(cfg.tasks)))


def train_cost(cfg: Any) -> float:
    """Training one adapter under the grid's budget: steps x batch (shorter texts cost less)."""
    b = cfg.budget
    return b.steps * b.batch_size * TRAIN_EXAMPLE * min(b.max_length, EXAMPLE_TOKENS) / EXAMPLE_TOKENS


def _needs(cfg: Any, v: Any) -> Any:
    """The tuned variant whose adapter ``v`` reads (itself, or the donor/model it names), if any."""
    if v.tuned:
        return v
    names = {x.name for x in cfg.variants}
    dep = cfg.variant(v.ref) if v.ref in names else None
    return dep if dep is not None and dep.tuned else None


def _on_disk(out: Path, v: Any, seed: int) -> bool:
    return (adapter_dir(out, v, seed) / "adapter_config.json").is_file()


def cell_costs(cfg: Any, out: Path, todo: list[tuple[Any, int]]) -> list[float]:
    """Each cell's expected cost when run in ``todo``'s order in one process (an adapter trains once)."""
    trained: set[tuple[str, int]] = set()
    costs = []
    for v, seed in todo:
        cost = score_cost(cfg)
        dep = _needs(cfg, v)
        if dep is not None and (dep.name, seed) not in trained:
            trained.add((dep.name, seed))
            if not _on_disk(out, dep, seed):
                cost += train_cost(cfg)
        costs.append(cost)
    return costs


def job_cost(cfg: Any, out: Path, v: Any, seed: int, adapter_only: bool = False) -> float:
    """A cluster job's expected cost: a tuned cell trains its adapter unless on disk; an
    adapter-only job only trains; the other cells read adapters the first wave made."""
    train = train_cost(cfg) if v.tuned and not _on_disk(out, v, seed) else 0.0
    return train if adapter_only else train + score_cost(cfg)


__all__ = ["cell_costs", "job_cost", "score_cost", "train_cost"]
