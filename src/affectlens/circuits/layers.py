"""Layer localisation: where does injecting the emotion direction change the answer?

Inject ``α·S_l^e`` after block ``l`` into neutral runs, at every position from
the stimulus on, and measure the relative change of the closed-set probability
of ``e``: ``(mean p_steered − mean p_base) / mean p_base``. The profile over
``l`` is the "Adapt–Aggregate–Execute" curve; its argmax is the critical layer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import AffectlensError
from ..runs import progress
from .hooks import decoder_layers
from .intervene import Intervention, intervened
from .pairs import Encoder, Pair, answer_labels, emotion_probs, labels_of
from .vectors import SteeringVectors


@dataclass
class LayerProfile:
    rows: list[dict[str, Any]]  # emotion, layer, base, steered, effect
    critical: dict[str, int]  # emotion (and "mean") -> argmax layer
    seconds_per_sweep: float
    options: dict[str, Any] = field(default_factory=dict)

    def effects(self, emotion: str) -> list[float]:
        return [r["effect"] for r in sorted(self.rows, key=lambda r: r["layer"]) if r["emotion"] == emotion]


def layer_profile(model: Any, enc: Encoder, pairs: Sequence[Pair], sv: SteeringVectors,
                  alpha: float = 1.0, scale: str = "raw", layers: Sequence[int] | None = None,
                  emotions: Sequence[str] | None = None, max_pairs: int | None = None,
                  batch_size: int = 16) -> LayerProfile:
    """The layer profile per emotion and its mean (see module docstring)."""
    n_layers = len(decoder_layers(model))
    if sv.num_layers != n_layers:
        raise AffectlensError(f"vectors have {sv.num_layers} layers but the model has {n_layers}")
    layers = list(range(n_layers)) if layers is None else list(layers)
    emotions = list(emotions) if emotions else labels_of(pairs)
    labels = answer_labels(pairs)
    layout = enc.layout
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for e in emotions:
        sv.get(e)
        if e not in labels:
            raise AffectlensError(f"no pairs for emotion '{e}'")
        sel = [p for p in pairs if p.label == e][:max_pairs]
        stim, imgs = [p.neutral for p in sel], [p.image_neutral for p in sel]
        j = labels.index(e)
        base = float(emotion_probs(model, enc, stim, labels, imgs, batch_size)[:, j].mean())
        for la in progress(layers, desc=f"layers {e}"):
            iv = Intervention(steer=[(e, la, alpha)], scale=scale, vectors=sv)
            with intervened(model, layout, iv):
                p = float(emotion_probs(model, enc, stim, labels, imgs, batch_size)[:, j].mean())
            rows.append({"emotion": e, "layer": la, "base": base, "steered": p,
                         "effect": (p - base) / max(base, 1e-12), "delta": p - base})
    elapsed = time.perf_counter() - t0
    critical = {}
    for e in emotions:
        er = [r for r in rows if r["emotion"] == e]
        critical[e] = max(er, key=lambda r: r["effect"])["layer"]
    mean = dict(zip(layers, normalised_mean(rows, emotions, layers), strict=True))
    critical["mean"] = max(mean, key=lambda la: mean[la])
    return LayerProfile(rows, critical, elapsed / max(len(emotions), 1),
                        {"alpha": alpha, "scale": scale, "max_pairs": max_pairs})


def normalised_mean(rows: Sequence[dict[str, Any]], emotions: Sequence[str], layers: Sequence[int]) -> list[float]:
    """Mean over emotions of each profile scaled to max |effect| = 1.

    Relative changes explode for emotions the model rarely predicts on neutral
    input (tiny base probability); scaling each profile first keeps one such
    emotion from deciding the shared critical layer alone.
    """
    out = [0.0] * len(layers)
    for e in emotions:
        eff = {r["layer"]: r["effect"] for r in rows if r["emotion"] == e}
        top = max((abs(x) for x in eff.values()), default=0.0) or 1.0
        for i, la in enumerate(layers):
            out[i] += eff[la] / top / len(emotions)
    return out
