"""Layer localisation: where does injecting the emotion direction change the answer?

Inject ``α·S_l^e`` after block ``l`` into neutral runs, at every position from
the stimulus on, and measure the relative change of the closed-set probability
of ``e``: ``(mean p_steered − mean p_base) / mean p_base``. The profile over
``l`` is the "Adapt–Aggregate–Execute" curve; its argmax is the critical layer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..claims import temp_file
from ..errors import AffectlensError
from ..runs import Progress, slug
from .hooks import decoder_layers
from .intervene import Intervention, intervened
from .pairs import Encoder, Pair, answer_labels, emotion_probs, labels_of
from .sweep import sweep_probs, sweep_supported
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
                  batch_size: int = 16, resume: str | os.PathLike | None = None) -> LayerProfile:
    """The layer profile per emotion and its mean (see module docstring).

    All (emotion, layer, prompt) variants run batched (:mod:`affectlens.circuits.sweep`),
    emotions grouped so a batch is full; one progress bar (with ETA) counts them all.
    ``resume``: a folder where each finished emotion's rows are kept
    (``<emotion>.json``, keyed by weights, prompts, vector and options), so an
    interrupted sweep reruns only the emotions it had not finished.
    """
    n_layers = len(decoder_layers(model))
    if sv.num_layers != n_layers:
        raise AffectlensError(f"vectors have {sv.num_layers} layers but the model has {n_layers}")
    layers = list(range(n_layers)) if layers is None else list(layers)
    emotions = list(emotions) if emotions else labels_of(pairs)
    labels = answer_labels(pairs)
    for e in emotions:
        sv.get(e)
        if e not in labels:
            raise AffectlensError(f"no pairs for emotion '{e}'")
    sel = {e: [p for p in pairs if p.label == e][:max_pairs] for e in emotions}
    t0 = time.perf_counter()
    weights = weights_checksum(model) if resume is not None else ""
    keys = {e: _fingerprint(weights, model, enc, [p.neutral for p in sel[e]], labels, sv, e, alpha, scale, layers)
            if resume else "" for e in emotions}
    done = {e: r for e in emotions if (r := _load(resume, e, keys[e])) is not None}
    todo = [e for e in emotions if e not in done]
    shortcut: list[bool] = []  # the batched shortcut's verdict on this model, from the first group
    with Progress(sum(len(sel[e]) for e in todo) * len(layers), desc="layer sweep", unit="run") as bar:
        for group in _groups(todo, {e: len(sel[e]) for e in todo}, batch_size):
            got = _group_rows(model, enc, {e: sel[e] for e in group}, labels, sv, alpha, scale, layers,
                              batch_size, bar, shortcut)
            for e in group:  # kept as each group finishes: an interruption loses the running group only
                _save(resume, e, keys[e], got[e])
                done[e] = got[e]
    rows = [r for e in emotions for r in done[e]]
    elapsed = time.perf_counter() - t0
    critical = {}
    for e in emotions:
        er = [r for r in rows if r["emotion"] == e]
        critical[e] = max(er, key=lambda r: r["effect"])["layer"]
    mean = dict(zip(layers, normalised_mean(rows, emotions, layers), strict=True))
    critical["mean"] = max(mean, key=lambda la: mean[la])
    return LayerProfile(rows, critical, elapsed / max(len(emotions), 1),
                        {"alpha": alpha, "scale": scale, "max_pairs": max_pairs,
                         "resumed": sorted(e for e in emotions if e not in todo)})


def _groups(emotions: Sequence[str], sizes: dict[str, int], batch_size: int) -> list[list[str]]:
    """Consecutive emotions together until their prompts fill a batch (few prompts each: fuller batches)."""
    out: list[list[str]] = []
    for e in emotions:
        if out and sum(sizes[x] for x in out[-1]) < batch_size:
            out[-1].append(e)
        else:
            out.append([e])
    return out


def _group_rows(model: Any, enc: Encoder, sel: dict[str, list[Pair]], labels: list[str], sv: SteeringVectors,
                alpha: float, scale: str, layers: list[int], batch_size: int, bar: Progress,
                shortcut: list[bool]) -> dict[str, list[dict[str, Any]]]:
    """Rows of a group of emotions: base probability, steered probability and effect per layer."""
    stim = {e: [p.neutral for p in ps] for e, ps in sel.items()}
    imgs = {e: [p.image_neutral for p in ps] for e, ps in sel.items()}
    base: dict[str, torch.Tensor] = {}  # unsteered probabilities: the sweep's base runs score them too
    probs: dict[str, dict[int, torch.Tensor]] | None = None
    if all(sweep_supported(enc, imgs[e]) for e in sel) and shortcut != [False]:
        probs = sweep_probs(model, enc, stim, labels, sv, alpha, scale, layers, batch_size, bar.update,
                            verify=not shortcut, base_out=base)
        shortcut[:] = [probs is not None]
    if probs is None:
        base = {e: emotion_probs(model, enc, stim[e], labels, imgs[e], batch_size) for e in sel}
        probs = {e: per_layer_probs(model, enc, stim[e], imgs[e], labels, sv, e, alpha, scale, layers, batch_size,
                                    bar, len(stim[e])) for e in sel}
    out: dict[str, list[dict[str, Any]]] = {}
    for e in sel:
        j = labels.index(e)
        b = float(base[e][:, j].mean())
        out[e] = []
        for la in layers:
            p = float(probs[e][la][:, j].mean()) if la in probs[e] else b
            out[e].append({"emotion": e, "layer": la, "base": b, "steered": p,
                           "effect": (p - b) / max(b, 1e-12), "delta": p - b})
    return out


def per_layer_probs(model: Any, enc: Encoder, stim: Sequence[str], imgs: Sequence[str | None],
                    labels: Sequence[str], sv: SteeringVectors, e: str, alpha: float, scale: str,
                    layers: Sequence[int], batch_size: int = 16,
                    bar: Progress | None = None, step: int = 1) -> dict[int, torch.Tensor]:
    """One full scoring run per layer under the steering hook: the reference the batched sweep equals.

    Used where the batched shortcut does not apply (image prompts, models it does
    not reproduce) and by the tests. ``bar`` advances ``step`` per layer.
    """
    out = {}
    for la in layers:
        iv = Intervention(steer=[(e, la, alpha)], scale=scale, vectors=sv)
        with intervened(model, enc.layout, iv):
            out[la] = emotion_probs(model, enc, stim, labels, imgs, batch_size)
        if bar is not None:
            bar.update(step)
    return out


def weights_checksum(model: Any, sample: int = 4096) -> str:
    """A cheap identity of the weights: names, shapes, dtypes and ~``sample`` strided values per tensor.

    Any retraining or merge changes the sampled values; reading every weight
    would cost seconds per GB for a cache key.
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            flat = t.detach().reshape(-1)
            vals = flat[:: max(1, flat.numel() // sample)].double().cpu() if t.is_floating_point() else flat[:0]
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(vals.numpy().tobytes())
    return h.hexdigest()


def _fingerprint(weights: str, model: Any, enc: Encoder, stim: Sequence[str], labels: Sequence[str],
                 sv: SteeringVectors, e: str, alpha: float, scale: str, layers: Sequence[int]) -> str:
    """What one emotion's rows depend on: the weights, prompts, the vector, the options."""
    h = hashlib.sha256(weights.encode())
    v = sv.get(e).float().contiguous()
    h.update(v.numpy().tobytes())
    h.update(json.dumps([type(model).__name__, [enc.prompt(s) for s in stim], list(labels), alpha, scale,
                         list(layers), list(sv.resid_norm or [])]).encode())
    return h.hexdigest()


def _load(folder: str | os.PathLike | None, e: str, key: str) -> list[dict[str, Any]] | None:
    if folder is None:
        return None
    path = Path(folder) / f"{slug(e)}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("rows"), list):
        return None
    return data["rows"]


def _save(folder: str | os.PathLike | None, e: str, key: str, rows: list[dict[str, Any]]) -> None:
    if folder is None:
        return
    path = Path(folder) / f"{slug(e)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path)  # a new file: an emotion slugged to a user's "x.tmp" never overwrites it
    try:
        tmp.write_text(json.dumps({"key": key, "rows": rows}))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def sweep_cache_dir() -> Path:
    """Where ``circuits layers`` keeps finished emotions of a sweep (``models.cache_dir()/layer_sweeps``)."""
    from ..models.resolve import cache_dir

    return cache_dir() / "layer_sweeps"


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
