"""Typed results that cross the grid's stages: evaluator -> cell file -> statistics -> report.

A cell is one (variant, seed): how its model was built (``Cost``) and what each
task scored (``TaskResult``). Cells are stored as JSON (one file each, keyed by
the variant's content hash) and read back into the same types, so the
statistics and the report never guess what a field holds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import AffectlensError


@dataclass
class TaskResult:
    """One task's score in one cell: the primary metric and the scalar metrics beside it."""

    primary: float
    metrics: dict[str, float] = field(default_factory=dict)
    n: int | None = None
    kind: str | None = None
    name: str = ""
    # Per example (closed-set scoring only): {"labels", "gold" (label indices), "loglik" ([example][label],
    # raw), "metric" (the primary's name), "reference" ({content-free text: [label loglik]}) when the
    # evaluator calibrated}. The study pairs examples across variants and re-derives any calibration from
    # it; None when the evaluator gave no per-example rows (the scalar scores above still stand).
    examples: dict[str, Any] | None = None

    @classmethod
    def from_evaluator(cls, entry: Any, name: str) -> TaskResult:
        """From one entry of ``evaluate()``'s ``scores["tasks"]`` (``primary`` must be a number)."""
        if not isinstance(entry, dict):
            raise AffectlensError(f"the evaluator returned no scores for task {name}")
        p = entry.get("primary")
        if isinstance(p, bool) or not isinstance(p, int | float):
            raise AffectlensError(f"the evaluator's primary score for task {name} is {p!r}, not a number")
        metrics = {k: float(v) for k, v in (entry.get("metrics") or {}).items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
        raw = (entry.get("metrics") or {}).get("uncalibrated")
        if isinstance(raw, dict):  # a calibrated score: the raw decision's metrics beside it, flattened
            metrics.update({f"uncalibrated_{k}": float(v) for k, v in raw.items()
                            if isinstance(v, int | float) and not isinstance(v, bool)})
            if entry.get("primary_metric") in raw:
                metrics["uncalibrated_primary"] = float(raw[entry["primary_metric"]])
        n = entry.get("n")
        return cls(float(p), metrics, n if isinstance(n, int) else None, entry.get("kind"), name)

    def nonfinite(self) -> tuple[str, float] | None:
        """The first non-finite number (key, value), or None when all are finite."""
        for key, val in [("primary", self.primary), *sorted(self.metrics.items())]:
            if not math.isfinite(val):
                return key, val
        return None


def per_example(rows: Any, name: str, entry: Any) -> dict[str, Any] | None:
    """One task's per-example record (see ``TaskResult.examples``) from the evaluator's prediction rows:
    the closed-set rows of task ``name`` with their label log-likelihoods; None when there are none."""
    mine = [r for r in rows if isinstance(r, dict) and r.get("task") == name and isinstance(r.get("loglik"), dict)]
    if not mine or not isinstance(entry, dict):
        return None
    labels = list(mine[0]["loglik"])
    if any(list(r["loglik"]) != labels or r.get("gold") not in labels for r in mine):
        return None
    out: dict[str, Any] = {"labels": labels, "gold": [labels.index(r["gold"]) for r in mine],
                           "loglik": [[float(r["loglik"][lab]) for lab in labels] for r in mine],
                           "metric": entry.get("primary_metric")}
    ref = entry.get("reference_loglik")
    if isinstance(ref, dict) and all(isinstance(v, dict) and list(v) == labels for v in ref.values()):
        out["reference"] = {str(k): [float(v[lab]) for lab in labels] for k, v in ref.items()}
    return out


@dataclass
class Cost:
    """What building a variant's model cost or changed (for the params column and the frontier)."""

    trainable_params: int | None = None
    param_basis: str = "none"  # lora | full | ablated | none
    seconds_per_step: float | None = None
    adapter: str | None = None  # relative to the grid dir
    ablated: list[str] | None = None
    params_ablated: int | None = None
    source: str | None = None  # the ablated model's variant/path


@dataclass
class Cell:
    """The stored result of one (variant, seed)."""

    variant: str
    kind: str
    seed: int
    hash: str
    modules: str | None
    tasks: dict[str, TaskResult]
    mean: float
    cost: Cost = field(default_factory=Cost)
    eval_seconds: float = 0.0
    changed_tensors: int = 0
    cell_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "cost"}
        return {**out, **dataclasses.asdict(self.cost)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Cell:
        cost = Cost(**{f.name: d.get(f.name, f.default) for f in dataclasses.fields(Cost)})
        tasks = {t: TaskResult(**{k: e.get(k) for k in ("primary", "metrics", "n", "kind", "name", "examples")})
                 for t, e in d["tasks"].items()}
        return cls(variant=d["variant"], kind=d["kind"], seed=int(d["seed"]), hash=d["hash"],
                   modules=d.get("modules"), tasks=tasks, mean=float(d["mean"]), cost=cost,
                   eval_seconds=float(d.get("eval_seconds") or 0.0),
                   changed_tensors=int(d.get("changed_tensors") or 0),
                   cell_seconds=float(d.get("cell_seconds") or 0.0))


__all__ = ["Cell", "Cost", "TaskResult", "per_example"]
