"""Recovering a killed run's leftovers: only those a claim file vouches for, never a look-alike."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from pathlib import Path

try:  # POSIX: the claim is an flock, released by the kernel when its owner dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_EXCL placeholder + pid liveness
    fcntl = None  # type: ignore[assignment]

from .ids import _ID, _INNER, note
from .lock import _HELD, _MAX_CLAIM, _open_claim, _pid_alive, _read_owner, _reopen, _same, owners


def _size(p: Path) -> int:
    if p.is_symlink() or p.is_file():
        return p.lstat().st_size
    total = 0
    for f in p.rglob("*"):
        with contextlib.suppress(OSError):
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
    return total


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _leftovers(final: Path, ids: set[str]) -> list[tuple[str, str, Path]]:
    """``(kind, run id, path)`` of the entries beside ``final`` that one of ``ids`` made: ``tmp`` or ``old``."""
    if not ids:
        return []
    pat = re.compile(rf"^\.{re.escape(final.name)}\.(?:tmp-(?P<tmp>{_ID}).*|old-(?P<old>{_ID}))$", re.S)
    found = []
    try:
        names = os.listdir(final.parent)
    except OSError:
        return []
    for name in sorted(names):
        m = pat.match(name)
        if m is None:
            continue
        kind, rid = ("tmp", m["tmp"]) if m["tmp"] else ("old", m["old"])
        if rid in ids:
            found.append((kind, rid, final.parent / name))
    return found


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def sweep(folder: str | os.PathLike, own: str | None = None) -> list[str]:
    """Find, report and clean the leftovers of killed runs in ``folder``: only what a claim vouches for.

    For each affectlens claim file ``.NAME.claim`` in ``folder`` that no live
    run holds (and for ``own``, the NAME whose claim the caller holds: the runs
    it took over), the entries its run ids name are cleaned: ``.NAME.old-ID``
    (the previous result of an interrupted ``--force`` replace) is put back as
    NAME when NAME is missing, else removed; ``.NAME.tmp-ID...`` (a half-built
    result) is removed, as are ``.FILE.tmp-ID...`` half-written files inside
    NAME; then the stale claim is removed. Anything no claim vouches for is
    left alone, whatever its name. Returns the notes printed.
    """
    folder = Path(folder)
    notes: list[str] = []
    if own is not None:
        held = _HELD.get(str(Path(os.path.abspath(folder / own))))
        if held is not None and held.pid == os.getpid():
            notes += _clean(folder / own, held.before)
    try:
        claims = sorted(n for n in os.listdir(folder) if n.startswith(".") and n.endswith(".claim"))
    except OSError:
        return notes
    for n in claims:
        name = n[1:-len(".claim")]
        if name and name != own:
            notes += _sweep_claim(folder / name, folder / n)
    return notes


def _sweep_claim(final: Path, cp: Path) -> list[str]:
    """Clean what a stale affectlens claim vouches for, then remove it; a live or foreign one is left."""
    if fcntl is None:  # pragma: no cover - no flock: a claim whose last owner is alive is live
        pid, _ = _read_owner(cp)
        if pid is None or _pid_alive(pid):
            return []
    got = _open_claim(cp)
    if isinstance(got, str):
        return []
    if owners(got[1]) is None:
        os.close(got[0])
        return []  # not ours: not even locked
    try:
        fd = _reopen(cp, got[0])
    except OSError:
        return []
    if fd is None:
        return []
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # a live run holds it
        found = owners(os.pread(fd, _MAX_CLAIM, 0)) if _same(fd, cp) else None
        if found is None:
            return []
        ids = {o.run for o in found}
        notes = _clean(final, ids)
        if not _leftovers(final, ids) and not _inner(final, ids) and _same(fd, cp):
            with contextlib.suppress(OSError):
                cp.unlink()
            if not notes:
                pid = f" (pid {found[-1].pid})" if found else ""
                notes.append(f"removed the stale claim {cp.name} of a killed run{pid}")
                note(notes[-1])
        return notes
    finally:
        os.close(fd)


def _clean(final: Path, ids: set[str]) -> list[str]:
    notes: list[str] = []

    def say(msg: str) -> None:
        notes.append(msg)
        note(msg)

    items = _leftovers(final, ids)

    def mtime(item: tuple[str, str, Path]) -> float:
        try:
            return item[2].lstat().st_mtime
        except OSError:
            return 0.0

    for _, rid, p in sorted((x for x in items if x[0] == "old"), key=mtime, reverse=True):
        if not final.exists() and not final.is_symlink():
            try:
                p.rename(final)
                say(f"restored {final} from {p.name}, left by a --force replace that was interrupted")
                continue
            except OSError:
                pass
        n = _size(p)
        _discard(p, final, rid)
        say(f"removed {p.name} ({_mb(n)}), the old result of an interrupted --force replace of {final.name}")
    for kind, _, p in items:
        if kind == "tmp":
            n = _size(p)
            _remove(p)
            say(f"removed {p.name} ({_mb(n)}), the unfinished output of a killed run")
    for p in _inner(final, ids):
        _remove(p)
        say(f"removed {p.relative_to(final.parent)}, a half-written file of a killed run")
    return notes


def _inner(final: Path, ids: set[str]) -> list[Path]:
    """The ``.FILE.tmp-ID...`` entries under the output ``final`` (symlinks not followed) that ``ids`` made."""
    if not ids or final.is_symlink() or not final.is_dir():
        return []
    found = []
    for root, dirs, files in os.walk(final):
        for name in list(dirs) + files:
            m = _INNER.match(name)
            if m and m["id"] in ids:
                found.append(Path(root) / name)
                if name in dirs:
                    dirs.remove(name)
    return found


def _discard(p: Path, final: Path, rid: str) -> None:
    """Delete a dir so that a kill midway leaves a ``.NAME.tmp-RID...`` (swept later, ``rid``'s claim
    vouches for it), never a half-deleted ``.NAME.old-RID`` that a later sweep would put back as a result."""
    trash = final.with_name(f".{final.name}.tmp-{rid}gone{time.monotonic_ns()}")
    try:
        p.rename(trash)
    except OSError:
        trash = p
    _remove(trash)
