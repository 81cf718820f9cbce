"""``run_study``: the stages in order, each from its cache or computed, then study.json and the report.

Resume story: the study dir itself is the cache. ``stages/`` is written as
stages finish (each result file atomically, with the fingerprint of its
inputs), so rerunning the same command into the same dir -- after a kill, or
with a changed config -- recomputes only stages whose fingerprint changed and
needs no ``--force``. The deliverables (``study.json``, ``report.html``,
``report.md``, figures, manifest) are then built in a temporary dir, the
stage cache hard-linked into it, and swapped in whole through ``RunDir``. An
existing dir that is not a study is refused unless ``force`` (then it is
replaced); ``force`` on a study dir starts over (the stage cache is dropped).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from .budget import expected_seconds
from .cache import StageStore, check_study_out, fingerprint
from .config import DEPS, StudyConfig, base_labels, load_study_config, needed
from .context import Context


def _content_fps(cfg: StudyConfig, base_path: Path) -> dict[str, Any]:
    from ..grid.inputs import content_id
    from ..models.resolve import resolve_model_path
    from ..tune.run import resolve_data
    from .stages_grid import task_file

    fps: dict[str, Any] = {"base": content_id(base_path), "data": content_id(resolve_data(cfg.data)),
                           "control_data": content_id(resolve_data(cfg.control_data))}
    for t in [*cfg.tasks, *cfg.control_tasks]:
        f = task_file(t)
        fps[f"task:{t}"] = content_id(f) if f is not None and f.exists() else t
    if "circuits" in cfg.stages:
        cm = resolve_model_path(cfg.circuits_model)
        fps["circuits_model"] = fps["base"] if cm == base_path else content_id(cm)
        pairs = cfg.circuits.get("pairs")
        fps["pairs"] = content_id(Path(pairs)) if pairs else "bundled"
    return fps


def stage_fingerprint(ctx: Context, stage: str, dep_fps: dict[str, str]) -> str:
    """What ``stage``'s result depends on: its config slice, input content, and its inputs' stages."""
    cfg, f = ctx.cfg, ctx.fps
    tasks = {t: f.get(f"task:{t}") for t in [*cfg.tasks, *cfg.control_tasks]}
    scoring = {"tasks": tasks, "affective": cfg.tasks, "eval": cfg.eval, "calibration": cfg.calibration}
    part: dict[str, Any] = {
        "adapters": {"base": f["base"], "data": f["data"], "control_data": f["control_data"],
                     "budget": cfg.budget.to_dict(), "seeds": cfg.seeds, "full": ctx.full_ft_supported(),
                     "full_budget": cfg.full_budget.to_dict() if ctx.full_ft_supported() else None},
        "locate": {"heatmaps": ["l2", "relative"]},  # a result without the Eq. 1 heatmap data is recomputed
        "sufficiency": {**scoring, "single": cfg.single},
        "efficiency": {**scoring, "single": cfg.single, "groups": cfg.groups},
        "necessity": {**scoring, "single": cfg.single},
        "frontier": {"affective": cfg.tasks, "tasks": tasks, "limit": cfg.eval["limit"]},
        "circuits": {"model": f.get("circuits_model"), "pairs": f.get("pairs"), "options": cfg.circuits,
                     "neurons_amplified": "top_neurons",  # was top_k: a cache that amplified another count is redone
                     "tasks": {t: tasks[t] for t in cfg.tasks}, "seed": cfg.seeds[0], "dtype": ctx.dtype},
    }[stage]
    return fingerprint(stage, part, {d: dep_fps[d] for d in DEPS[stage]}, RESULT_FORMAT)


# Bumped when a stage's result changes shape (2: per-example predictions, bootstrap replicates), so an
# older cache is recomputed rather than read as "no evidence".
RESULT_FORMAT = 2
PER_BASE = ("adapters", "locate")  # the stages every base of ``models:`` gets; the rest run on the first
SCORED = ("sufficiency", "efficiency", "necessity")  # the stages that score the adapters (through grid)


def base_context(ctx: Context, spec: str) -> Context:
    """The same study on another base: its own path, content fingerprint and results."""
    import dataclasses

    from ..grid.inputs import content_id
    from ..models.resolve import resolve_model_path

    path = resolve_model_path(spec)
    return dataclasses.replace(ctx, base_path=path, fps={**ctx.fps, "base": content_id(path)}, results={})


def _compute(ctx: Context, stage: str, fp: str) -> dict[str, Any]:
    from . import stages_circuits, stages_grid, stages_tune

    r = ctx.results
    if stage == "adapters":
        return stages_tune.run_adapters(ctx)
    if stage == "locate":
        return stages_tune.run_locate(ctx, r["adapters"])
    if stage == "frontier":
        return stages_grid.run_frontier(ctx, r["efficiency"])
    if stage == "circuits":
        return stages_circuits.run_circuits(ctx, fp)
    return {"sufficiency": stages_grid.run_sufficiency, "efficiency": stages_grid.run_efficiency,
            "necessity": stages_grid.run_necessity}[stage](ctx)


def check_executor(executor: Any) -> None:
    """An executor the scoring stages can use here: a known engine, installed, with its scheduler."""
    if executor in (None, "serial"):
        return
    from ..grid.executors import ExecutorSpec

    if isinstance(executor, ExecutorSpec):
        executor.check()  # the engine, and Slurm's sbatch unless a local cluster is named
    elif isinstance(executor, str):
        ExecutorSpec(executor).check()
    else:
        raise AffectlensError(f"executor must be serial, ray, slurm or a grid ExecutorSpec, not {executor!r}")


def preflight(cfg: StudyConfig, device: str, dtype: str, executor: Any, allow_pickle: bool
              ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Everything a stage would otherwise find out after the stages before it ran: one line each.

    The dtype and the executor (with its engine), the device, every task, every base's weights
    under the pickle policy (opened lazily: headers only), every data spec loaded as its stage will
    (a bad one is named by its field), and, when a stage scores the adapters, that none of the scored
    rows is in the training data (unless ``eval.allow_train_overlap``). Returns the data description
    for the methods and the overlap counts (None: no stage scores an adapter)."""
    from ..models.devices import dtype_name, resolve_device
    from ..models.resolve import resolve_model_path
    from ..tasks.spec import get_task
    from ..weights import open_weights

    dtype_name(dtype)
    check_executor(executor)
    if device != "auto":
        resolve_device(device)
    for t in [*cfg.tasks, *cfg.control_tasks]:
        get_task(t)
    models = [*cfg.bases, *([cfg.circuits_model] if "circuits" in cfg.stages else [])]
    for m in dict.fromkeys(models):
        with open_weights(resolve_model_path(m), allow_pickle=allow_pickle):
            pass
    pairs = cfg.circuits.get("pairs")
    if "circuits" in cfg.stages and pairs and not Path(pairs).is_file():
        raise AffectlensError(f"circuits.pairs {pairs} does not exist")
    from .provenance import describe_data

    data = describe_data(cfg)
    if not set(needed(cfg.stages)) & set(SCORED):
        return data, None
    from ..grid.inputs import check_train_overlap

    return data, check_train_overlap(cfg.data, [*cfg.tasks, *cfg.control_tasks], cfg.eval["limit"],
                               [resolve_model_path(cfg.model)], cfg.allow_train_overlap,
                               Path(cfg.path).name if cfg.path else "study config")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _honesty_lines(cfg: StudyConfig, ctx: Context, echo: Callable[[str], None]) -> None:
    """Before any work: why this run is a smoke test, and what it can detect (power before the run)."""
    from ..models.resolve import resolve_model_path
    from .assemble import power_before
    from .honesty import scope_limits, smoke_test_reasons

    circ = resolve_model_path(cfg.circuits_model) if "circuits" in cfg.stages else None
    smoke = smoke_test_reasons(cfg, ctx.full_ft_supported())
    if smoke:
        echo("SMOKE TEST, not a result: " + "; ".join(smoke))
    scope = scope_limits(cfg, ctx.base_path, circ, ctx.full_ft_supported())
    if scope:
        echo("what this run cannot speak to: " + "; ".join(scope))
    pb = power_before(cfg)
    mde = [r["mde"] for r in pb["claims"].values() if r["mde"] is not None]
    if mde:
        echo(f"power before the run: with {pb['examples_per_task']} test examples per task, a score difference "
             f"under about {min(mde):.3f} (fraction of 1) goes undetected at 80 % power after Holm over "
             f"{pb['tests_if_all_judged']} tests; training-dependent claims need >= 3 seeds (this run: "
             f"{len(cfg.seeds)})")


def run_study(config: str | Path | dict[str, Any] | StudyConfig | None, out: str | Path, *,
              profile: str = "default", stages: str | list[str] | None = None, model: str | None = None,
              seeds: int | None = None, force: bool = False, device: str = "auto", dtype: str = "auto",
              executor: Any = None, tuner: Callable[..., Any] | None = None,
              evaluator: Callable[..., Any] | None = None, echo: Callable[[str], None] = print,
              allow_pickle: bool = False, warn: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Run (or resume) a study into ``out``; returns ``study.json``'s content.

    ``tuner``/``evaluator`` replace affectlens' ``tune``/``evaluate`` (same call
    signatures as ``grid.run_grid``'s); ``executor`` is handed to ``run_grid``
    when it accepts one. Progress goes to ``echo``, a stage's failure to ``warn``
    (stderr); the result's ``failures`` counts them. Bad input -- config, dtype,
    executor, device, tasks, an unreadable base -- is refused before any work.
    """
    from ..claims import claim_output
    from ..models.resolve import resolve_model_path
    from .provenance import device_dtype, time_parts, training_ran_on

    cfg = config if isinstance(config, StudyConfig) else load_study_config(
        config, profile=profile, model=model, stages=stages, seeds=seeds)
    out = Path(out)
    data, overlap = preflight(cfg, device, dtype, executor, allow_pickle)  # bad input fails here, not hours in
    resumed = check_study_out(out, force)
    with claim_output(out):
        base_path = resolve_model_path(cfg.model)
        store = StageStore(out)
        if force and resumed:
            shutil.rmtree(store.stages, ignore_errors=True)
            resumed = False
        ctx = Context(cfg, out, store, base_path, {}, tuner, evaluator, echo, dtype, device, executor, allow_pickle,
                      train_overlap=overlap)
        ctx.fps = _content_fps(cfg, base_path)
        ctx.provenance = {"data": data, **device_dtype(device, dtype, "circuits" in cfg.stages)}
        others = {lab: base_context(ctx, b) for b, lab in base_labels(cfg).items() if b in cfg.other_bases}
        ctx.fps.update({f"base@{lab}": c.fps["base"] for lab, c in others.items()})  # for the methods
        expected = expected_seconds(cfg, base_path, [c.base_path for c in others.values()], dtype=dtype)
        echo(f"study {cfg.name} ({cfg.profile} profile, seeds {cfg.seeds}, stages {', '.join(cfg.stages)}): "
             f"expected about {expected['total'] / 60:.0f} min on 2 idle CPU cores ({expected['basis'].split(';')[0]}; "
             "a GPU is much faster, a busy machine slower)"
             + (" (resuming: finished stages are reused)" if resumed else ""))
        _honesty_lines(cfg, ctx, echo)
        store.init()
        from ..progress import Progress

        plan = [(s, lab) for s in needed(cfg.stages) for lab in ["", *(others if s in PER_BASE else ())]]
        bar = Progress(len(plan), "study stages", unit="stage", weights=[  # ETA by expected seconds
            expected[s] if not lab else expected[f"{s}@other bases"] / len(others) for s, lab in plan])
        t0 = time.perf_counter()
        fps: dict[str, str] = {}
        timing: dict[str, dict[str, Any]] = {}
        failed: dict[str, str] = {}

        def one(c: Context, stage: str, at: str = "") -> None:
            """``stage`` on context ``c``, cached under ``stage + at`` (``at``: "" or "@<base label>")."""
            key, deps = stage + at, [d + at for d in DEPS[stage]]
            if any(d in failed for d in deps):
                failed[key] = f"was skipped: it needs the {', '.join(d for d in deps if d in failed)} stage"
                warn(f"  {key}: {failed[key]}")
                bar.skip()
                return
            fps[key] = fp = stage_fingerprint(c, stage, {d: fps[d + at] for d in DEPS[stage]})
            cached = store.get(key, fp)
            if cached is not None:
                c.results[stage] = ctx.results[key] = cached["result"]
                timing[key] = {"seconds": cached.get("seconds"), "cached": True}
                echo(f"  {key}: cached ({fp})")
                bar.skip()
                return
            echo(f"  {key}: running")
            s0 = time.perf_counter()
            try:
                result = _compute(c, stage, fp)
            except Exception as e:  # a stage's failure is a noted, skipped section; an interrupt still stops
                why = str(e).splitlines()[0] if str(e) else ""
                failed[key] = f"failed ({type(e).__name__}{': ' + why if why else ''})"
                warn(f"  {key}: {failed[key]}; its section is skipped")
                bar.update()
                return
            secs = time.perf_counter() - s0
            store.put(key, fp, result, secs)
            c.results[stage] = ctx.results[key] = result
            timing[key] = {"seconds": secs, "cached": False}
            echo(f"  {key}: done in {secs:.0f} s")
            bar.update()

        for stage in needed(cfg.stages):
            one(ctx, stage)
            for lab, c in others.items() if stage in PER_BASE else ():
                one(c, stage, f"@{lab}")
        bar.close()
        wall, parts = time_parts(timing, time.perf_counter() - t0)  # cached stages at their original seconds
        ctx.provenance.update(parts)
        if ctx.results.get("adapters", {}).get("ran_on"):
            ctx.provenance["training_ran_on"] = training_ran_on(ctx.results["adapters"])
        from .assemble import write_study

        return write_study(ctx, out, expected, timing, failed, wall, fps)


__all__ = ["DEPS", "PER_BASE", "base_context", "base_labels", "check_executor", "needed", "preflight", "run_study",
           "stage_fingerprint"]
