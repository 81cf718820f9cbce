"""Non-finite values are never a result: one cheap check, shared by every command."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import AffectlensError

_CHUNK_ELEMS = 1 << 24  # bounds the temporary mask to 16 MB
# NaN/Inf have an all-ones exponent: with the sign bit masked off, the bits as an integer reach the
# exponent mask exactly then. A plain sum first (any NaN/Inf makes it non-finite; 30x+ faster than
# isfinite); only a non-finite sum, which finite values can also overflow to, runs the exact bit test.
_BITS = {torch.bfloat16: (torch.int16, 0x7FFF, 0x7F80), torch.float16: (torch.int16, 0x7FFF, 0x7C00),
         torch.float32: (torch.int32, 0x7FFFFFFF, 0x7F800000),
         torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise ``AffectlensError`` if ``tensor`` holds a NaN or an Inf (integer tensors always pass)."""
    t = tensor.detach()
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return
    flat = t.reshape(-1)
    for i in range(0, flat.numel(), _CHUNK_ELEMS):
        part = flat[i : i + _CHUNK_ELEMS]
        try:
            bits = _BITS.get(part.dtype)
            if bits is None:
                ok = bool(torch.isfinite(part).all())
            elif math.isfinite(float(part.sum())):  # in the tensor's own dtype: the vectorized kernel
                ok = True  # a NaN/Inf makes any sum non-finite: one pass, no temporary
            else:  # a NaN/Inf, or finite values whose sum overflowed: the exact bit test decides
                ok = int(torch.bitwise_and(part.view(bits[0]), bits[1]).max()) < bits[2]
        except (RuntimeError, TypeError):  # e.g. float8 kernels missing on some builds
            ok = bool(torch.isfinite(part.to(torch.float32)).all())
        if not ok:
            raise AffectlensError(f"non-finite values (NaN/Inf) in {what}")


def tensor_file(store: object, name: str) -> Path | str:
    """The file a store reads ``name`` from (the shard for sharded checkpoints), for messages."""
    where = getattr(store, "file_of", None)
    if callable(where):
        return where(name)
    return getattr(store, "path", "<memory>")


def check_store_finite(store: object, names: Iterable[str] | None = None, chunk_elems: int = _CHUNK_ELEMS) -> None:
    """Every float tensor ``names`` (default: all) of a ``WeightStore`` is finite; row chunks bound memory."""
    read_rows = getattr(store, "read_rows", None)
    buf: torch.Tensor | None = None
    for name in store.names() if names is None else names:  # type: ignore[attr-defined]
        what = f"tensor {name} of {tensor_file(store, name)}"
        dtype = store.dtype(name)  # type: ignore[attr-defined]
        if not (dtype.is_floating_point or dtype.is_complex):
            continue
        shape = store.shape(name)  # type: ignore[attr-defined]
        if callable(read_rows) and len(shape) > 1:
            per_row = 1
            for d in shape[1:]:
                per_row *= int(d)
            step = max(1, chunk_elems // max(per_row, 1))
            need = min(step, shape[0]) * per_row * dtype.itemsize
            if buf is None or buf.numel() < need:  # one read buffer for every chunk: no fresh pages per read
                buf = torch.empty(need, dtype=torch.uint8)
            for r0 in range(0, shape[0], step):
                check_finite(read_rows(name, r0, min(shape[0], r0 + step), out=buf), what)
        else:
            check_finite(store.get(name), what)  # type: ignore[attr-defined]


__all__ = ["check_finite", "check_store_finite", "tensor_file"]
