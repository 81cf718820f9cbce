"""Typed evaluation results: one ``TaskScore`` per task, one ``EvalResult`` per evaluation.

Results cross stages (grid cells, interventions, the study) as these types;
``EvalResult.scores`` is the ``scores.json`` document, with the keys it has
always had, so runs written before stay readable.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .metrics import yardsticks

_SHORT = {"weighted_f1": "WAF", "macro_f1": "macro-F1", "accuracy": "acc", "hit": "HIT", "perplexity": "ppl"}


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
    # {"majority": {"class", metric...}, "chance": {metric...}}: the yardsticks (see metrics.yardsticks)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: str = "none"  # closed-set scoring: none, contextual or pmi
    calibration_vector: dict[str, float] | None = None  # the per-label prior removed
    fewshot: dict[str, Any] | None = None  # k, source split, seed and the examples shown
    dropped_by: dict[str, int] = field(default_factory=dict)  # why rows never reached scoring: malformed, ...
    skipped: dict[str, int] = field(default_factory=dict)  # scored rows the metric does not count (HIT: neutral)
    notes: list[str] = field(default_factory=list)  # e.g. --limit/--sample larger than the task
    # {reference text: {label: raw log-likelihood}} of the calibration's content-free prompts
    reference_loglik: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The task's entry in ``scores.json`` (``tasks.<name>``)."""
        out = {"primary": self.primary, "primary_metric": self.primary_metric, "metrics": self.metrics,
               "n": self.n, "kind": self.kind, "dropped": self.dropped, "spec": self.spec,
               "calibration": self.calibration}
        if self.baselines:
            out["baselines"] = self.baselines
        if self.calibration_vector is not None:
            out["calibration_vector"] = self.calibration_vector
        if self.fewshot is not None:
            out["fewshot"] = self.fewshot
        for key in ("dropped_by", "skipped", "notes"):  # only when there is something to say
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.reference_loglik is not None:
            out["reference_loglik"] = self.reference_loglik
        return out

    @classmethod
    def from_dict(cls, name: str, entry: dict[str, Any]) -> TaskScore:
        """The inverse of :meth:`to_dict` (a task of a saved ``scores.json``)."""
        return cls(name, entry["kind"], entry["primary_metric"], entry["primary"], entry["metrics"], entry["n"],
                   entry.get("dropped", 0), entry.get("spec", {}), entry.get("baselines", {}),
                   entry.get("calibration", "none"), entry.get("calibration_vector"), entry.get("fewshot"),
                   entry.get("dropped_by", {}), entry.get("skipped", {}), entry.get("notes", []),
                   entry.get("reference_loglik"))

    def line(self) -> str:
        """One human-readable line: name, metric, value (x100 unless perplexity), CI, macro-F1 beside
        WAF, the majority-class and chance yardsticks of the primary metric, n."""
        val = self.primary
        shown = f"{val:.2f}" if self.primary_metric == "perplexity" else f"{100 * val:6.2f}"
        ci = self.metrics.get("ci", {}).get(self.primary_metric)
        ci_s = f"  [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else ""
        extra = ""
        if self.primary_metric == "weighted_f1" and "macro_f1" in self.metrics:
            extra += f"  macro-F1 {100 * self.metrics['macro_f1']:.2f}"
        major, chance = self.baselines.get("majority", {}), self.baselines.get("chance", {})
        if self.primary_metric in major:
            cls = major.get("hit_class" if self.primary_metric == "hit" else "class", major.get("class"))
            extra += f"  | majority ({cls}) {100 * major[self.primary_metric]:.2f}"
        if self.primary_metric in chance:
            extra += f", chance {100 * chance[self.primary_metric]:.2f}"
        how = "".join([f", {self.calibration}" if self.calibration != "none" else "",
                       f", {self.fewshot['k']}-shot" if self.fewshot else ""])
        counts = "".join(f", {v} {k.replace('_', ' ')} not counted" for k, v in self.skipped.items())
        counts += f", {self.dropped} dropped" if self.dropped else ""
        return f"{self.task:40s} {self.primary_metric:12s} {shown}{ci_s}{extra}  (n={self.n}{counts}{how})"


def attach_baselines(tasks: dict[str, TaskScore], predictions: list[dict[str, Any]]) -> None:
    """Give every labelled task its yardsticks, from the gold labels of its prediction rows.

    The rows are the evaluated ones (after ``--limit`` and protocol drops), so
    the majority score is exactly the "always answer X" score of this run.
    Generative sentiment is scored on the sign of the gold score, so its
    yardsticks are too.
    """
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in predictions:
        by_task.setdefault(r["task"], []).append(r)
    for name, score in tasks.items():
        rows = by_task.get(name)
        if not rows or score.kind == "perplexity":
            continue
        if "answer" in rows[0] and score.kind == "sentiment":
            gold = ["positive" if r["gold_score"] > 0 else "negative" for r in rows
                    if r.get("gold_score") not in (None, 0, 0.0)]
            labels: list[str] = ["negative", "positive"]
        else:
            gold = [r["gold"] for r in rows]
            labels = list(rows[0].get("labels") or score.metrics.get("labels") or sorted(set(gold)))
        if gold and set(gold) <= set(labels):
            score.baselines = yardsticks(gold, labels, list(score.metrics))


def mean_over_tasks(tasks: dict[str, TaskScore]) -> tuple[float | None, str | None, list[str]]:
    """``(mean, metric, tasks)``: one metric averaged, never WAF with accuracy.

    The metric is the most common primary metric (ties: the first task's);
    the mean runs over every task that computed it (perplexity never).
    """
    scored = [t for t in tasks.values() if t.kind != "perplexity"]
    if not scored:
        return None, None, []
    counts = Counter(t.primary_metric for t in scored)
    metric = max(counts, key=lambda m: (counts[m], -[t.primary_metric for t in scored].index(m)))
    over = [t.task for t in scored if isinstance(t.metrics.get(metric), int | float)]
    return sum(float(tasks[k].metrics[metric]) for k in over) / len(over), metric, over


@dataclass
class EvalResult:
    """Per-task scores, every prediction (all tasks), and what the scores were computed on.

    ``mean`` is the plain mean of one metric, ``mean_metric``, over the tasks
    ``mean_over`` (see :func:`mean_over_tasks`); ``figures`` holds each task's confusion data
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
    mean_metric: str | None = None
    # closed-set tasks: {"labels", "loglik" [n, L], "gold" [n], "reference" [3, L] or None}, for scores.npz
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_boot: int | None = None  # bootstrap resamples behind the CIs (rescore repeats them)
    # scored rows a tuned model was trained on, per task (evaluate.run.train_overlap); None: nothing to check
    train_overlap: dict[str, Any] | None = None

    @property
    def scores(self) -> dict[str, Any]:
        """The ``scores.json`` document."""
        return {"mode": self.mode, "tasks": {k: t.to_dict() for k, t in self.tasks.items()},
                "mean": self.mean, "mean_over": list(self.mean_over), "weights_sha256": self.weights_sha256,
                "seed": self.seed, "limit": self.limit, "batch_size": self.batch_size,
                "mean_metric": self.mean_metric,
                **({} if self.train_overlap is None else {"train_overlap": self.train_overlap})}

    def table(self) -> str:
        """Human-readable per-task lines and the mean (with the tasks it averages)."""
        lines = [t.line() for t in self.tasks.values()]
        if self.mean is not None:
            what = _SHORT.get(self.mean_metric or "", self.mean_metric or "primary metric")
            n = len(self.mean_over)
            lines.append(f"mean {what} over {n} task{'s' if n != 1 else ''} ({', '.join(self.mean_over)}): "
                         f"{100 * self.mean:.2f}")
        return "\n".join(lines)


__all__ = ["EvalResult", "TaskScore", "attach_baselines", "mean_over_tasks"]
