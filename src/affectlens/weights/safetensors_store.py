"""safetensors files read without the library: a validated header, then plain row reads.

The header is checked as strictly as ``safetensors`` itself checks it, so a
truncated or lying file is one clear error here rather than a broken copy
later; tensors are read row range by row range with ordinary file I/O (never a
long-lived mmap), so peak memory is one chunk, not one model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import AffectlensError
from .base import WeightStore
from .rawcopy import index_headers, st_dtypes
from .rawcopy import read_safetensors_header as read_safetensors_header

ST_DTYPES = st_dtypes()


def st_itemsize(dtype: str) -> int | None:
    dt = ST_DTYPES.get(dtype)
    return None if dt is None else torch.empty((), dtype=dt).element_size()


class SafetensorsStore(WeightStore):
    """A single ``.safetensors`` file, or an HF dir (sharded with an index, or not)."""

    def __init__(self, path: Path, files: list[Path], config: dict[str, Any]) -> None:
        self.path = path
        self._config = config
        self._where, self._meta = index_headers(files)

    def names(self) -> list[str]:
        return list(self._where)

    def file_of(self, name: str) -> Path:
        """The file (shard) holding ``name``."""
        self._info(name)
        return self._where[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info(name)["shape"])

    def dtype(self, name: str) -> torch.dtype:
        dt = ST_DTYPES.get(self._info(name)["dtype"])
        if dt is None:
            raise AffectlensError(f"unsupported dtype {self._info(name)['dtype']} for {name}")
        return dt

    def _info(self, name: str) -> dict[str, Any]:
        try:
            return self._meta[name]
        except KeyError:
            raise AffectlensError(f"tensor {name} not found in {self.path}") from None

    def location(self, name: str) -> tuple[Path, int, int]:
        """(file, byte offset, byte count) of a tensor's data, for kernel-side copies."""
        info = self._info(name)
        start, end = info["data_offsets"]
        return self._where[name], info["base"] + start, end - start

    def get(self, name: str) -> torch.Tensor:
        return self.read_rows(name, 0, self.shape(name)[0] if self.shape(name) else 1)

    def read_rows(self, name: str, r0: int, r1: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows [r0, r1) of a tensor, read with plain file I/O.

        Not mmap: pages touched through a long-lived mapping stay in RSS, so a
        whole-model diff would grow to the size of the files it read. ``out``
        (a uint8 tensor of at least the rows' bytes) is read into and viewed,
        so a loop over chunks reuses one buffer instead of faulting in a new one.
        """
        info = self._info(name)
        dtype = self.dtype(name)
        shape = list(info["shape"])
        itemsize = torch.empty((), dtype=dtype).element_size()
        row = itemsize
        for d in shape[1:]:
            row *= d
        start, end = info["data_offsets"]
        if not shape:
            r0, r1 = 0, 1
        off = info["base"] + start + r0 * row
        n = (r1 - r0) * row
        if off + n > info["base"] + end:
            raise AffectlensError(f"row range {r0}:{r1} outside tensor {name}")
        if n == 0:
            return torch.empty([r1 - r0, *shape[1:]], dtype=dtype)
        if out is not None and out.numel() >= n and out.dtype == torch.uint8 and out.is_contiguous():
            raw = out.reshape(-1)[:n]
            buf: Any = raw.numpy().data
        else:
            buf = bytearray(n)
            raw = None
        with open(self._where[name], "rb", buffering=0) as f:
            f.seek(off)
            got = f.readinto(buf)
        if got != n:
            raise AffectlensError(f"truncated read of {name} from {self._where[name]}")
        t = raw.view(dtype) if raw is not None else torch.frombuffer(buf, dtype=dtype)
        return t.reshape([r1 - r0, *shape[1:]] if shape else [])

    @property
    def config(self) -> dict[str, Any]:
        return self._config
