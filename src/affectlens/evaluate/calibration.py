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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

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


def calibration_vector(ref_ll: torch.Tensor, mode: str) -> torch.Tensor:
    """The per-label prior [n_labels] from the reference prompts' log-likelihoods [k, n_labels].

    contextual: log of the normalised geometric mean of the label distributions;
    pmi: the label log-likelihoods under the input-free prompt frame.
    """
    check_mode(mode)
    ref = ref_ll.to(torch.float64)
    if mode == "contextual":
        return ref.log_softmax(-1).mean(0).log_softmax(-1)
    if mode == "pmi":
        return ref[0]
    raise AffectlensError("calibration 'none' has no calibration vector")


def apply_calibration(ll: torch.Tensor, vector: torch.Tensor | None, mode: str) -> torch.Tensor:
    """Calibrated scores [n, n_labels]: the argmax is the prediction."""
    check_mode(mode)
    if mode == "none" or vector is None:
        return ll
    if mode == "contextual":
        return ll.to(torch.float64).log_softmax(-1) - vector
    return ll.to(torch.float64) - vector


def calibrate(ll: torch.Tensor, mode: str, render: Callable[[str], str],
              score: Callable[[Sequence[str]], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Calibrated scores and the vector: ``render(text)`` makes a task prompt, ``score`` scores prompts.

    The reference prompts are scored once, in one batch, for the whole task.
    """
    texts = reference_texts(mode)
    if not texts:
        return ll, None
    vec = calibration_vector(score([render(t) for t in texts]), mode)
    if not bool(torch.isfinite(vec).all()):
        raise AffectlensError(f"the {mode} calibration vector is not finite ({vec.tolist()}); not a result")
    return apply_calibration(ll, vec, mode), vec


__all__ = ["CONTENT_FREE", "apply_calibration", "calibrate", "calibration_vector", "check_mode",
           "reference_texts"]
