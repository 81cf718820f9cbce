"""Training precision: bf16 autocast where the hardware runs bf16 natively, fp32 otherwise.

A LoRA step on CPU is dominated by the frozen base's matmuls. CPUs with
native bf16 dot products (x86 ``avx512_bf16`` / ``amx_bf16``, Arm ``bf16``)
run them 2-3x faster in bf16 than in fp32; CPUs without them emulate bf16
and get *slower*, so ``auto`` only picks bf16 where the instruction is there
(one read of ``/proc/cpuinfo``, cached), or on a CUDA device that reports
bf16 support.

Under autocast only the matmuls run in bf16: the weights, the LoRA
parameters, their gradients, AdamW's state and the loss stay fp32 (the loss
upcasts the logits), so the update rule is unchanged and ``fp32`` is exactly
the plain fp32 loop.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path
from typing import Any

from ..tuneconfig import PRECISIONS

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # x86; Arm reports "bf16" under Features


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None, machine: str | None = None) -> bool:
    """Whether the CPU has bf16 dot-product instructions (so bf16 matmuls beat fp32)."""
    flags = cpu_flags() if flags is None else flags
    machine = (platform.machine() if machine is None else machine).lower()
    if machine in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(NATIVE_BF16_FLAGS & flags)


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """``"bf16"`` or ``"fp32"`` for a requested ``auto``/``fp32``/``bf16`` on ``device_type``.

    An explicit ``bf16`` is honoured everywhere (autocast works without native
    support, just slower); ``auto`` picks bf16 only where it is native.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device_type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if device_type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


def autocast(precision: str, device_type: str = "cpu") -> Any:
    """The context the forward pass runs in: bf16 autocast for ``"bf16"``, nothing for ``"fp32"``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type, dtype=torch.bfloat16)


__all__ = ["autocast", "cpu_flags", "cpu_has_native_bf16", "resolve_precision"]
