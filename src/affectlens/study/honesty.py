"""Honesty by construction: what makes a run a smoke test, and which designs cannot decide a claim.

A smoke test checks that the pipeline runs; it is not evidence. Every reason
a run is one is named (``smoke_test_reasons``: the banner at the top of the
report and ``study.json``), and a degenerate design gives ``not_judged`` with
its reason instead of a verdict (``design_problem``): a training-dependent
claim with fewer than 3 seeds, a depth claim on fewer than 5 layers, a
bootstrap over fewer than 5 units, a claim about image information flow on a
text-only model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import StudyConfig
from .papers import MIN_LAYERS, MIN_SEEDS, MIN_UNITS, PaperClaim

MIN_EXAMPLES = 500  # test examples per task below which a score is a smoke test
MIN_STEPS = 100  # optimizer steps below which a LoRA or full fine-tune is a smoke test
MIN_PARAMS = 1e9  # the papers study 7B-scale models


def task_size(task: str, limit: int | None = None) -> int | None:
    """Examples a task scores (under ``limit``), or None when it cannot be read here."""
    from ..evaluate import get_task, load_task

    try:
        return len(load_task(get_task(task), limit).examples)
    except Exception:  # unreadable here (e.g. a remote path): the stage itself reports it
        return None


def is_bundled_task(task: str) -> bool:
    from ..tasks.spec import get_task

    try:
        return get_task(task).loader == "bundled"
    except Exception:
        return False


def is_bundled_data(data: str) -> bool:
    from ..tasks.corpus import NAMES

    stem = data[:-6] if data.endswith(".jsonl") else data
    return stem in NAMES and not Path(data).exists()


def is_vlm(path: Path) -> bool:
    from ..models.vlm import is_vlm_dir

    return is_vlm_dir(path)


def smoke_test_reasons(cfg: StudyConfig, base: Path, circuits_model: Path | None, full_ft: bool) -> list[str]:
    """Every reason this run is a smoke test rather than a result (empty: none found)."""
    from .budget import model_params

    out: list[str] = []
    if cfg.profile == "quick":
        out.append("the quick profile: a pipeline check with shortened budgets, not a result")
    k = len(cfg.seeds)
    if k < MIN_SEEDS:
        out.append(f"{'one seed' if k == 1 else f'{k} seeds'}: training-dependent claims need >= {MIN_SEEDS} "
                   "training runs (the replicate is the seed)")
    for t in [*cfg.tasks, *cfg.control_tasks]:
        n = task_size(t, cfg.eval["limit"])
        if n is not None and n < MIN_EXAMPLES:
            out.append(f"task {t}: {n} test examples (< {MIN_EXAMPLES} per task)")
    if "circuits" in cfg.stages and int(cfg.circuits.get("limit") or 0) < MIN_EXAMPLES:
        out.append(f"circuits interventions score {cfg.circuits.get('limit')} examples per task (< {MIN_EXAMPLES})")
    if cfg.budget.steps < MIN_STEPS:
        out.append(f"LoRA budgets of {cfg.budget.steps} optimizer steps (< {MIN_STEPS})")
    if full_ft and cfg.full_budget.steps < MIN_STEPS:
        out.append(f"a full fine-tune of {cfg.full_budget.steps} optimizer steps (< {MIN_STEPS})")
    for key, data in (("data", cfg.data), ("control_data", cfg.control_data)):
        if is_bundled_data(data):
            out.append(f"{key} {data} is the bundled synthetic template set, not a real corpus")
    bundled = [t for t in [*cfg.tasks, *cfg.control_tasks] if is_bundled_task(t)]
    if bundled:
        out.append(f"task(s) {', '.join(bundled)} are bundled synthetic templates, not a benchmark "
                   "(the papers score MER-UniBench)")
    if "circuits" in cfg.stages and not cfg.circuits.get("pairs"):
        out.append("the circuits stage reads the bundled synthetic contrast pairs")
    models = {"base": base, **({"circuits": circuits_model} if circuits_model is not None else {})}
    for role, path in models.items():
        if not is_vlm(path):
            out.append(f"the {role} model {path.name} is text-only; both papers study vision-language models "
                       "(paper A: Qwen2.5-7B inside AffectGPT; paper B: LVLMs), so image claims are not judged")
    p = model_params(base)
    if p < MIN_PARAMS:
        out.append(f"the base model has about {p / 1e6:.1f}M parameters, a stand-in for the papers' 7B models")
    return out


def design_problem(claim: PaperClaim, ev: Mapping[str, Any], seeds: int, text_only: bool,
                   n_layers: int | None) -> tuple[str, str] | None:
    """(kind, why) when this design cannot decide ``claim``; None when it can."""
    if claim.training and seeds < MIN_SEEDS:
        return "seeds", (f"needs >= {MIN_SEEDS} seeds (it depends on training, so the replicate is the seed); this "
                         f"run has {seeds}")
    if claim.images and text_only:
        return "images", "a claim about image (cross-modal) information flow cannot be tested on a text-only model"
    if claim.depth:
        layers = (ev.get("detail") or {}).get("n_layers") or n_layers
        if layers is not None and int(layers) < MIN_LAYERS:
            return "layers", (f"a claim about depth needs >= {MIN_LAYERS} layers; the model has {layers}, so the "
                              "middle is fixed by construction")
    design = ev.get("design") or {}
    units = [int(u) for u in design.get("units") or []]
    if units and min(units) < MIN_UNITS:
        return "units", (f"only {min(units)} {design.get('unit', 'units')} to resample; a bootstrap needs >= "
                         f"{MIN_UNITS}")
    return None


__all__ = ["MIN_EXAMPLES", "MIN_PARAMS", "MIN_STEPS", "design_problem", "is_vlm", "smoke_test_reasons",
           "task_size"]
