"""A streaming sharded safetensors writer: peak memory is one tensor, not one shard.

``safetensors.torch.save_file`` needs every tensor of a file in memory at
once. Writing a 7B model that way costs a shard (5 GB) of RAM; a transfer or
ablation only ever holds one tensor. Here each tensor's bytes go straight to
their place in the shard file behind a reserved header, and the header is
written when the shard closes. When the caller knows the tensors in advance
(``plan``), the reserved space is exact; otherwise a generous guess is used and
a shard whose header outgrows it is rewritten once.

Raw byte ranges of another safetensors file can be copied in-kernel
(``add_raw``, ``os.copy_file_range``): a transfer never decodes a tensor it
only passes through.

A full disk is a ``DiskFullError`` naming the folder and the bytes the whole
checkpoint needs (known with a ``plan``), not an ``OSError`` traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AffectlensError, DiskFullError, is_disk_full
from .rawcopy import ST_ITEMSIZE

if TYPE_CHECKING:  # a raw copy (``add_raw``, dtypes as safetensors names) never needs torch
    import torch

_DTYPE_NAMES: dict[Any, str] = {}

_DEFAULT_RESERVE = 64 * 1024  # header bytes reserved per shard when no plan is given
_COPY_CHUNK = 64 << 20


def dtype_name(dtype: torch.dtype | str) -> str:
    """The safetensors spelling of a torch dtype (``torch.bfloat16`` -> ``BF16``); a spelling is kept."""
    if isinstance(dtype, str):
        if dtype not in ST_ITEMSIZE:
            raise AffectlensError(f"dtype {dtype} cannot be stored in safetensors")
        return dtype
    if not _DTYPE_NAMES:
        import torch

        _DTYPE_NAMES.update({
            torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
            torch.uint8: "U8", torch.bool: "BOOL"})
        for n, s in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("uint16", "U16"),
                     ("uint32", "U32"), ("uint64", "U64")):
            if hasattr(torch, n):
                _DTYPE_NAMES[getattr(torch, n)] = s
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise AffectlensError(f"dtype {dtype} cannot be stored in safetensors") from None


def _header_bytes(entries: dict[str, dict[str, Any]], metadata: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata}
    header.update(entries)
    return json.dumps(header, separators=(",", ":")).encode("utf-8")


def _round8(n: int) -> int:
    return (n + 7) // 8 * 8


def _nbytes(shape: Iterable[int], dtype: torch.dtype | str) -> int:
    n = ST_ITEMSIZE[dtype_name(dtype)]
    for d in shape:
        n *= int(d)
    return n


class _Shard:
    """One open shard file: data written at ``8 + reserve + offset``."""

    def __init__(self, path: Path, reserve: int) -> None:
        self.path = path
        self.reserve = _round8(reserve)
        self.entries: dict[str, dict[str, Any]] = {}
        self.size = 0
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    @property
    def data_start(self) -> int:
        return 8 + self.reserve

    def finish(self, metadata: dict[str, str]) -> None:
        header = _header_bytes(self.entries, metadata)
        if len(header) <= self.reserve:
            # Pad with spaces (as safetensors itself does) so the data offset is unchanged.
            header = header + b" " * (self.reserve - len(header))
            os.pwrite(self.fd, struct.pack("<Q", len(header)) + header, 0)
            os.close(self.fd)
            return
        # The header outgrew its reservation: rewrite once with a header that fits.
        new_reserve = _round8(len(header))
        header = header + b" " * (new_reserve - len(header))
        tmp = self.path.with_name(self.path.name + ".grow")
        with open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(header)) + header)
            out.flush()
            _copy_range(self.fd, out.fileno(), self.data_start, 8 + new_reserve, self.size)
        os.close(self.fd)
        tmp.replace(self.path)


def _copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, count: int) -> None:
    """Copy bytes between files without passing them through Python where the OS allows."""
    done = 0
    use_cfr = hasattr(os, "copy_file_range")
    while done < count:
        n = min(_COPY_CHUNK, count - done)
        if use_cfr:
            try:
                k = os.copy_file_range(src_fd, dst_fd, n, src_off + done, dst_off + done)
            except OSError:
                use_cfr = False
                continue
            if k == 0:
                raise AffectlensError("unexpected end of file while copying tensor bytes")
        else:
            buf = os.pread(src_fd, n, src_off + done)
            if not buf:
                raise AffectlensError("unexpected end of file while copying tensor bytes")
            k = os.pwrite(dst_fd, buf, dst_off + done)
        done += k


class ShardedWriter:
    """Write tensors one at a time into HF-style shards (``model-0000i-of-0000n.safetensors``).

    ``close()`` renames the shards and writes ``model.safetensors.index.json``;
    a single shard becomes ``model.safetensors`` with no index, as
    ``save_pretrained`` does. ``plan`` (``(name, shape, dtype)`` in the order
    they will be added) lets the writer reserve exact header space.
    """

    def __init__(self, out_dir: str | os.PathLike, max_shard_bytes: int = 5 * 10**9,
                 plan: Iterable[tuple[str, tuple[int, ...], torch.dtype | str]] | None = None,
                 metadata: dict[str, str] | None = None, prefix: str = "model") -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = int(max_shard_bytes)
        if self.max_shard_bytes <= 0:
            raise AffectlensError("max_shard_bytes must be positive")
        self.metadata = {"format": "pt", **(metadata or {})}
        self.prefix = prefix
        self._shards: list[_Shard] = []
        self._names: set[str] = set()
        self._planned: int | None = None  # bytes of all shards, when the plan says
        self._reserves = self._plan_reserves(plan) if plan is not None else []
        self._closed = False
        self.files: list[Path] = []

    @contextlib.contextmanager
    def _space(self) -> Iterator[None]:
        """A full disk while writing: one line naming the folder and what the checkpoint needs."""
        try:
            yield
        except OSError as e:
            if is_disk_full(e):
                raise DiskFullError(self.out_dir, self._planned) from None
            raise

    def _plan_reserves(self, plan: Iterable[tuple[str, tuple[int, ...], torch.dtype | str]]) -> list[int]:
        """Simulate the greedy sharding on the plan and size each shard's header exactly."""
        reserves: list[int] = []
        entries: dict[str, dict[str, Any]] = {}
        size = total = 0
        for name, shape, dtype in plan:
            nb = _nbytes(shape, dtype)
            total += nb
            if entries and size + nb > self.max_shard_bytes:
                reserves.append(len(_header_bytes(entries, self.metadata)))
                entries, size = {}, 0
            entries[name] = {"dtype": dtype_name(dtype), "shape": list(shape),
                             "data_offsets": [size, size + nb]}
            size += nb
        if entries:
            reserves.append(len(_header_bytes(entries, self.metadata)))
        self._planned = sum(8 + _round8(r) for r in reserves) + total
        return reserves

    def _shard_for(self, nbytes: int) -> _Shard:
        cur = self._shards[-1] if self._shards else None
        if cur is None or (cur.entries and cur.size + nbytes > self.max_shard_bytes):
            i = len(self._shards)
            reserve = self._reserves[i] if i < len(self._reserves) else _DEFAULT_RESERVE
            with self._space():
                cur = _Shard(self.out_dir / f".{self.prefix}-{i + 1:05d}.safetensors.part", reserve)
            self._shards.append(cur)
        return cur

    def _register(self, name: str, dtype: str, shape: tuple[int, ...], nbytes: int) -> tuple[_Shard, int]:
        if self._closed:
            raise AffectlensError("writer is closed")
        if name in self._names:
            raise AffectlensError(f"tensor {name} written twice")
        self._names.add(name)
        shard = self._shard_for(nbytes)
        off = shard.size
        shard.entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        shard.size += nbytes
        return shard, shard.data_start + off

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Append one tensor (written to disk now; nothing is kept)."""
        import torch

        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        nbytes = t.numel() * t.element_size()
        shard, pos = self._register(name, dtype_name(t.dtype), tuple(t.shape), nbytes)
        if nbytes:
            view = t.reshape(-1).view(torch.uint8).numpy().data  # a memoryview of the bytes, no copy
            done = 0
            with self._space():
                while done < nbytes:
                    done += os.pwrite(shard.fd, view[done:], pos + done)

    def add_raw(self, name: str, dtype: torch.dtype | str, shape: tuple[int, ...],
                src: str | os.PathLike, offset: int, nbytes: int) -> None:
        """Append a tensor by copying ``nbytes`` at ``offset`` of ``src`` (already in safetensors layout)."""
        dname = dtype if isinstance(dtype, str) else dtype_name(dtype)
        shard, pos = self._register(name, dname, tuple(shape), nbytes)
        fd = os.open(src, os.O_RDONLY)
        try:
            with self._space():
                _copy_range(fd, shard.fd, offset, pos, nbytes)
        finally:
            os.close(fd)

    def close(self) -> list[Path]:
        """Finish all shards; returns the files written (HF names)."""
        if self._closed:
            return self.files
        self._closed = True
        with self._space():
            for s in self._shards:
                s.finish(self.metadata)
        n = len(self._shards)
        if n == 0:
            raise AffectlensError("no tensors were written")
        if n == 1:
            final = self.out_dir / f"{self.prefix}.safetensors"
            self._shards[0].path.replace(final)
            self.files = [final]
            return self.files
        weight_map: dict[str, str] = {}
        total = 0
        for i, s in enumerate(self._shards):
            final = self.out_dir / f"{self.prefix}-{i + 1:05d}-of-{n:05d}.safetensors"
            s.path.replace(final)
            self.files.append(final)
            for name, e in s.entries.items():
                weight_map[name] = final.name
                total += e["data_offsets"][1] - e["data_offsets"][0]
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        with self._space(), open(self.out_dir / f"{self.prefix}.safetensors.index.json", "w",
                                 encoding="utf-8") as f:
            json.dump(index, f, indent=2)
            f.write("\n")
        return self.files

    def abort(self) -> None:
        """Drop everything written so far."""
        self._closed = True
        for s in self._shards:
            with contextlib.suppress(OSError):
                os.close(s.fd)
            s.path.unlink(missing_ok=True)

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def parse_size(spec: str | int) -> int:
    """``"5GB"``/``"500MB"``/``"2GiB"``/int -> bytes (HF's max_shard_size spelling)."""
    if isinstance(spec, int):
        return spec
    s = str(spec).strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for u, mult in units.items():
        if s.endswith(u):
            try:
                return int(float(s[: -len(u)]) * mult)
            except ValueError:
                break
    try:
        return int(s)
    except ValueError:
        raise AffectlensError(f"bad size '{spec}': use e.g. 5GB, 500MB, 2GiB") from None


__all__ = ["ShardedWriter", "dtype_name", "parse_size"]
