"""``evaluate()``: score an in-memory model on tasks; ``write_run()``: the run directory.

The model is whatever the caller holds (plain, PEFT-wrapped, with hooks,
with transferred weights), so variants are scored without being written.
Results carry a fingerprint of the exact weights they came from. There is no
result cache: every call recomputes.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import AffectlensError
from .generative import (
    Wheel,
    answer_polarity,
    generate_answers,
    load_wheel,
    map_words,
    open_prompt,
    parse_answer,
)
from .loaders import LoadedTask, load_task
from .metrics import (
    binary_sentiment_metrics,
    classification_metrics,
    confusion,
    hit_rate,
    require_finite,
)
from .perplexity import perplexity
from .scorer import model_name, non_finite_error, score_labels, text_start
from .tasks import TaskSpec, parse_task, primary_metric

MODES = ("closed", "generative")


@dataclass
class EvalResult:
    """``scores`` is scores.json; ``predictions`` one dict per example (all tasks)."""

    scores: dict[str, Any]
    predictions: list[dict[str, Any]]
    mode: str
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> confusion data

    @property
    def mean(self) -> float | None:
        return self.scores.get("mean")

    def table(self) -> str:
        """Human-readable per-task lines and the mean (with the tasks it averages)."""
        lines = []
        for name, t in self.scores["tasks"].items():
            val = t["primary"]
            shown = f"{val:.2f}" if t["primary_metric"] == "perplexity" else f"{100 * val:6.2f}"
            ci = t["metrics"].get("ci", {}).get(t["primary_metric"])
            ci_s = f"  [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else ""
            lines.append(f"{name:40s} {t['primary_metric']:12s} {shown}{ci_s}  (n={t['n']})")
        if self.scores.get("mean") is not None:
            lines.append(f"mean over {', '.join(self.scores['mean_over'])}: {100 * self.scores['mean']:.2f}")
        return "\n".join(lines)


def load_scoring_model(path: str | Path, adapter: str | Path | None = None, dtype: str = "float32",
                       allow_pickle: bool = False) -> tuple[Any, Any]:
    """``models.load_model`` under the one pickle policy (pickle only with ``allow_pickle``)."""
    from ..models import load_model

    return load_model(path, adapter=adapter, dtype=dtype, allow_pickle=allow_pickle)


def weight_fingerprint(model) -> str:
    """sha256 over every parameter's name, dtype, shape and bytes: identical iff the weights are."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            t = p.detach().contiguous().cpu()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def closed_prompt(tokenizer, spec: TaskSpec, labels: Sequence[str], text: str) -> str:
    """A task's closed-set prompt: :func:`affectlens.prompts.render` with the spec's kind and wording."""
    from ..prompts import render

    return render(tokenizer, text, spec.kind, labels, query=spec.question)


def _seconds(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


def _closed(model, tok, task: LoadedTask, batch_size, seed, n_boot, progress) -> tuple[dict, list, dict]:
    spec, labels = task.spec, list(task.labels)
    prompts = [closed_prompt(tok, spec, labels, e.text) for e in task.examples]
    t0 = time.perf_counter()
    ll = score_labels(model, tok, prompts, labels, batch_size=batch_size, progress=progress)
    secs = _seconds(t0)
    bad = (~torch.isfinite(ll)).nonzero()
    if len(bad):  # argmax over NaN is a confident-looking label: never a prediction
        i, j = (int(x) for x in bad[0])
        raise non_finite_error(model, f"task {spec.name}", f"example {i} ({text_start(task.examples[i].text)}) "
                               f"has log-likelihood {float(ll[i, j])} for label '{labels[j]}'")
    pred = ll.argmax(-1).tolist()
    gold = [labels.index(e.label) for e in task.examples]
    metrics = classification_metrics(gold, pred, labels, n_boot=n_boot, seed=seed)
    metrics["seconds"] = secs
    metrics["examples_per_s"] = round(len(prompts) / max(secs, 1e-9), 2)
    rows = []
    for i, e in enumerate(task.examples):
        row = {"task": spec.name, "index": i, "text": e.text, "gold": e.label, "pred": labels[pred[i]],
               "loglik": {lab: float(ll[i, j]) for j, lab in enumerate(labels)}}
        if e.score is not None:
            row["gold_score"] = e.score
        rows.append(row)
    fig = {"labels": labels, "pred_labels": labels, "confusion": metrics["confusion"]}
    return metrics, rows, fig


def score_generative_rows(rows: list[dict], kind: str, labels: Sequence[str], wheel: Wheel,
                          n_boot: int = 1000, seed: int = 0) -> tuple[dict, dict]:
    """Metrics from saved answers (fills ``parsed``/``categories``/``pred``): re-scorable offline."""
    for r in rows:
        r["parsed"] = parse_answer(r["answer"])
    if kind == "emotion":
        per_wheel, n_counted = {}, 0
        for name, table in wheel.wheels.items():
            gold = [table.get(r["gold"], r["gold"]) for r in rows]
            pred_sets = []
            for r in rows:
                cats = sorted(map_words(r["parsed"], table))
                r.setdefault("categories", {})[name] = cats
                pred_sets.append(set(cats))
            per_wheel[name], n_counted = hit_rate(gold, pred_sets)
        hit = sum(per_wheel.values()) / len(per_wheel)
        first = next(iter(wheel.wheels))
        cats = sorted(set(labels) | {c for r in rows for c in r["categories"][first]})
        cols = [*cats, "(none)"]
        g = [cats.index(r["gold"]) if r["gold"] in cats else len(cats) for r in rows]
        p = [cats.index(r["categories"][first][0]) if r["categories"][first] else len(cats)
             for r in rows]
        for r in rows:
            r["pred"] = r["categories"][first]
        cm = confusion(g, p, len(cols))
        metrics = {"hit": hit, "hit_per_wheel": per_wheel, "n_counted": n_counted,
                   "neutral_skipped": len(rows) - n_counted, "wheel": wheel.source}
        fig = {"labels": cols, "pred_labels": cols, "confusion": cm.tolist(),
               "title": "gold vs first mapped category"}
        return metrics, fig
    if kind == "sentiment":
        for r in rows:
            r["pred"] = answer_polarity(r["parsed"], wheel)
        scores = [r.get("gold_score") for r in rows]
        metrics = binary_sentiment_metrics(scores, [r["pred"] == "positive" for r in rows],
                                           n_boot=n_boot, seed=seed)
        fig = {"labels": metrics["labels"], "pred_labels": metrics["labels"],
               "confusion": metrics["confusion"]}
        return metrics, fig
    # control: exact match of the first answer token against the closed label set
    labs = [*labels, "(other)"]
    for r in rows:
        m = re.search(r"\S+", r["answer"])
        word = m.group(0).strip(".,:;!?\"'").lower() if m else ""
        r["pred"] = word if word in labels else "(other)"
    metrics = classification_metrics([labs.index(r["gold"]) for r in rows],
                                     [labs.index(r["pred"]) for r in rows], labs, n_boot, seed)
    return metrics, {"labels": labs, "pred_labels": labs, "confusion": metrics["confusion"]}


def _generative(model, tok, task: LoadedTask, batch_size, seed, n_boot, progress, wheel,
                max_new_tokens) -> tuple[dict, list, dict]:
    spec = task.spec
    examples = task.examples
    if spec.kind == "sentiment":  # MER-UniBench: ground truth 0 is dropped
        examples = [e for e in examples if e.score not in (None, 0.0)]
        if not examples:
            raise AffectlensError(f"task {spec.name}: no examples with non-zero sentiment")
    if spec.kind == "control":
        prompts = [closed_prompt(tok, spec, task.labels, e.text) for e in examples]
    else:
        prompts = [open_prompt(tok, e.text, spec.open_question) for e in examples]
    t0 = time.perf_counter()
    answers = generate_answers(model, tok, prompts, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, progress=progress, seed=seed,
                               texts=[e.text for e in examples], where=f"task {spec.name}")
    secs = _seconds(t0)
    rows = []
    for i, (e, a) in enumerate(zip(examples, answers, strict=True)):
        row = {"task": spec.name, "kind": spec.kind, "index": i, "text": e.text, "gold": e.label,
               "answer": a, "labels": list(task.labels)}
        if e.score is not None:
            row["gold_score"] = e.score
        rows.append(row)
    metrics, fig = score_generative_rows(rows, spec.kind, task.labels, wheel, n_boot, seed)
    metrics["seconds"] = secs
    metrics["examples_per_s"] = round(len(rows) / max(secs, 1e-9), 2)
    return metrics, rows, fig


def evaluate(model, tokenizer, tasks: Sequence[str | TaskSpec] | str | TaskSpec, mode: str = "closed",
             limit: int | None = None, batch_size: int = 16, seed: int = 0, progress: bool = True,
             n_boot: int = 1000, wheel: str | Path | Wheel | None = None,
             max_new_tokens: int = 48) -> EvalResult:
    """Score ``model`` on ``tasks``; the mean is the plain mean of each task's primary metric.

    Perplexity tasks are reported but not averaged (lower is better, other units).
    """
    if mode not in MODES:
        raise AffectlensError(f"unknown mode '{mode}'; choose from {', '.join(MODES)}")
    if n_boot < 0:
        raise AffectlensError(f"--bootstrap must be 0 (no CIs) or positive, not {n_boot}")
    if max_new_tokens < 1:
        raise AffectlensError(f"--max-new-tokens must be positive, not {max_new_tokens}")
    if batch_size < 1:
        raise AffectlensError(f"--batch-size must be positive, not {batch_size}")
    if tokenizer is None:
        raise AffectlensError("evaluation needs the model's tokenizer; the model has none")
    if isinstance(tasks, str | TaskSpec):
        tasks = [tasks]
    if not tasks:
        raise AffectlensError("no tasks given")
    specs = [parse_task(t) for t in tasks]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise AffectlensError(f"task(s) given twice: {', '.join(dup)}")
    loaded = [load_task(s, limit) for s in specs]  # validate all inputs before any model work
    if mode == "generative":
        wheel = wheel if isinstance(wheel, Wheel) else load_wheel(wheel)
    was_training = getattr(model, "training", False)
    model.eval()
    out_tasks: dict[str, Any] = {}
    predictions: list[dict[str, Any]] = []
    figures: dict[str, dict[str, Any]] = {}
    try:
        for task in loaded:
            spec = task.spec
            if spec.kind == "perplexity":
                m = perplexity(model, tokenizer, [e.text for e in task.examples],
                               max_length=_int_opt(spec, "max_length"), stride=_int_opt(spec, "stride"),
                               batch_size=max(1, batch_size // 2), progress=progress)
                rows, fig = [], None
                n = m["texts"]
            elif mode == "closed":
                m, rows, fig = _closed(model, tokenizer, task, batch_size, seed, n_boot, progress)
                n = len(rows)
            else:
                m, rows, fig = _generative(model, tokenizer, task, batch_size, seed, n_boot, progress,
                                           wheel, max_new_tokens)
                n = len(rows)
            pm = primary_metric(spec, mode if spec.kind != "perplexity" else "closed")
            if pm not in m:
                raise AffectlensError(f"task {spec.name}: primary metric '{pm}' not computed in {mode} mode")
            out_tasks[spec.name] = {"primary": m[pm], "primary_metric": pm, "metrics": m, "n": n,
                                    "kind": spec.kind, "dropped": task.dropped, "spec": _spec_dict(spec)}
            predictions.extend(rows)
            if fig is not None:
                figures[spec.name] = fig
    finally:
        if was_training:
            model.train()
    averaged = [k for k, v in out_tasks.items() if v["kind"] != "perplexity"]
    mean = sum(out_tasks[k]["primary"] for k in averaged) / len(averaged) if averaged else None
    what = f"the evaluation of model {model_name(model)}"
    require_finite({"tasks": out_tasks, "mean": mean}, what)
    require_finite(predictions, f"the predictions of {what}")
    scores = {"mode": mode, "tasks": out_tasks, "mean": mean, "mean_over": averaged,
              "weights_sha256": weight_fingerprint(model), "seed": seed, "limit": limit,
              "batch_size": batch_size}
    return EvalResult(scores=scores, predictions=predictions, mode=mode, figures=figures)


def _int_opt(spec: TaskSpec, key: str) -> int | None:
    v = spec.option(key)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        raise AffectlensError(f"task {spec.name}: {key} must be an integer") from None


def _spec_dict(spec: TaskSpec) -> dict[str, Any]:
    return {"loader": spec.loader, "path": spec.path, "labels": list(spec.labels) if spec.labels else None,
            "options": dict(spec.options)}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "task"


def plot_confusion(fig_data: dict[str, Any], title: str, path: Path) -> None:
    """Row-normalised confusion matrix with counts, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(fig_data["confusion"], dtype=float)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(fig_data["labels"])
    size = max(4.0, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), fig_data["pred_labels"], rotation=45, ha="right")
    ax.set_yticks(range(n), fig_data["labels"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(fig_data.get("title") and f"{title}\n{fig_data['title']}" or title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_run(result: EvalResult, out: str | Path, force: bool = False,
              inputs: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
              command: str = "evaluate") -> Path:
    """scores.json, predictions.jsonl, confusion_<task>.png, manifest.json — atomically."""
    from ..runs import atomic_dir, write_json, write_manifest

    require_finite(result.scores, "scores")  # JSON never carries a bare NaN
    require_finite(result.predictions, "predictions")
    with atomic_dir(out, force) as tmp:
        write_json(tmp / "scores.json", result.scores)
        with open(tmp / "predictions.jsonl", "w", encoding="utf-8") as f:
            for row in result.predictions:
                f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        figs = {}
        for name, data in result.figures.items():
            fname = f"confusion_{_safe(name)}.png"
            plot_confusion(data, name, tmp / fname)
            figs[name] = fname
        write_manifest(tmp, command, inputs or {}, options or {}, seed=result.scores.get("seed"),
                       extra={"weights_sha256": result.scores.get("weights_sha256"), "figures": figs})
    return Path(out)


def rescore(predictions: str | Path, wheel: str | Path | None = None, n_boot: int = 1000,
            seed: int = 0) -> dict[str, dict[str, Any]]:
    """Re-compute generative metrics from a predictions.jsonl (no model), e.g. with another wheel."""
    p = Path(predictions)
    if not p.is_file():
        raise AffectlensError(f"{p} does not exist")
    rows = [json.loads(x) for x in p.read_text("utf-8").splitlines() if x.strip()]
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        if "answer" not in r:
            raise AffectlensError(f"{p} holds closed-set predictions; only generative runs are re-scored")
        by_task.setdefault(r["task"], []).append(r)
    w = load_wheel(wheel)
    out = {}
    for task, rs in by_task.items():
        out[task], _ = score_generative_rows(rs, rs[0]["kind"], rs[0]["labels"], w, n_boot, seed)
    return out
