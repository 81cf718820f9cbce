"""Claiming an output, building it aside and renaming it into place; temp files that carry the run id."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import AffectlensError, DiskFullError, is_disk_full

try:  # POSIX: the claim is an flock, released by the kernel when its owner dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_EXCL placeholder + pid liveness
    fcntl = None  # type: ignore[assignment]

from .ids import _CLOEXEC, _NOFOLLOW, check_out_dir, note, run_id
from .lock import (
    _HELD,
    _Claim,
    _lock,
    _open_claim,
    _prepare_parent,
    _read_owner,
    _same,
    _umask,
    _unlock,
    _unmake,
    claim_file,
    owners,
)
from .sweep import _discard, _inner, _leftovers, _remove, sweep


def temp_file(path: str | os.PathLike, suffix: str = "") -> Path:
    """Create an empty temporary file beside ``path`` for an atomic write, named with this run's id.

    Created exclusively (``O_EXCL``), so nothing already there is ever
    truncated; the caller writes it, renames it over ``path``, and on failure
    removes it (it is the caller's own). Inside a claimed output it is named
    with the id of the run holding the claim (a Ray/Slurm worker writes on
    behalf of its driver), so a killed writer's temp is vouched for, and swept.
    """
    path = Path(path)
    stem = path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else path.name
    rid = _writer_id(path)
    for _ in range(100):
        tmp = path.with_name(f".{stem}.tmp-{rid}{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise AffectlensError(f"cannot make a temporary file beside {path}")  # pragma: no cover


def _writer_id(path: Path) -> str:
    """The run id for a temp file at ``path``: the holder's of the nearest claimed output above it
    (read-only), else this process's."""
    p = Path(os.path.abspath(path)).parent
    while p.name:
        held = _HELD.get(str(p))
        if held is not None and held.pid == os.getpid():
            return run_id()
        got = _open_claim(claim_file(p))
        if not isinstance(got, str):
            os.close(got[0])
            found = owners(got[1])
            if found:
                return found[-1].run
        p = p.parent
    return run_id()


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
        if is_disk_full(e):
            raise DiskFullError(cp) from None
        raise AffectlensError(f"cannot create output {shown}: {e.strerror or e} ({cp.parent})") from None
    except BaseException:
        _unmake(made)
        raise
    if got is None:
        pid, host = _read_owner(cp)
        _unmake(made)
        who = f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "") if pid else "a live process"
        raise AffectlensError(f"output {shown} is being written by another affectlens run ({who}); "
                              "wait for it to finish or choose another --out")
    fd, before = got
    if before and before[-1].pid != os.getpid():
        note(f"took over the claim on {shown} left by a killed run (pid {before[-1].pid})")
    earlier = {o.run for o in before}
    claim = _Claim(final, cp, fd, os.getpid(), made=made, ids=earlier | {run_id()}, before=earlier)
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
    if _leftovers(claim.out, claim.ids) or _inner(claim.out, claim.ids):
        # Something it vouches for is left (a worker killed mid-write, a temp that could not be
        # removed): the claim stays, unlocked, so the next run recognises and sweeps it.
        os.close(claim.fd)
    else:
        _unlock(claim.path, claim.fd)
    if not claim.out.exists():
        _unmake(claim.made)


@contextlib.contextmanager
def claim_output(out: str | os.PathLike) -> Iterator[Path]:
    """Hold ``out`` for this process: parents made, claim taken, leftovers swept.

    Refuses (one line) when ``out`` cannot be created (a file in its parent path,
    an unwritable parent, ``out`` itself a file, a ``.NAME.claim`` that is not
    ours) or another live run holds it. Re-entrant within one process (the CLI
    claims, then ``atomic_dir`` reuses it).
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
    return _same(c.fd, c.path)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` only if the block succeeds.

    Claims ``out`` (or reuses this process's claim), so a concurrent run is
    refused; at the end re-checks that the claim is still ours and, without
    ``force``, that nothing appeared at ``out`` meanwhile. The run dir gets the
    user's umask (``mkdtemp`` alone would make it 0700). A full disk becomes a
    :class:`DiskFullError` naming the output, raised once the temp dir is gone.
    """
    with claim_output(out):
        final = check_out_dir(out, force)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{run_id()}", dir=final.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            yield tmp
            _commit(tmp, final, force)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, DiskFullError):
                raise e.moved(tmp, final) from None
            if isinstance(e, Exception) and not isinstance(e, AffectlensError) and is_disk_full(e):
                where = Path(e.filename) if isinstance(e, OSError) and isinstance(e.filename, str) else final
                raise DiskFullError(where).moved(tmp, final) from None
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
        old = final.with_name(f".{final.name}.old-{run_id()}")  # the claim names this run: a kill leaves it ours
        if old.exists() or old.is_symlink():
            _remove(old)
        final.rename(old)
        try:
            tmp.rename(final)
        except BaseException:
            old.rename(final)
            raise
        _discard(old, final, run_id())
    else:
        tmp.rename(final)
