"""Closed-set decisions from label log-likelihoods: the one path ``evaluate`` and ``rescore`` share.

``evaluate`` gets the log-likelihoods from the model, ``rescore`` from a run's
``scores.npz``; both hand them here to be calibrated, decided (argmax) and
scored, so a re-scored run equals a fresh one number for number: the same
float64 numpy arithmetic on the same inputs. Raw and calibrated decisions get
the same treatment (CIs, per-class scores, confusion matrix), and a calibrated
decision keeps the raw one beside it (``metrics["uncalibrated"]``). No torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import AffectlensError
from .calibration import apply_calibration, check_mode, vector_from_references
from .metrics import classification_metrics

ROW_KEYS = ("task", "index", "text", "gold", "pred", "loglik", "calibrated")  # a row's own keys, in order


@dataclass
class Decision:
    """One task's decision: metrics, the scores whose argmax is ``pred``, the vector removed, figure data."""

    metrics: dict[str, Any]
    scores: np.ndarray  # [n, labels] float64: the raw log-likelihoods, or the calibrated scores
    pred: list[int]
    vector: np.ndarray | None
    figure: dict[str, Any]


def closed_decision(ll: Any, refs: Any, gold: Sequence[int], labels: Sequence[str], calibration: str,
                    n_boot: int, seed: int, task: str = "") -> Decision:
    """Calibrate ``ll`` [n, labels] with the content-free reference scores ``refs`` [3, labels], decide, score.

    ``refs`` may be None (image tasks, or references that were not finite):
    then only ``calibration='none'`` is possible.
    """
    check_mode(calibration)
    labels = list(labels)
    raw = np.asarray(ll, dtype=np.float64)
    vec = None
    if calibration != "none":
        if refs is None or len(refs) == 0:
            raise AffectlensError(f"task {task}: no content-free reference scores were kept (image task, or "
                                  f"non-finite references), so it cannot be {calibration}-calibrated")
        vec = vector_from_references(refs, calibration)
    scores = apply_calibration(raw, vec, calibration)
    pred = scores.argmax(-1).tolist()
    metrics = classification_metrics(gold, pred, labels, n_boot=n_boot, seed=seed)
    fig: dict[str, Any] = {"labels": labels, "pred_labels": labels, "confusion": metrics["confusion"]}
    if vec is not None:  # the raw decision from the same forward passes, scored the same way
        metrics["uncalibrated"] = classification_metrics(gold, raw.argmax(-1).tolist(), labels, n_boot=n_boot,
                                                         seed=seed)
        fig["panels"] = [(f"raw  (acc {100 * metrics['uncalibrated']['accuracy']:.1f})",
                          metrics["uncalibrated"]["confusion"]),
                         (f"{calibration}  (acc {100 * metrics['accuracy']:.1f})", metrics["confusion"])]
    return Decision(metrics, scores, pred, vec, fig)


def closed_row(task: str, index: int, text: str, gold: str, labels: Sequence[str], dec: Decision,
               ll: np.ndarray, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``predictions.jsonl`` row: the raw log-likelihoods, the calibrated scores when calibrated, ``extra``."""
    row: dict[str, Any] = {"task": task, "index": index, "text": text, "gold": gold,
                           "pred": labels[dec.pred[index]],
                           "loglik": {lab: float(ll[index, j]) for j, lab in enumerate(labels)}}
    if dec.vector is not None:
        row["calibrated"] = {lab: float(dec.scores[index, j]) for j, lab in enumerate(labels)}
    row.update(extra or {})
    return row


__all__ = ["Decision", "ROW_KEYS", "closed_decision", "closed_row"]
