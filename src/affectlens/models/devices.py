"""Where a model runs and in what precision: one resolver for ``--device`` and ``--dtype``.

Every command that runs a model takes ``--device auto|cpu|cuda|cuda:N|mps``
and ``--dtype auto|float32|bfloat16|float16`` and resolves them here, so the
same library code runs on a laptop CPU and a GPU node. ``auto`` means the best
device present (CUDA, then Apple MPS, then the CPU) and, for the dtype,
bfloat16 on a GPU that supports it and float32 elsewhere (CPU bf16 matmuls are
only faster on some CPUs, and float32 keeps CPU results comparable to the
oracle tests). A device that is not there is a one-line error, not a late
CUDA traceback.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import AffectlensError

DEVICE_HELP = "where the model runs: auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps"
DTYPE_HELP = "weights and activations: auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16, float16"
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
                  "float": "float32"}


def resolve_device(spec: str | Any = "auto") -> Any:
    """``spec`` as a ``torch.device`` that exists here (``meta`` is allowed for shape-only work)."""
    import torch

    if isinstance(spec, torch.device):
        return spec
    s = str(spec or "auto").strip().lower()
    if s == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if s in ("cpu", "meta"):
        return torch.device(s)
    m = re.fullmatch(r"cuda(?::(\d+))?", s)
    if m:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise AffectlensError(f"--device {spec}: no CUDA device is available here (use --device cpu or auto)")
        idx = int(m.group(1) or 0)
        if idx >= n:
            raise AffectlensError(f"--device {spec}: only {n} CUDA device(s) here (cuda:0…cuda:{n - 1})")
        return torch.device("cuda", idx)
    if s == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise AffectlensError("--device mps: Apple MPS is not available here (use --device cpu or auto)")
        return torch.device("mps")
    raise AffectlensError(f"unknown --device '{spec}'; choose auto, cpu, cuda, cuda:N or mps")


def dtype_name(spec: str | None) -> str:
    """The canonical name of a dtype spelling (``bf16`` → ``bfloat16``); unknown names are an error."""
    s = str(spec or "auto").strip().lower().removeprefix("torch.")
    s = _DTYPE_ALIASES.get(s, s)
    if s not in DTYPE_NAMES:
        raise AffectlensError(f"unknown --dtype '{spec}'; choose from {', '.join(DTYPE_NAMES)}")
    return s


def resolve_dtype(spec: str | Any, device: Any) -> Any:
    """``spec`` as a ``torch.dtype`` for ``device``; ``auto`` is bfloat16 on a bf16-capable GPU, else float32."""
    import torch

    if isinstance(spec, torch.dtype):
        return spec
    name = dtype_name(spec)
    if name == "auto":
        dev = resolve_device(device)
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if dev.type == "mps":
            return torch.float16
        return torch.float32
    return getattr(torch, name)


def accum_dtype(device: Any) -> Any:
    """The dtype for sums over many examples: float64, except on MPS (which has none), float32."""
    import torch

    return torch.float32 if resolve_device(device).type == "mps" else torch.float64


# --- big models: one device, or accelerate's device_map="auto" ---------------------------------

DEVICE_MAPS = (None, "auto")
HEADROOM = 0.85  # share of a GPU's free memory the weights may take; activations and the KV cache need the rest


def choose_device_map(requested: str | None, device_type: str, model_bytes: int | None,
                      free_bytes: int | None, headroom: float = HEADROOM) -> str | None:
    """``"auto"`` (accelerate spreads the layers over the GPUs, then CPU RAM) or None (one device).

    Asked for explicitly, ``"auto"`` is kept; otherwise it is chosen only on a
    CUDA device whose free memory is known and too small for the weights plus
    headroom — a CPU run never needs it (its RAM is the limit either way).
    """
    if requested not in DEVICE_MAPS:
        raise AffectlensError(f"unknown device_map '{requested}'; use None (one device) or 'auto'")
    if requested == "auto":
        return "auto"
    if device_type != "cuda" or model_bytes is None or free_bytes is None:
        return None
    return "auto" if model_bytes > headroom * free_bytes else None


def free_memory(device: Any) -> int | None:
    """Free bytes on a CUDA device (None elsewhere: no device_map decision to make)."""
    import torch

    dev = resolve_device(device)
    if dev.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(dev)
    return int(free)


def checkpoint_numel(path: Any) -> int | None:
    """Elements stored in a model dir's safetensors files, read from their headers (no tensor data).

    None when there are none to read (a GGUF or pickle checkpoint): the caller then
    does not guess.
    """
    from pathlib import Path

    from safetensors import safe_open

    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else []
    if not files:
        return None
    total = 0
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                names = list(st.keys())  # a safe_open handle is not iterable itself
                for k in names:
                    n = 1
                    for d in st.get_slice(k).get_shape():
                        n *= int(d)
                    total += n
        except Exception:
            return None  # unreadable: the loader reports the real problem
    return total


def ran_on(model: Any) -> dict[str, list[str]]:
    """Where a loaded model's parameters actually are (devices, dtypes): recorded in run manifests."""
    devs, dts = set(), set()
    for p in model.parameters():
        devs.add(str(p.device))
        dts.add(str(p.dtype).removeprefix("torch."))
    return {"devices": sorted(devs), "dtypes": sorted(dts)}


def check(device: Any = "auto", dtype: Any = "auto") -> tuple[Any, Any]:
    """``(torch.device, torch.dtype)`` resolved up front: an absent GPU or a typo fails before any work."""
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev)
