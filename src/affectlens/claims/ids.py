"""Run ids, and the checks an output path passes before any work."""

from __future__ import annotations

import os
import re
import secrets
import sys
from pathlib import Path

from ..errors import AffectlensError

try:  # POSIX: the claim is an flock, released by the kernel when its owner dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_EXCL placeholder + pid liveness
    fcntl = None  # type: ignore[assignment]



def note(msg: str) -> None:
    """A housekeeping note on stderr (not an error; the run goes on)."""
    print(f"affectlens: note: {msg}", file=sys.stderr)


def check_out_dir(out: str | os.PathLike, force: bool) -> Path:
    """Refuse to overwrite an existing result unless ``force`` is given, or an ``out`` that cannot be made.

    Creates nothing: commands call it before their expensive part, so a file in
    the parent path or an unwritable parent is found before training, not after.
    """
    path = Path(out)
    if (path.exists() or path.is_symlink()) and not force:
        raise AffectlensError(f"output {path} already exists; pass --force to replace it")
    if path.exists() and not path.is_dir():
        raise AffectlensError(f"output {path} exists and is not a directory")
    anc = path.parent
    while not anc.exists() and not anc.is_symlink() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise AffectlensError(f"cannot create output {path}: {anc} is a file, not a directory")
    if anc.is_dir() and not os.access(anc, os.W_OK | os.X_OK):
        raise AffectlensError(f"cannot create output {path}: {anc} is not writable")
    return path




_ID = "[0-9a-f]{16}"
_RUN: tuple[int, str] = (-1, "")
# Ours beside NAME: ``.NAME.tmp-ID...`` (dirs of atomic_dir, trash of a discard) and ``.NAME.old-ID``.
# Ours anywhere under a claimed output: ``.FILE.tmp-ID...`` (write_json and friends).
_INNER = re.compile(rf"^\..+\.tmp-(?P<id>{_ID})")
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def run_id() -> str:
    """This process's run id: 16 random hex digits, written into its claims and the names of its temporaries."""
    global _RUN
    if _RUN[0] != os.getpid():  # a forked child is another run
        _RUN = (os.getpid(), secrets.token_hex(8))
    return _RUN[1]
