"""Fault injection for run directories and grids (issue 8, parts 2, 4, 5, 8), driven through the CLI.

One owner per output directory (claims), leftovers of killed runs, --out that
cannot be created, the user's umask; grids that are never stale; JSON without
bare NaN; a closed stdout and transformers' chatter around our error line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import affectlens
from affectlens.errors import AffectlensError
from affectlens.runs import atomic_dir, claim_file, write_json

from conftest import TINYSTORIES
from faults import assert_refused, leftovers, run_cli, tree_digest
from tiny import save_tiny_pair

SRC = str(Path(affectlens.__file__).resolve().parents[1])
REPORTS = ("grid.csv", "table.md", "summary.json", "frontier.png")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", AFFECTLENS_NO_PROGRESS="1")
    env.update(extra)
    return env


def _python(code: str) -> subprocess.Popen:
    """A child python that runs ``code`` and says 'ready' once it holds what it should hold."""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env())
    assert p.stdout.readline().strip() == "ready"
    return p


def _kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait()


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    return save_tiny_pair(tmp_path_factory.mktemp("pair"))


def _locate(capfd, pair, out: Path, *extra: str):
    return run_cli(capfd, "locate", pair[0], pair[1], "--out", out, "--no-distribution", *extra)


# ---------------------------------------------------------------------------
# Part 4: one owner per output directory


def _hold(out: Path) -> subprocess.Popen:
    return _python("import time\nfrom affectlens.runs import claim_output\n"
                   f"with claim_output({str(out)!r}):\n    print('ready', flush=True)\n    time.sleep(120)\n")


def test_second_run_refused_while_another_holds_the_out(tmp_path, capfd, pair):
    out = tmp_path / "run"
    holder = _hold(out)
    try:
        line = assert_refused(_locate(capfd, pair, out), contains="being written by another affectlens run")
        assert f"pid {holder.pid}" in line
        assert not out.exists()
        assert leftovers(out) == [".run.claim"]  # the holder's, untouched
    finally:
        _kill(holder)
    # The holder was killed: its claim is stale and the next run takes it over, saying so.
    rc, stdout, err = _locate(capfd, pair, out)
    assert rc == 0, err
    assert f"took over the claim on {out} left by a killed run (pid {holder.pid})" in err
    assert (out / "summary.json").is_file() and leftovers(out) == []


def test_grid_refused_while_another_run_holds_the_out(tmp_path, capfd, monkeypatch):
    ev = _stub(monkeypatch)
    cfg = _fixed_grid(tmp_path)
    out = tmp_path / "grid"
    holder = _hold(out)
    try:
        assert_refused(run_cli(capfd, "grid", cfg, "--out", out), contains="being written by another")
        assert not out.exists() and ev.calls == 0
    finally:
        _kill(holder)


_SLOW_LOCATE = """
import sys, time
import affectlens.runs as R
from affectlens.cli import main
real = R.write_manifest
def slow(*a, **k):  # both runs are surely mid-work at the same time
    time.sleep(1.5)
    return real(*a, **k)
R.write_manifest = slow
print("ready", flush=True)
sys.stdin.readline()
sys.exit(main(sys.argv[1:]))
"""


def test_two_concurrent_runs_to_one_out_one_writes(tmp_path, pair):
    out = tmp_path / "run"
    argv = [sys.executable, "-c", _SLOW_LOCATE, "locate", str(pair[0]), str(pair[1]), "--out", str(out),
            "--no-distribution"]
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env()) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:  # go, both at once
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    assert sorted(r[0] for r in results) == [0, 2], results
    _, won_out, _ = next(r for r in results if r[0] == 0)
    _, lost_out, lost_err = next(r for r in results if r[0] == 2)
    assert f"wrote {out}" in won_out and "wrote" not in lost_out
    lines = lost_err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("affectlens: error: "), lost_err
    assert "is being written by another affectlens run" in lines[0]
    assert json.loads((out / "summary.json").read_text())["models"]
    assert leftovers(out) == []


def test_killed_run_leftovers_are_reported_and_cleaned(tmp_path, capfd, pair):
    out = tmp_path / "run"
    # A run killed while writing: its claim (dead pid) and a half-built temp dir stay behind.
    victim = _python("import time\nfrom affectlens.runs import atomic_dir\n"
                     f"with atomic_dir({str(tmp_path / 'other')!r}) as tmp:\n"
                     "    (tmp / 'model.safetensors').write_bytes(bytes(300_000))\n"
                     "    print('ready', flush=True)\n    time.sleep(120)\n")
    _kill(victim)
    left = leftovers(tmp_path / "other")
    assert ".other.claim" in left and any(x.startswith(".other.tmp-") for x in left)

    rc, _, err = _locate(capfd, pair, out)  # the next run in that folder
    assert rc == 0, err
    assert "(0.3 MB), the unfinished output of a killed run" in err
    assert leftovers(tmp_path / "other") == [] and not (tmp_path / "other").exists()
    assert leftovers(out) == [] and (out / "summary.json").is_file()


_KILLED_REPLACE = """
import pathlib, sys, time
from affectlens.runs import RunDir
real = pathlib.Path.rename
def rename(self, target):
    if self.name.startswith(".run.tmp-") and pathlib.Path(target).name == "run":
        print("ready", flush=True)  # between --force's two renames: the old result is aside
        time.sleep(120)
    return real(self, target)
pathlib.Path.rename = rename
with RunDir(sys.argv[1], command="unit", force=True) as run:
    run.json("a.json", {"v": 2})
"""


def test_replace_killed_between_renames_gets_the_old_result_back(tmp_path, capfd, pair):
    out = tmp_path / "run"
    assert _locate(capfd, pair, out)[0] == 0
    before = tree_digest(out)
    victim = subprocess.Popen([sys.executable, "-c", _KILLED_REPLACE, str(out)], stdout=subprocess.PIPE,
                              text=True, env=_env())
    assert victim.stdout.readline().strip() == "ready"
    _kill(victim)
    left = leftovers(out)
    assert not out.exists() and ".run.claim" in left
    assert any(x.startswith(".run.old-") for x in left) and any(x.startswith(".run.tmp-") for x in left)

    rc, _, err = _locate(capfd, pair, tmp_path / "next")  # any next run in the folder
    assert rc == 0, err
    old = next(x for x in left if x.startswith(".run.old-"))
    assert f"restored {out} from {old}" in err
    assert tree_digest(out) == before
    assert leftovers(out) == [] and leftovers(tmp_path / "next") == []


def test_replace_interrupted_in_process_keeps_the_old_result(tmp_path, capfd, pair, monkeypatch):
    out = tmp_path / "run"
    assert _locate(capfd, pair, out)[0] == 0
    before = tree_digest(out)
    real = Path.rename

    def rename(self, target):
        if self.name.startswith(".run.tmp-"):
            raise KeyboardInterrupt  # interrupted between the two renames
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    rc, _, err = _locate(capfd, pair, out, "--force")
    monkeypatch.undo()
    assert rc == 130 and err.strip() == "affectlens: interrupted"
    assert tree_digest(out) == before and leftovers(out) == []


def test_out_under_a_file_is_refused_before_any_work(tmp_path, capfd):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine\n")
    out = blocker / "deeper" / "run"
    # The base does not exist either: only a check made first names the --out.
    assert_refused(run_cli(capfd, "tune", tmp_path / "no-such-model", "--data", "emotion_train",
                           "--modules", "gate_proj", "--out", out),
                   out=out, contains=f"{blocker} is a file, not a directory")
    assert blocker.read_text() == "mine\n"


def test_out_that_is_a_file_is_refused(tmp_path, capfd, pair):
    out = tmp_path / "result"
    out.write_text("mine\n")
    for extra in ((), ("--force",)):
        assert_refused(_locate(capfd, pair, out, *extra), contains="exists and is not a directory")
        assert out.read_text() == "mine\n" and leftovers(out) == []


def test_unwritable_parent_is_refused_before_any_work(tmp_path, capfd):
    if os.geteuid() == 0:  # root writes anywhere a filesystem allows: use one that does not
        parent = Path("/proc/affectlens-no-such-dir")
    else:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
    out = parent / "run"
    assert_refused(run_cli(capfd, "tune", tmp_path / "no-such-model", "--data", "emotion_train",
                           "--modules", "gate_proj", "--out", out),
                   out=out, contains=f"cannot create output {out}")


def test_made_parents_are_removed_when_the_run_is_refused(tmp_path, capfd, pair):
    out = tmp_path / "a" / "b" / "run"
    assert_refused(run_cli(capfd, "locate", pair[0], tmp_path / "missing", "--out", out), contains="missing")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_run_dir_gets_the_users_umask(tmp_path, capfd, pair, mask):
    old = os.umask(mask)
    try:
        rc, _, err = _locate(capfd, pair, tmp_path / "run")
    finally:
        os.umask(old)
    assert rc == 0, err
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o777 & ~mask


def test_final_rename_rechecks_the_out(tmp_path):
    out = tmp_path / "run"
    # Someone bypassing the claim writes OUT while this run builds it: theirs survives.
    with pytest.raises(AffectlensError, match="appeared while this run was writing it"), atomic_dir(out) as tmp:
        (tmp / "mine.txt").write_text("mine")
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"] and leftovers(out) == []
    # A claim file removed (or replaced) under a run: the run no longer owns OUT.
    with pytest.raises(AffectlensError, match="lost the claim"), atomic_dir(tmp_path / "run2"):
        claim_file(tmp_path / "run2").unlink()
    assert not (tmp_path / "run2").exists() and leftovers(tmp_path / "run2") == []


# ---------------------------------------------------------------------------
# Part 2: JSON never holds a bare NaN


def test_write_json_refuses_nan_naming_file_and_key(tmp_path):
    path = tmp_path / "scores.json"
    with pytest.raises(AffectlensError, match=r"scores\.json at key tasks\.emotion\.metrics\[1\]"):
        write_json(path, {"tasks": {"emotion": {"metrics": [0.5, float("nan")]}}})
    with pytest.raises(AffectlensError, match=r"at key loss"):
        write_json(path, {"loss": torch.tensor(float("inf"))})
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file
    write_json(path, {"ci95": float("nan"), "n": [1.0, float("-inf")]}, nonfinite="null")
    assert json.loads(path.read_text()) == {"ci95": None, "n": [1.0, None]}


# ---------------------------------------------------------------------------
# Part 8: closed stdout, transformers' chatter


def test_closed_stdout_ends_quietly(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "affectlens", "params", str(TINYSTORIES), "--modules", "all",
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    p.stdout.close()  # `| head -0`: the reader is gone before the first write
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141
    assert err == ""


def test_transformers_chatter_does_not_precede_the_error(tmp_path):
    env = _env()
    for k in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(k, None)
    # Loads the model (transformers' "Loading weights" bar), then refuses the layers.
    p = subprocess.run([sys.executable, "-m", "affectlens", "tune", str(TINYSTORIES), "--data", "emotion_train",
                        "--modules", "gate_proj", "--layers", "0-7", "--steps", "1", "--out",
                        str(tmp_path / "ad")], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.splitlines() == [
        "affectlens: error: layer(s) [2, 3, 4, 5, 6, 7] out of range: the model has 2 layers (0-1)"]


# ---------------------------------------------------------------------------
# Part 5: grid results are never stale


class Stub:
    """evaluate() stand-in: each task's score is a fixed function of the logits of the model it sees."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, tokenizer, tasks, mode="closed", limit=None, batch_size=16, seed=0):
        self.calls += 1
        with torch.no_grad():
            lg = model(torch.tensor([[1, 5, 9, 17, 33]])).logits.double()
        p = float(torch.sigmoid(lg.mean() * 10))
        out = {t: {"primary": p, "metrics": {"accuracy": p}, "n": 3} for t in tasks}
        return type("R", (), {"scores": {"tasks": out}})


def _stub(monkeypatch) -> Stub:
    ev = Stub()
    monkeypatch.setattr("affectlens.evaluate.evaluate", ev)
    return ev


def _fixed_grid(tmp: Path, name: str = "grid.yaml", **override) -> Path:
    cfg = {"name": "tiny", "base": str(TINYSTORIES), "tasks": ["emotion"],
           "variants": [{"name": "base", "kind": "reference", "model": "base"},
                        {"name": "gate zero", "kind": "ablate", "model": "base", "modules": "gate_proj",
                         "mode": "zero"}]}
    cfg.update(override)
    p = tmp / name
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def _nan_model(dst: Path) -> Path:
    shutil.copytree(TINYSTORIES, dst)
    sd = load_file(dst / "model.safetensors")
    name = next(n for n in sd if n.endswith("layers.1.mlp.down_proj.weight"))
    sd[name][0, 0] = float("nan")
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_grid_force_never_writes_into_another_commands_output(tmp_path, capfd, pair, monkeypatch):
    ev = _stub(monkeypatch)
    foreign = tmp_path / "located"
    assert _locate(capfd, pair, foreign)[0] == 0
    before = tree_digest(foreign)
    assert_refused(run_cli(capfd, "grid", _fixed_grid(tmp_path), "--out", foreign, "--force"),
                   out=foreign, survivor=before, contains="is not a grid run dir")
    # A grid_config.json that is not a grid marker is no pass either.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "grid_config.json").write_text("[1, 2]")
    assert_refused(run_cli(capfd, "grid", _fixed_grid(tmp_path), "--out", fake, "--force"),
                   out=fake, survivor=tree_digest(fake), contains="not a grid marker")
    assert ev.calls == 0


def test_interrupted_force_leaves_no_stale_report(tmp_path, capfd, monkeypatch):
    ev = _stub(monkeypatch)
    out = tmp_path / "grid"
    rc, stdout, err = run_cli(capfd, "grid", _fixed_grid(tmp_path), "--out", out)
    assert rc == 0, err
    assert "2 cell(s) computed, 0 reused" in stdout
    text = (out / "summary.json").read_text()
    assert "NaN" not in text  # one seed: no CI, written as null
    assert json.loads(text)["variants"]["base"]["mean"]["ci95"] is None
    assert all((out / f).is_file() for f in REPORTS)

    # Changed config under --force; its new cell scores NaN (a NaN weight): the grid stops there.
    bad = _nan_model(tmp_path / "nan-model")
    variants = yaml.safe_load(_fixed_grid(tmp_path).read_text())["variants"]
    cfg = _fixed_grid(tmp_path, "changed.yaml",
                      variants=[*variants, {"name": "poisoned", "kind": "reference", "model": str(bad)}])
    line = assert_refused(run_cli(capfd, "grid", cfg, "--out", out, "--force"), contains="non-finite")
    assert "poisoned" in line or "nan-model" in line
    assert [f for f in REPORTS if (out / f).exists()] == []  # nothing looks complete
    assert sorted(p.name for p in (out / "cells").iterdir()) == ["base__s0.json", "gate_zero__s0.json"]
    assert leftovers(out) == []

    # The old config again: its cells are reused and the report comes back.
    calls = ev.calls
    rc, stdout, err = run_cli(capfd, "grid", _fixed_grid(tmp_path), "--out", out, "--force")
    assert rc == 0, err
    assert "0 cell(s) computed, 2 reused" in stdout and ev.calls == calls
    assert all((out / f).is_file() for f in REPORTS)


def _copy_rows(src: Path, dst: Path, n: int, relabel: bool = False) -> Path:
    rows = [json.loads(x) for x in src.read_text().splitlines()[:n]]
    labels = sorted({r["label"] for r in rows})
    if relabel:  # every row gets another label of the same set
        for r in rows:
            r["label"] = labels[(labels.index(r["label"]) + 1) % len(labels)]
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


@pytest.mark.parametrize("changed,recomputed", [("data", 1), ("task", 2), ("base", 2)])
def test_grid_cells_follow_the_content_of_their_inputs(tmp_path, capfd, monkeypatch, changed, recomputed):
    from affectlens.tasks.corpus import bundled_path

    _stub(monkeypatch)
    base = tmp_path / "base"
    shutil.copytree(TINYSTORIES, base)
    data = _copy_rows(bundled_path("emotion_train"), tmp_path / "train.jsonl", 8)
    task = _copy_rows(bundled_path("emotion_test"), tmp_path / "test.jsonl", 8)
    cfg = _fixed_grid(tmp_path, base=str(base), data=str(data), tasks=[f"jsonl:{task}"],
                      budget={"steps": 1, "rank": 2, "lr": 1e-2, "batch_size": 4, "max_length": 64},
                      variants=[{"name": "base", "kind": "reference", "model": "base"},
                                {"name": "GET", "kind": "tune", "modules": "gate_proj"}])
    out = tmp_path / "grid"
    rc, stdout, err = run_cli(capfd, "grid", cfg, "--out", out)
    assert rc == 0, err
    assert "2 cell(s) computed, 0 reused" in stdout

    if changed == "data":
        _copy_rows(bundled_path("emotion_train"), data, 8, relabel=True)
    elif changed == "task":
        _copy_rows(bundled_path("emotion_test"), task, 8, relabel=True)
    else:  # one weight of the base, same file size and header
        sd = load_file(base / "model.safetensors")
        name = next(n for n in sd if n.endswith("layers.0.mlp.up_proj.weight"))
        sd[name][0, 0] += 1.0
        save_file(sd, base / "model.safetensors", metadata={"format": "pt"})
    rc, stdout, err = run_cli(capfd, "grid", cfg, "--out", out)
    assert rc == 0, err
    assert f"{recomputed} cell(s) computed, {2 - recomputed} reused" in stdout


def _phi3(path: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("phi3", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=64, pad_token_id=0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("case,contains", [
    ("layers", "layer(s) [5] out of range"),
    ("fused", "fused gate_up_proj"),
    ("data", "does not exist"),
    ("task", "does not exist"),
    ("base", "does not exist"),
    ("donor", "donor 'GET' does not train module(s) up_proj"),
    ("eval", "eval.mode must be one of closed, generative"),
])
def test_grid_config_is_validated_before_the_first_cell(tmp_path, capfd, monkeypatch, case, contains):
    ev = _stub(monkeypatch)
    tuned = [{"name": "base", "kind": "reference", "model": "base"},
             {"name": "GET", "kind": "tune", "modules": "gate_proj"}]
    budget = {"steps": 1, "rank": 2, "lr": 1e-2}
    over: dict = {"data": "emotion_train", "budget": budget, "variants": tuned}
    if case == "layers":
        over["variants"] = [*tuned, {"name": "late", "kind": "ablate", "model": "base", "modules": "gate_proj",
                                     "mode": "zero", "layers": "5"}]
    elif case == "fused":
        over["base"] = str(_phi3(tmp_path / "phi3"))
    elif case == "data":
        over["data"] = str(tmp_path / "missing.jsonl")
    elif case == "task":
        over["tasks"] = ["emotion", f"jsonl:{tmp_path / 'missing.jsonl'}"]
    elif case == "base":
        over["base"] = str(tmp_path / "no-model")
    elif case == "eval":
        over["eval"] = {"mode": "open"}
    else:
        over["variants"] = [*tuned, {"name": "up", "kind": "transfer", "donor": "GET", "modules": "up_proj"}]
    out = tmp_path / "grid"
    assert_refused(run_cli(capfd, "grid", _fixed_grid(tmp_path, **over), "--out", out), out=out, contains=contains)
    assert ev.calls == 0


_KILLED_CELL_WRITE = """
import pathlib, sys, time
from affectlens.runs import claim_output, write_json
def replace(self, target):  # the cell's temp file is written, not yet renamed: killed here
    print("ready", flush=True)
    time.sleep(120)
pathlib.Path.replace = replace
out = pathlib.Path(sys.argv[1])
with claim_output(out):
    write_json(out / "cells" / "base__s0.json", {"variant": "base", "hash": "stale"})
"""


def test_grid_resumes_after_a_claim_is_released(tmp_path, capfd, monkeypatch):
    """A grid dir is resumable: the claim is released at the end and the next run reuses the cells;
    a cell write killed midway leaves a temp file that the next run removes."""
    ev = _stub(monkeypatch)
    out = tmp_path / "grid"
    assert run_cli(capfd, "grid", _fixed_grid(tmp_path), "--out", out)[0] == 0
    victim = subprocess.Popen([sys.executable, "-c", _KILLED_CELL_WRITE, str(out)], stdout=subprocess.PIPE,
                              text=True, env=_env())
    assert victim.stdout.readline().strip() == "ready"
    _kill(victim)
    [half] = (out / "cells").glob(".base__s0.json.tmp-*")
    assert leftovers(out) == [".grid.claim"]
    rc, stdout, err = run_cli(capfd, "grid", _fixed_grid(tmp_path), "--out", out)
    assert rc == 0, err
    assert "0 cell(s) computed, 2 reused" in stdout and ev.calls == 2
    assert f"took over the claim on {out} left by a killed run (pid {victim.pid})" in err
    assert not half.exists() and f"removed grid/cells/{half.name}, a half-written file of a killed run" in err
    assert leftovers(out) == []


def test_python_api_checks_the_out_before_training(tmp_path):
    from affectlens.tune.run import tune

    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine\n")
    # Neither the base nor the data exists: only a check made first names the --out.
    with pytest.raises(AffectlensError, match="notes.txt is a file, not a directory"):
        tune(tmp_path / "no-such-model", tmp_path / "missing.jsonl", "gate_proj", out=blocker / "ad")
    assert blocker.read_text() == "mine\n"


def test_grid_pickle_base_needs_the_flag(tmp_path, capfd, monkeypatch):
    """The one pickle policy holds for grid too: refused without --allow-pickle, loaded with it."""
    ev = _stub(monkeypatch)
    pk = tmp_path / "pickle_base"
    shutil.copytree(TINYSTORIES, pk)
    torch.save(load_file(pk / "model.safetensors"), pk / "pytorch_model.bin")
    (pk / "model.safetensors").unlink()
    assert not list(pk.glob("*.safetensors"))
    cfg = _fixed_grid(tmp_path, base=str(pk))
    out = tmp_path / "grid"
    assert_refused(run_cli(capfd, "grid", cfg, "--out", out), out=out, contains="--allow-pickle")
    assert ev.calls == 0
    rc, _, err = run_cli(capfd, "grid", cfg, "--out", out, "--allow-pickle")
    assert rc == 0, err
    assert ev.calls == 2 and (out / "grid.csv").is_file()
