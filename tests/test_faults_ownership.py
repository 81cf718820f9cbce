"""Nothing the user owns is ever touched (issue 18): ownership by content, SIGTERM, a full disk.

Files and folders that merely *look* like affectlens leftovers (``.out.tmp-backup/``,
``.thesis.old-2023/``, ``.vimrc.claim``, symlinks and a FIFO of such names) survive
every path that claims an output, byte for byte; the real leftovers of a killed run
are still recovered beside them. SIGTERM unwinds like Ctrl-C (exit 143, nothing left);
a full disk is one line naming the path and the bytes, with no half-written output.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import affectlens
import affectlens.weights.writer as writer_mod
from affectlens import claims
from affectlens.errors import AffectlensError
from affectlens.runs import RunDir, atomic_dir, claim_file, claim_output

from conftest import TINYSTORIES
from faults import assert_refused, leftovers, run_cli
from tiny import save_tiny_pair

SRC = str(Path(affectlens.__file__).resolve().parents[1])


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", AFFECTLENS_NO_PROGRESS="1")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    return save_tiny_pair(tmp_path_factory.mktemp("pair"))


# ---------------------------------------------------------------------------
# Look-alikes


def plant_lookalikes(folder: Path, out_name: str = "out") -> None:
    """The user's own files and folders whose names look like affectlens leftovers."""
    mine = folder / "mine"
    mine.mkdir(parents=True, exist_ok=True)
    (mine / "essay.txt").write_text("my essay\n")
    for d in (f".{out_name}.tmp-backup", f".{out_name}.old-2023", ".thesis.old-2023", ".photos.tmp-backup",
              f".{out_name}.tmp-0123456789abcdef"):
        (folder / d).mkdir()
        (folder / d / "precious.txt").write_text(f"the user's {d}\n")
    (folder / ".vimrc.claim").write_text("x\n")
    (folder / ".notes.claim").write_text("affectlens-claim? no: my notes\n")
    (folder / f".{out_name}.tmp-notes.txt").write_text("a file, not a dir\n")
    os.symlink(mine, folder / f".{out_name}.old-7")  # symlinks of leftover names
    os.symlink(mine / "essay.txt", folder / ".link.claim")
    os.symlink(mine, folder / ".photos.tmp-link")
    os.symlink(folder / "nowhere", folder / ".dangling.old-1")
    os.mkfifo(folder / ".pipe.claim")  # a reader that opened it would block


def snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, object]:
    """Every entry under ``folder`` (symlinks not followed): its type, and its bytes or link target."""
    seen: dict[str, object] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if rel.split("/")[0] in skip:
            continue
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            seen[rel] = ("link", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            seen[rel] = ("dir", stat.S_IMODE(st.st_mode))
        elif stat.S_ISFIFO(st.st_mode):
            seen[rel] = ("fifo",)
        else:
            seen[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
    return seen


def _lib_claim(out: Path) -> None:
    with claim_output(out):
        lines = claim_file(out).read_text().splitlines()
        assert lines[0] == "affectlens-claim 1" and lines[1].split()[1] == claims.run_id()


def _lib_atomic(out: Path) -> None:
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("a")


def _lib_rundir(out: Path) -> None:
    with RunDir(out, command="unit") as run:
        run.json("a.json", {"v": 1})


def _lib_replace(out: Path) -> None:
    _lib_rundir(out)
    with RunDir(out, command="unit", force=True) as run:
        run.json("a.json", {"v": 2})


def _lib_failed(out: Path) -> None:
    with pytest.raises(AffectlensError, match="non-finite"), RunDir(out, command="unit") as run:
        run.json("a.json", {"v": float("nan")})


@pytest.mark.parametrize("linked", [True, False], ids=["O_TMPFILE", "plain-create"])
@pytest.mark.parametrize("path", [_lib_claim, _lib_atomic, _lib_rundir, _lib_replace, _lib_failed],
                         ids=["claim_output", "atomic_dir", "RunDir", "RunDir-force", "RunDir-failed"])
def test_lookalikes_survive_the_library_paths(tmp_path, capfd, monkeypatch, path, linked):
    if not linked:  # a filesystem without O_TMPFILE links: claim files are created, then written
        monkeypatch.setattr(claims.lock, "_create_linked", lambda cp, content: False)
    plant_lookalikes(tmp_path)
    before = snapshot(tmp_path)
    path(tmp_path / "out")
    assert snapshot(tmp_path, skip=("out",)) == before
    assert not (tmp_path / "thesis").exists() and not (tmp_path / "photos").exists()
    assert "note:" not in capfd.readouterr().err  # nothing was taken for a leftover
    made = sorted(set(os.listdir(tmp_path)) - {p.split("/")[0] for p in before})
    assert made == ([] if path is _lib_claim or path is _lib_failed else ["out"])


def test_lookalikes_survive_a_cli_run_and_its_force_replace(tmp_path, capfd, pair):
    plant_lookalikes(tmp_path)
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    for extra in ((), ("--force",)):
        rc, _, err = run_cli(capfd, "locate", *pair, "--out", out, "--no-distribution", *extra)
        assert rc == 0, err
        assert "note:" not in err
        assert snapshot(tmp_path, skip=("out",)) == before
    assert (out / "summary.json").is_file() and not (tmp_path / "thesis").exists()


@pytest.mark.parametrize("kind", ["text", "symlink", "empty"])
def test_a_users_claim_file_refuses_the_run_untouched(tmp_path, capfd, pair, kind):
    out = tmp_path / "out"
    cp = tmp_path / ".out.claim"
    target = tmp_path / "diary.txt"
    target.write_text("dear diary\n")
    if kind == "text":
        cp.write_text("my own .out.claim: do not lose\n")
    elif kind == "symlink":
        os.symlink(target, cp)
    else:
        cp.touch()
    before = snapshot(tmp_path)
    # The library: refused, nothing opened for writing.
    with pytest.raises(AffectlensError, match="is not an affectlens claim file|is an empty file"), \
            claim_output(out):
        pass
    assert snapshot(tmp_path) == before
    # The CLI: one line naming the file, exit 2, no output.
    line = assert_refused(run_cli(capfd, "locate", *pair, "--out", out, "--no-distribution"))
    assert str(cp) in line and "untouched" in line
    assert snapshot(tmp_path) == before and not out.exists()


def _evaluator(model, tokenizer, tasks, mode="closed", limit=None, batch_size=16, seed=0):
    """evaluate() stand-in: a fixed score (the grid's bookkeeping is under test, not the model)."""
    return type("R", (), {"scores": {"tasks": {t: {"primary": 0.5, "metrics": {"accuracy": 0.5}, "n": 1}
                                               for t in tasks}}})


def _grid_config(folder: Path) -> Path:
    cfg = folder / "grid.yaml"
    cfg.write_text(json.dumps({"name": "tiny", "base": str(TINYSTORIES), "tasks": ["emotion"],
                               "variants": [{"name": "base", "kind": "reference", "model": "base"}]}))
    return cfg


def test_lookalikes_inside_a_grid_dir_survive(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr("affectlens.evaluate.evaluate", _evaluator)
    cfg = _grid_config(tmp_path)
    out = tmp_path / "grid"
    assert run_cli(capfd, "grid", cfg, "--out", out)[0] == 0
    mine = out / "cells" / ".base__s0.json.tmp-4242"
    mine.write_text("the user's scratch file\n")
    (out / ".grid.csv.tmp-backup").write_text("another\n")
    rc, _, err = run_cli(capfd, "grid", cfg, "--out", out)
    assert rc == 0, err
    assert mine.read_text() == "the user's scratch file\n"
    assert (out / ".grid.csv.tmp-backup").read_text() == "another\n"


# ---------------------------------------------------------------------------
# A killed run's real leftovers are still recovered, beside look-alikes of the same name


def _python(code: str, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=_env())
    assert p.stdout.readline().strip() == "ready"
    return p


def _kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait()


_KILLED_WRITE = """
import sys, time
from affectlens.runs import atomic_dir
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "model.safetensors").write_bytes(bytes(200_000))
    print("ready", flush=True)
    time.sleep(120)
"""


def test_killed_runs_leftovers_recovered_and_lookalikes_kept(tmp_path, capfd):
    plant_lookalikes(tmp_path)
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    victim = _python(_KILLED_WRITE, str(out))
    _kill(victim)
    ours = sorted(set(os.listdir(tmp_path)) - set(before))
    assert ".out.claim" in ours and any(x.startswith(".out.tmp-") for x in ours)
    with claim_output(out):
        pass
    err = capfd.readouterr().err
    assert f"took over the claim on {out} left by a killed run (pid {victim.pid})" in err
    assert "(0.2 MB), the unfinished output of a killed run" in err
    assert snapshot(tmp_path) == before  # ours gone, the user's untouched
    assert err.count("removed") == 1


def test_a_stale_claim_names_every_run_that_held_it(tmp_path, capfd):
    """Two runs killed one after the other on one output: the second took the claim over,
    so the first's temp dir is still vouched for, and both are cleaned by a third."""
    out = tmp_path / "out"
    first = _python(_KILLED_WRITE, str(out))
    _kill(first)
    # The second run keeps the first's leftovers for its own cleanup, then is killed before it.
    second = _python("import sys, time\nfrom affectlens import claims\n"
                     "claims.atomic.sweep = lambda *a, **k: []\n"
                     "with claims.atomic_dir(sys.argv[1]):\n    print('ready', flush=True)\n    time.sleep(120)\n",
                     str(out))
    _kill(second)
    text = claim_file(out).read_text().splitlines()
    assert text[0] == "affectlens-claim 1" and [ln.split()[3] for ln in text[1:]] == [str(first.pid),
                                                                                   str(second.pid)]
    assert len([x for x in os.listdir(tmp_path) if x.startswith(".out.tmp-")]) == 2
    with claim_output(tmp_path / "other"):  # a run next door cleans the stale claim
        pass
    assert os.listdir(tmp_path) == []


_KILLED_HELPER = """
import pathlib, sys, time
from affectlens.runs import write_json
def replace(self, target):  # written, not yet renamed: killed here
    print("ready", flush=True)
    time.sleep(120)
pathlib.Path.replace = replace
write_json(pathlib.Path(sys.argv[1]) / "cells" / "c.json", {"v": 1})
"""


def test_a_helpers_half_written_file_is_vouched_for_by_the_claim_it_wrote_under(tmp_path, capfd):
    """A worker process (Ray, Slurm) writes into an output its driver claimed: its temp files carry
    the driver's run id, and the claim outlives the driver's run while one is left, to get it swept."""
    out = tmp_path / "grid"
    (out / "cells").mkdir(parents=True)
    mine = out / "cells" / ".c.json.tmp-4242"
    mine.write_text("the user's\n")
    with claim_output(out):
        _kill(_python(_KILLED_HELPER, str(out)))
        [half] = [p for p in (out / "cells").glob(".c.json.tmp-*") if p != mine]
        assert half.name.startswith(f".c.json.tmp-{claims.run_id()}")
    assert claim_file(out).is_file()  # kept (unlocked): it vouches for the helper's file
    with claim_output(out):
        pass
    err = capfd.readouterr().err
    assert not half.exists() and f"removed grid/cells/{half.name}, a half-written file of a killed run" in err
    assert mine.read_text() == "the user's\n" and leftovers(out) == []


# ---------------------------------------------------------------------------
# SIGTERM unwinds like Ctrl-C


_SLOW_LOCATE = """
import sys, time
import affectlens.runs as R
from affectlens.cli import main
def slow(*a, **k):
    time.sleep(120)
R.write_manifest = slow
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_exits_143_and_leaves_nothing(tmp_path, capfd, pair):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", _SLOW_LOCATE, "locate", str(pair[0]), str(pair[1]), "--out",
                          str(out), "--no-distribution"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=_env())
    try:
        while not any(x.startswith(".run.tmp-") for x in leftovers(out)):  # claimed, writing its temp dir
            assert p.poll() is None, p.communicate()
            time.sleep(0.05)
        assert ".run.claim" in leftovers(out)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            _kill(p)
    assert p.returncode == 143, err
    assert err.strip() == "affectlens: terminated"
    assert leftovers(out) == [] and not out.exists()
    # In-process, the handler is main's only while it runs: the embedding program's stays its own
    # (whatever it is: an engine started earlier in this process, e.g. Ray, may have installed one).
    embedding = signal.getsignal(signal.SIGTERM)
    assert run_cli(capfd, "params", TINYSTORIES, "--modules", "all", "--json")[0] == 0
    assert signal.getsignal(signal.SIGTERM) is embedding


# ---------------------------------------------------------------------------
# A full disk


class _FullOs:
    """The ``os`` module as the weights writer sees it on a full disk."""

    def __getattr__(self, name: str):
        return getattr(os, name)

    @staticmethod
    def pwrite(*_a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    @staticmethod
    def copy_file_range(*_a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


_FULL_LINE = re.compile(r"no space left on the device writing (?P<path>\S+)(: needs (?P<need>[\d,]+) bytes, "
                        r"(?P<free>[\d,]+) free| \((?P<free2>[\d,]+) bytes free\))")


def _full_disk_refused(result, out: Path) -> re.Match:
    line = assert_refused(result, out=out)
    m = _FULL_LINE.search(line)
    assert m, line
    assert m["path"].rstrip(":").startswith(str(out)), line
    return m


@pytest.mark.parametrize("command", ["transfer", "ablate"])
def test_full_disk_writing_weights_is_one_line(tmp_path, capfd, monkeypatch, pair, command):
    monkeypatch.setattr(writer_mod, "os", _FullOs())
    out = tmp_path / "out"
    if command == "transfer":
        argv = ("transfer", pair[0], pair[1], "--modules", "gate_proj", "--out", out)
    else:
        argv = ("ablate", pair[1], "--modules", "gate_proj", "--ablation", "zero", "--out", out)
    m = _full_disk_refused(run_cli(capfd, *argv), out)
    need = int(m["need"].replace(",", ""))
    size = (pair[0] / "model.safetensors").stat().st_size
    assert abs(need - size) < 0.05 * size  # the whole checkpoint, not one tensor


def test_full_disk_in_safetensors_save_file_is_one_line(tmp_path, capfd, monkeypatch):
    """tune saves through PEFT -> safetensors, whose Rust writer reports a full disk in words."""
    import safetensors
    import safetensors.torch

    def full(*_a, **_k):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device "
                                          "(os error 28)")

    monkeypatch.setattr(safetensors.torch, "serialize_file", full)
    data = tmp_path / "easy.jsonl"
    data.write_text("".join(json.dumps({"text": f"I feel {w} {i}", "label": lab}) + "\n"
                            for i in range(4) for w, lab in (("great", "joy"), ("awful", "sadness"))))
    out = tmp_path / "ad"
    _full_disk_refused(run_cli(capfd, "tune", TINYSTORIES, "--data", data, "--modules", "gate_proj",
                               "--steps", "1", "--batch-size", "2", "--out", out), out)


def test_full_disk_outside_a_run_dir_is_one_line(tmp_path, capfd, monkeypatch):
    """A grid writes its dir directly (no temp dir): a full disk there is one line naming the file."""
    import affectlens.runs as runs

    monkeypatch.setattr("affectlens.evaluate.evaluate", _evaluator)
    real = runs.write_json

    def write_json_full(path, obj, **kw):
        if Path(path).parent.name == "cells":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, obj, **kw)

    monkeypatch.setattr(runs, "write_json", write_json_full)
    out = tmp_path / "grid"
    line = assert_refused(run_cli(capfd, "grid", _grid_config(tmp_path), "--out", out))
    assert f"no space left on the device writing {out / 'cells' / 'base__s0.json'}" in line
    assert leftovers(out) == []

    def write_json_broken(path, obj, **kw):
        raise OSError(errno.EIO, "I/O error", str(path))

    monkeypatch.setattr(runs, "write_json", write_json_broken)  # only a full disk is a line: a bug is raised
    with pytest.raises(OSError, match="I/O error"):
        run_cli(capfd, "grid", _grid_config(tmp_path), "--out", out)


def test_writer_names_the_bytes_of_the_whole_plan(tmp_path, monkeypatch):
    from affectlens.errors import DiskFullError
    from affectlens.weights.writer import ShardedWriter

    plan = [("a", (64, 64), torch.float32), ("b", (32,), torch.float16)]
    monkeypatch.setattr(writer_mod, "os", _FullOs())
    with pytest.raises(DiskFullError) as e, ShardedWriter(tmp_path / "w", plan=plan) as w:
        w.add("a", torch.zeros(64, 64))
    assert e.value.needed is not None and 64 * 64 * 4 + 32 * 2 < e.value.needed < 64 * 64 * 4 + 32 * 2 + 1024
    assert str(tmp_path / "w") in str(e.value) and "free" in str(e.value)
    assert [p.name for p in (tmp_path / "w").iterdir()] == []  # the part file is gone


def test_a_parent_made_by_a_concurrent_run_is_shared_not_an_error(tmp_path, monkeypatch):
    """Two grid workers claim sibling outputs under one new folder: whichever makes it second must go on."""
    real = Path.mkdir

    def racing(self, *a, **k):
        if not self.exists():
            real(self, parents=True, exist_ok=True)  # the other worker got there first
        return real(self, *a, **k)

    out = tmp_path / "adapters" / "GET__s1" / "run"
    monkeypatch.setattr(Path, "mkdir", racing)
    with claims.claim_output(out):
        assert out.parent.is_dir()
    monkeypatch.setattr(Path, "mkdir", real)
    assert out.parent.is_dir()  # made by "the other run": never unmade by this one
    assert leftovers(out) == []
