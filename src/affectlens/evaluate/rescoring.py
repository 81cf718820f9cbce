"""``affectlens rescore``: a closed-set run re-decided under another calibration, without the model.

Switching calibration used to mean a second pass over the model that
reproduced identical raw scores. A closed-set run keeps those scores
(``scores.npz``: every example's label log-likelihoods, the gold labels, the
content-free reference scores); re-scoring hands them to the same
:func:`~affectlens.evaluate.decisions.closed_decision` ``evaluate`` uses, so
every metric equals a fresh ``evaluate --calibration MODE`` of the same model
and data, in seconds. The new run has the shape of an ``evaluate`` run, and
its manifest points at the source (``rescored_from``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from ..runs import RunDir, check_out_dir, parse_jsonl
from .calibration import check_mode
from .decisions import ROW_KEYS, closed_decision, closed_row
from .metrics import require_finite
from .results import EvalResult, TaskScore, attach_baselines, mean_over_tasks
from .run import write_files
from .scorefile import NAME, TaskArrays, read_scores

TIMING = ("seconds", "examples_per_s")  # the source's model time: re-scoring runs no model


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AffectlensError(f"{path.parent} is not a run directory of affectlens evaluate (no {path.name})")
    try:
        obj = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AffectlensError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise AffectlensError(f"{path} does not hold a JSON object")
    return obj


def _task(name: str, entry: dict[str, Any], a: TaskArrays, rows: list[dict[str, Any]], calibration: str,
          n_boot: int, seed: int) -> tuple[TaskScore, list[dict[str, Any]], dict[str, Any]]:
    """One task re-decided: its score, its prediction rows (same order and keys as evaluate's), figure data."""
    if len(rows) != len(a.gold) or any(r.get("gold") != a.labels[g] for r, g in zip(rows, a.gold, strict=True)):
        raise AffectlensError(f"task {name}: predictions.jsonl and {NAME} disagree ({len(rows)} rows vs "
                              f"{len(a.gold)} saved scores, or other gold labels); not the same run")
    dec = closed_decision(a.loglik, a.reference, a.gold.tolist(), a.labels, calibration, n_boot, seed, name)
    metrics = dec.metrics
    metrics.update({k: entry["metrics"][k] for k in TIMING if k in entry["metrics"]})
    out = [closed_row(name, i, r["text"], r["gold"], a.labels, dec, a.loglik,
                      {k: v for k, v in r.items() if k not in ROW_KEYS}) for i, r in enumerate(rows)]
    score = TaskScore.from_dict(name, entry)
    score.metrics, score.primary, score.baselines = metrics, metrics[score.primary_metric], {}
    score.calibration = calibration
    score.calibration_vector = (None if dec.vector is None else
                                {lab: float(dec.vector[j]) for j, lab in enumerate(a.labels)})
    return score, out, dec.figure


def rescore_run(run: str | Path, calibration: str, out: str | Path, force: bool = False,
                n_boot: int | None = None) -> EvalResult:
    """Re-decide the closed-set run ``run`` under ``calibration`` and write the run ``out``.

    ``n_boot``: bootstrap resamples for the CIs (default: the source run's, with
    its seed, so the CIs match a fresh run too). Perplexity tasks are copied.
    """
    check_mode(calibration)
    if n_boot is not None and n_boot < 0:
        raise AffectlensError(f"--bootstrap must be 0 (no CIs) or positive, not {n_boot}")
    src = Path(run)
    if not src.is_dir():
        raise AffectlensError(f"run {src} does not exist or is not a directory")
    if Path(out).resolve() == src.resolve():
        raise AffectlensError("--out is the source run; re-score into another directory")
    check_out_dir(out, force)
    manifest, scores = _read_json(src / "manifest.json"), _read_json(src / "scores.json")
    if scores.get("mode") != "closed":
        raise AffectlensError(f"run {src} is a {scores.get('mode')} run; rescore re-decides closed-set runs "
                              "(generative answers are re-scored by affectlens.evaluate.rescore)")
    arrays, meta = read_scores(src / NAME, manifest.get("scores_npz"))
    boot = int(meta.get("n_boot") or 0) if n_boot is None else n_boot
    seed = int(scores.get("seed", 0))
    pred_path = src / "predictions.jsonl"
    if not pred_path.is_file():
        raise AffectlensError(f"{src} is not a run directory of affectlens evaluate (no predictions.jsonl)")
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in parse_jsonl(pred_path.read_text("utf-8"), pred_path):
        by_task.setdefault(str(r.get("task")), []).append(r)
    tasks: dict[str, TaskScore] = {}
    predictions: list[dict[str, Any]] = []
    figures: dict[str, dict[str, Any]] = {}
    for name, entry in scores.get("tasks", {}).items():
        if name in arrays:
            tasks[name], rows, figures[name] = _task(name, entry, arrays[name], by_task.get(name, []),
                                                     calibration, boot, seed)
            predictions += rows
        elif entry.get("kind") == "perplexity":  # no decision to re-make
            tasks[name] = TaskScore.from_dict(name, entry)
        else:
            raise AffectlensError(f"task {name} of run {src} has no saved scores in {NAME}")
    attach_baselines(tasks, predictions)
    mean, metric, over = mean_over_tasks(tasks)
    result = EvalResult(tasks, predictions, "closed", mean=mean, mean_over=over,
                        weights_sha256=scores.get("weights_sha256"), seed=seed, limit=scores.get("limit"),
                        batch_size=scores.get("batch_size", 16), figures=figures, mean_metric=metric,
                        arrays={k: _plain(a) for k, a in arrays.items()}, n_boot=boot)
    _write(result, src, manifest, scores, calibration, out, force)
    return result


def _plain(a: TaskArrays) -> dict[str, Any]:
    return {"labels": a.labels, "loglik": a.loglik, "gold": a.gold, "reference": a.reference}


def _write(result: EvalResult, src: Path, manifest: dict[str, Any], scores: dict[str, Any], calibration: str,
           out: str | Path, force: bool) -> None:
    require_finite(result.scores, "scores")
    options = {"run": str(src), "calibration": calibration, "bootstrap": result.n_boot}
    with RunDir(out, command="rescore", force=force, inputs={"run": str(src)}, options=options,
                seed=result.seed) as rd:
        write_files(rd, result)
        rd.extra["rescored_from"] = {
            "run": str(src.resolve()), "command": manifest.get("command"), "created": manifest.get("created"),
            "calibration": {k: v.get("calibration", "none") for k, v in scores.get("tasks", {}).items()},
            "scores_npz_sha256": (manifest.get("scores_npz") or {}).get("sha256"),
            **{k: manifest[k] for k in ("ran_on", "options") if k in manifest}}


__all__ = ["rescore_run"]
