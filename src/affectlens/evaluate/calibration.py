"""Calibrated closed-set scoring: remove a label's prior from its log-likelihood.

Closed-set scoring inherits the model's surface-form bias: a label whose
words are unlikely continuations (``neutral``) can lose every argmax whatever
the input. Two known remedies, both reading one extra pass per *task* (the
reference prompts do not depend on the example, so they are scored once):

``contextual`` (Zhao et al. 2021, "Calibrate before use"): the label
distribution after each content-free input ("N/A", "", "[MASK]") rendered in
the task's prompt is the model's prior; the calibrated score is
``log p(label | x) - log p_cf(label)`` with both distributions normalised over
the labels. The content-free distributions are averaged in log space
(normalised geometric mean): then a constant boost to one label's logits
cancels *exactly*, whatever the inputs, which is the property that makes the
correction trustworthy; with one content-free input it is Zhao et al.'s rule.

``pmi`` (domain-conditional PMI, Holtzman et al. 2021, "Surface form
competition"): ``log P(label | prompt with x) - log P(label | the same prompt
frame with an empty input)``, unnormalised log-likelihoods of the whole label.

Both return per-label score vectors; the raw log-likelihoods stay in the
predictions beside them.

``evaluate`` scores the three content-free prompts of every text task in one
batch whatever the calibration (the empty input among them is PMI's frame) and
keeps them in ``scores.npz``, so ``rescore`` derives either vector later with
this same float64 numpy arithmetic, without torch or the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import AffectlensError
from ..vocab import CALIBRATIONS

CONTENT_FREE = ("N/A", "", "[MASK]")


def check_mode(mode: str) -> str:
    """``mode`` if known, else a one-line error naming the choices."""
    if mode not in CALIBRATIONS:
        raise AffectlensError(f"unknown calibration '{mode}'; choose from {', '.join(CALIBRATIONS)}")
    return mode


def reference_texts(mode: str) -> tuple[str, ...]:
    """The inputs whose prompts give the label prior: content-free ones, or the empty input (PMI)."""
    check_mode(mode)
    return {"none": (), "contextual": CONTENT_FREE, "pmi": ("",)}[mode]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis, shifted by the max (float64 in, float64 out)."""
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def calibration_vector(ref_ll: Any, mode: str) -> np.ndarray:
    """The per-label prior [n_labels] from the reference prompts' log-likelihoods [k, n_labels].

    contextual: log of the normalised geometric mean of the label distributions;
    pmi: the label log-likelihoods under the input-free prompt frame.
    """
    check_mode(mode)
    ref = np.asarray(ref_ll, dtype=np.float64)
    if mode == "contextual":
        return _log_softmax(_log_softmax(ref).mean(0))
    if mode == "pmi":
        return ref[0]
    raise AffectlensError("calibration 'none' has no calibration vector")


def vector_from_references(refs: Any, mode: str) -> np.ndarray:
    """The ``mode`` vector from the scores of all :data:`CONTENT_FREE` prompts [3, n_labels] (finite)."""
    rows = [CONTENT_FREE.index(t) for t in reference_texts(mode)]
    return _finite(calibration_vector(np.asarray(refs, dtype=np.float64)[rows], mode), mode)


def _finite(vec: np.ndarray, mode: str) -> np.ndarray:
    if not bool(np.isfinite(vec).all()):
        raise AffectlensError(f"the {mode} calibration vector is not finite ({vec.tolist()}); not a result")
    return vec


def apply_calibration(ll: Any, vector: np.ndarray | None, mode: str) -> np.ndarray:
    """Calibrated scores [n, n_labels] (float64): the argmax is the prediction."""
    check_mode(mode)
    x = np.asarray(ll, dtype=np.float64)
    if mode == "none" or vector is None:
        return x
    if mode == "contextual":
        return _log_softmax(x) - vector
    return x - vector


def calibrate(ll: Any, mode: str, render: Callable[[str], str],
              score: Callable[[Sequence[str]], Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibrated scores and the vector: ``render(text)`` makes a task prompt, ``score`` scores prompts.

    The reference prompts are scored once, in one batch, for the whole task.
    """
    texts = reference_texts(mode)
    if not texts:
        return np.asarray(ll, dtype=np.float64), None
    vec = _finite(calibration_vector(score([render(t) for t in texts]), mode), mode)
    return apply_calibration(ll, vec, mode), vec


__all__ = ["CONTENT_FREE", "apply_calibration", "calibrate", "calibration_vector", "check_mode",
           "reference_texts", "vector_from_references"]
