"""Output ownership: claims and atomic run directories (``runs.RunDir`` builds on them).

Every command writes one directory. Its path is *claimed* first (a lock file
``.NAME.claim`` beside it, held with ``flock`` for the life of the run and
naming the owner's pid), so two runs never write the same output. The result
is built under a temporary sibling ``.NAME.tmp-*`` and renamed into place only
when complete, so a failure never leaves a partial result, and an existing
result is never replaced without ``force``. A ``--force`` replace first moves
the old result aside to ``.NAME.old-PID``; a kill between the two renames
leaves that copy, and the next run in the folder puts it back. Leftovers of
killed runs (temp dirs, old copies, stale claims) are reported and removed by
the next run that claims an output in the same folder, unless a live run
still holds them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AffectlensError

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


# ---------------------------------------------------------------------------
# Claims: one owner per output path


@dataclass
class _Claim:
    out: Path
    path: Path
    fd: int
    pid: int
    depth: int = 1
    made: list[Path] = field(default_factory=list)  # parent dirs this claim created


_HELD: dict[str, _Claim] = {}
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp-[A-Za-z0-9_]+|old-\d+|claim)$")


def claim_file(out: str | os.PathLike) -> Path:
    """The lock file that marks ``out`` as being written: ``.NAME.claim`` beside it."""
    p = Path(os.path.abspath(out))
    return p.with_name(f".{p.name}.claim")


def _umask() -> int:
    try:
        m = re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.M)
        if m:
            return int(m.group(1), 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _prepare_parent(out: Path, shown: Path) -> list[Path]:
    """Make ``out``'s parent dirs; every reason it cannot be created is one line."""
    if out.exists() and not out.is_dir():
        raise AffectlensError(f"output {shown} exists and is not a directory")
    missing: list[Path] = []
    anc = shown.parent  # walked as the user wrote it, so messages name their path
    while not anc.exists():
        if anc.is_symlink():
            raise AffectlensError(f"cannot create output {shown}: {anc} is a dangling symlink")
        missing.append(anc)
        anc = anc.parent
    if not anc.is_dir():
        raise AffectlensError(f"cannot create output {shown}: {anc} is a file, not a directory")
    made: list[Path] = []
    try:
        for d in reversed(missing):
            d.mkdir()
            made.append(Path(os.path.abspath(d)))
    except OSError as e:
        _unmake(made)
        raise AffectlensError(f"cannot create output {shown}: {e.strerror or e} ({e.filename or anc})") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        _unmake(made)
        raise AffectlensError(f"cannot create output {shown}: {out.parent} is not writable")
    return made


def _unmake(made: list[Path]) -> None:
    for d in reversed(made):
        with contextlib.suppress(OSError):
            d.rmdir()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_owner(path: Path) -> tuple[int | None, str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return None, ""
    pid = int(text[0]) if text and text[0].isdigit() else None
    return pid, text[1] if len(text) > 1 else ""


def _lock(cp: Path, shown: Path, wait: bool = False) -> tuple[int, int | None] | None:
    """Take the claim file ``cp``; return (fd, pid of a dead previous owner) or None if held."""
    for _ in range(20):
        if fcntl is not None:
            fd = os.open(cp, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = os.fstat(fd).st_ino == os.stat(cp).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous owner removed it between our open and lock: retry
                os.close(fd)
                continue
        else:  # pragma: no cover
            try:
                fd = os.open(cp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                pid, _ = _read_owner(cp)
                if pid is not None and _pid_alive(pid):
                    return None
                with contextlib.suppress(OSError):
                    cp.unlink()
                continue
        old = os.read(fd, 256).decode("utf-8", "replace").split()
        dead = int(old[0]) if old and old[0].isdigit() else None
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        return fd, dead
    raise AffectlensError(f"cannot claim output {shown}: its claim file {cp} keeps changing")


def _unlock(cp: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_ino == os.stat(cp).st_ino:
            cp.unlink()
    os.close(fd)


def _acquire(out: str | os.PathLike) -> _Claim:
    shown = Path(out)
    final = Path(os.path.abspath(out))
    if not final.name:
        raise AffectlensError(f"output {shown} names no directory to create")
    key = str(final)
    held = _HELD.get(key)
    if held is not None and held.pid == os.getpid():
        held.depth += 1
        return held
    made = _prepare_parent(final, shown)
    cp = claim_file(final)
    try:
        got = _lock(cp, shown)
    except OSError as e:
        _unmake(made)
        raise AffectlensError(f"cannot create output {shown}: {e.strerror or e} ({cp.parent})") from None
    if got is None:
        pid, host = _read_owner(cp)
        _unmake(made)
        who = f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "") if pid else "a live process"
        raise AffectlensError(f"output {shown} is being written by another affectlens run ({who}); "
                              "wait for it to finish or choose another --out")
    fd, dead = got
    if dead is not None and dead != os.getpid():
        note(f"took over the claim on {shown} left by a killed run (pid {dead})")
    claim = _Claim(final, cp, fd, os.getpid(), made=made)
    _HELD[key] = claim
    try:
        sweep(final.parent, own=final.name)
    except BaseException:
        _release(claim)
        raise
    return claim


def _release(claim: _Claim) -> None:
    claim.depth -= 1
    if claim.depth > 0:
        return
    _HELD.pop(str(claim.out), None)
    _unlock(claim.path, claim.fd)
    if not claim.out.exists():
        _unmake(claim.made)


@contextlib.contextmanager
def claim_output(out: str | os.PathLike) -> Iterator[Path]:
    """Hold ``out`` for this process: parents made, claim taken, leftovers swept.

    Refuses (one line) when ``out`` cannot be created (a file in its parent path,
    an unwritable parent, ``out`` itself a file) or another live run holds it.
    Re-entrant within one process (the CLI claims, then ``atomic_dir`` reuses it).
    """
    claim = _acquire(out)
    try:
        yield claim.out
    finally:
        _release(claim)


def holds_claim(out: str | os.PathLike) -> bool:
    """Whether this process holds ``out``'s claim and its claim file is still the one it locked."""
    c = _HELD.get(str(Path(os.path.abspath(out))))
    if c is None or c.pid != os.getpid():
        return False
    try:
        return os.fstat(c.fd).st_ino == os.stat(c.path).st_ino
    except OSError:
        return False


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    total = 0
    for f in p.rglob("*"):
        with contextlib.suppress(OSError):
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
    return total


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def sweep(folder: str | os.PathLike, own: str | None = None) -> list[str]:
    """Find, report and clean the leftovers of killed runs in ``folder``.

    ``.NAME.tmp-*`` (a half-built result) is removed; ``.NAME.old-PID`` (the
    previous result of an interrupted ``--force`` replace) is put back as NAME
    when NAME is missing, else removed; a claim file nobody holds is removed.
    Entries of a NAME that a live run still claims are left alone. ``own`` is
    the NAME whose claim the caller already holds. Returns the notes printed.
    """
    folder = Path(folder)
    groups: dict[str, list[tuple[str, Path]]] = {}
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    for p in entries:
        m = _LEFTOVER.match(p.name)
        if m is None:
            continue
        if m["kind"].startswith("tmp-") and not p.is_dir():
            continue  # atomic_dir temps are dirs; files are write_json's business
        groups.setdefault(m["name"], []).append((m["kind"], p))
    notes: list[str] = []
    for name, items in sorted(groups.items()):
        if name == own:
            notes += _clean(folder / name, items)
            continue
        cp = folder / f".{name}.claim"
        try:
            got = _lock(cp, folder / name)
        except (OSError, AffectlensError):
            continue
        if got is None:
            continue  # a live run owns these
        fd, _dead = got
        try:
            notes += _clean(folder / name, [(k, p) for k, p in items if k != "claim"])
            if _dead is not None and len(items) == 1:
                notes.append(f"removed the stale claim {cp.name} of a killed run (pid {_dead})")
                note(notes[-1])
        finally:
            _unlock(cp, fd)
    return notes


def _clean(final: Path, items: list[tuple[str, Path]]) -> list[str]:
    notes: list[str] = []

    def say(msg: str) -> None:
        notes.append(msg)
        note(msg)

    olds = sorted((p for k, p in items if k.startswith("old-")), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in olds:
        if not final.exists() and not final.is_symlink():
            try:
                p.rename(final)
                say(f"restored {final} from {p.name}, left by a --force replace that was interrupted")
                continue
            except OSError:
                pass
        n = _size(p)
        _discard(p, final)
        say(f"removed {p.name} ({_mb(n)}), the old result of an interrupted --force replace of {final.name}")
    for k, p in items:
        if k.startswith("tmp-"):
            n = _size(p)
            shutil.rmtree(p, ignore_errors=True)
            say(f"removed {p.name} ({_mb(n)}), the unfinished output of a killed run")
    return notes


def _discard(p: Path, final: Path) -> None:
    """Delete a dir so that a kill midway leaves a ``.NAME.tmp-*`` (swept later), never a
    half-deleted ``.NAME.old-*`` that a later sweep would put back as a result."""
    trash = final.with_name(f".{final.name}.tmp-gone{os.getpid()}x{time.monotonic_ns()}")
    try:
        p.rename(trash)
    except OSError:
        trash = p
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` only if the block succeeds.

    Claims ``out`` (or reuses this process's claim), so a concurrent run is
    refused; at the end re-checks that the claim is still ours and, without
    ``force``, that nothing appeared at ``out`` meanwhile. The run dir gets the
    user's umask (``mkdtemp`` alone would make it 0700).
    """
    with claim_output(out):
        final = check_out_dir(out, force)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            yield tmp
            _commit(tmp, final, force)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _commit(tmp: Path, final: Path, force: bool) -> None:
    if not holds_claim(final):
        raise AffectlensError(f"lost the claim on {final} while writing it (its claim file "
                              f"{claim_file(final).name} was removed or replaced); the result was discarded")
    if final.exists() or final.is_symlink():
        if not force:
            raise AffectlensError(f"output {final} appeared while this run was writing it; "
                                  "refusing to replace it (pass --force)")
        if not final.is_dir() or final.is_symlink():
            raise AffectlensError(f"output {final} exists and is not a directory")
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        try:
            tmp.rename(final)
        except BaseException:
            old.rename(final)
            raise
        _discard(old, final)
    else:
        tmp.rename(final)
