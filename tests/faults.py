"""Fault-injection helpers: drive the CLI in-process and check the error contract.

The contract for bad input: exit code 2, exactly one line on stderr
(``affectlens: error: ...``), no output directory, no hidden leftovers beside
it, and any result that was already there survives untouched.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from affectlens.cli import main


def run_cli(capfd, *argv: str) -> tuple[int, str, str]:
    """Run ``affectlens ARGV`` in this process; return (exit code, stdout, stderr)."""
    capfd.readouterr()  # drop anything printed before
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        rc = int(e.code or 0)
    out, err = capfd.readouterr()
    return rc, out, err


def tree_digest(path: Path) -> dict[str, str]:
    """Content hash of every file under ``path`` (to prove a result survived)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(out: Path) -> list[str]:
    """Hidden temp/claim entries a run to ``out`` may have left beside it."""
    if not out.parent.is_dir():
        return []
    return sorted(p.name for p in out.parent.iterdir()
                  if p.name.startswith(f".{out.name}.") or p.name.startswith(f".{out.name}-"))


def assert_refused(result: tuple[int, str, str], *, out: Path | None = None,
                   contains: str | None = None, survivor: dict[str, str] | None = None) -> str:
    """Assert the one-line error contract; return the error line."""
    rc, _stdout, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"exit {rc}, stderr: {err!r}"
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {err!r}"
    line = lines[0]
    assert line.startswith("affectlens: error: "), line
    assert "Traceback" not in err
    if contains is not None:
        assert contains.lower() in line.lower(), f"{contains!r} not in {line!r}"
    if out is not None:
        if survivor is None:
            assert not out.exists(), f"{out} was written"
        else:
            assert tree_digest(out) == survivor, f"{out} changed"
        assert leftovers(out) == [], f"leftovers beside {out}: {leftovers(out)}"
    return line
