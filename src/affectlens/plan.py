"""Resource planning from ``config.json`` alone: will this run fit, and on what?

A 7B LoRA grid is planned before anyone books a GPU node, so the planner
needs nothing but the model's config (sizes come from ``params.Geometry``, the
same exact counts the GET ratio uses). Memory is the sum of named parts, each
an explicit formula, so a reader can check any number by hand:

- weights: parameters x bytes of the dtype;
- trainable state: LoRA parameters live in float32 (PEFT upcasts them), plus
  their gradients and AdamW's two moments (16 bytes each); a full fine-tune
  (``tune --method full``) trains the selected modules' weights in float32
  (master weights: the extra 4 - dtype bytes over the model's copy), with
  float32 gradients and moments (12 more bytes each);
- activations saved for backward, per layer and token, for a SwiGLU block
  with a fused attention kernel (SDPA: no seq x seq matrix is stored): the
  block input and its norm, q, k, v, the attention output, the residual and
  its norm (``6h + q + 2kv``) and the four FFN tensors (gate, up, silu(gate),
  their product: ``4f``), at the activation dtype. With gradient checkpointing
  only each layer's input is kept, plus one layer recomputed at a time;
- logits: tokens x vocab in the model dtype, their float32 upcast for the loss
  and its gradient;
- KV cache for generation: ``2 x layers x kv_dim x tokens``;
- a fixed runtime overhead (CUDA context and allocator slack on a GPU).

FLOPs per step use the usual ``2 x params x tokens`` for a forward pass (plus
the causal attention term), twice that for the backward pass through frozen
weights (LoRA), plus the trained share of the weights once more for a full
fine-tune's weight gradients, and one more forward with gradient
checkpointing.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import AffectlensError
from .params import Geometry, checked_count, count_params, load_config
from .tuneconfig import DEFAULT

GiB = 1024**3
BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
TASKS = ("tune", "evaluate", "circuits", "locate")
# Memory of common accelerators (GB as sold), for --gpu.
GPUS = {"H200-141GB": 141, "H100-80GB": 80, "A100-80GB": 80, "A100-40GB": 40, "L40S-48GB": 48,
        "A6000-48GB": 48, "V100-32GB": 32, "A10-24GB": 24, "RTX4090-24GB": 24, "L4-24GB": 24,
        "T4-16GB": 16}
GPU_OVERHEAD_GB = 1.0  # CUDA context + caching-allocator slack per GPU
FULL_STATE = "trained modules in fp32 + grads + AdamW"
LOCATE_GB = 0.6  # streaming diff: a few 4M-element float32 chunks + runtime, independent of model size


@dataclass
class Plan:
    """Memory parts (GiB), whether it fits the given GPUs, the smallest setup that fits, FLOPs/step."""

    model_type: str
    task: str
    params: int
    trainable: int
    dtype: str
    batch_size: int
    seq_len: int
    gpus: int
    gpu_mem_gb: float | None
    gradient_checkpointing: bool
    parts_gb: dict[str, float]
    total_gb: float
    per_gpu_gb: float
    fits: bool | None
    smallest_setup: str | None
    flops_per_step: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        size = f"{self.params / 1e9:.2f} B" if self.params >= 1e8 else f"{self.params / 1e6:.2f} M"
        lines = [f"{self.model_type} ({size} params), task {self.task}, {self.dtype}, "
                 f"batch {self.batch_size} x {self.seq_len} tokens"
                 + (f", {self.trainable:,} trainable" if self.trainable else "")]
        for name, gb in self.parts_gb.items():
            lines.append(f"  {name:<32} {gb:9.3f} GiB")
        lines.append(f"  {'total':<32} {self.total_gb:9.3f} GiB"
                     + (f"  ({self.per_gpu_gb:.2f} GiB per GPU over {self.gpus})" if self.gpus > 1 else ""))
        if self.gpu_mem_gb is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"{verdict} on {self.gpus} x {self.gpu_mem_gb:g} GB")
        if self.smallest_setup:
            lines.append(f"smallest setup that fits: {self.smallest_setup}")
        lines.append(f"compute: {self.flops_per_step / 1e12:.2f} TFLOP per step")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _activation_bytes_per_token(geo: Geometry, b: int) -> int:
    """Tensors one decoder layer saves for backward, per token (see module docstring)."""
    q, kv = geo.heads * geo.head_dim, geo.kv_heads * geo.head_dim
    return b * (6 * geo.hidden + q + 2 * kv + 4 * geo.intermediate)


def _logits_bytes(geo: Geometry, tokens: int, b: int, backward: bool) -> int:
    return tokens * geo.vocab * (b + 4 + (4 if backward else 0))


def memory_parts(geo: Geometry, task: str, dtype: str, batch_size: int, seq_len: int, trainable: int,
                 method: str = "lora", gradient_checkpointing: bool = False,
                 max_new_tokens: int = 0) -> dict[str, int]:
    """Bytes per named part for one process holding the whole model (no sharding)."""
    b = BYTES[dtype]
    params = geo.model_params()
    tokens = batch_size * seq_len
    per_layer = _activation_bytes_per_token(geo, b) * tokens
    if task == "locate":
        return {"streaming buffers": int(LOCATE_GB * GiB)}
    parts = {"weights": params * b}
    if task == "tune":
        if method == "full":
            parts[FULL_STATE] = (4 - b) * trainable + 12 * trainable
        else:
            parts["LoRA weights + grads + AdamW"] = 16 * trainable
        if gradient_checkpointing:
            parts["activations (checkpointed)"] = geo.layers * tokens * geo.hidden * b + per_layer
        else:
            parts["activations"] = geo.layers * per_layer
        parts["logits + loss"] = _logits_bytes(geo, tokens, b, backward=True)
    elif task == "circuits":  # forward + backward to activations (attribution), hidden states kept
        parts["activations"] = geo.layers * per_layer
        parts["captured hidden states"] = (geo.layers + 1) * tokens * geo.hidden * 4
        parts["logits"] = _logits_bytes(geo, tokens, b, backward=True)
    else:  # evaluate: one layer's transient activations, KV cache, last-position logits
        parts["activations (one layer)"] = per_layer
        kv = geo.kv_heads * geo.head_dim
        parts["KV cache"] = 2 * geo.layers * kv * batch_size * (seq_len + max_new_tokens) * b
        parts["logits"] = _logits_bytes(geo, batch_size * max(1, min(seq_len, 8)), b, backward=False)
    return parts


def flops_per_step(geo: Geometry, task: str, batch_size: int, seq_len: int, method: str,
                   gradient_checkpointing: bool, trained_share: float = 1.0) -> float:
    tokens = batch_size * seq_len
    q = geo.heads * geo.head_dim
    fwd = 2.0 * geo.model_params() * tokens + 2.0 * geo.layers * seq_len * q * tokens  # causal attention
    if task == "locate":
        return 0.0
    if task == "evaluate":
        return fwd
    # backward: gradients of the activations (one forward's worth), plus the weight gradients of what trains
    # (another forward's worth, over the trained share of the weights; LoRA's is negligible)
    mult = 2.0 + (trained_share if (task == "tune" and method == "full") else 0.0)
    return fwd * (mult + (1.0 if gradient_checkpointing else 0.0))


def _gpu_mem(gpu: str | None, gpu_mem_gb: float | None) -> float | None:
    if gpu_mem_gb is not None:
        if isinstance(gpu_mem_gb, bool) or not isinstance(gpu_mem_gb, int | float) \
                or not math.isfinite(gpu_mem_gb) or gpu_mem_gb <= 0:
            raise AffectlensError(f"--gpu-mem must be a finite number > 0, got {gpu_mem_gb}")
        return float(gpu_mem_gb)
    if gpu is None:
        return None
    for name, gb in GPUS.items():
        if gpu.lower() in (name.lower(), name.split("-")[0].lower()):
            return float(gb)
    raise AffectlensError(f"unknown GPU '{gpu}'; choose from {', '.join(GPUS)} or give --gpu-mem GB")


def _per_gpu(parts: dict[str, int], gpus: int, task: str) -> float:
    """Bytes on each of ``gpus`` devices: FSDP shards weights and trainable state (tune), device_map
    splits the layers (evaluate/circuits); activations stay per device either way."""
    sharded = ("weights", FULL_STATE, "LoRA weights + grads + AdamW", "KV cache")
    total = 0.0
    for name, v in parts.items():
        total += v / gpus if (name in sharded and task != "locate") else v
    return total


def plan(config: str | os.PathLike | dict, task: str = "tune", modules: str = "all", rank: int = DEFAULT.rank,
         batch_size: int = DEFAULT.batch_size, seq_len: int = DEFAULT.max_length, dtype: str = "bf16",
         gpu: str | None = None,
         gpu_mem_gb: float | None = None, gpus: int = 1, method: str = "lora",
         gradient_checkpointing: bool = False, max_new_tokens: int = 0) -> Plan:
    """Plan a run from a config: memory parts, fit on ``gpus`` x ``gpu_mem_gb``, smallest fitting setup.

    ``rank``, ``batch_size`` and ``seq_len`` default to ``TuneConfig``'s, so the plan is of the run
    ``tune`` makes by default.
    """
    if task not in TASKS:
        raise AffectlensError(f"unknown task '{task}'; choose from {', '.join(TASKS)}")
    if dtype not in BYTES:
        raise AffectlensError(f"unknown dtype '{dtype}'; choose from {', '.join(sorted(BYTES))}")
    if method not in ("lora", "full"):
        raise AffectlensError(f"method must be lora or full, not '{method}'")
    batch_size, seq_len, rank, gpus = (checked_count(name, v) for name, v in (
        ("batch size", batch_size), ("sequence length", seq_len), ("rank", rank), ("gpus", gpus)))
    max_new_tokens = checked_count("max new tokens", max_new_tokens, lo=0)
    cfg = load_config(config)
    geo = Geometry.from_config(cfg)
    if not geo.vocab:
        raise AffectlensError("config has no 'vocab_size'; cannot size the logits")
    report = count_params(cfg, modules, rank)
    trainable = 0 if task != "tune" else (report.full_total if method == "full" else report.lora_total)
    mem = _gpu_mem(gpu, gpu_mem_gb)
    overhead = GPU_OVERHEAD_GB * GiB if mem is not None else 0.0

    def per_gpu(n: int, ckpt: bool) -> float:
        parts = memory_parts(geo, task, dtype, batch_size, seq_len, trainable, method, ckpt, max_new_tokens)
        return _per_gpu(parts, n, task) + overhead

    parts = memory_parts(geo, task, dtype, batch_size, seq_len, trainable, method,
                         gradient_checkpointing, max_new_tokens)
    if overhead:
        parts["GPU runtime (per GPU)"] = int(overhead)
    total = sum(parts.values())
    this = per_gpu(gpus, gradient_checkpointing)
    fits = None if mem is None else this <= mem * 1e9
    smallest = None
    if mem is not None:
        sharding = "FSDP" if task == "tune" else "device_map"
        candidates = [(1, False), (1, True)] if task in ("tune", "circuits") else [(1, False)]
        candidates += [(n, task in ("tune", "circuits")) for n in (2, 4, 8, 16)]
        for n, ckpt in candidates:
            if per_gpu(n, ckpt) <= mem * 1e9:
                how = f"1 GPU, {dtype}" if n == 1 else f"{sharding} over {n} GPUs, {dtype}"
                smallest = how + (", gradient checkpointing" if ckpt else "")
                break
        else:
            smallest = f"none up to 16 x {mem:g} GB: lower batch size or sequence length"
    notes = []
    if task == "tune" and method == "lora":
        notes.append(f"LoRA rank {rank} on {','.join(report.selection)}: {trainable:,} trainable parameters")
    if task == "tune" and method == "full":
        notes.append(f"full fine-tune of {','.join(report.selection)}: {trainable:,} trainable parameters "
                     f"(float32 master weights, gradients and AdamW moments)")
    if dtype in ("fp16", "float16", "bf16", "bfloat16") and task == "tune":
        notes.append("eager attention would add heads x seq^2 per layer; SDPA/flash assumed")
    return Plan(geo.model_type, task, report.model_params, trainable, dtype, int(batch_size), int(seq_len),
                int(gpus), mem, bool(gradient_checkpointing), {k: v / GiB for k, v in parts.items()},
                total / GiB, this / GiB, fits, smallest,
                flops_per_step(geo, task, batch_size, seq_len, method, gradient_checkpointing,
                               trainable / max(geo.model_params(), 1)), notes)
