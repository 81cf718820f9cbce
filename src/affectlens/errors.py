"""One error type for everything a user can get wrong (or cannot help, like a full disk).

The CLI turns an ``AffectlensError`` into a single line on stderr and a
non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class AffectlensError(Exception):
    """A problem with the user's input, reported as one line (no traceback)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


# errno values of a full disk or an exhausted quota; the words are how safetensors'
# Rust writer and other wrappers that drop the errno still say it.
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "StorageFull", "os error 28")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a full disk, not a bug: ENOSPC/EDQUOT or their words."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if not isinstance(e, OSError) and any(w in str(e) for w in _FULL_WORDS):
            return True
        e = e.__cause__ or e.__context__
    return False


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free to this user on the filesystem that holds ``path`` (its nearest existing folder)."""
    p = Path(os.path.abspath(path))
    while not p.is_dir() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


class DiskFullError(AffectlensError):
    """The disk filled up while writing ``path``; says how many bytes it needed (when known) and how many are free.

    Built after the half-written output is removed, so "free" is what the user has for a rerun.
    """

    def __init__(self, path: str | os.PathLike, needed: int | None = None) -> None:
        self.path = Path(path)
        self.needed = needed
        free = free_bytes(self.path)
        msg = f"no space left on the device writing {self.path}"
        if needed is not None:
            msg += f": needs {needed:,} bytes, " + (f"{free:,} free" if free is not None else "free space unknown")
        elif free is not None:
            msg += f" ({free:,} bytes free)"
        super().__init__(msg + "; free some space (or choose another --out) and rerun")

    def moved(self, src: Path, dst: Path) -> DiskFullError:
        """The same error naming ``dst`` where it named something under ``src`` (a temp dir's published name)."""
        try:
            rel = self.path.relative_to(src)
        except ValueError:
            return DiskFullError(self.path, self.needed)
        return DiskFullError(dst / rel, self.needed)
