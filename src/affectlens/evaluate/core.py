"""``evaluate()``: score an in-memory model on tasks, as typed ``TaskScore`` results.

The model is whatever the caller holds (plain, PEFT-wrapped, with hooks,
with transferred weights), so variants are scored without being written.
Results carry a fingerprint of the exact weights they came from. There is no
result cache: every call recomputes. Writing a run directory is
``evaluate.run`` (``evaluate_run`` / ``write_run``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AffectlensError
from ..runs import note
from ..tasks.loaders import LoadedTask, load_task
from ..tasks.spec import TaskSpec, parse_task, primary_metric
from ..vocab import EVAL_MODES
from .answers import score_generative_rows
from .backends import GenerationBackend, get_backend
from .calibration import CONTENT_FREE, check_mode
from .decisions import closed_decision, closed_row
from .fewshot import Shots, draw_shots
from .generative import Wheel, load_wheel, open_prompt
from .metrics import require_finite
from .perplexity import perplexity
from .results import EvalResult, TaskScore, attach_baselines, mean_over_tasks
from .scorer import model_name, non_finite_error, score_labels, text_start

MODES = EVAL_MODES  # named in vocab so the CLI offers them without importing torch


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


def closed_prompt(tokenizer, spec: TaskSpec, labels: Sequence[str], text: str,
                  shots: Sequence[tuple[str, str]] = ()) -> str:
    """A task's closed-set prompt: :func:`affectlens.prompts.render` with the spec's kind and wording."""
    from ..tasks.prompts import render

    return render(tokenizer, text, spec.kind, labels, query=spec.question, shots=shots)


def _seconds(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


def _closed(model, tok, task: LoadedTask, batch_size, seed, n_boot, progress, calibration: str = "none",
            shots: Shots | None = None, processor: Any = None) -> tuple[dict, list, dict, dict, dict]:
    spec, labels = task.spec, list(task.labels)
    solved = shots.pairs() if shots else []

    def prompt(text: str) -> str:
        return closed_prompt(tok, spec, labels, text, solved)

    prompts = [prompt(e.text) for e in task.examples]
    t0 = time.perf_counter()
    if image_rows(task):
        ll = _with_images(model, tok, processor, task, prompts, batch_size, progress)
    else:
        ll = score_labels(model, tok, prompts, labels, batch_size=batch_size, progress=progress,
                          desc=f"evaluate {spec.name}")
    bad = (~torch.isfinite(ll)).nonzero()
    if len(bad):  # argmax over NaN is a confident-looking label: never a prediction
        i, j = (int(x) for x in bad[0])
        raise non_finite_error(model, f"task {spec.name}", f"example {i} ({text_start(task.examples[i].text)}) "
                               f"has log-likelihood {float(ll[i, j])} for label '{labels[j]}'")
    refs = None  # every content-free prompt, once per task and whatever --calibration: kept for rescore
    if not image_rows(task):
        refs = score_labels(model, tok, [prompt(t) for t in CONTENT_FREE], labels, batch_size=batch_size).numpy()
    secs = _seconds(t0)
    raw = ll.double().numpy()
    gold = [labels.index(e.gold) for e in task.examples]
    dec = closed_decision(raw, refs, gold, labels, calibration, n_boot, seed, spec.name)
    metrics = dec.metrics
    metrics["seconds"] = secs
    metrics["examples_per_s"] = round(len(prompts) / max(secs, 1e-9), 2)
    rows = []
    for i, e in enumerate(task.examples):
        extra: dict[str, Any] = {}
        if e.score is not None:
            extra["gold_score"] = e.score
        if e.meta.get("image"):
            extra["image"] = e.meta["image"]
        rows.append(closed_row(spec.name, i, e.text, e.gold, labels, dec, raw, extra))
    info: dict[str, Any] = {"calibration": calibration}
    if dec.vector is not None:
        info["calibration_vector"] = {lab: float(dec.vector[j]) for j, lab in enumerate(labels)}
    if refs is not None:  # every content-free prompt's label log-likelihoods: any calibration re-derives
        info["reference_loglik"] = {text: {lab: float(refs[k, j]) for j, lab in enumerate(labels)}
                                    for k, text in enumerate(CONTENT_FREE)}
    if shots:
        info["fewshot"] = shots.record()
    kept = refs if refs is not None and bool(np.isfinite(refs).all()) else None
    arrays = {"labels": labels, "loglik": raw, "gold": np.asarray(gold, dtype=np.int64), "reference": kept}
    return metrics, rows, dec.figure, info, arrays


def image_rows(task: LoadedTask) -> list[int]:
    """Indices of the examples that carry an image (``image=`` column, or a pairs file's images)."""
    return [i for i, e in enumerate(task.examples) if e.meta.get("image")]


def check_image_tasks(loaded: Sequence[LoadedTask], mode: str, calibration: str, num_fewshot: int,
                      vlm: bool) -> None:
    """Image tasks are closed-set, uncalibrated, zero-shot, on a vision-language model; else one line."""
    for t in loaded:
        if not image_rows(t):
            continue
        name = t.spec.name
        if not vlm:
            raise AffectlensError(f"task {name} has images: evaluate it on a vision-language model "
                                  "(a Qwen-VL or LLaVA checkpoint, whose processor reads them)")
        if mode != "closed":
            raise AffectlensError(f"task {name} has images: image tasks are scored in closed mode only")
        if calibration != "none" or num_fewshot:
            raise AffectlensError(f"task {name} has images: --calibration and --num-fewshot apply to "
                                  "text tasks only")


def _with_images(model, tok, processor, task: LoadedTask, prompts: list[str], batch_size: int,
                 progress: bool) -> torch.Tensor:
    """Label log-likelihoods [n, labels]: image rows through the processor, text rows as text."""
    from ..models.vlm import image_label_logprobs, image_placeholder
    from ..tasks.prompts import render

    spec, labels = task.spec, list(task.labels)
    img = image_rows(task)
    ll = torch.zeros(len(prompts), len(labels), dtype=torch.float64)
    has = set(img)
    text = [i for i in range(len(prompts)) if i not in has]
    if text:
        # a vision-language model: its forward derives its own (multi-axis) positions, so the text
        # rows take the whole-prompt path (score_items also refuses to share on a VLM config)
        ll[text] = score_labels(model, tok, [prompts[i] for i in text], labels, batch_size=batch_size,
                                progress=progress, share_prefix=False).double()
    ptok = getattr(processor, "tokenizer", processor)
    ph = image_placeholder(processor)
    ex = [task.examples[i] for i in img]
    ll[img] = image_label_logprobs(model, processor,
                                   [render(ptok, e.text, spec.kind, labels, spec.question, image=ph) for e in ex],
                                   [e.meta["image"] for e in ex], labels, progress=progress)
    return ll


def _generative(model, tok, task: LoadedTask, batch_size, seed, n_boot, progress, wheel,
                max_new_tokens, backend: str | GenerationBackend = "hf") -> tuple[dict, list, dict]:
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
    gen = get_backend(backend, model, tok, batch_size, progress, texts=[e.text for e in examples],
                      where=f"task {spec.name}")
    answers = gen.generate(prompts, max_new_tokens, seed)
    if len(answers) != len(prompts):
        raise AffectlensError(f"backend {gen.name} returned {len(answers)} answers for {len(prompts)} prompts")
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


def evaluate(model, tokenizer, tasks: Sequence[str | TaskSpec | LoadedTask] | str | TaskSpec | LoadedTask,
             mode: str = "closed",
             limit: int | None = None, batch_size: int = 16, seed: int = 0, progress: bool = True,
             n_boot: int = 1000, wheel: str | Path | Wheel | None = None,
             max_new_tokens: int = 48, calibration: str = "none", num_fewshot: int = 0,
             fewshot_from: str | TaskSpec | None = None, sample: int | None = None,
             backend: str | GenerationBackend = "hf", processor: Any = None) -> EvalResult:
    """Score ``model`` on ``tasks``; the mean is the plain mean of each task's primary metric.

    Perplexity tasks are reported but not averaged (lower is better, other units).
    Closed mode: ``calibration`` (none, contextual, pmi; see
    :mod:`affectlens.evaluate.calibration`) and ``num_fewshot`` solved examples
    from each task's train split (or ``fewshot_from``), drawn with ``seed``.
    ``limit`` keeps the first N rows, ``sample`` N rows drawn with ``seed``
    (a task already loaded, a :class:`LoadedTask`, is taken as it is: its rows
    are not read again, nor its malformed rows listed twice).
    Generative mode: answers come from ``backend`` (``hf``, ``vllm`` or a
    :class:`~affectlens.evaluate.backends.GenerationBackend`).
    ``processor``: a vision-language model's processor; rows with an image
    are scored through it (closed mode), text rows as text.
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
    check_mode(calibration)
    if mode != "closed" and (calibration != "none" or num_fewshot):
        raise AffectlensError("--calibration and --num-fewshot apply to closed mode only")
    if isinstance(tasks, str | TaskSpec | LoadedTask):
        tasks = [tasks]
    if not tasks:
        raise AffectlensError("no tasks given")
    specs = [t.spec if isinstance(t, LoadedTask) else parse_task(t) for t in tasks]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise AffectlensError(f"task(s) given twice: {', '.join(dup)}")
    loaded = [t if isinstance(t, LoadedTask) else load_task(s, limit)  # before any model work
              for t, s in zip(tasks, specs, strict=True)]
    notes = {t.spec.name: size_notes(t, limit, sample) for t in loaded}
    loaded = [sample_task(t, sample, seed) for t in loaded]
    check_image_tasks(loaded, mode, calibration, num_fewshot, processor is not None)
    shots = {t.spec.name: draw_shots(t, num_fewshot if t.spec.kind != "perplexity" else 0, seed, fewshot_from)
             for t in loaded}
    if mode == "generative":
        wheel = wheel if isinstance(wheel, Wheel) else load_wheel(wheel)
    was_training = getattr(model, "training", False)
    model.eval()
    out_tasks: dict[str, TaskScore] = {}
    predictions: list[dict[str, Any]] = []
    figures: dict[str, dict[str, Any]] = {}
    arrays: dict[str, dict[str, Any]] = {}
    try:
        for task in loaded:
            spec = task.spec
            if spec.kind == "perplexity":
                m = perplexity(model, tokenizer, [e.text for e in task.examples],
                               max_length=_int_opt(spec, "max_length"), stride=_int_opt(spec, "stride"),
                               batch_size=max(1, batch_size // 2), progress=progress)
                rows: list[dict[str, Any]] = []
                fig: dict[str, Any] | None = None
                n = m["texts"]
                info: dict[str, Any] = {}
            elif mode == "closed":
                m, rows, fig, info, arrays[spec.name] = _closed(model, tokenizer, task, batch_size, seed, n_boot,
                                                                progress, calibration, shots[spec.name], processor)
                n = len(rows)
            else:
                m, rows, fig = _generative(model, tokenizer, task, batch_size, seed, n_boot, progress,
                                           wheel, max_new_tokens, backend)
                n, info = len(rows), {}
                if "n_counted" in m:  # HIT counts the non-neutral gold rows only: n is what it used
                    n = m["n_counted"]
                    info["skipped"] = {"neutral_gold": m["neutral_skipped"]} if m["neutral_skipped"] else {}
                if len(rows) < len(task.examples):  # generative sentiment: gold 0 dropped (MER-UniBench)
                    info["dropped_by"] = {"zero_sentiment": len(task.examples) - len(rows)}
            pm = primary_metric(spec, mode if spec.kind != "perplexity" else "closed")
            if pm not in m:
                raise AffectlensError(f"task {spec.name}: primary metric '{pm}' not computed in {mode} mode")
            by = {k: v for k, v in (("malformed", task.skipped), ("protocol", task.dropped)) if v}
            by.update(info.pop("dropped_by", {}))
            out_tasks[spec.name] = TaskScore(spec.name, spec.kind, pm, m[pm], m, n, sum(by.values()),
                                             _spec_dict(spec), **info, dropped_by=by, notes=notes[spec.name])
            predictions.extend(rows)
            if fig is not None:
                figures[spec.name] = fig
    finally:
        if was_training:
            model.train()
    attach_baselines(out_tasks, predictions)  # yardsticks per task; the mean is of one metric, named
    mean, mean_metric, averaged = mean_over_tasks(out_tasks)
    what = f"the evaluation of model {model_name(model)}"
    require_finite({"tasks": {k: t.to_dict() for k, t in out_tasks.items()}, "mean": mean}, what)
    require_finite(predictions, f"the predictions of {what}")
    return EvalResult(out_tasks, predictions, mode, mean=mean, mean_over=averaged,
                      weights_sha256=weight_fingerprint(model), seed=seed, limit=limit, batch_size=batch_size,
                      figures=figures, mean_metric=mean_metric, arrays=arrays, n_boot=n_boot)


def size_notes(task: LoadedTask, limit: int | None, sample: int | None) -> list[str]:
    """A note (stderr, and kept for scores.json) for each of --limit / --sample that exceeds the task."""
    size, out = len(task.examples), []
    for flag, n in (("--limit", limit), ("--sample", sample)):
        if n is not None and n > size:
            out.append(f"task {task.spec.name} has {size} rows: {flag} {n} keeps all {size}")
            note(out[-1])
    return out


def sample_task(task: LoadedTask, n: int | None, seed: int) -> LoadedTask:
    """``n`` examples drawn with ``seed`` (file order kept); all of them when ``n`` is None."""
    if n is None:
        return task
    if n < 1:
        raise AffectlensError(f"--sample must be positive, not {n}")
    if n >= len(task.examples):
        return task
    import random

    keep = sorted(random.Random(seed).sample(range(len(task.examples)), n))
    return replace(task, examples=[task.examples[i] for i in keep])


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
