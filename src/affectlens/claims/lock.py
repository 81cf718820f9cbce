"""Claim files: one owner per output path, in a ``.NAME.claim`` whose content proves it is ours."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AffectlensError, is_disk_full

try:  # POSIX: the claim is an flock, released by the kernel when its owner dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_EXCL placeholder + pid liveness
    fcntl = None  # type: ignore[assignment]

from .ids import _CLOEXEC, _ID, _NOFOLLOW, run_id

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
            try:
                d.mkdir()
            except FileExistsError:  # a concurrent run (a grid's other worker) made it first: not ours to unmake
                if d.is_dir() and not d.is_symlink():
                    continue
                raise
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
