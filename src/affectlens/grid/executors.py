"""Running a grid's cells on a cluster engine: Ray (``--executor ray``) or Slurm through submitit.

The cell files stay the source of truth, exactly as in the serial run: a cell
is done when its JSON file exists (with its variant's key), a worker writes
its cell atomically (temp file + rename) and returns nothing the driver
believes; after every wave the driver re-reads the files. So a worker that is
killed mid-cell leaves no cell (at most a temp file the next run sweeps), and
rerunning the grid -- with any executor -- computes exactly the missing cells.

Dependencies are kept by waves: first every cell that trains an adapter (and
an adapter-only job for a done cell whose adapter a pending cell needs but
which is gone from disk), then everything else, which reads those adapters
from disk. Within a wave the cells are independent and run in parallel.

Each job carries what a fresh process needs (the raw config, the driver's
cell keys, paths, device/dtype); a worker keeps one loaded base per process
(Ray reuses worker processes), so a cell does not reload the base it already
holds. The engines are imported only when chosen; a missing one is a
one-line error naming the extra to install.

An engine never falls back quietly: ``slurm`` needs Slurm's ``sbatch`` (submitit
would otherwise run every job here at once); its local executor runs only when
asked for by name (``options={"cluster": "local"}``). Where cells do run on this
machine (a private Ray runtime, submitit's local executor) at most
``cores // cpus_per_cell`` run at once, and ``gpus_per_cell`` must fit the GPUs here.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from .workbench import adapter_dir

ENGINES = ("serial", "ray", "slurm")
_EXTRA = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}
LOCAL_CLUSTERS = ("local", "debug")  # submitit's clusters on this machine: only when named


@dataclass(frozen=True)
class ExecutorSpec:
    """Where the cells run: the engine and what each cell asks of it.

    ``address`` is a Ray cluster (``auto`` = the one ``ray start`` made here);
    without it a local Ray runtime with this machine's cores is started and
    stopped again. ``options`` go to submitit's ``update_parameters`` (for
    example ``slurm_partition``, ``timeout_min``) and may hold ``cluster``
    (``local`` runs the jobs as local subprocesses, the same path minus sbatch;
    without it the jobs go to Slurm, whose ``sbatch`` must be on PATH).
    """

    name: str = "serial"
    address: str | None = None
    gpus_per_cell: float = 0.0
    cpus_per_cell: int = 1
    options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse a bad combination or a missing engine before any cell runs (one line each)."""
        if self.name not in ENGINES:
            raise AffectlensError(f"unknown --executor '{self.name}'; choose from {', '.join(ENGINES)}")
        if self.cpus_per_cell < 1:
            raise AffectlensError(f"--cpus-per-cell must be >= 1, not {self.cpus_per_cell}")
        if self.gpus_per_cell < 0:
            raise AffectlensError(f"--gpus-per-cell must be >= 0, not {self.gpus_per_cell}")
        if self.name == "serial" and (self.address or self.gpus_per_cell):
            raise AffectlensError("--address and --gpus-per-cell need --executor ray or slurm")
        if self.address and self.name != "ray":
            raise AffectlensError("--address names a Ray cluster: it needs --executor ray")
        if self.name == "slurm" and self.gpus_per_cell != int(self.gpus_per_cell):
            raise AffectlensError("--gpus-per-cell must be a whole number with --executor slurm "
                                  "(fractions of a GPU are a Ray feature)")
        cluster = self.options.get("cluster")
        if self.name == "slurm" and cluster not in (None, "slurm", *LOCAL_CLUSTERS):
            raise AffectlensError(f"unknown submitit cluster {cluster!r}; choose from slurm, "
                                  f"{', '.join(LOCAL_CLUSTERS)}")
        if self.name in _EXTRA:
            require_engine(self.name, scheduler=not self.local)
        if self.local and self.gpus_per_cell:
            have = local_gpus()
            if have < math.ceil(self.gpus_per_cell):
                raise AffectlensError(f"--gpus-per-cell {self.gpus_per_cell:g}: the cells run on this machine "
                                      f"({self.where}), which has {have} GPU(s); leave --gpus-per-cell out "
                                      "or run on a cluster")

    @property
    def local(self) -> bool:
        """Whether the cells run on this machine (a private Ray runtime, submitit's local executor)."""
        if self.name == "ray":
            return not self.address
        return self.name == "serial" or self.options.get("cluster") in LOCAL_CLUSTERS

    @property
    def where(self) -> str:
        return "a local Ray runtime" if self.name == "ray" else f"submitit's {self.options.get('cluster')} executor"

    def slots(self) -> int:
        """Cells at once on this machine: what its cores (and GPUs) hold, at least one."""
        from ..threads import available_cores

        n = available_cores() // self.cpus_per_cell
        if self.gpus_per_cell:
            n = min(n, int(local_gpus() // self.gpus_per_cell))
        return max(1, n)


def local_gpus() -> int:
    """CUDA devices this process sees (0 without torch's CUDA)."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def require_engine(name: str, scheduler: bool = True) -> None:
    """Refuse an engine that cannot run here, in one line, before any work.

    ``scheduler``: also require Slurm's ``sbatch`` on PATH for ``slurm`` -- without it submitit
    would quietly run the jobs here instead of on the cluster the user asked for (an executor's
    ``cluster: local`` option opts into that on purpose, so its check passes False).
    """
    import importlib.util
    import shutil

    if name not in ENGINES:
        raise AffectlensError(f"unknown --executor '{name}'; choose from {', '.join(ENGINES)}")
    if name not in _EXTRA:
        return
    module, extra = _EXTRA[name]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install: a module without a spec
        found = False
    if not found:
        raise AffectlensError(f"--executor {name} needs {module}, which is not installed here: "
                              f"pip install 'affectlens[{extra}]'")
    if name == "slurm" and scheduler and shutil.which("sbatch") is None:
        raise AffectlensError("--executor slurm needs Slurm's sbatch on PATH (none found here): run on a "
                              "Slurm login node, or leave --executor out to run in this process")


@dataclass
class Job:
    """One unit of work for a fresh process: a cell, or only the adapter a later cell needs."""

    config: dict[str, Any]
    keys: dict[str, str]  # variant -> the driver's content key (workers never re-fingerprint)
    out: str
    base_path: str
    cwd: str  # relative paths in the YAML mean what they meant on the driver
    variant: str
    seed: int
    adapter_only: bool = False
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 1
    allow_pickle: bool = False
    evaluator: Callable[..., Any] | None = None
    tuner: Callable[..., Any] | None = None
    cost: float = 1.0  # expected work (``grid.eta``), so the driver's ETA weights the jobs

    @property
    def label(self) -> str:
        return f"{'adapter of ' if self.adapter_only else ''}'{self.variant}' seed {self.seed}"


def waves(cfg: Any, out: Path, todo: list[tuple[Any, int]], make: Callable[..., Job]) -> list[list[Job]]:
    """Adapter-producing jobs first, then the cells that read adapters (empty waves dropped)."""
    first = [make(v, s) for v, s in todo if v.tuned]
    pending = {(v.name, s) for v, s in todo}
    for v, s in todo:
        dep = cfg.variant(v.ref) if v.ref in {x.name for x in cfg.variants} else None
        if dep is None or not dep.tuned or (dep.name, s) in pending:
            continue
        if not (adapter_dir(out, dep, s) / "adapter_config.json").is_file():
            pending.add((dep.name, s))
            first.append(make(dep, s, adapter_only=True))
    second = [make(v, s) for v, s in todo if not v.tuned]
    return [w for w in (first, second) if w]


# --- the worker side: runs in a Ray worker or a submitit job ------------------------------------

_BENCH: dict[str, Any] = {}


def run_job(job: Job) -> str | None:
    """Compute one job and write its files; None when done, else the one-line reason it was not.

    A cell that is already on disk is not recomputed (an engine's retry is harmless).
    """
    import torch

    from .config import load_config
    from .workbench import Workbench, cell_done

    if os.path.isdir(job.cwd):
        os.chdir(job.cwd)
    threads = int(os.environ.get("AFFECTLENS_THREADS") or job.threads)
    os.environ["AFFECTLENS_THREADS"] = str(threads)  # tune's thread policy follows it too
    torch.set_num_threads(threads)
    try:
        cfg = load_config(job.config)
        for v in cfg.variants:
            v.hash = job.keys[v.name]
        out, v = Path(job.out), cfg.variant(job.variant)
        key = json.dumps([job.config, job.keys, job.out, job.base_path, job.device, job.dtype, job.allow_pickle],
                         sort_keys=True, default=str)
        bench = _BENCH.get(key)
        if bench is None:
            for old in _BENCH.values():
                old.close()
            _BENCH.clear()
            bench = _BENCH[key] = Workbench(cfg, out, job.tuner, print, Path(job.base_path), job.allow_pickle,
                                            device=job.device, dtype=job.dtype)
        from ..tune.run import tune

        bench.tuner = job.tuner or tune
        if job.adapter_only:
            bench.adapter(v, job.seed)
        elif not cell_done(out, v, job.seed):
            bench.run_cell(v, job.seed, job.evaluator)
    except AffectlensError as e:
        return str(e)
    finally:
        sys.stdout.flush()
    return None


# --- the driver side ----------------------------------------------------------------------------

def run_waves(spec: ExecutorSpec, job_waves: list[list[Job]], out: Path, echo: Callable[[str], None]) -> None:
    """Run the waves on the chosen engine; stop after a wave with a failed job (one line)."""
    from ..runs import Progress

    n = sum(len(w) for w in job_waves)
    echo(f"  {n} job(s) in {len(job_waves)} wave(s) on {spec.name} "
         f"({spec.cpus_per_cell} CPU, {spec.gpus_per_cell:g} GPU per cell)")
    bar = Progress(n, "grid cells", unit="cell", weights=[j.cost for w in job_waves for j in w])
    try:
        engine = _ray if spec.name == "ray" else _slurm
        engine(spec, job_waves, out, echo, bar)
    finally:
        bar.close()


def _report(job: Job, error: str | None, failed: list[str], echo: Callable[[str], None], bar: Any) -> None:
    bar.update(1, cost=job.cost)  # jobs finish in any order: each brings its own cost
    if error is None:
        echo(f"  done {job.label}")
    else:
        failed.append(f"{job.label}: {error}")


def _raise(failed: list[str], engine: str) -> None:
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise AffectlensError(f"grid job {failed[0]}{more} on {engine}; finished cells are kept: rerun to resume")


def _unpicklable(e: BaseException) -> AffectlensError:
    return AffectlensError(f"cannot ship the grid's cells to the workers: {_first_line(e)} "
                           "(an evaluator or tuner given to run_grid must pickle)")


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else 'failed'}"


def _ray(spec: ExecutorSpec, job_waves: list[list[Job]], out: Path, echo: Callable[[str], None], bar: Any) -> None:
    import ray

    started = not ray.is_initialized()
    if started:
        from ..threads import available_cores

        # address="local" starts a private runtime even where `ray start` runs a cluster here.
        kw: dict[str, Any] = {"address": spec.address} if spec.address else {
            "address": "local", "num_cpus": max(available_cores(), spec.cpus_per_cell),
            "include_dashboard": False}
        try:
            ray.init(**kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise AffectlensError(f"cannot reach the Ray cluster at {spec.address or 'local'}: "
                                  f"{_first_line(e)}") from None
    try:
        # No engine retry: a crashed cell is reported, and the rerun resumes from the files.
        remote = ray.remote(num_cpus=spec.cpus_per_cell, num_gpus=spec.gpus_per_cell, max_retries=0)(run_job)
        for wave in job_waves:
            failed: list[str] = []
            try:
                refs = {remote.remote(job): job for job in wave}
            except (TypeError, pickle.PicklingError) as e:
                raise _unpicklable(e) from None
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                job = refs.pop(done[0])
                try:
                    error = ray.get(done[0])
                except ray.exceptions.RayError as e:
                    error = f"the worker failed ({_first_line(e)})"
                _report(job, error, failed, echo, bar)
            _raise(failed, "ray")
    finally:
        if started:
            ray.shutdown()


def _slurm(spec: ExecutorSpec, job_waves: list[list[Job]], out: Path, echo: Callable[[str], None],
           bar: Any) -> None:
    import submitit

    opts = dict(spec.options)
    # Named, never detected: submitit's detection picks "local" wherever sbatch is missing.
    ex = submitit.AutoExecutor(folder=out / "slurm" / "%j", cluster=opts.pop("cluster", None) or "slurm")
    params: dict[str, Any] = {"cpus_per_task": spec.cpus_per_cell, "timeout_min": 240, "name": "affectlens-grid"}
    if spec.gpus_per_cell:
        params["gpus_per_node"] = int(spec.gpus_per_cell)
    params.update(opts)
    try:
        ex.update_parameters(**params)
    except (ValueError, TypeError) as e:
        raise AffectlensError(f"submitit refused the job parameters: {_first_line(e)}") from None
    slots = spec.slots() if spec.local else None
    echo(f"  submitit cluster: {ex.cluster}{f', {slots} job(s) at a time' if slots else ''} "
         f"(logs in {out / 'slurm'})")
    for wave in job_waves:
        failed: list[str] = []
        try:
            done = _window(ex, wave, slots) if slots else zip(wave, ex.map_array(run_job, wave), strict=True)
            for job, handle in done:
                try:
                    error = handle.result()
                except Exception as e:  # submitit raises its own failure types for a dead or failed job
                    error = f"the job failed ({_first_line(e)})"
                _report(job, error, failed, echo, bar)
        except (TypeError, pickle.PicklingError) as e:
            raise _unpicklable(e) from None
        _raise(failed, f"submitit/{ex.cluster}")


def _window(ex: Any, wave: list[Job], slots: int) -> Iterator[tuple[Job, Any]]:
    """Each job with its finished handle, never more than ``slots`` submitted and unfinished at once
    (submitit's local executor starts every job of an array together)."""
    pending = list(wave)
    running: dict[Any, Job] = {}
    while pending or running:
        while pending and len(running) < slots:
            job = pending.pop(0)
            running[ex.submit(run_job, job)] = job
        finished = [h for h in running if h.done()]
        if not finished:
            time.sleep(0.2)
        for h in finished:
            yield running.pop(h), h


__all__ = ["ENGINES", "ExecutorSpec", "Job", "adapter_dir", "require_engine", "run_job", "run_waves", "waves"]
