"""Grids on a cluster engine: a local Ray runtime and submitit's local executor give the serial grid.csv.

One Ray runtime (2 CPUs) serves the module. The workers import this module to
unpickle the evaluator, so PYTHONPATH carries src/ and tests/ for them.
"""

from __future__ import annotations

import csv
import io
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from affectlens.claims import temp_file
from affectlens.errors import AffectlensError
from affectlens.grid import TIMING_COLUMNS, ExecutorSpec, load_config, run_grid
from affectlens.grid.executors import Job, waves

from conftest import TINYSTORIES
from faults import run_cli

IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 64, 100]])


class PidStub:
    """A fast, deterministic evaluate(): scores are a fixed function of the logits; records its process."""

    def __init__(self, log: Path, kill_once: Path | None = None) -> None:
        self.log, self.kill_once = str(log), None if kill_once is None else str(kill_once)

    def __call__(self, model, tokenizer, tasks, mode="closed", limit=None, batch_size=16, seed=0):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        if self.kill_once is not None:
            try:  # the first cell anywhere dies hard, mid-cell, after half-writing a file
                os.close(os.open(self.kill_once, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                cells = Path(self.kill_once).parent / "run" / "cells"
                temp_file(cells / "half.json").write_text('{"variant": ')  # as write_json makes it
                os.kill(os.getpid(), signal.SIGKILL)
        with torch.no_grad():
            lg = model(IDS).logits.double()
        out = {}
        for i, t in enumerate(tasks):
            p = float(torch.sigmoid(lg[0, i].mean() * 10))
            out[t] = {"primary": p, "metrics": {"accuracy": p}, "n": 7}
        return {"tasks": out}


def grid_yaml(tmp: Path, seeds: tuple[int, ...] = (0, 1)) -> Path:
    cfg = {
        "name": "tiny",
        "base": str(TINYSTORIES),
        "data": "emotion_train",
        "tasks": ["emotion", "control"],
        "budget": {"steps": 2, "rank": 2, "alpha": 4, "lr": 1e-2, "batch_size": 2, "max_length": 32,
                   "seeds": list(seeds)},
        "variants": [
            {"name": "base", "kind": "reference", "model": "base"},
            {"name": "GET", "kind": "tune", "modules": "gate_proj"},
            {"name": "inherit gate", "kind": "transfer", "donor": "GET", "modules": "gate_proj"},
        ],
    }
    p = tmp / "grid.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def csv_without_timing(out: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO((out / "grid.csv").read_text())))
    assert rows and "seconds_per_step" in rows[0]
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def pids(log: Path) -> set[int]:
    return {int(x) for x in log.read_text().split()}


@pytest.fixture(scope="module")
def workers_env():
    """Workers (Ray's and submitit's subprocesses) import affectlens and this module."""
    root = Path(__file__).resolve().parents[1]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root / "tests"), *([old] if old else [])])
    yield
    if old is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def serial(tmp_path_factory, workers_env) -> tuple[Path, Path]:
    """The reference: today's serial runner, in this process."""
    tmp = tmp_path_factory.mktemp("serial")
    cfg = grid_yaml(tmp)
    res = run_grid(cfg, tmp / "run", evaluator=PidStub(tmp / "pids"), echo=lambda s: None)
    assert res.computed == 5 and pids(tmp / "pids") == {os.getpid()}
    return cfg, tmp / "run"


@pytest.fixture(scope="module")
def ray_runtime(workers_env):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_grid_equals_serial_and_runs_in_workers(serial, ray_runtime, tmp_path):
    cfg, ref = serial
    res = run_grid(cfg, tmp_path / "run", evaluator=PidStub(tmp_path / "pids"), echo=lambda s: None,
                   executor=ExecutorSpec("ray", cpus_per_cell=1))
    assert res.computed == 5 and res.reused == 0
    assert csv_without_timing(tmp_path / "run") == csv_without_timing(ref)
    assert (tmp_path / "run" / "table.md").read_text() == (ref / "table.md").read_text()
    assert (tmp_path / "run" / "frontier.png").stat().st_size > 1000
    workers = pids(tmp_path / "pids")
    assert os.getpid() not in workers  # every cell ran in a Ray worker, none in the driver


def test_killed_ray_worker_then_rerun_completes_identically(serial, ray_runtime, tmp_path):
    cfg, ref = serial
    out = tmp_path / "run"
    ev = PidStub(tmp_path / "pids", kill_once=tmp_path / "killed")
    spec = ExecutorSpec("ray", cpus_per_cell=1)
    with pytest.raises(AffectlensError, match=r"(?s)the worker failed.*rerun to resume") as e:
        run_grid(cfg, out, evaluator=ev, echo=lambda s: None, executor=spec)
    assert "\n" not in str(e.value)
    assert (tmp_path / "killed").is_file()  # a worker really died mid-cell
    assert not (out / "grid.csv").exists() and not (out / "table.md").exists()
    done = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}
    assert len(done) == 1  # the first wave (GET s0, s1) lost one cell, kept the other; no second wave
    assert list((out / "cells").glob(".half.json.tmp-*"))  # what the dead worker left half-written

    res = run_grid(cfg, out, evaluator=ev, echo=lambda s: None, executor=spec)
    assert res.computed == 5 - len(done) and res.reused == len(done)
    assert not list((out / "cells").glob(".*"))  # the half-written file was swept, never read as a cell
    assert all((out / "cells" / n).read_bytes() == b for n, b in done.items())
    assert csv_without_timing(out) == csv_without_timing(ref)


def test_slurm_executor_via_submitit_local_equals_serial(workers_env, tmp_path):
    """One seed (3 cells, each job a fresh process): submitit's local executor, sbatch aside."""
    cfg = grid_yaml(tmp_path, seeds=(0,))
    run_grid(cfg, tmp_path / "serial", evaluator=PidStub(tmp_path / "serial_pids"), echo=lambda s: None)
    res = run_grid(cfg, tmp_path / "run", evaluator=PidStub(tmp_path / "pids"), echo=lambda s: None,
                   executor=ExecutorSpec("slurm", options={"cluster": "local", "timeout_min": 10}))
    assert res.computed == 3
    assert csv_without_timing(tmp_path / "run") == csv_without_timing(tmp_path / "serial")
    assert len(pids(tmp_path / "pids") - {os.getpid()}) == 3  # three jobs, three processes, not this one
    assert list((tmp_path / "run" / "slurm").rglob("*_log.out"))  # submitit's own job logs


def test_waves_put_adapter_producers_first(tmp_path):
    cfg = load_config(grid_yaml(tmp_path))
    out = tmp_path / "run"

    def make(v, s, adapter_only=False):
        return Job({}, {}, str(out), "", "", v.name, s, adapter_only=adapter_only)

    got = [[(j.variant, j.seed, j.adapter_only) for j in w] for w in waves(cfg, out, cfg.cells(), make)]
    assert got == [[("GET", 0, False), ("GET", 1, False)],
                   [("base", 0, False), ("inherit gate", 0, False), ("inherit gate", 1, False)]]
    # GET s1's cell is done but its adapter is gone: it is retrained alone, before the transfer reads it.
    todo = [(cfg.variant("inherit gate"), 1)]
    got = [[(j.variant, j.seed, j.adapter_only) for j in w] for w in waves(cfg, out, todo, make)]
    assert got == [[("GET", 1, True)], [("inherit gate", 1, False)]]


@pytest.mark.parametrize("argv,msg", [
    (["--executor", "serial", "--address", "auto"], "need --executor ray or slurm"),
    (["--executor", "slurm", "--address", "auto"], "--address names a Ray cluster"),
    (["--executor", "slurm", "--gpus-per-cell", "0.5"], "whole number"),
    (["--executor", "ray", "--cpus-per-cell", "0"], "--cpus-per-cell must be positive"),
    (["--slurm-partition", "gpu"], "--slurm-partition needs --executor slurm"),
    (["--device", "cuda:7"], "--device cuda:7"),
])
def test_bad_executor_options_are_one_line(tmp_path, capfd, argv, msg):
    cfg = grid_yaml(tmp_path)
    rc, _, err = run_cli(capfd, "grid", cfg, "--out", tmp_path / "out", *argv)
    assert rc == 2 and err.startswith("affectlens: error:") and err.count("\n") == 1 and msg in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_engine_names_the_extra(tmp_path, capfd, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    rc, _, err = run_cli(capfd, "grid", grid_yaml(tmp_path), "--out", tmp_path / "out", "--executor", "ray")
    assert rc == 2 and "pip install 'affectlens[ray]'" in err and err.count("\n") == 1, err


def test_unpicklable_evaluator_is_one_line(ray_runtime, tmp_path):
    import threading

    ev = PidStub(tmp_path / "pids")
    ev.lock = threading.Lock()  # no engine can ship a lock to another process
    with pytest.raises(AffectlensError, match="must pickle") as e:
        run_grid(grid_yaml(tmp_path), tmp_path / "run", evaluator=ev, echo=lambda s: None,
                 executor=ExecutorSpec("ray"))
    assert "\n" not in str(e.value) and not list((tmp_path / "run" / "cells").iterdir())


# --- engines fail loudly: no quiet fallback to this machine, no more cells here than its cores hold ---------


def test_slurm_without_sbatch_is_one_line_never_a_local_run(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: submitit would pick its local executor
    cfg = grid_yaml(tmp_path)
    rc, out, err = run_cli(capfd, "grid", cfg, "--out", tmp_path / "out", "--executor", "slurm", "--gpus-per-cell", "1")
    assert rc == 2 and err.count("\n") == 1 and "needs Slurm's sbatch on PATH" in err, err
    assert "submitit cluster" not in out and not (tmp_path / "out").exists()
    ExecutorSpec("slurm", options={"cluster": "local"}).check()  # asked for by name, it runs here
    with pytest.raises(AffectlensError, match="unknown submitit cluster 'auto'"):
        ExecutorSpec("slurm", options={"cluster": "auto"}).check()


def test_gpus_per_cell_must_fit_this_machine_when_cells_run_here(tmp_path, capfd, monkeypatch):
    from affectlens.grid import executors

    monkeypatch.setattr(executors, "local_gpus", lambda: 0)
    rc, _, err = run_cli(capfd, "grid", grid_yaml(tmp_path), "--out", tmp_path / "out", "--executor", "ray",
                         "--gpus-per-cell", "0.5")
    assert rc == 2 and err.count("\n") == 1 and "this machine (a local Ray runtime), which has 0 GPU(s)" in err, err
    with pytest.raises(AffectlensError, match="submitit's local executor\\), which has 0 GPU"):
        ExecutorSpec("slurm", gpus_per_cell=1, options={"cluster": "local"}).check()
    ExecutorSpec("ray", address="auto", gpus_per_cell=1).check()  # a cluster's GPUs are not this machine's
    monkeypatch.setattr(executors, "local_gpus", lambda: 1)
    ExecutorSpec("ray", gpus_per_cell=0.5).check()


class FakeSubmitit:
    """submitit's AutoExecutor as far as the driver uses it: jobs finish after a few polls; counts the peak."""

    def __init__(self) -> None:
        self.running = self.peak = 0
        self.clusters: list[str | None] = []
        fake = self

        class Auto:
            def __init__(self, folder, cluster=None):
                self.cluster = cluster
                fake.clusters.append(cluster)

            def update_parameters(self, **kw):
                pass

            def submit(self, fn, job):
                return fake.start()

            def map_array(self, fn, jobs):
                return [fake.start() for _ in jobs]

        self.AutoExecutor = Auto

    def start(self):
        fake = self
        self.running += 1
        self.peak = max(self.peak, self.running)

        class Handle:
            polls, finished = 0, False

            def done(self, force_check=False):
                self.polls += 1
                if self.polls >= 3:
                    self.result()
                return self.finished

            def result(self):
                if not self.finished:
                    self.finished = True
                    fake.running -= 1

        return Handle()


def test_local_submitit_runs_no_more_jobs_than_the_cores_hold(tmp_path, monkeypatch):
    import sys

    from affectlens import threads
    from affectlens.grid.executors import run_waves

    fake = FakeSubmitit()
    monkeypatch.setitem(sys.modules, "submitit", fake)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    jobs = [Job({}, {}, str(tmp_path), "", "", "GET", s) for s in range(8)]
    lines: list[str] = []
    run_waves(ExecutorSpec("slurm", cpus_per_cell=2, options={"cluster": "local"}), [jobs], tmp_path, lines.append)
    assert fake.peak == 2 and fake.running == 0 and sum(x.startswith("  done") for x in lines) == 8
    assert "submitit cluster: local, 2 job(s) at a time" in "\n".join(lines)
    run_waves(ExecutorSpec("slurm", cpus_per_cell=8, options={"cluster": "local"}), [jobs[:3]], tmp_path, print)
    assert fake.peak == 2  # more cores per cell than the machine has: one at a time, not none
    run_waves(ExecutorSpec("slurm"), [jobs], tmp_path, print)  # on Slurm, its scheduler places the jobs
    assert fake.clusters == ["local", "local", "slurm"] and fake.peak == 8
