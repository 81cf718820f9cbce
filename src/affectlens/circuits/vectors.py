"""Emotion steering vectors: ``S_l^e = mean_{i in U_e}(h+_{i,l} - h-_{i,l})``.

``U_e`` keeps only pairs the model reads correctly (closed-set probability of
``e`` on the emotional member >= ``min_score``) — a direction averaged over
misread inputs would be a direction of something else. Saved as safetensors
(one ``[num_layers, hidden]`` tensor per emotion, named by label) and
convertible to the steering-vectors library's and lm-eval's steered-model
files, which are plain ``torch.save`` dicts (those tools read nothing else).
Such a ``.pt`` file is a pickle: it is read back only behind ``--allow-pickle``
(:func:`check_vectors_file`), like a pickle checkpoint, and then with
``torch.load(weights_only=True)`` through the one pickle loader.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import AffectlensError
from ..runs import progress
from .hooks import capture, decoder_layers, hooks, to_model
from .pairs import Encoder, Pair, answer_labels, emotion_probs, labels_of

FORMAT = "affectlens.steering/1"
CENTRINGS = ("pair", "group", "global")


@dataclass
class SteeringVectors:
    """Per-emotion vectors ``[num_layers, hidden]`` plus how they were made."""

    vectors: dict[str, torch.Tensor]
    counts: dict[str, int] = field(default_factory=dict)  # pairs used per emotion
    totals: dict[str, int] = field(default_factory=dict)  # pairs offered per emotion
    options: dict[str, Any] = field(default_factory=dict)
    resid_norm: list[float] | None = None  # mean ||h_l|| of neutral runs, for unit scaling

    @property
    def labels(self) -> list[str]:
        return sorted(self.vectors)

    @property
    def num_layers(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def get(self, label: str) -> torch.Tensor:
        if label not in self.vectors:
            raise AffectlensError(f"no steering vector for '{label}'; have {', '.join(self.labels)}")
        return self.vectors[label]

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        def js(obj: Any) -> str:  # NaN/Infinity is no JSON: refused, never written
            try:
                return json.dumps(obj, default=str, allow_nan=False)
            except ValueError:
                raise AffectlensError(f"steering vectors for {path}: non-finite metadata {obj!r}") from None

        meta = {"format": FORMAT, "num_layers": str(self.num_layers),
                "hidden_size": str(next(iter(self.vectors.values())).shape[1]),
                "labels": js(self.labels), "counts": js(self.counts),
                "totals": js(self.totals), "options": js(self.options),
                "resid_norm": js(self.resid_norm),
                "layers": "residual stream after decoder block l (row l), last prompt token"}
        save_file({k: v.contiguous().float() for k, v in self.vectors.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SteeringVectors:
        from safetensors import safe_open

        p = Path(path)
        if p.is_dir():
            p = p / "vectors.safetensors"
        if not p.is_file():
            raise AffectlensError(f"no steering vectors at {p}")
        try:
            with safe_open(str(p), "pt") as f:
                meta = f.metadata() or {}
                vecs = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        except Exception as e:  # safetensors raises its own error types
            raise AffectlensError(f"{p} is not a safetensors file: {e}") from None
        if meta.get("format") != FORMAT:
            raise AffectlensError(f"{p} is not an affectlens steering-vector file")
        try:
            parsed = [json.loads(meta.get(k, d)) for k, d in (("counts", "{}"), ("totals", "{}"),
                                                             ("options", "{}"), ("resid_norm", "null"))]
        except ValueError as e:
            raise AffectlensError(f"{p}: malformed metadata ({e})") from None
        sv = cls(vecs, *parsed)
        sv.validate(p)
        return sv

    def validate(self, where: str | os.PathLike) -> None:
        """Non-empty, one ``[num_layers, hidden]`` float tensor per emotion, all finite."""
        if not self.vectors:
            raise AffectlensError(f"{where} holds no steering vectors")
        shapes = {tuple(v.shape) for v in self.vectors.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2 or 0 in next(iter(shapes)):
            raise AffectlensError(f"{where}: steering vectors must share one [layers, hidden] shape, "
                                  f"got {sorted(shapes)}")
        for e in self.labels:
            v = self.vectors[e]
            if not v.is_floating_point():
                raise AffectlensError(f"{where}: steering vector '{e}' is {v.dtype}, not floating point")
            bad = (~torch.isfinite(v)).nonzero()
            if len(bad):
                la = int(bad[0][0])
                raise AffectlensError(f"{where}: steering vector '{e}' has non-finite values "
                                      f"({float(v[la][~torch.isfinite(v[la])][0])}) at layer {la}")
        norms = self.resid_norm
        if norms is not None and (not isinstance(norms, list) or len(norms) != self.num_layers
                                  or not all(isinstance(x, int | float) and math.isfinite(x) for x in norms)):
            raise AffectlensError(f"{where}: resid_norm must be {self.num_layers} finite numbers")


def _position_value(x: torch.Tensor, position: str, start: int) -> torch.Tensor:
    """``x`` is ``[s, d]`` of one prompt; pick the last token or the mean from ``start``."""
    if position == "last":
        return x[-1]
    if position == "mean":
        if start >= x.shape[0]:
            raise AffectlensError(f"--from-token {start} is past the prompt ({x.shape[0]} tokens)")
        return x[start:].mean(0)
    raise AffectlensError(f"unknown position '{position}'; use last or mean")


def residuals(model: Any, enc: Encoder, stimuli: Sequence[str], images: Sequence[str | None] | None = None,
              position: str = "last", start: int = 0, desc: str = "activations",
              batch_size: int = 8) -> torch.Tensor:
    """``[n, num_layers, hidden]`` residual stream after every block (CPU, float32).

    Text prompts run in left-padded batches with explicit position ids (the
    same numbers as one at a time, up to float rounding); image prompts one by one.
    """
    n_layers = len(decoder_layers(model))
    images = list(images or [None] * len(stimuli))
    out: list[torch.Tensor | None] = [None] * len(stimuli)
    text_idx = [i for i, im in enumerate(images) if im is None or enc.processor is None]
    img_idx = [i for i in range(len(stimuli)) if i not in set(text_idx)]
    dev = next(model.parameters()).device
    batches = [text_idx[i : i + batch_size] for i in range(0, len(text_idx), batch_size)]
    for batch in progress(batches + [[i] for i in img_idx], desc=desc):
        if batch[0] in set(img_idx):
            inputs = to_model(enc(stimuli[batch[0]], images[batch[0]]), model)
            offsets = [0]
        else:
            seqs = [enc(stimuli[i])["input_ids"][0] for i in batch]
            n = max(len(x) for x in seqs)
            pad = getattr(enc.tokenizer, "pad_token_id", None) or 0
            ids = torch.full((len(seqs), n), int(pad), dtype=torch.long)
            mask = torch.zeros((len(seqs), n), dtype=torch.long)
            for r, x in enumerate(seqs):
                ids[r, n - len(x):] = x
                mask[r, n - len(x):] = 1
            inputs = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev),
                      "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(dev)}
            offsets = [n - len(x) for x in seqs]
        with hooks(model) as h, torch.no_grad():
            cap = capture(h, range(n_layers))
            model(**inputs)
        for r, i in enumerate(batch):
            out[i] = torch.stack([_position_value(cap.resid[la][r, offsets[r]:].float(), position, start)
                                  for la in range(n_layers)])
    return torch.stack([x for x in out if x is not None])


def pass_counts(model: Any, enc: Encoder, pairs: Sequence[Pair], min_score: float,
                batch_size: int = 16) -> tuple[list[bool], torch.Tensor]:
    """Which pairs the model reads correctly: ``p(label | emotional) >= min_score``."""
    if min_score <= 0:
        return [True] * len(pairs), torch.full((len(pairs),), float("nan"))
    labs = answer_labels(pairs)
    probs = emotion_probs(model, enc, [p.emotional for p in pairs], labs,
                          [p.image_emotional for p in pairs], batch_size=batch_size, progress=True)
    score = torch.tensor([float(probs[i, labs.index(p.label)]) for i, p in enumerate(pairs)])
    _require_finite_rows(model, score[:, None], pairs, "emotional", "p(label)")
    return [bool(s >= min_score) for s in score], score


def select_pairs(pairs: Sequence[Pair], score: torch.Tensor, min_score: float,
                 min_pairs: int) -> tuple[list[bool], dict[str, dict[str, Any]]]:
    """``U_e`` per emotion: the pairs passing ``min_score``, or a fallback when fewer than ``min_pairs`` do.

    A small model reads few pairs with confidence, and an empty ``U_e`` has no
    direction at all. The fallback keeps the ``min_pairs`` best-scoring pairs
    whose score beats chance (``1 / n_labels``): still pairs the model leans
    the right way on, the most confident first. An emotion with no pair above
    chance has nothing usable (an error); ``min_pairs=0`` turns the fallback
    off (an emotion with no passing pair is an error).
    Returns the kept mask and, per emotion, what was offered, passed and used and why.
    """
    labels = labels_of(pairs)
    chance = 1.0 / len(answer_labels(pairs))
    keep = [False] * len(pairs)
    report: dict[str, dict[str, Any]] = {}
    for e in labels:
        idx = [i for i, p in enumerate(pairs) if p.label == e]
        s = {i: float(score[i]) for i in idx}
        passing = [i for i in idx if min_score <= 0 or s[i] >= min_score]
        rule, used = "min_score", passing
        if len(passing) < min(min_pairs, len(idx)):  # every pair passing: nothing to fall back to
            above = sorted((i for i in idx if s[i] > chance), key=lambda i: (-s[i], i))
            used = above[:max(min_pairs, len(passing))]
            rule = "fallback"
        for i in used:
            keep[i] = True
        scored = [s[i] for i in used if not math.isnan(s[i])]
        report[e] = {"offered": len(idx), "passing": len(passing), "used": len(used),
                     "pass_rate": len(passing) / len(idx), "rule": rule,
                     "min_used_score": min(scored) if scored else None}
        if rule == "fallback":
            report[e]["note"] = (f"{len(passing)}/{len(idx)} pairs pass --min-score {min_score:g} "
                                 f"(< --min-pairs {min_pairs}): used the {len(used)} best-scoring pairs "
                                 f"above chance ({chance:.2f})")
    empty = [e for e in labels if report[e]["used"] == 0]
    if empty:
        detail = ", ".join(f"{e} {report[e]['passing']}/{report[e]['offered']}" for e in labels)
        why = ("and none scores above chance" if min_pairs > 0 else
               "(--min-pairs 0: no fallback)")
        raise AffectlensError(f"no usable pair for {', '.join(empty)}: no pair passes --min-score {min_score:g} "
                              f"{why} (passing per emotion: {detail})")
    return keep, report


def neutral_pca_basis(neutral: torch.Tensor, share: float) -> torch.Tensor:
    """Top principal directions ``[k, d]`` of neutral activations explaining ``share`` of variance."""
    x = neutral.double() - neutral.double().mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    var = s**2
    cum = torch.cumsum(var, 0) / var.sum().clamp_min(1e-300)
    k = int(torch.searchsorted(cum, torch.tensor(share, dtype=cum.dtype)).item()) + 1
    return vh[: min(k, vh.shape[0])].float()


def compute_vectors(model: Any, enc: Encoder, pairs: Sequence[Pair], min_score: float = 0.5,
                    position: str = "last", from_token: int = 0, centring: str = "pair",
                    denoise: float | None = None, batch_size: int = 16, min_pairs: int = 5) -> SteeringVectors:
    """Steering vectors per emotion and layer (see module docstring for the maths).

    centring: ``pair`` mean of paired differences; ``group`` mean emotional
    activation minus the mean of *all* neutral activations; ``global`` mean
    emotional activation of ``e`` minus the mean emotional activation over all
    emotions (what is specific to ``e``). ``denoise`` (0-1) projects out the
    top neutral principal components explaining that share of variance.
    ``min_pairs``: the fallback of :func:`select_pairs` (recorded per emotion in
    ``options["selection"]``).
    """
    if centring not in CENTRINGS:
        raise AffectlensError(f"unknown centring '{centring}'; use {', '.join(CENTRINGS)}")
    if denoise is not None and not 0 < denoise < 1:
        raise AffectlensError("--denoise must be a variance share in (0, 1)")
    if min_pairs < 0:
        raise AffectlensError(f"--min-pairs must be >= 0, not {min_pairs}")
    if min_score > 1:
        raise AffectlensError(f"--min-score is a probability: {min_score:g} is above 1 (0 keeps every pair)")
    _, score = pass_counts(model, enc, pairs, min_score, batch_size)
    ok, selection = select_pairs(pairs, score, min_score, min_pairs)
    labels = labels_of(pairs)
    totals = {e: selection[e]["offered"] for e in labels}
    counts = {e: selection[e]["used"] for e in labels}
    used = [p for p, o in zip(pairs, ok, strict=True) if o]
    hp = residuals(model, enc, [p.emotional for p in used], [p.image_emotional for p in used],
                   position, from_token, desc="emotional")
    hn = residuals(model, enc, [p.neutral for p in used], [p.image_neutral for p in used],
                   position, from_token, desc="neutral")
    _require_finite_rows(model, hp, used, "emotional", "activations")
    _require_finite_rows(model, hn, used, "neutral", "activations")
    lab = [p.label for p in used]
    vecs: dict[str, torch.Tensor] = {}
    all_pos = hp.double().mean(0)
    all_neg = hn.double().mean(0)
    for e in labels:
        idx = torch.tensor([i for i, x in enumerate(lab) if x == e])
        if centring == "pair":
            v = (hp[idx].double() - hn[idx].double()).mean(0)
        elif centring == "group":
            v = hp[idx].double().mean(0) - all_neg
        else:
            v = hp[idx].double().mean(0) - all_pos
        vecs[e] = v.float()
    if denoise is not None:
        for layer in range(hn.shape[1]):
            basis = neutral_pca_basis(hn[:, layer], denoise)
            for e in labels:
                v = vecs[e][layer]
                vecs[e][layer] = v - basis.T @ (basis @ v)
    opts = {"min_score": min_score, "position": position, "from_token": from_token,
            "centring": centring, "denoise": denoise, "query": enc.query, "min_pairs": min_pairs,
            "selection": selection,
            "mean_pass_score": float(score[~score.isnan()].mean()) if (~score.isnan()).any() else None}
    norms = hn.norm(dim=-1).mean(0).tolist()
    sv = SteeringVectors(vecs, counts, totals, opts, norms)
    from ..evaluate.scorer import model_name

    sv.validate(f"vectors computed from model {model_name(model)}")
    return sv


def _require_finite_rows(model: Any, x: torch.Tensor, pairs: Sequence[Pair], side: str, what: str) -> None:
    """``x[i]`` belongs to ``pairs[i]``: refuse the first pair whose numbers are NaN/Inf."""
    from ..evaluate.scorer import non_finite_error, text_start

    bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(-1).nonzero()
    if len(bad):
        i = int(bad[0])
        text = getattr(pairs[i], side)
        raise non_finite_error(model, "circuits", f"pair {i} ({side} side {text_start(text)}) has "
                               f"non-finite {what}")


# ----------------------------------------------------------------------------- interchange


def export_steering_vectors_lib(sv: SteeringVectors, label: str, path: str | os.PathLike,
                                layers: Sequence[int] | None = None) -> None:
    """steering-vectors library: ``SteeringVector(**torch.load(path))`` rebuilds it."""
    v = sv.get(label)
    layers = range(v.shape[0]) if layers is None else layers
    torch.save({"layer_activations": {int(la): v[la].clone() for la in layers},
                "layer_type": "decoder_block"}, str(path))


def import_steering_vectors_lib(path: str | os.PathLike, label: str, num_layers: int) -> SteeringVectors:
    """Read a steering-vectors ``{"layer_activations": {layer: vec}}`` file (missing layers = 0)."""
    obj = torch_load(path)
    if not isinstance(obj, dict):
        raise AffectlensError(f"{path} is not a steering-vectors file (a dict with layer_activations)")
    acts = obj.get("layer_activations")
    if not isinstance(acts, dict) or not acts:
        raise AffectlensError(f"{path} has no layer_activations")
    if obj.get("layer_type", "decoder_block") != "decoder_block":
        raise AffectlensError(f"{path}: only decoder_block vectors map onto the residual stream")
    out: torch.Tensor | None = None
    for la, vec in acts.items():
        if not isinstance(vec, torch.Tensor) or not vec.is_floating_point() or vec.numel() == 0:
            raise AffectlensError(f"{path}: layer_activations[{la!r}] is not a float tensor")
        try:
            idx = int(la)
        except (TypeError, ValueError):
            raise AffectlensError(f"{path}: layer_activations key {la!r} is not a layer index") from None
        if not -num_layers <= idx < num_layers:
            raise AffectlensError(f"{path}: layer {idx} out of range: the model has {num_layers} layers")
        if out is None:
            out = torch.zeros(num_layers, vec.numel())
        if vec.numel() != out.shape[1]:
            raise AffectlensError(f"{path}: layer_activations differ in size ({vec.numel()} vs {out.shape[1]})")
        out[idx % num_layers] = vec.reshape(-1).float()  # the library allows negative layer indices
    assert out is not None
    sv = SteeringVectors({label: out}, options={"imported_from": str(path)})
    sv.validate(path)
    return sv


def export_lm_eval(sv: SteeringVectors, label: str, path: str | os.PathLike, layers: Sequence[int],
                   coefficient: float = 1.0, hookpoint: str = "layers.{layer}") -> None:
    """lm-eval ``--model steered`` file: ``{hookpoint: {action, steering_coefficient, steering_vector, bias}}``.

    Hookpoints are module names under ``model.base_model`` (``layers.N`` for
    Llama/Qwen). lm-eval adds the vector at every position.
    """
    v = sv.get(label)
    torch.save({hookpoint.format(layer=int(la)): {"action": "add", "steering_coefficient": float(coefficient),
                                                  "steering_vector": v[la].clone(), "bias": None}
                for la in layers}, str(path))


def import_lm_eval(path: str | os.PathLike, label: str, num_layers: int) -> SteeringVectors:
    """Read an lm-eval steer file back; the coefficient is folded into the vector."""
    import re

    obj = torch_load(path)
    if not isinstance(obj, dict) or not obj:
        raise AffectlensError(f"{path} is not an lm-eval steer file (a dict of hookpoints)")
    out: torch.Tensor | None = None
    for hp, info in obj.items():
        m = re.search(r"layers\.(\d+)$", str(hp))
        if not m or not isinstance(info, dict) or info.get("action", "add") != "add":
            raise AffectlensError(f"{path}: hookpoint '{hp}' is not an additive decoder-layer vector")
        raw = info.get("steering_vector")
        if not isinstance(raw, torch.Tensor) or not raw.is_floating_point() or raw.numel() == 0:
            raise AffectlensError(f"{path}: hookpoint '{hp}' has no float steering_vector tensor")
        try:
            coef = float(info.get("steering_coefficient", 1.0))
        except (TypeError, ValueError):
            raise AffectlensError(f"{path}: hookpoint '{hp}' has a non-numeric steering_coefficient") from None
        vec = raw.reshape(-1).float() * coef
        if int(m[1]) >= num_layers:
            raise AffectlensError(f"{path}: hookpoint '{hp}' is past the model's {num_layers} layers")
        if out is None:
            out = torch.zeros(num_layers, vec.numel())
        if vec.numel() != out.shape[1]:
            raise AffectlensError(f"{path}: steering vectors differ in size ({vec.numel()} vs {out.shape[1]})")
        out[int(m[1])] = vec
    assert out is not None
    sv = SteeringVectors({label: out}, options={"imported_from": str(path)})
    sv.validate(path)
    return sv


def is_pickle_vectors(path: str | os.PathLike) -> bool:
    """A vectors file read with ``torch.load`` (a steering-vectors / lm-eval ``.pt``), not our safetensors."""
    p = Path(path)
    return p.is_file() and p.suffix != ".safetensors"


def check_vectors_file(path: str | os.PathLike, allow_pickle: bool) -> None:
    """``--vectors`` exists, and a pickle file only with ``--allow-pickle`` (checked before a model loads).

    The same gate and message as pickle checkpoints: a ``.pt`` is a pickle whoever wrote it.
    """
    from ..weights.pickle_store import pickle_refusal

    p = Path(path)
    if not p.exists():
        raise AffectlensError(f"no steering vectors at {p}")
    if is_pickle_vectors(p) and not allow_pickle:
        raise pickle_refusal(p)


def torch_load(path: str | os.PathLike) -> Any:
    """A ``.pt`` vectors file through the one pickle loader (``weights_only=True``)."""
    from ..weights.pickle_store import load_pickle

    if not Path(path).is_file():
        raise AffectlensError(f"{path} does not exist")
    return load_pickle(path)
