"""Non-finite values are never a result: one cheap check, shared by every command."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..claims import temp_file
from ..errors import AffectlensError

if TYPE_CHECKING:  # imported on first check: the memo and the raw-byte fast path need no torch
    import torch

_CHUNK_ELEMS = 1 << 24  # bounds the temporary mask to 16 MB
# NaN/Inf have an all-ones exponent: with the sign bit masked off, the bits as an integer reach the
# exponent mask exactly then. A plain sum first (any NaN/Inf makes it non-finite; 30x+ faster than
# isfinite); only a non-finite sum, which finite values can also overflow to, runs the exact bit test.
_BITS: dict[Any, tuple[Any, int, int]] = {}


def _bits() -> dict[Any, tuple[Any, int, int]]:
    import torch

    if not _BITS:
        _BITS.update({torch.bfloat16: (torch.int16, 0x7FFF, 0x7F80), torch.float16: (torch.int16, 0x7FFF, 0x7C00),
                      torch.float32: (torch.int32, 0x7FFFFFFF, 0x7F800000),
                      torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)})
    return _BITS


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise ``AffectlensError`` if ``tensor`` holds a NaN or an Inf (integer tensors always pass)."""
    import torch

    t = tensor.detach()
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return
    flat = t.reshape(-1)
    for i in range(0, flat.numel(), _CHUNK_ELEMS):
        part = flat[i : i + _CHUNK_ELEMS]
        try:
            bits = _bits().get(part.dtype)
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
    """Every float tensor ``names`` (default: all) of a ``WeightStore`` is finite; row chunks bound memory.

    A store that checks its own bytes (``check_raw``: a raw safetensors header,
    no torch) is asked to.
    """
    raw = getattr(store, "check_raw", None)
    if callable(raw):
        raw(names)
        return
    import torch

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


# A file modified this recently is "racily clean" (as git calls it): its timestamps may not yet
# tell this version from the next write within the same clock tick, so it is never remembered.
_RACY_S = 2.0


def _version(path: Path) -> str | None:
    """What identifies one version of a file: device, inode, size, mtime and ctime (ns); None if racy."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if time.time() - max(st.st_mtime, st.st_ctime) < _RACY_S:
        return None
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


class FiniteMemo:
    """Tensors of safetensors files already checked finite, remembered per file version across runs.

    A transfer copies most of BASE's bytes untouched; checking them costs a
    full read and a pass over every element, as much as the copy itself. A
    tensor checked once is remembered under the file's version (inode, size,
    mtime and ctime in ns; ctime cannot be set back by a user), in the
    affectlens cache, so the next transfer from the same file skips it.
    Any write to the file changes its version and so forgets everything;
    a file changed in the last 2 s is never remembered (see ``_RACY_S``).
    Records are written only by ``commit`` after every check passed.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and not os.environ.get("AFFECTLENS_NO_FINITE_MEMO")
        self._known: dict[Path, tuple[str | None, set[str]]] = {}
        self._new: dict[Path, set[str]] = {}

    @staticmethod
    def _record(path: Path) -> Path:
        from ..paths import cache_dir

        return cache_dir() / "finite" / (hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32] + ".json")

    def _entry(self, path: Path) -> tuple[str | None, set[str]]:
        if path not in self._known:
            version = _version(path)
            names: set[str] = set()
            if version is not None:
                try:
                    rec: Any = json.loads(self._record(path).read_text(encoding="utf-8"))
                    if isinstance(rec, dict) and rec.get("version") == version:
                        names = set(rec.get("names", []))
                except (OSError, ValueError):
                    pass
            self._known[path] = (version, names)
        return self._known[path]

    def known(self, store: object, name: str) -> bool:
        """Was ``name`` of this version of its file found finite before?"""
        where = getattr(store, "file_of", None)
        if not self.enabled or not callable(where):
            return False
        return name in self._entry(where(name))[1]

    def checked(self, store: object, names: Iterable[str]) -> None:
        """Note tensors the caller has just found finite (remembered at ``commit``)."""
        where = getattr(store, "file_of", None)
        if self.enabled and callable(where):
            for n in names:
                self._new.setdefault(where(n), set()).add(n)

    def check(self, store: object, names: Iterable[str]) -> None:
        """``check_store_finite`` for the tensors not already known finite."""
        todo = [n for n in names if not self.known(store, n)]
        if todo:
            check_store_finite(store, todo)
            self.checked(store, todo)

    def commit(self) -> None:
        """Remember what was checked (best effort: a cache that cannot be written only costs time)."""
        for path, names in self._new.items():
            version, known = self._entry(path)
            if version is None or _version(path) != version:  # racy, or changed while it was read
                continue
            rec = self._record(path)
            try:
                rec.parent.mkdir(parents=True, exist_ok=True)
                tmp = temp_file(rec)  # a new file, never one already there
            except (OSError, AffectlensError):
                continue
            try:
                tmp.write_text(json.dumps({"version": version, "names": sorted(known | names)}), encoding="utf-8")
                tmp.replace(rec)
            except BaseException as e:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                if isinstance(e, OSError):
                    continue
                raise
            known |= names
        self._new.clear()


__all__ = ["FiniteMemo", "check_finite", "check_store_finite", "tensor_file"]
