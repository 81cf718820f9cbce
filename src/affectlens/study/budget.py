"""The expected wall time of a study, printed before it starts and recorded in its methods.

Costs are per *token x parameter* so one calibration serves every model size:
training and scoring cost per token and parameter as measured on the embedded
default (SmolLM2-135M, float32) on 2 CPU cores under a load average of ~11,
scaled to 2 idle cores. The stage count comes from the config (seeds, modules,
evaluation limit, circuits options). A GPU is typically 20-100x faster.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import StudyConfig

# Measured on SmolLM2-135M (float32) on 2 CPU cores under a load average of ~11 -- 14.3 s per all-module
# LoRA step of 4 x ~60 tokens, 4.9 s per scored emotion example -- per parameter of its 134,515,008
# (GQA: 3 KV heads of 9; tied embeddings), divided by 5: 2 idle cores.
SMOLLM2_PARAMS = 134_515_008
TRAIN_S_PER_TOKEN_PARAM = 14.3 / (4 * 60) / SMOLLM2_PARAMS / 5
EVAL_S_PER_EXAMPLE_PARAM = 4.9 / SMOLLM2_PARAMS / 5
EXAMPLE_TOKENS = 60  # a training example's mean length in the bundled data (prompt + answer)
TASK_SIZE = 140  # examples of a bundled test set


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


def circuits_seconds(cfg: StudyConfig, model_path: Path) -> dict[str, float]:
    """Expected seconds of each circuits step, in run order: the stage's progress weights and estimates."""
    p = model_params(model_path)
    c = cfg.circuits
    emos = len(c.get("emotions") or range(7))
    pairs = int(c.get("max_pairs") or 12)
    n_layers = int(_config(model_path).get("num_hidden_layers", 30))
    fwd = EVAL_S_PER_EXAMPLE_PARAM * p * emos * pairs  # one forward pass over every pair
    run = EVAL_S_PER_EXAMPLE_PARAM * p * 2 * int(c.get("limit") or TASK_SIZE) * len(cfg.tasks)  # before + after
    return {"vectors": 2 * fwd, "layers": n_layers // 2 * fwd, "heads": 9 * fwd, "neurons": 9 * fwd,
            "intervene-heads-top": run, "intervene-heads-random": run,
            "intervene-neurons-top": run, "intervene-neurons-random": run}


def expected_seconds(cfg: StudyConfig, base_path: Path, other_bases: Sequence[Path] = ()) -> dict[str, Any]:
    """Seconds per stage (and ``total``) for the asked stages, from the model size and the budgets;
    ``other_bases`` add their own adapters and locate (``<stage>@other bases``)."""
    p = model_params(base_path)
    tokens = cfg.budget.batch_size * min(cfg.budget.max_length, EXAMPLE_TOKENS)
    step = TRAIN_S_PER_TOKEN_PARAM * tokens * p
    k = len(cfg.seeds)
    n_ex = min(cfg.eval["limit"] or TASK_SIZE, TASK_SIZE)
    cell = EVAL_S_PER_EXAMPLE_PARAM * p * n_ex * len(cfg.tasks)
    cell_all = EVAL_S_PER_EXAMPLE_PARAM * p * n_ex * (len(cfg.tasks) + len(cfg.control_tasks))
    single, groups = len(cfg.single), len([g for g in cfg.groups if g not in cfg.single])
    est = {
        "adapters": k * 2 * cfg.budget.steps * step + k * cfg.full_budget.steps * step * 3,
        "locate": 2.0 + 1e-8 * p * k,
        "sufficiency": k * (7 + single) * cell_all,
        "efficiency": k * ((single + groups) * cfg.budget.steps * step + (2 + single + groups) * cell),
        "necessity": k * (2 + single) * cell_all,
        "frontier": 1.0,
        "circuits": sum(circuits_seconds(cfg, base_path).values()),
    }
    from .config import needed

    out: dict[str, Any] = {s: round(est[s], 1) for s in needed(cfg.stages)}
    for s in ("adapters", "locate"):
        if s in out and other_bases:
            out[f"{s}@other bases"] = round(sum(expected_seconds(cfg, b)[s] for b in other_bases), 1)
    out["total"] = round(sum(out.values()), 1)
    out["basis"] = (f"{p / 1e6:.0f}M parameters; {step:.2f} s per training step, {cell_all:.0f} s per scored "
                    "model (all tasks) on 2 idle CPU cores, calibrated on SmolLM2-135M")
    return out


__all__ = ["circuits_seconds", "expected_seconds", "model_params"]
