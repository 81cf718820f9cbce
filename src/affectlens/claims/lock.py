"""Output ownership: claims and atomic run directories (``runs.RunDir`` builds on them).

Every command writes one directory. Its path is *claimed* first (a lock file
``.NAME.claim`` beside it, held with ``flock`` for the life of the run), so two
runs never write the same output. The result is built under a temporary
sibling ``.NAME.tmp-RUN...`` and renamed into place only when complete, so a
failure never leaves a partial result, and an existing result is never
replaced without ``force``. A ``--force`` replace first moves the old result
aside to ``.NAME.old-RUN``; a kill between the two renames leaves that copy,
and the next run in the folder puts it back.

Only what affectlens made is ever cleaned up. A name proves nothing (a user's
``.thesis.old-2023/`` or ``.vimrc.claim`` looks like ours), so ownership is
proved by content, written before anything that relies on it:

- each process has a random *run id* (16 hex digits, :func:`run_id`);
- a claim file is ours only if it starts with the line ``affectlens-claim 1``;
  below it, one line per run that held it (``run ID pid N host H at T``). It
  appears with that content already in it (written to an unnamed file that is
  then linked into place, where the OS allows; else created and written at
  once, and a claim still empty is waited for, never taken);
- every temporary or old copy a run makes beside or inside its output carries
  the run id in its name (``.NAME.tmp-ID...``, ``.NAME.old-ID``,
  ``.FILE.tmp-ID...`` for files written atomically; a Ray/Slurm worker writing
  into a claimed output uses the id of the run holding the claim), and is
  made only while the claim file naming that id exists;
- a leftover is ours if and only if an affectlens claim file for its output
  names its run id. A run taking over a killed run's claim appends its own
  line and keeps the old ones, so the dead run's leftovers stay recognised
  until they are cleaned; a claim file is removed only once nothing it names
  is left (a run that ends with a worker's half-written file inside its
  output leaves its claim, unlocked, for the next run to sweep).

So a kill at any point leaves either nothing or leftovers that a claim file
vouches for; the next run that claims an output in the same folder (or that
output itself) puts an old copy back, removes temporaries and half-written
files, and releases the stale claim, unless a live run still holds it. A claim
file that is not ours (or a symlink, a FIFO) is only ever read, never locked,
written, renamed or deleted: a run on that output is refused with one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AffectlensError, DiskFullError, is_disk_full

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
# Run ids and the names they mark

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


# ---------------------------------------------------------------------------
# Claims: one owner per output path


_MAGIC = b"affectlens-claim 1\n"
_OWNER = re.compile(rf"^run (?P<id>{_ID}) pid (?P<pid>\d+) host (?P<host>\S*) at \S*$")
_MAX_CLAIM = 1 << 20  # a claim file is a few short lines; a larger file is read no further


@dataclass(frozen=True)
class Owner:
    """One run that held a claim (a line of the claim file)."""

    run: str
    pid: int
    host: str


@dataclass
class _Claim:
    out: Path
    path: Path
    fd: int
    pid: int
    depth: int = 1
    made: list[Path] = field(default_factory=list)  # parent dirs this claim created
    ids: set[str] = field(default_factory=set)  # run ids whose leftovers this claim vouches for
    before: set[str] = field(default_factory=set)  # of those, the runs that held it before (swept at start)


_HELD: dict[str, _Claim] = {}


def claim_file(out: str | os.PathLike) -> Path:
    """The lock file that marks ``out`` as being written: ``.NAME.claim`` beside it."""
    p = Path(os.path.abspath(out))
    return p.with_name(f".{p.name}.claim")


def owners(data: bytes) -> list[Owner] | None:
    """The runs an affectlens claim file's content names (oldest first); None if it is not ours."""
    if not data.startswith(_MAGIC):
        return None
    found = []
    for line in data[len(_MAGIC):].decode("utf-8", "replace").split("\n")[:-1]:  # complete lines only
        m = _OWNER.match(line)
        if m:
            found.append(Owner(m["id"], int(m["pid"]), m["host"]))
    return found


def _owner_line() -> bytes:
    when = time.strftime("%Y-%m-%dT%H:%M:%S")
    return f"run {run_id()} pid {os.getpid()} host {socket.gethostname()} at {when}\n".encode()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _open_claim(cp: Path) -> tuple[int, bytes] | str:
    """Open an existing claim file read-only: ``(fd, content)``, or ``"missing"`` / ``"foreign"``.

    Never follows a symlink and never opens anything but a regular file (a FIFO
    would block); opening read-only changes nothing.
    """
    try:
        st = os.lstat(cp)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "foreign"
    if not stat.S_ISREG(st.st_mode):
        return "foreign"
    try:
        fd = os.open(cp, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK | _CLOEXEC)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "foreign"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return "foreign"
        return fd, os.pread(fd, _MAX_CLAIM, 0)
    except OSError:
        os.close(fd)
        return "foreign"


def _same(fd: int, cp: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.lstat(cp)
    except OSError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _create_linked(cp: Path, content: bytes) -> int | None | bool:
    """Make ``cp`` appear with ``content`` already in it, locked: an unnamed file (``O_TMPFILE``)
    written, locked, then linked into place. The fd; None if ``cp`` exists; False where the
    OS or filesystem cannot do it."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or fcntl is None:
        return False  # pragma: no cover
    try:
        fd = os.open(cp.parent, flag | os.O_RDWR | _CLOEXEC, 0o666)
    except OSError:
        return False  # not supported here: the plain way reports any real error
    try:
        _write_all(fd, content)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else can see it yet
        dfd = os.open(cp.parent, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        try:
            os.link(f"/proc/self/fd/{fd}", cp.name, dst_dir_fd=dfd, follow_symlinks=True)
        finally:
            os.close(dfd)
    except FileExistsError:
        os.close(fd)
        return None
    except OSError as e:
        os.close(fd)
        if is_disk_full(e):
            raise
        return False  # no /proc, or a filesystem without this kind of link
    except BaseException:
        os.close(fd)
        raise
    return fd


def _create(cp: Path, content: bytes) -> int | None:
    """A new claim file at ``cp`` holding ``content``, locked; None if ``cp`` exists."""
    linked = _create_linked(cp, content)
    if linked is not False:
        return None if linked is None else int(linked)
    # The plain way: created empty, then written at once. A reader that finds it still empty
    # waits for the content (see _lock); a kill in between leaves an empty file that is refused
    # with a line naming it, never taken for a claim.
    try:
        fd = os.open(cp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666)
    except FileExistsError:
        return None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _write_all(fd, content)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            cp.unlink()  # ours: O_EXCL made it
        raise
    return fd


def _foreign(shown: Path, cp: Path, data: bytes | None = None) -> AffectlensError:
    what = "an empty file" if data == b"" else "not an affectlens claim file"
    return AffectlensError(f"cannot claim output {shown}: {cp} exists and is {what}; affectlens leaves it "
                           "untouched: move it away if it is not in use, or choose another --out")


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
    """The pid and host of the last run named in an affectlens claim file (read-only)."""
    got = _open_claim(path)
    if isinstance(got, str):
        return None, ""
    fd, data = got
    os.close(fd)
    found = owners(data)
    return (found[-1].pid, found[-1].host) if found else (None, "")


def _reopen(cp: Path, fd: int) -> int | None:
    """Swap the read-only ``fd`` of a claim file proved ours for a read-write one (``flock`` over
    NFS needs it; appends go to the end); None, both closed, if ``cp`` is another file by now.
    Any other reason it cannot be opened (another user's claim) is raised."""
    try:
        wfd = os.open(cp, os.O_RDWR | os.O_APPEND | _NOFOLLOW | os.O_NONBLOCK | _CLOEXEC)
    except FileNotFoundError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    a, b = os.fstat(fd), os.fstat(wfd)
    os.close(fd)
    if (a.st_ino, a.st_dev) != (b.st_ino, b.st_dev):
        os.close(wfd)
        return None
    return wfd


def _lock(cp: Path, shown: Path) -> tuple[int, list[Owner]] | None:
    """Take the claim file ``cp``: (locked fd, the runs that held it before), or None if a live run holds it.

    A new claim file is created with our line in it; an existing one is taken
    over only when its content proves it is an affectlens claim and nobody
    holds its lock, and then our line is appended (the dead runs' lines stay:
    they vouch for their leftovers). Anything else at ``cp`` is refused.
    """
    if fcntl is None:  # pragma: no cover
        return _lock_nofcntl(cp, shown)
    for attempt in range(300):
        fd = _create(cp, _MAGIC + _owner_line())
        if fd is not None:
            return fd, []
        got = _open_claim(cp)
        if got == "missing":
            continue  # removed between our create and open: try again
        if isinstance(got, str):
            raise _foreign(shown, cp)
        fd, data = got
        if owners(data) is None:
            os.close(fd)
            if _MAGIC.startswith(data) and attempt < 100:
                time.sleep(0.01)  # just created the plain way: its content comes next
                continue
            raise _foreign(shown, cp, data)
        wfd = _reopen(cp, fd)  # proved ours: now it may be opened for writing
        if wfd is None:
            continue
        try:
            fcntl.flock(wfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(wfd)
            return None
        try:
            data = os.pread(wfd, _MAX_CLAIM, 0) if _same(wfd, cp) else b""
            before = owners(data)
            if before is not None:  # a line cut short by a kill (or a full disk) ends before ours
                _write_all(wfd, (b"" if data.endswith(b"\n") else b"\n") + _owner_line())
                return wfd, before
        except BaseException:
            os.close(wfd)
            raise
        os.close(wfd)  # the previous owner removed or replaced it meanwhile: again
    raise AffectlensError(f"cannot claim output {shown}: its claim file {cp} keeps changing")


def _lock_nofcntl(cp: Path, shown: Path) -> tuple[int, list[Owner]] | None:  # pragma: no cover
    """Without flock: the claim is the file's existence, a dead owner is a pid that is gone."""
    inherited: list[Owner] = []
    for _ in range(20):
        body = b"".join(f"run {o.run} pid {o.pid} host {o.host} at -\n".encode() for o in inherited)
        try:
            fd = os.open(cp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            got = _open_claim(cp)
            if got == "missing":
                continue
            if isinstance(got, str):
                raise _foreign(shown, cp) from None
            rfd, data = got
            os.close(rfd)
            found = owners(data)
            if found is None:
                raise _foreign(shown, cp, data) from None
            if found and _pid_alive(found[-1].pid):
                return None
            inherited = found
            with contextlib.suppress(OSError):
                cp.unlink()
            continue
        _write_all(fd, _MAGIC + body + _owner_line())
        return fd, inherited
    raise AffectlensError(f"cannot claim output {shown}: its claim file {cp} keeps changing")


def _unlock(cp: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        if _same(fd, cp):
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


# ---------------------------------------------------------------------------
# Leftovers of killed runs


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
