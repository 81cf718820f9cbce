"""``affectlens evaluate`` as a library call: ``evaluate_run`` (load, score, write) and ``write_run``.

A run directory holds ``scores.json`` (the ``EvalResult.scores`` document),
``predictions.jsonl`` (one row per example, all tasks), ``confusion.csv`` and
``per_class.csv`` (every confusion matrix and per-class P/R/F1, raw and
calibrated), ``confusion_<task>.png``, ``scores.npz`` (closed-set tasks: the
log-likelihoods ``rescore`` re-decides from, see ``evaluate.scorefile``) and
``manifest.json``; it is written through ``runs.RunDir``, so it appears whole
or not at all and never holds a NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from ..runs import RunDir, check_out_dir, slug
from .metrics import require_finite
from .results import EvalResult, TaskScore
from .scorefile import NAME, write_scores

CONFUSION_COLUMNS = ("task", "scoring", "gold", "predicted", "count")
PER_CLASS_COLUMNS = ("task", "scoring", "label", "precision", "recall", "f1", "support")


def scorings(task: TaskScore, mode: str) -> list[tuple[str, dict[str, Any]]]:
    """``(scoring, metrics)`` of each decision of ``task`` that has a confusion matrix.

    Closed mode: ``raw`` and, when calibrated, the calibration's name;
    generative mode: ``answers`` (HIT tasks have no confusion matrix here).
    """
    m = task.metrics
    if "confusion" not in m or "labels" not in m:
        return []
    if mode != "closed":
        return [("answers", m)]
    if task.calibration == "none":
        return [("raw", m)]
    return [("raw", m["uncalibrated"]), (task.calibration, m)]


def metric_tables(result: EvalResult) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of ``confusion.csv`` (long form: one per gold/predicted pair) and of ``per_class.csv``."""
    conf, per = [], []
    for name, t in result.tasks.items():
        for scoring, m in scorings(t, result.mode):
            labels, cm = m["labels"], m["confusion"]
            conf += [{"task": name, "scoring": scoring, "gold": g, "predicted": p, "count": cm[i][j]}
                     for i, g in enumerate(labels) for j, p in enumerate(labels)]
            per += [{"task": name, "scoring": scoring, "label": lab, **m["per_class"][lab]} for lab in labels]
    return conf, per


def write_files(run: RunDir, result: EvalResult) -> dict[str, str]:
    """Write ``result``'s files into ``run``; returns task -> confusion figure file name."""
    from .. import plots

    run.json("scores.json", result.scores)
    run.jsonl("predictions.jsonl", result.predictions)
    conf, per = metric_tables(result)
    if conf:
        run.csv("confusion.csv", conf, CONFUSION_COLUMNS)
        run.csv("per_class.csv", per, PER_CLASS_COLUMNS)
    if result.arrays:
        run.extra["scores_npz"] = write_scores(run.file(NAME), result.arrays, result.n_boot, result.seed)
    figs = {}
    for name, data in result.figures.items():
        fname = f"confusion_{slug(name, 'task')}.png"
        if data.get("panels"):  # raw | calibrated, on one colour scale
            fig = plots.confusion_panels(data["panels"], data["labels"], data["pred_labels"], name)
        else:
            fig = plots.confusion_matrix(data["confusion"], data["labels"], data["pred_labels"], name,
                                         data.get("title"))
        run.figure(fname, fig)
        figs[name] = fname
    run.extra.update(weights_sha256=result.weights_sha256, figures=figs)
    run.extra["dropped"] = {k: {"total": t.dropped, **t.dropped_by} for k, t in result.tasks.items()}
    calib = {k: {"mode": t.calibration, "vector": t.calibration_vector} for k, t in result.tasks.items()
             if t.calibration != "none"}
    shots = {k: t.fewshot for k, t in result.tasks.items() if t.fewshot}
    if calib:
        run.extra["calibration"] = calib
    if shots:
        run.extra["fewshot"] = shots
    return figs


def write_run(result: EvalResult, out: str | Path, force: bool = False,
              inputs: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
              command: str = "evaluate") -> Path:
    """The run directory of a result already in memory (e.g. a variant scored without being saved)."""
    require_finite(result.scores, "scores")  # refused before anything is claimed or written
    require_finite(result.predictions, "predictions")
    with RunDir(out, command=command, force=force, inputs=inputs, options=options, seed=result.seed) as run:
        write_files(run, result)
    return Path(out)


def _positive(**counts: tuple[int, int]) -> None:
    for flag, (v, low) in counts.items():
        if v < low:
            raise AffectlensError(f"--{flag.replace('_', '-')} must be {'positive' if low else '0 or more'}, "
                                  f"not {v}")


def train_overlap(model: str, adapter: str | None, loaded: Sequence[Any], allow: bool) -> dict[str, Any] | None:
    """How many scored rows of each task the model (a dir tune wrote) or adapter was trained on: refused
    in one line unless ``allow``; None when neither carries affectlens' record of its training rows."""
    from ..claims import note
    from ..models.resolve import resolve_model_path
    from ..tasks.trained import count_overlap, records_of, refuse_overlap, split_hint

    model_dir = Path(model) if Path(model).is_dir() else resolve_model_path(model)
    records, unchecked = records_of([model_dir, *([adapter] if adapter else [])])
    for d in unchecked:
        note(f"{d} was tuned before affectlens recorded training rows: its overlap with the scored rows is "
             "not checked")
    if not records and not unchecked:
        return None
    ov = count_overlap(records, [(t.spec.name, [e.text for e in t.examples]) for t in loaded], unchecked)
    ov.allowed = allow
    hit = ov.first()
    spec = next((t.spec for t in loaded if hit and t.spec.name == hit[0]), None)
    owner = "the adapter's" if adapter or (model_dir / "adapter_config.json").is_file() else "the model's"
    refuse_overlap(ov, "evaluate", owner, "pass --allow-train-overlap",
                   split_hint(spec) if spec is not None and not allow else None)
    if hit:
        note(f"scoring {hit[2]} of {hit[1]} rows of task '{hit[0]}' that the model was trained on "
             "(--allow-train-overlap)")
    return ov.to_json()


def evaluate_run(model: str, out: str | Path, tasks: Sequence[str] | None = None, *,
                 adapter: str | None = None, mode: str = "closed", limit: int | None = None,
                 batch_size: int = 16, dtype: str = "auto", seed: int = 0, n_boot: int = 1000,
                 wheel: str | None = None, max_new_tokens: int = 48, force: bool = False,
                 allow_pickle: bool = False, calibration: str = "none", num_fewshot: int = 0,
                 fewshot_from: str | None = None, sample: int | None = None,
                 backend: str = "hf", device: str = "auto", allow_train_overlap: bool = False) -> EvalResult:
    """Load ``model`` (+ ``adapter``) on ``device`` in ``dtype``, score it on ``tasks``
    (default: emotion) and write ``out``.

    Every input is checked (counts, task files, the output) before the model
    is loaded, so a typo costs no loading time. A model or adapter that ``tune``
    wrote is not scored on rows it was trained on (compared by text digest, see
    :mod:`affectlens.tasks.trained`) unless ``allow_train_overlap``; the counts are
    kept in ``scores.json`` and the manifest (``train_overlap``).
    """
    from ..models import vlm
    from ..models.devices import check, ran_on
    from ..models.loading import load_model
    from ..models.resolve import resolve_model_path
    from ..tasks.loaders import load_task
    from ..tasks.spec import parse_task
    from .backends import vllm_missing
    from .calibration import check_mode
    from .core import check_image_tasks, evaluate, image_rows

    check_out_dir(out, force)
    check(device, dtype)
    _positive(batch_size=(batch_size, 1), max_new_tokens=(max_new_tokens, 1), bootstrap=(n_boot, 0),
              num_fewshot=(num_fewshot, 0), sample=(1 if sample is None else sample, 1))
    check_mode(calibration)
    if mode != "closed" and (calibration != "none" or num_fewshot):
        raise AffectlensError("--calibration and --num-fewshot apply to closed mode only")
    if backend == "vllm" and (why := vllm_missing()):
        raise AffectlensError(why)
    if backend == "vllm" and adapter:
        raise AffectlensError("the vllm backend serves a model directory, not an adapter on it; "
                              "merge the adapter into a directory first, or use --backend hf")
    names = list(tasks or ["emotion"])
    specs = [parse_task(t) for t in names]
    loaded = [load_task(spec, limit) for spec in specs]  # fail on bad data before spending time on the model
    is_vlm = any(image_rows(t) for t in loaded) and vlm.is_vlm_dir(resolve_model_path(model))
    check_image_tasks(loaded, mode, calibration, num_fewshot, is_vlm)
    overlap = train_overlap(model, adapter, loaded, allow_train_overlap)
    inputs: dict[str, Any] = {"model": model}
    if adapter:
        inputs["adapter"] = adapter
    for spec in specs:
        if spec.path and spec.loader != "bundled":
            inputs[f"task:{spec.name}"] = spec.path
    options = {"model": model, "adapter": adapter, "tasks": list(tasks) if tasks else None, "mode": mode,
               "limit": limit, "batch_size": batch_size, "dtype": dtype, "device": device, "seed": seed,
               "bootstrap": n_boot, "wheel": wheel, "max_new_tokens": max_new_tokens, "allow_pickle": allow_pickle,
               "calibration": calibration, "num_fewshot": num_fewshot, "fewshot_from": fewshot_from,
               "sample": sample, "backend": backend, "allow_train_overlap": allow_train_overlap}
    with RunDir(out, command="evaluate", force=force, inputs=inputs, options=options, seed=seed) as run:
        processor = None
        if vlm.is_vlm_dir(resolve_model_path(model)):  # the VLM loader: its processor reads images
            m, tok, processor = vlm.load_vlm(model, adapter=adapter, dtype=dtype, allow_pickle=allow_pickle,
                                             device=device)
        else:
            m, tok = load_model(model, adapter=adapter, dtype=dtype, allow_pickle=allow_pickle, device=device)
        run.extra["ran_on"] = ran_on(m)
        result = evaluate(m, tok, loaded, mode=mode, limit=limit, batch_size=batch_size, seed=seed,
                          n_boot=n_boot, wheel=wheel, max_new_tokens=max_new_tokens, calibration=calibration,
                          num_fewshot=num_fewshot, fewshot_from=fewshot_from, sample=sample, backend=backend,
                          processor=processor)
        result.train_overlap = overlap
        if overlap is not None:
            run.extra["train_overlap"] = overlap
        write_files(run, result)
    return result


__all__ = ["evaluate_run", "write_files", "write_run"]
