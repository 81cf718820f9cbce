"""The expected wall time of a study, printed before it starts and recorded in its methods.

Costs are per *token x parameter* (training) and per *scored example x
parameter* (closed-set scoring), so one calibration serves every model size.
They were measured by the standard profile's reference run (SmolLM2-135M, 2
idle CPU cores with native bf16 (AMX), 44 min): LoRA training at about 2.3 s
per step of 8 rows of ~60 tokens (bf16 autocast, with each adapter's set-up),
closed-set scoring at about 36 examples/s in bfloat16 (batches of 32, the
shared instruction prefix run once), and the circuits stage's hooked,
unshared scoring about 2x slower than that. Where the CPU has no native bf16,
training runs in fp32 (about 1.7x slower), and scoring in float32 is about 2x
slower than in bfloat16. The counts follow the study's structure: the base
scored once and the all-module LoRA once per seed (the shared reference
grids), each stage's variants on the affective test rows and the dev rows
the calibration is chosen on, the control tasks where the stage reads them.
A GPU is typically 20-100x faster.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import StudyConfig

SMOLLM2_PARAMS = 134_515_008  # GQA: 3 KV heads of 9; tied embeddings
TRAIN_S_PER_TOKEN_PARAM = 2.3 / (8 * 60) / SMOLLM2_PARAMS  # bf16 autocast on a CPU with native bf16
EVAL_S_PER_EXAMPLE_PARAM = 1 / 36 / SMOLLM2_PARAMS  # bfloat16 weights, shared prefix, batches of 32
FP32_TRAIN_FACTOR = 1.7  # fp32 training where the CPU has no native bf16
FP32_EVAL_FACTOR = 2.0  # float32 scoring (the CPU default) against bfloat16
FULL_STEP_FACTOR = 1.5  # a full fine-tune step: weight gradients and AdamW on every weight
CIRCUITS_FACTOR = 2.1  # the circuits stage's scoring: hooked, no shared prefix, smaller batches
EXAMPLE_TOKENS = 60  # a training example's mean length in the bundled data (prompt + answer)
TASK_SIZE = 140  # examples of a bundled test set (the guess where a task cannot be read here)


def _config(base_path: Path) -> dict[str, Any]:
    import json

    return json.loads((base_path / "config.json").read_text()) if (base_path / "config.json").is_file() else {}


def model_params(base_path: Path) -> int:
    """The base's parameter count: ``params``' exact count from its config (GQA's narrower k/v, tied
    embeddings), else the tensors its checkpoint holds, else SmolLM2-135M's (the calibration model)."""
    from ..errors import AffectlensError
    from ..params import count_params

    try:
        return count_params(base_path).model_params
    except AffectlensError:
        from ..models.devices import checkpoint_numel

        return checkpoint_numel(base_path) or SMOLLM2_PARAMS


def _rates(dtype: str, p: int) -> tuple[float, float]:
    """(seconds per training token, seconds per scored example) for a model of ``p`` parameters."""
    from ..tune.precision import cpu_has_native_bf16

    train = TRAIN_S_PER_TOKEN_PARAM * p * (1.0 if cpu_has_native_bf16() else FP32_TRAIN_FACTOR)
    score = EVAL_S_PER_EXAMPLE_PARAM * p * (1.0 if dtype in ("bfloat16", "bf16", "float16") else FP32_EVAL_FACTOR)
    return train, score


def circuits_seconds(cfg: StudyConfig, model_path: Path, dtype: str = "auto") -> dict[str, float]:
    """Expected seconds of each circuits step, in run order: the stage's progress weights and estimates."""
    p = model_params(model_path)
    ex = _rates(dtype, p)[1] * CIRCUITS_FACTOR
    c = cfg.circuits
    emos = len(c.get("emotions") or range(6))
    pairs = int(c.get("max_pairs") or 12)
    n_layers = int(_config(model_path).get("num_hidden_layers", 30))
    fwd = ex * emos * pairs  # one forward pass over every pair
    run = ex * 2 * int(c.get("limit") or TASK_SIZE) * len(cfg.tasks)  # before + after
    return {"vectors": 2 * fwd, "layers": n_layers // 2 * fwd, "heads": 9 * fwd, "neurons": 9 * fwd,
            "intervene-heads-top": run, "intervene-heads-random": run,
            "intervene-neurons-top": run, "intervene-neurons-random": run}


def task_size(task: str, limit: int | None = None) -> int | None:
    """Examples a task scores (under ``limit``), or None when it cannot be read here."""
    from ..evaluate import get_task, load_task

    try:
        return len(load_task(get_task(task), limit).examples)
    except Exception:  # unreadable here (e.g. a remote path): the stage itself reports it
        return None


def _rows(tasks: Sequence[str], limit: int | None) -> int:
    return sum(task_size(t, limit) or min(limit or TASK_SIZE, TASK_SIZE) for t in tasks)


def _dev_rows(cfg: StudyConfig) -> int:
    if cfg.calibration != "auto":
        return 0
    from .scored import dev_task

    devs = [d for t in cfg.tasks if (d := dev_task(t, cfg.eval.get("dev_per_class"))) is not None]
    return _rows(devs, cfg.eval["limit"])


def expected_seconds(cfg: StudyConfig, base_path: Path, other_bases: Sequence[Path] = (),
                     dtype: str = "auto") -> dict[str, Any]:
    """Seconds per stage (and ``total``) for the asked stages, from the model size, the budgets, the rows
    scored and ``dtype``; ``other_bases`` add their own adapters and locate (``<stage>@other bases``)."""
    from .config import needed

    p = model_params(base_path)
    tok, ex = _rates(dtype, p)
    step = tok * cfg.budget.batch_size * min(cfg.budget.max_length, EXAMPLE_TOKENS)
    full_step = FULL_STEP_FACTOR * tok * cfg.full_budget.batch_size * min(cfg.full_budget.max_length, EXAMPLE_TOKENS)
    k = len(cfg.seeds)
    aff = ex * (_rows(cfg.tasks, cfg.eval["limit"]) + _dev_rows(cfg))  # one model on the affective + dev rows
    ctl = ex * _rows(cfg.control_tasks, cfg.eval["limit"])  # one model on the control tasks
    single, groups = len(cfg.single), len([g for g in cfg.groups if g not in cfg.single])
    stages = needed(cfg.stages)
    est = {
        "adapters": k * (2 * cfg.budget.steps * step + cfg.full_budget.steps * full_step),
        "locate": 2.0 + 1e-8 * p * k,
        "sufficiency": k * ((5 + single) * aff + ctl),
        "efficiency": k * (single + groups) * (cfg.budget.steps * step + aff),
        "necessity": k * (single + 1) * (aff + ctl),
        "frontier": 1.0,
        "circuits": sum(circuits_seconds(cfg, base_path, dtype).values()),
    }
    first = next((s for s in ("sufficiency", "efficiency", "necessity") if s in stages), None)
    if first is not None:  # the shared reference grids: the base once, the all-module LoRA once per seed
        est[first] += (1 + k) * (aff + ctl)
    out: dict[str, Any] = {s: round(est[s], 1) for s in stages}
    for s in ("adapters", "locate"):
        if s in out and other_bases:
            out[f"{s}@other bases"] = round(sum(expected_seconds(cfg, b, dtype=dtype)[s] for b in other_bases), 1)
    out["total"] = round(sum(out.values()), 1)
    out["basis"] = (f"{p / 1e6:.0f}M parameters; {step:.2f} s per training step, {aff:.0f} s per scored model "
                    "(affective + dev rows) on 2 idle CPU cores, calibrated on SmolLM2-135M")
    return out


__all__ = ["circuits_seconds", "expected_seconds", "model_params", "task_size"]
