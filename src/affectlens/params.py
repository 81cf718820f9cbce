"""Parameter accounting from ``config.json`` alone (no weights needed).

GET's headline ("x % of the score at y % of the parameters") is a ratio of
parameter counts, so the counts must be exact and cheap for any model size.
LoRA of rank r on a linear map in->out adds ``r * (in + out)`` parameters per
layer (biases are never LoRA-trained); full fine-tuning of the same module
trains ``in * out`` (+ ``out`` when it has a bias). GQA matters: k/v project
to ``num_key_value_heads * head_dim``, not ``hidden_size``.

Check: Qwen2.5-7B-Instruct (hidden 3584, FFN 18944, 28 layers, 28/4 heads),
r=16 on all seven modules = 40,370,176 parameters (AffectGPT), of which
gate_proj is exactly 25.0 %.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import AffectlensError
from .modules import MODULES, format_ranges, parse_layers, parse_selection
from .tuneconfig import DEFAULT

# Model families whose layer layout we know exactly (for the whole-model total).
_KNOWN = {"llama", "mistral", "qwen2", "qwen3", "gemma"}
# The largest size a config may state: products of a few such sizes (parameters, FLOPs) stay finite floats.
MAX_SIZE = 2**31 - 1
# Layers and heads are enumerated (one entry each), so a config may state fewer of them.
MAX_COUNTED = 2**16
_COUNTED = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads")


def load_config(spec: str | os.PathLike | dict) -> dict[str, Any]:
    """A config dict from a dict, a ``config.json``, a model dir, a GGUF file or ``smollm2``."""
    if isinstance(spec, dict):
        cfg = dict(spec)
    else:
        s = str(spec)
        p = Path(s)
        if s in ("smollm2", "default") and not p.exists():
            from .models.resolve import default_model_dir

            p = default_model_dir()
        if p.is_dir():
            if (p / "config.json").is_file():
                p = p / "config.json"
            elif (p / "adapter_config.json").is_file():
                raise AffectlensError(f"{p} is a LoRA adapter dir; pass its base model (or its config.json)")
            else:
                raise AffectlensError(f"{p} has no config.json")
        if not p.exists():
            raise AffectlensError(f"config or model {p} does not exist")
        if p.suffix == ".gguf":
            from .weights import open_weights

            with open_weights(p) as store:
                cfg = dict(store.config)
        else:
            from .models.resolve import read_json_object

            cfg = read_json_object(p)
    # Vision-language wrappers keep the language model's config inside.
    for key in ("text_config", "llm_config", "language_config"):
        if isinstance(cfg.get(key), dict) and "hidden_size" in cfg[key]:
            cfg = {**cfg[key], "model_type": cfg[key].get("model_type", cfg.get("model_type"))}
            break
    return cfg


@dataclass(frozen=True)
class Geometry:
    """The sizes that decide every parameter count."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    attention_bias: bool
    qkv_bias: bool
    mlp_bias: bool

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Geometry:
        def size(key: str, value: Any) -> int:
            # JSON's Infinity, NaN and 1e400 (read as inf) are floats too: checked before int() sees them.
            most = MAX_COUNTED if key in _COUNTED else MAX_SIZE
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value != int(value) or not 1 <= value <= most:
                raise AffectlensError(f"config '{key}' must be a positive integer (at most {most}), got {value!r}")
            return int(value)

        def need(key: str) -> int:
            if key not in cfg or cfg[key] is None:
                raise AffectlensError(f"config has no '{key}'; cannot count parameters")
            return size(key, cfg[key])

        def opt(key: str, default: int) -> int:
            return size(key, cfg[key]) if cfg.get(key) not in (None, 0) else default

        if any(k in cfg for k in ("num_local_experts", "num_experts", "n_routed_experts")):
            raise AffectlensError("mixture-of-experts configs are not supported by params yet")
        if "fused" in json.dumps(cfg.get("architectures", [])).lower():
            raise AffectlensError("configs with fused projections are not supported by params yet")
        mt = str(cfg.get("model_type", "unknown"))
        hidden, heads = need("hidden_size"), need("num_attention_heads")
        kv = opt("num_key_value_heads", heads)
        head_dim = opt("head_dim", hidden // heads)
        attn_bias = bool(cfg.get("attention_bias", False))
        # Qwen2 hard-codes biases on q/k/v (not o); the config has no flag for it.
        qkv_bias = attn_bias or mt == "qwen2"
        tied = cfg.get("tie_word_embeddings")
        if tied is None:
            tied = mt == "gemma"  # transformers' defaults: Gemma ties, Llama/Qwen/Mistral do not
        return cls(mt, hidden, need("intermediate_size"), need("num_hidden_layers"), heads, kv,
                   head_dim, opt("vocab_size", 0), bool(tied), attn_bias, qkv_bias,
                   bool(cfg.get("mlp_bias", False)))

    def shape(self, module: str) -> tuple[int, int, bool]:
        """(in_features, out_features, has_bias) of one canonical module."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (self.hidden, q, self.qkv_bias),
            "k_proj": (self.hidden, kv, self.qkv_bias),
            "v_proj": (self.hidden, kv, self.qkv_bias),
            "o_proj": (q, self.hidden, self.attention_bias),
            "gate_proj": (self.hidden, self.intermediate, self.mlp_bias),
            "up_proj": (self.hidden, self.intermediate, self.mlp_bias),
            "down_proj": (self.intermediate, self.hidden, self.mlp_bias),
        }[module]

    def model_params(self) -> int:
        """All parameters of the causal LM (exact for the families in ``_KNOWN``)."""
        per_layer = 0
        for m in MODULES:
            i, o, b = self.shape(m)
            per_layer += i * o + (o if b else 0)
        per_layer += 2 * self.hidden  # input / post-attention norms
        if self.model_type == "qwen3":
            per_layer += 2 * self.head_dim  # q_norm, k_norm
        embed = self.vocab * self.hidden
        return embed + (0 if self.tied else embed) + self.layers * per_layer + self.hidden


@dataclass
class ModuleCount:
    module: str
    in_features: int
    out_features: int
    bias: bool
    layers: int
    lora_per_layer: int
    lora: int
    full_per_layer: int
    full: int


@dataclass
class ParamReport:
    """LoRA and full fine-tuning counts for a selection, and its share of a reference."""

    model_type: str
    rank: int
    selection: tuple[str, ...]
    layers: tuple[int, ...]
    modules: list[ModuleCount]
    lora_total: int
    full_total: int
    reference: tuple[str, ...]
    reference_lora_total: int
    reference_full_total: int
    model_params: int
    model_params_exact: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lora_share(self) -> float:
        """LoRA parameters of the selection / LoRA parameters of the reference (same rank)."""
        return self.lora_total / self.reference_lora_total

    @property
    def full_share(self) -> float:
        return self.full_total / self.reference_full_total

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora_share_of_reference"] = self.lora_share
        d["full_share_of_reference"] = self.full_share
        d["lora_share_of_model"] = trainable_share(self.lora_total, self.model_params) if self.model_params else None
        return d

    def table(self) -> str:
        lines = [
            f"{self.model_type}: LoRA rank {self.rank}, layers {format_ranges(self.layers)} "
            f"({len(self.layers)} of them)",
            f"{'module':<10} {'in':>7} {'out':>7} {'LoRA/layer':>11} {'LoRA total':>13} "
            f"{'full total':>15}",
        ]
        for m in self.modules:
            lines.append(f"{m.module:<10} {m.in_features:>7} {m.out_features:>7} "
                         f"{m.lora_per_layer:>11,} {m.lora:>13,} {m.full:>15,}"
                         + ("  (+bias)" if m.bias else ""))
        lines.append(f"{'total':<10} {'':>7} {'':>7} {'':>11} {self.lora_total:>13,} "
                     f"{self.full_total:>15,}")
        ref = ",".join(self.reference)
        lines.append(f"share of reference ({ref}): LoRA {100 * self.lora_share:.1f} % "
                     f"of {self.reference_lora_total:,}; full fine-tune {100 * self.full_share:.1f} % "
                     f"of {self.reference_full_total:,}")
        approx = "" if self.model_params_exact else " (approximate: unknown family)"
        lines.append(f"this LoRA: {share_text(self.lora_total, self.model_params)}{approx}")
        return "\n".join(lines)


def trainable_share(trainable: int, base_params: int) -> float:
    """The one trainable share, of ``params`` and ``tune`` alike: trainable parameters / the *base* model's.

    The base counts each tensor once (tied embeddings once, as ``model.parameters()`` does), and a
    LoRA's own weights are not in it: the share says how much is trained relative to the model
    one started from, so it does not shrink as the adapter grows.
    """
    return trainable / max(base_params, 1)


def share_text(trainable: int, base_params: int) -> str:
    """:func:`trainable_share` in words, naming its denominator."""
    return (f"{trainable:,} trainable parameters = {100 * trainable_share(trainable, base_params):.3f} % "
            f"of the base model's {base_params:,} (tied weights once, LoRA weights not counted)")


def _counts(geo: Geometry, modules: Sequence[str], rank: int, n_layers: int) -> list[ModuleCount]:
    out = []
    for m in modules:
        i, o, b = geo.shape(m)
        lpl, fpl = rank * (i + o), i * o + (o if b else 0)
        out.append(ModuleCount(m, i, o, b, n_layers, lpl, lpl * n_layers, fpl, fpl * n_layers))
    return out


def count_params(config: str | os.PathLike | dict, modules: str | Sequence[str] = "all",
                 rank: int = DEFAULT.rank, reference: str | Sequence[str] = "all",
                 layers: str | Sequence[int] | None = None) -> ParamReport:
    """Count LoRA and full fine-tuning parameters of a module selection from a config.

    ``rank`` defaults to ``TuneConfig``'s, so the count is what ``tune`` trains by default.
    """
    checked_count("rank", rank)
    geo = Geometry.from_config(load_config(config))
    sel, ref = parse_selection(modules), parse_selection(reference)
    lay = (parse_layers(layers, geo.layers) if layers is None or isinstance(layers, str)
           else parse_layers(",".join(str(x) for x in layers), geo.layers))
    mods = _counts(geo, sel, int(rank), len(lay))
    refs = _counts(geo, ref, int(rank), geo.layers)  # the reference is the full-depth setting
    return ParamReport(
        model_type=geo.model_type, rank=int(rank), selection=sel, layers=lay, modules=mods,
        lora_total=sum(m.lora for m in mods), full_total=sum(m.full for m in mods),
        reference=ref, reference_lora_total=sum(m.lora for m in refs),
        reference_full_total=sum(m.full for m in refs), model_params=geo.model_params(),
        model_params_exact=geo.model_type in _KNOWN)


def checked_count(name: str, value: Any, lo: int = 1) -> int:
    """A count argument as an int in ``lo .. MAX_SIZE`` (NaN, 2.5 and 10**400 are one-line errors)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value != int(value) or not lo <= value <= MAX_SIZE:
        raise AffectlensError(f"{name} must be an integer from {lo} to {MAX_SIZE}, got {value!r}")
    return int(value)


def lora_params(config: str | os.PathLike | dict, modules: str | Sequence[str], rank: int,
                layers: str | Sequence[int] | None = None) -> int:
    """Total LoRA parameters of rank ``rank`` on ``modules`` (all layers unless given)."""
    return count_params(config, modules, rank, layers=layers).lora_total
