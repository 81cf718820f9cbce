"""Typed evaluation results: one ``TaskScore`` per task, one ``EvalResult`` per evaluation.

Results cross stages (grid cells, interventions, the study) as these types;
``EvalResult.scores`` is the ``scores.json`` document, with the keys it has
always had, so runs written before stay readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskScore:
    """One task's score: the primary metric's value and every metric computed for it."""

    task: str
    kind: str
    primary_metric: str
    primary: float
    metrics: dict[str, Any]
    n: int
    dropped: int = 0
    spec: dict[str, Any] = field(default_factory=dict)
    calibration: str = "none"  # closed-set scoring: none, contextual or pmi
    calibration_vector: dict[str, float] | None = None  # the per-label prior removed
    fewshot: dict[str, Any] | None = None  # k, source split, seed and the examples shown

    def to_dict(self) -> dict[str, Any]:
        """The task's entry in ``scores.json`` (``tasks.<name>``)."""
        out = {"primary": self.primary, "primary_metric": self.primary_metric, "metrics": self.metrics,
               "n": self.n, "kind": self.kind, "dropped": self.dropped, "spec": self.spec,
               "calibration": self.calibration}
        if self.calibration_vector is not None:
            out["calibration_vector"] = self.calibration_vector
        if self.fewshot is not None:
            out["fewshot"] = self.fewshot
        return out

    def line(self) -> str:
        """One human-readable line: name, metric, value (x100 unless perplexity), CI, n."""
        val = self.primary
        shown = f"{val:.2f}" if self.primary_metric == "perplexity" else f"{100 * val:6.2f}"
        ci = self.metrics.get("ci", {}).get(self.primary_metric)
        ci_s = f"  [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else ""
        return f"{self.task:40s} {self.primary_metric:12s} {shown}{ci_s}  (n={self.n})"


@dataclass
class EvalResult:
    """Per-task scores, every prediction (all tasks), and what the scores were computed on.

    ``mean`` is the plain mean of the primary metrics of ``mean_over`` (every
    task but perplexity ones); ``figures`` holds each task's confusion data
    (plain lists, see ``plots.confusion_matrix``).
    """

    tasks: dict[str, TaskScore]
    predictions: list[dict[str, Any]]
    mode: str
    mean: float | None = None
    mean_over: list[str] = field(default_factory=list)
    weights_sha256: str | None = None
    seed: int = 0
    limit: int | None = None
    batch_size: int = 16
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def scores(self) -> dict[str, Any]:
        """The ``scores.json`` document."""
        return {"mode": self.mode, "tasks": {k: t.to_dict() for k, t in self.tasks.items()},
                "mean": self.mean, "mean_over": list(self.mean_over), "weights_sha256": self.weights_sha256,
                "seed": self.seed, "limit": self.limit, "batch_size": self.batch_size}

    def table(self) -> str:
        """Human-readable per-task lines and the mean (with the tasks it averages)."""
        lines = [t.line() for t in self.tasks.values()]
        if self.mean is not None:
            lines.append(f"mean over {', '.join(self.mean_over)}: {100 * self.mean:.2f}")
        return "\n".join(lines)


__all__ = ["EvalResult", "TaskScore"]
