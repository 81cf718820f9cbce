"""safetensors checkpoints as bytes: headers, tensor locations, finite checks and comparisons without torch.

A full-donor transfer between two safetensors checkpoints of one dtype never
needs a tensor's values: the output is BASE's bytes with some ranges taken
from DONOR. Importing torch alone costs seconds, more than copying a 1 GB
model, so this module answers everything such a transfer asks (which tensors,
where their bytes are, are they finite, does DONOR differ) from the header
and raw bytes, with numpy bit masks for the finite check.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AffectlensError
from .base import WeightStore

if TYPE_CHECKING:
    import numpy as np
    import torch

ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
# NaN/Inf have an all-ones exponent: with the sign bit masked off the bits, read as an unsigned integer,
# reach the exponent mask exactly then. (unsigned view, sign-less mask, exponent mask) per float dtype.
FLOAT_BITS = {"BF16": ("<u2", 0x7FFF, 0x7F80), "F16": ("<u2", 0x7FFF, 0x7C00),
              "F32": ("<u4", 0x7FFFFFFF, 0x7F800000), "F64": ("<u8", 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}
_SIGNED = {"<u2": "<i2", "<u4": "<i4", "<u8": "<i8"}
# Integers and booleans are always finite; float8 (no Inf, other NaN encodings) is left to the torch path.
RAW_DTYPES = frozenset(FLOAT_BITS) | {"I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "U32", "U64"}
CHUNK_BYTES = 8 << 20  # small: the first chunk usually shows DONOR differs, and fresh pages cost


def read_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of a model dir (a VLM's language-model part merged up), ``{}`` if there is none."""
    cfg = directory / "config.json"
    if not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AffectlensError(f"corrupt config.json in {directory}: {e}") from None
    if not isinstance(data, dict):
        raise AffectlensError(f"corrupt config.json in {directory}: a JSON {type(data).__name__}, not an object")
    # VLMs nest the language model's config.
    for key in ("text_config", "language_config", "llm_config"):
        if isinstance(data.get(key), dict):
            merged = dict(data[key])
            merged.setdefault("model_type", data.get("model_type"))
            merged["wrapper_model_type"] = data.get("model_type")
            return merged
    return data


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and validate a safetensors header; a truncated, corrupt or lying file is an error.

    The checks are the ones ``safetensors`` itself makes on load (every entry a
    dict with a known ``dtype``, a ``shape`` and ``data_offsets``; ``end - start
    == numel * itemsize``; tensors packed back to back from offset 0 to the end
    of the file), so a header lying about a tensor is refused by every reader
    instead of being copied into a file that ``safetensors.load_file`` rejects.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than its header length field")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise ValueError(f"header length {n} exceeds file size {size}")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise AffectlensError(f"corrupt safetensors file {path}: {e}") from None
    except OSError as e:
        raise AffectlensError(f"cannot read {path}: {e.strerror or e}") from None

    def bad(msg: str) -> AffectlensError:
        return AffectlensError(f"corrupt safetensors file {path}: {msg}")

    if not isinstance(header, dict):
        raise bad(f"header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__")
    if meta is not None and not isinstance(meta, dict):
        raise bad("__metadata__ is not an object")
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise bad(f"entry for tensor {name} is not an object")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
        if missing:
            raise bad(f"entry for tensor {name} lacks {', '.join(missing)}")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        itemsize = ST_ITEMSIZE.get(dtype) if isinstance(dtype, str) else None
        if itemsize is None:
            raise bad(f"tensor {name} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"tensor {name} has an invalid shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2 or not all(type(x) is int for x in offs)
                or not 0 <= offs[0] <= offs[1]):
            raise bad(f"tensor {name} has invalid data_offsets {offs!r}")
        numel = 1
        for d in shape:
            numel *= d
        if offs[1] - offs[0] != numel * itemsize:
            raise bad(f"tensor {name} is {dtype} {shape} ({numel * itemsize} bytes) but its data_offsets "
                      f"span {offs[1] - offs[0]} bytes")
        spans.append((offs[0], offs[1], name))
    data = size - 8 - n
    pos = 0
    for start, end, name in sorted(spans):
        if start != pos:
            raise bad(f"tensor {name} starts at byte {start} of the data, expected {pos} "
                      "(overlapping or non-contiguous tensors)")
        pos = end
    if pos > data:
        raise AffectlensError(
            f"truncated safetensors file {path}: header promises {8 + n + pos} bytes, file has {size}")
    if pos != data:
        raise bad(f"{data - pos} bytes after the last tensor's data")
    header["__header_bytes__"] = 8 + n
    return header


def safetensors_files(path: Path) -> list[Path] | None:
    """The safetensors files of a checkpoint as ``open_weights`` would read them; None for anything else.

    None (an adapter, GGUF, pickle, a corrupt or inconsistent index) sends the
    caller to the general path, which gives those cases their own errors.
    """
    if path.is_file():
        return [path] if path.suffix == ".safetensors" else None
    if not path.is_dir() or (path / "adapter_config.json").is_file():
        return None
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            return None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            return None
        files = sorted({path / f for f in weight_map.values()})
        return files if all(f.is_file() for f in files) else None
    return sorted(path.glob("*.safetensors")) or None


def index_headers(files: list[Path]) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """Per tensor name: its shard, and its header entry plus ``base`` (where the shard's data starts).

    One reading of the headers for the torch store and the torch-free copier
    alike; a name in two shards is an error (which one would load is undefined).
    """
    where: dict[str, Path] = {}
    meta: dict[str, dict[str, Any]] = {}
    for f in files:
        header = read_safetensors_header(f)
        base = header.pop("__header_bytes__")
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if name in where:
                raise AffectlensError(f"tensor {name} appears in both {where[name].name} and {f.name}")
            where[name] = f
            meta[name] = dict(info, base=base)
    return where, meta



@functools.cache
def st_dtypes() -> dict[str, Any]:
    """safetensors dtype names to torch dtypes (torch imported here, on first use, not by this module)."""
    import torch

    return {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
        "BOOL": torch.bool, "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
        "F8_E5M2": getattr(torch, "float8_e5m2", None),
        "U16": getattr(torch, "uint16", None), "U32": getattr(torch, "uint32", None),
        "U64": getattr(torch, "uint64", None),
    }

class RawSafetensors(WeightStore):
    """A safetensors checkpoint's header: names, shapes, dtype names and byte locations, no torch."""

    def __init__(self, path: Path, files: list[Path], config: dict[str, Any]) -> None:
        self.path = path
        self._config = config
        self._where, self._meta = index_headers(files)
        self._local = threading.local()

    @classmethod
    def open(cls, path: Path) -> RawSafetensors | None:
        """The checkpoint at ``path`` if it is safetensors (see ``safetensors_files``), else None."""
        files = safetensors_files(path)
        if files is None:
            return None
        store = cls(path, files, read_config(path.parent if path.is_file() else path))
        index = path / "model.safetensors.index.json"
        if path.is_dir() and index.is_file() and not all(n in store for n in json.loads(index.read_text())["weight_map"]):
            return None  # an index naming a tensor no shard holds: the general path's error
        return store

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._meta

    def _info(self, name: str) -> dict[str, Any]:
        try:
            return self._meta[name]
        except KeyError:
            raise AffectlensError(f"tensor {name} not found in {self.path}") from None

    def file_of(self, name: str) -> Path:
        """The file (shard) holding ``name`` (also what ``FiniteMemo`` keys its records by)."""
        self._info(name)
        return self._where[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info(name)["shape"])

    def st_dtype(self, name: str) -> str:
        """The dtype as safetensors spells it (``BF16``)."""
        return str(self._info(name)["dtype"])

    def dtype(self, name: str) -> torch.dtype:
        dt = st_dtypes().get(self.st_dtype(name))
        if dt is None:
            raise AffectlensError(f"unsupported dtype {self.st_dtype(name)} for {name}")
        return dt

    def location(self, name: str) -> tuple[Path, int, int]:
        """(file, byte offset, byte count) of a tensor's data, for kernel-side copies."""
        info = self._info(name)
        start, end = info["data_offsets"]
        return self._where[name], info["base"] + start, end - start

    @property
    def config(self) -> dict[str, Any]:
        return self._config

    def check_raw(self, names: Iterable[str] | None = None) -> None:
        """``check_store_finite`` on the raw bytes (one reader, with its buffers, per thread)."""
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = ByteReader()
        for name in self.names() if names is None else names:
            reader.check(self, name)


class ByteReader:
    """Chunks of tensor bytes read into reused numpy buffers (fresh buffers would fault in new pages)."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        import numpy as np

        self.chunk = max(8, chunk_bytes // 8 * 8)
        self.bufs = [np.empty(self.chunk, dtype=np.uint8) for _ in range(2)]

    def chunks(self, store: RawSafetensors, name: str, slot: int = 0) -> Any:
        """Yield ``(offset in the tensor, bytes)`` views of buffer ``slot``; valid until the next one."""
        path, off, n = store.location(name)
        fd = os.open(path, os.O_RDONLY)
        try:
            for pos in range(0, n, self.chunk):
                k = min(self.chunk, n - pos)
                view = self.bufs[slot][:k]
                got = 0
                while got < k:
                    r = os.preadv(fd, [view[got:].data], off + pos + got)
                    if r == 0:
                        raise AffectlensError(f"truncated read of {name} from {path}")
                    got += r
                yield pos, view
        finally:
            os.close(fd)

    @staticmethod
    def nonfinite(dtype: str, raw: np.ndarray) -> bool:
        """Does this chunk of ``dtype`` bytes hold a NaN or an Inf? (Exact: the exponent bits.)

        Two read-only reductions, no temporary: as signed integers the positive
        NaN/Inf are the largest values (>= the exponent mask), as unsigned the
        negative ones are (>= sign bit | exponent mask).
        """
        spec = FLOAT_BITS.get(dtype)
        if spec is None or raw.size == 0:
            return False
        view, mask, exp = spec
        if int(raw.view(_SIGNED[view]).max()) >= exp:
            return True
        return int(raw.view(view).max()) >= (mask + 1) | exp

    def check(self, store: RawSafetensors, name: str) -> None:
        """Refuse ``name`` if it holds a NaN or an Inf, in the words of ``check_finite``."""
        dtype = store.st_dtype(name)
        if dtype not in FLOAT_BITS:
            return
        for _, raw in self.chunks(store, name):
            if self.nonfinite(dtype, raw):
                raise AffectlensError(f"non-finite values (NaN/Inf) in tensor {name} of {store.file_of(name)}")

    def whole(self, donor: RawSafetensors, base: RawSafetensors, name: str, *, check: bool,
              compare: bool) -> bool:
        """Is DONOR's ``name`` finite (else an error) and different in value from BASE's?

        Without ``check`` DONOR is not checked (known finite), without
        ``compare`` nothing is compared (False); reading stops as soon as
        neither is left to do. Values, as ``torch.equal``: ``-0.0 == 0.0``.
        """
        dtype = donor.st_dtype(name)
        check = check and dtype in FLOAT_BITS
        changed = False
        if not check and not compare:
            return False
        theirs = self.chunks(base, name, slot=1) if compare else None
        mine = self.chunks(donor, name)
        try:
            for _, d in mine:
                if check and self.nonfinite(dtype, d):
                    raise AffectlensError(f"non-finite values (NaN/Inf) in tensor {name} of {donor.file_of(name)}")
                if theirs is not None:
                    _, b = next(theirs)
                    changed = not _bytes_equal(d, b) and _value_differs(dtype, d, b)
                    if changed:
                        theirs.close()
                        theirs = None
                if changed and not check:
                    break
        finally:
            mine.close()
            if theirs is not None:
                theirs.close()
        return changed


def _bytes_equal(d: np.ndarray, b: np.ndarray) -> bool:
    import numpy as np

    n8 = d.size // 8 * 8
    return bool(np.array_equal(d[:n8].view("<u8"), b[:n8].view("<u8")) and np.array_equal(d[n8:], b[n8:]))


def _value_differs(dtype: str, d: np.ndarray, b: np.ndarray) -> bool:
    """Bytes differ: do values? Only a float's signed zeros differ in bytes and not in value."""
    spec = FLOAT_BITS.get(dtype)
    if spec is None:
        return True
    dv, bv = d.view(spec[0]), b.view(spec[0])
    ne = dv != bv
    first = int(ne.argmax())  # usually decides: a fine-tune changes values, not zeros' signs
    if (int(dv[first]) | int(bv[first])) & spec[1]:
        return True
    return bool(((dv[ne] | bv[ne]) & spec[1]).any())


__all__ = ["FLOAT_BITS", "RAW_DTYPES", "ST_ITEMSIZE", "ByteReader", "RawSafetensors", "read_config",
           "read_safetensors_header", "safetensors_files"]
