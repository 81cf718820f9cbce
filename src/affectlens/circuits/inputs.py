"""Inputs of the circuits runs: models, pairs, vectors, layer and unit selections, option checks.

Everything here runs (and fails, as one line) before or while a run loads
its model; ``circuits.api`` composes these into one ``*_run`` per command.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from .pairs import Pair, labels_of, load_pairs
from .vectors import SteeringVectors, import_lm_eval, import_steering_vectors_lib


def load_for_pairs(model_path: str, pairs: Sequence[Pair], adapter: str | None = None,
                   dtype: str = "auto", allow_pickle: bool = False, device: str = "auto",
                   device_map: str | None = None) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, processor)``; a vision-language model when the pairs carry images.

    A checkpoint of a known vision-language family (``affectlens.models.vlm``) loads
    through the VLM loader also for text-only pairs (its config names no
    causal-LM class); the processor is then None, as text prompts need none.
    Both loaders place the model on ``device`` in ``dtype`` (``models.placement``).
    """
    from ..models.loading import load_model
    from ..models.resolve import resolve_model_path
    from ..models.vlm import is_vlm_dir, load_vlm

    images = any(p.image_emotional or p.image_neutral for p in pairs)
    if not images and not is_vlm_dir(resolve_model_path(model_path)):
        model, tok = load_model(model_path, adapter=adapter, dtype=dtype, allow_pickle=allow_pickle,
                                device=device, device_map=device_map)
        return model, tok, None
    model, tok, proc = load_vlm(model_path, adapter, dtype, allow_pickle, device, device_map)
    return model, tok, proc if images else None


def load_lm(model_path: str, adapter: str | None = None, dtype: str = "auto", allow_pickle: bool = False,
            device: str = "auto", device_map: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for text prompts: a causal LM, or a vision-language checkpoint's model.

    Text tasks (``circuits intervene``'s evaluation) run on the VLM's language
    side with plain ids; its config names no causal-LM class, so it loads
    through ``affectlens.models.vlm``.
    """
    model, tok, _ = load_for_pairs(model_path, (), adapter, dtype, allow_pickle, device, device_map)
    return model, tok


def load_vectors(path: str | os.PathLike, num_layers: int, label: str | None = None,
                 hidden: int | None = None, allow_pickle: bool = False) -> SteeringVectors:
    """Our safetensors (dir or file), or a steering-vectors / lm-eval ``.pt`` (needs ``label``).

    A ``.pt`` is a pickle: read only with ``allow_pickle`` (the CLI's ``--allow-pickle``; the
    rule is the library's, not only the command's), with ``torch.load(weights_only=True)``. Every
    vector is checked: shape, layer count, hidden size (when given), finite.
    """
    from .vectors import check_vectors_file, torch_load

    p = Path(path)
    check_vectors_file(p, allow_pickle)
    if p.is_dir() or p.suffix == ".safetensors":
        sv = SteeringVectors.load(p)
    else:
        if label is None:
            raise AffectlensError(f"{p} holds one unnamed vector; pass --vectors-label EMOTION")
        obj = torch_load(p)
        if isinstance(obj, dict) and "layer_activations" in obj:
            sv = import_steering_vectors_lib(p, label, num_layers)
        else:
            sv = import_lm_eval(p, label, num_layers)
    if sv.num_layers != num_layers:
        raise AffectlensError(f"vectors at {p} have {sv.num_layers} layers but the model has {num_layers}")
    width = next(iter(sv.vectors.values())).shape[1]
    if hidden is not None and width != hidden:
        raise AffectlensError(f"vectors at {p} have width {width} but the model's hidden size is {hidden}")
    return sv


def hidden_size(model: Any) -> int | None:
    cfg: Any = getattr(model, "config", None)  # a transformers config (untyped), or None
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    h = getattr(cfg, "hidden_size", None)
    return int(h) if isinstance(h, int) else None


def check_layer_spec(spec: str | None, flag: str) -> None:
    """Syntax and order of a layer spec (``0-3,7``), before any model is loaded."""
    if spec is None or str(spec).strip() in ("", "all"):
        return
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if a > b:
                    raise AffectlensError(f"{flag} {spec}: reversed layer range '{part}' "
                                          f"(write {b}-{a})")
            else:
                int(part)
        except ValueError:
            raise AffectlensError(f"{flag} {spec}: bad layer spec '{part}': use e.g. 0-11,20") from None


def select_layers(spec: str | None, num_layers: int, flag: str) -> tuple[int, ...]:
    """Layer indices of ``spec`` (through ``modules.parse_layers``); never an empty selection."""
    from ..modules import parse_layers

    check_layer_spec(spec, flag)
    sel = parse_layers(spec, num_layers)
    if not sel:
        raise AffectlensError(f"{flag} {spec} selects no layers")
    return sel


def finite_options(**opts: float | None) -> None:
    """Numeric options are finite numbers (argparse's float() accepts 'nan' and 'inf')."""
    for name, v in opts.items():
        if v is not None and not math.isfinite(v):
            raise AffectlensError(f"--{name.replace('_', '-')} must be a finite number, not {v}")


def positive(**opts: int | None) -> None:
    """Counts and sizes are positive integers (None: the default)."""
    for name, v in opts.items():
        if v is not None and v < 1:
            raise AffectlensError(f"--{name.replace('_', '-')} must be positive, not {v}")


def require_finite_out(obj: Any, what: str, model_path: str) -> None:
    """Refuse to write a result holding NaN/Inf; name the row (emotion/layer/unit) when it is one."""
    from ..evaluate.metrics import NonFiniteResult, find_non_finite

    hit = find_non_finite(obj)
    if not hit:
        return
    where, value = hit
    if isinstance(obj, list) and where.startswith("["):
        i = int(where[1:where.index("]")])
        row = obj[i]
        if isinstance(row, dict):
            key = where[where.index("]") + 1:].lstrip(".")
            ident = ", ".join(f"{k} {row[k]}" for k in ("task", "metric", "emotion", "layer", "head", "neuron")
                              if k in row)
            where = f"{key} of row {i + 1} ({ident})" if ident else f"{key} of row {i + 1}"
    raise NonFiniteResult(f"circuits {what}: non-finite {where} = {value} from model {model_path}; "
                          "nothing written")


def setup(model_path: str, pairs_path: str | None, adapter: str | None, dtype: str,
          emotions: Sequence[str] | None, allow_pickle: bool = False,
          device: str = "auto") -> tuple[Any, Any, Any, list[Pair]]:
    """``(model, tokenizer, processor, pairs)``; ``emotions`` must all occur in the pairs."""
    pairs = load_pairs(pairs_path)
    if emotions:
        unknown = sorted(set(emotions) - set(labels_of(pairs)))
        if unknown:
            raise AffectlensError(f"emotion(s) {', '.join(unknown)} not in the pairs ({', '.join(labels_of(pairs))})")
    model, tok, proc = load_for_pairs(model_path, pairs, adapter, dtype, allow_pickle, device)
    return model, tok, proc, pairs


def vectors_for(model: Any, enc: Any, pairs: list[Pair], opts: dict[str, Any],
                allow_pickle: bool = False) -> SteeringVectors:
    """``opts["vectors"]`` loaded and checked against the model (a ``.pt`` only with ``allow_pickle``),
    else computed from the pairs."""
    from .hooks import decoder_layers
    from .vectors import compute_vectors

    if opts.get("vectors"):
        return load_vectors(opts["vectors"], len(decoder_layers(model)), opts.get("vectors_label"),
                            hidden_size(model), allow_pickle)
    return compute_vectors(model, enc, pairs, min_score=opts.get("min_score", 0.5),
                           position=opts.get("position", "last"), from_token=opts.get("from_token", 0),
                           centring=opts.get("centring", "pair"), denoise=opts.get("denoise"))


def inputs_of(model_path: str, pairs_path: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's inputs: model, pairs (the bundled ones when None) and any given extras."""
    from .pairs import default_pairs_path

    out: dict[str, Any] = {"model": model_path, "pairs": str(pairs_path or default_pairs_path())}
    for k, v in (extra or {}).items():
        if v:
            out[k] = str(v)
    return out


def units_of(spec: str | None, what: str, top: int, emotions: Sequence[str] | None
             ) -> tuple[dict[int, list[int]], dict[str, list[str]]]:
    """Heads/neurons as ``L.I,...`` or the top ``top`` of a previous run's CSV (of each of ``emotions``).

    Also, for a CSV, which units came from which emotion (``{"anger": ["L1.H0"]}``), for the report.
    """
    from .intervene import joined_units, parse_units, ranked_units

    if not spec:
        return {}, {}
    if spec.endswith(".csv") or Path(spec).is_file():
        ranked, tag = ranked_units(spec, what, top, emotions), "H" if what == "head" else "N"
        return joined_units(ranked), {e: [f"L{la}.{tag}{u}" for la, u in us] for e, us in ranked.items()}
    return parse_units(spec, what), {}


def ppl_texts_of(path: str | None, pairs_path: str | None) -> list[str]:
    """Texts for the perplexity guard: paragraphs of ``path``, else 40 neutral sides of the pairs."""
    if not path:
        return [p.neutral for p in load_pairs(pairs_path)][:40]
    pp = Path(path)
    if not pp.is_file():
        raise AffectlensError(f"--ppl-texts {pp} is not a file")
    texts = [t for t in pp.read_bytes().decode("utf-8-sig", errors="replace").split("\n\n") if t.strip()]
    if not texts:
        raise AffectlensError(f"--ppl-texts {pp} holds no text")
    return texts
