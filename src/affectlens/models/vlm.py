"""Vision-language model families: what differs between them, in one place.

The circuits study runs on Qwen2-VL, Qwen2.5-VL, Qwen3-VL and LLaVA(-OneVision).
Everything else in affectlens treats them alike: a text decoder whose blocks
have ``self_attn``/``mlp`` (found by ``circuits.hooks.decoder_layers``), a
vision tower whose tensors ``modules.parse_name`` classifies as ``vision`` /
``projector`` (so locate/tune selections never reach them), and image
placeholder tokens in the prompt that the processor expands to one token per
visual feature. What is per family lives here: which processor to build, the
placeholder text and image token, and which inputs carry one value per token
(they must grow with the ids when label tokens are appended for scoring).

Qwen-VL families position tokens with M-RoPE (3-D ids from the model's own
``get_rope_index``, computed inside its forward from ``input_ids``,
``image_grid_thw`` and ``mm_token_type_ids``); affectlens therefore always
calls the model with the processor's full output and never passes
``position_ids`` itself.

Without torchvision, transformers cannot build any processor that has a
video sub-processor (its class check needs torchvision), even when no video
is used. :func:`load_processor` then builds the family's own processor class
without the video part, from the checkpoint's image processor (the PIL one),
tokenizer and ``processor_config.json``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

from ..errors import AffectlensError


@dataclass(frozen=True)
class Family:
    """Per-family facts of a vision-language checkpoint."""

    name: str
    model_types: tuple[str, ...]  # config.json "model_type" values
    processor: str  # transformers processor class
    image_token: str  # what the processor expands per image feature
    vision_start: str = ""  # tokens around the image placeholder (Qwen-VL)
    vision_end: str = ""
    video_token: str | None = None
    mrope: bool = False  # 3-D rotary positions from get_rope_index

    @property
    def placeholder(self) -> str:
        """The text one image takes in a prompt before the processor expands it."""
        return f"{self.vision_start}{self.image_token}{self.vision_end}"

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Tokens a tokenizer must know for this family's prompts."""
        toks = (self.vision_start, self.image_token, self.vision_end, self.video_token or "")
        return tuple(t for t in toks if t)


def _qwen(name: str, model_types: tuple[str, ...], processor: str) -> Family:
    return Family(name, model_types, processor, "<|image_pad|>", "<|vision_start|>", "<|vision_end|>",
                  "<|video_pad|>", mrope=True)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    _qwen("qwen2_vl", ("qwen2_vl",), "Qwen2VLProcessor"),
    _qwen("qwen2_5_vl", ("qwen2_5_vl",), "Qwen2_5_VLProcessor"),
    _qwen("qwen3_vl", ("qwen3_vl", "qwen3_vl_moe"), "Qwen3VLProcessor"),
    Family("llava_onevision", ("llava_onevision",), "LlavaOnevisionProcessor", "<image>", video_token="<video>"),
    Family("llava", ("llava",), "LlavaProcessor", "<image>"),
)}
# Inputs with one value per token: they grow (with 0 = text) when tokens are appended.
PER_TOKEN_INPUTS = ("mm_token_type_ids", "token_type_ids")


def family_of(model_type: str | None) -> Family | None:
    """The family of a config ``model_type`` (None: not a known VLM)."""
    for f in FAMILIES.values():
        if model_type in f.model_types:
            return f
    return None


def model_type_of(path: Path) -> str | None:
    """``model_type`` of a checkpoint dir's config.json (None when absent or unreadable)."""
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    mt = cfg.get("model_type") if isinstance(cfg, dict) else None
    return mt if isinstance(mt, str) else None


def is_vlm_dir(path: Path) -> bool:
    """Whether a checkpoint dir holds a vision-language model of a known family."""
    return path.is_dir() and family_of(model_type_of(path)) is not None


# ----------------------------------------------------------------------------- processors


@cache
def image_only(cls: type) -> type:
    """``cls`` (a processor class) without its video sub-processor.

    transformers checks every sub-processor's class on construction, and the
    video one cannot be checked without torchvision; the subclass's
    signature drops ``video_processor`` so neither construction nor saving
    asks for it. Images and text go through the family's own code unchanged.
    """
    params = [p for n, p in inspect.signature(cls).parameters.items() if n != "video_processor"]
    sig = inspect.Signature(params)
    parent_init = cast(Any, cls).__init__
    var_kw = next((p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kw = dict(sig.bind(*args, **kwargs).arguments)
        extra = kw.pop(var_kw, {}) if var_kw else {}
        parent_init(self, video_processor=None, **kw, **extra)

    me = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    setattr(__init__, "__signature__", inspect.Signature([me, *params]))  # noqa: B010 (read by inspect)
    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__, "__doc__": cls.__doc__})


def build_processor(family: Family | str, image_processor: Any, tokenizer: Any, **kwargs: Any) -> Any:
    """The family's processor from its parts (without a video sub-processor when it has one)."""
    import transformers

    fam = FAMILIES[family] if isinstance(family, str) else family
    cls = getattr(transformers, fam.processor)
    if "video_processor" in inspect.signature(cls).parameters:
        cls = image_only(cls)
    missing = [t for t in fam.special_tokens if t not in tokenizer.get_vocab()]
    if missing:
        raise AffectlensError(f"the tokenizer lacks the {fam.name} token(s) {', '.join(missing)}")
    return cls(image_processor=image_processor, tokenizer=tokenizer, **kwargs)


def load_processor(path: Path) -> Any:
    """The checkpoint's processor: transformers' own, else the family's without video.

    Processor options saved in ``processor_config.json`` (e.g. LLaVA-OneVision's
    ``num_image_tokens``) are passed on; the image processor is whatever
    ``AutoImageProcessor`` picks (the PIL one without torchvision).
    """
    from transformers import AutoImageProcessor, AutoProcessor

    from .loading import load_tokenizer

    try:
        return AutoProcessor.from_pretrained(str(path))
    except Exception as e:  # transformers raises many kinds here; the fallback decides
        first = e
    fam = family_of(model_type_of(path))
    if fam is None:
        raise AffectlensError(f"cannot load the processor of {path}: {type(first).__name__}: {first}")
    try:
        ip = AutoImageProcessor.from_pretrained(str(path))
    except Exception as e:
        raise AffectlensError(f"cannot load the image processor of {path}: {type(e).__name__}: {e}") from None
    import transformers

    accepted = set(inspect.signature(getattr(transformers, fam.processor)).parameters)
    kwargs = {k: v for k, v in _processor_options(path).items()
              if k in accepted and k not in ("image_processor", "tokenizer", "video_processor")}
    return build_processor(fam, ip, load_tokenizer(path), **kwargs)


def _processor_options(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("processor_config.json", "preprocessor_config.json"):
        f = path / name
        if f.is_file():
            try:
                cfg = json.loads(f.read_text(encoding="utf-8"))
            except ValueError:
                continue
            if isinstance(cfg, dict):
                out = {**cfg, **out}
    tmpl, legacy = path / "chat_template.jinja", path / "chat_template.json"
    if "chat_template" not in out and tmpl.is_file():
        out["chat_template"] = tmpl.read_text(encoding="utf-8")
    elif "chat_template" not in out and legacy.is_file():  # older checkpoints: {"chat_template": "..."}
        try:
            obj = json.loads(legacy.read_text(encoding="utf-8"))
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("chat_template"), str):
            out["chat_template"] = obj["chat_template"]
    return out


def image_token_id(processor: Any) -> int:
    """The id of the token that stands for one image feature in the processed ids."""
    tid = getattr(processor, "image_token_id", None)
    if tid is None:
        tok = getattr(processor, "tokenizer", processor)
        tid = tok.convert_tokens_to_ids(getattr(processor, "image_token", "<image>"))
    return int(tid)


# ----------------------------------------------------------------------------- inputs


def extend_inputs(inputs: Mapping[str, Any], ids: Any) -> dict[str, Any]:
    """``inputs`` with token ids ``ids`` (``[1, k]``) appended, as the model's forward expects.

    The attention mask grows with ones and per-token inputs (Qwen-VL's
    ``mm_token_type_ids``) with zeros (text), so M-RoPE positions of the
    appended tokens come out as the model's own ``get_rope_index`` makes them;
    pixel values and image grids are passed on unchanged.
    """
    import torch

    out = dict(inputs)
    base = inputs["input_ids"]
    ids = ids.to(base.device)
    out["input_ids"] = torch.cat([base, ids], 1)
    mask = inputs.get("attention_mask")
    if mask is not None:
        out["attention_mask"] = torch.cat([mask, torch.ones_like(ids, dtype=mask.dtype)], 1)
    for k in PER_TOKEN_INPUTS:
        v = inputs.get(k)
        if isinstance(v, torch.Tensor) and v.shape[:2] == base.shape[:2]:
            out[k] = torch.cat([v, torch.zeros_like(ids, dtype=v.dtype)], 1)
    return out


def image_placeholder(processor: Any) -> str:
    """The text one image takes in a prompt, read off the processor's tokenizer."""
    tok = getattr(processor, "tokenizer", processor)
    vocab = tok.get_vocab()
    img = getattr(processor, "image_token", "<image>")
    vs = "<|vision_start|>" if "<|vision_start|>" in vocab else ""
    ve = "<|vision_end|>" if "<|vision_end|>" in vocab else ""
    return f"{vs}{img}{ve}"


def image_inputs(processor: Any, prompt: str, image: str | Path) -> dict[str, Any]:
    """The processor's inputs for one prompt and one image file (RGB)."""
    from PIL import Image

    if not Path(image).is_file():
        raise AffectlensError(f"image {image} does not exist")
    try:
        with Image.open(image) as im:
            rgb = im.convert("RGB")
    except OSError as e:
        raise AffectlensError(f"image {image} cannot be read: {e}") from None
    return dict(processor(text=[prompt], images=[rgb], return_tensors="pt"))


def image_label_logprobs(model: Any, processor: Any, prompts: Sequence[str], images: Sequence[str | Path],
                         labels: Sequence[str], encoded: Sequence[Mapping[str, Any]] | None = None,
                         progress: bool = False) -> Any:
    """``[n, n_labels]`` float64 log-likelihoods of each label after each (prompt, image).

    Text scoring (``evaluate.scorer``) batches token ids; image prompts need
    the processor's pixel inputs, so each label is appended to the processed
    prompt (:func:`extend_inputs`) and scored in its own forward. Label ids
    are :func:`affectlens.prompts.encode_targets`'s, the ones text scoring
    and training use. ``encoded``: the prompts' inputs when the caller has
    them already (else :func:`image_inputs`).
    """
    import torch

    from ..runs import Progress
    from ..tasks.prompts import encode_targets

    bar = Progress(len(prompts), "scoring images", unit="ex", enabled=progress)
    tok = getattr(processor, "tokenizer", processor)
    p = next(model.parameters())
    out = torch.zeros(len(prompts), len(labels), dtype=torch.float64)
    for i, (prompt, im) in enumerate(zip(prompts, images, strict=True)):
        raw = encoded[i] if encoded is not None else image_inputs(processor, prompt, im)
        inputs = {k: (v.to(p.device, p.dtype) if v.is_floating_point() else v.to(p.device))
                  if isinstance(v, torch.Tensor) else v for k, v in raw.items()}
        p0 = inputs["input_ids"].shape[1]
        for j, target in enumerate(encode_targets(tok, prompt, labels)):
            ids = torch.tensor([target], device=inputs["input_ids"].device)
            with torch.no_grad():  # per-token inputs (Qwen-VL's M-RoPE token types) grow too
                logits = model(**extend_inputs(inputs, ids)).logits
            logp = torch.log_softmax(logits[0, p0 - 1:p0 - 1 + len(target)].float(), -1).double()
            out[i, j] = logp[torch.arange(len(target), device=ids.device), ids[0]].sum().cpu()
        bar.update(1)
    bar.close()
    return out


# ----------------------------------------------------------------------------- loading


def load_vlm(path: str | Any, adapter: str | None = None, dtype: str = "auto", allow_pickle: bool = False,
             device: str = "auto", device_map: str | None = None) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, processor)`` of a vision-language checkpoint, in eval mode.

    The same rules as ``models.load_model``: placed by ``models.placement``,
    the one pickle policy, no silently random-initialised tensors, finite
    weights, an optional PEFT adapter on top.
    """
    from transformers import AutoModelForImageTextToText

    from .loading import (
        checked_model,
        placement,
        quiet_transformers,
        resolve_model_path,
        weight_kwargs,
    )

    p = resolve_model_path(path)
    if not (p / "config.json").is_file():
        raise AffectlensError(f"{p} is not a model dir (no config.json)")
    kwargs = weight_kwargs(p, allow_pickle)  # refuses pickle checkpoints without the flag
    place = placement(p, device, dtype, device_map)[2]
    try:
        with quiet_transformers():
            loaded: Any = AutoModelForImageTextToText.from_pretrained(str(p), output_loading_info=True,
                                                                      **place, **kwargs)
            model, info = loaded
    except Exception as e:
        raise AffectlensError(f"cannot load a vision-language model from {p}: {type(e).__name__}: {e}") from None
    model = checked_model(model, info, p, adapter, allow_pickle)
    proc = load_processor(p)
    return model, getattr(proc, "tokenizer", proc), proc


__all__ = ["FAMILIES", "PER_TOKEN_INPUTS", "Family", "build_processor", "extend_inputs", "family_of",
           "image_inputs", "image_label_logprobs", "image_only", "image_placeholder", "image_token_id",
           "is_vlm_dir", "load_processor", "load_vlm", "model_type_of"]
