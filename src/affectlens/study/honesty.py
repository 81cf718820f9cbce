"""Honesty by construction: what makes a run a smoke test, what it cannot speak to, and which designs
cannot decide a claim.

A smoke test checks that the pipeline runs; it is not evidence. Every reason
a run is one is named (``smoke_test_reasons``: the banner at the top of the
report and ``study.json``): the quick profile, fewer than 3 seeds, fewer than
500 scored rows per task, LoRAs that barely leave their initialisation,
synthetic affective data, and (after the run) an all-module LoRA that learned
nothing. A well-designed run still has limits of *scope* (``scope_limits``,
listed under the banner): a text-only stand-in for the papers' 7B VLMs,
short budgets, a synthetic non-affective control. Those bound what the
result speaks to; they do not make it a pipeline check. A degenerate design gives ``not_judged`` with
its reason instead of a verdict (``design_problem``): a training-dependent
claim with fewer than 3 seeds, a depth claim on fewer than 5 layers, a
bootstrap over fewer than 5 units, a claim about image information flow on a
text-only model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .budget import model_params, task_size
from .config import StudyConfig
from .papers import MIN_LAYERS, MIN_SEEDS, MIN_UNITS, PaperClaim

MIN_EXAMPLES = 500  # test examples per task below which a score is a smoke test
MIN_STEPS = 10  # optimizer steps below which a LoRA has barely left its initialisation: a smoke test
MIN_FULL_STEPS = 2  # a full fine-tune of one step is Adam's first, sign-like move, not fine-tuning
PAPER_STEPS = 100  # below this a budget is short of the papers' (full epochs): a limit of scope, stated
MIN_PARAMS = 1e9  # the papers study 7B-scale models


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


def smoke_test_reasons(cfg: StudyConfig, full_ft: bool) -> list[str]:
    """Every reason this run is a smoke test rather than a result (empty: none found)."""
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
    if cfg.budget.steps < MIN_STEPS:
        out.append(f"LoRA budgets of {cfg.budget.steps} optimizer steps (< {MIN_STEPS}): the adapters have barely "
                   "left their initialisation")
    if full_ft and cfg.full_budget.steps < MIN_FULL_STEPS:
        out.append(f"a full fine-tune of {cfg.full_budget.steps} optimizer step(s) (< {MIN_FULL_STEPS})")
    if is_bundled_data(cfg.data):
        out.append(f"data {cfg.data} is the bundled synthetic template set, not a real corpus")
    bundled = [t for t in cfg.tasks if is_bundled_task(t)]
    if bundled:
        out.append(f"affective task(s) {', '.join(bundled)} are bundled synthetic templates, not a benchmark "
                   "(the papers score MER-UniBench)")
    return out


def scope_limits(cfg: StudyConfig, base: Path, circuits_model: Path | None, full_ft: bool) -> list[str]:
    """What even a well-designed run of this config cannot speak to (listed under the banner)."""
    out: list[str] = []
    models = {"base": base, **({"circuits": circuits_model} if circuits_model is not None else {})}
    for role, path in models.items():
        if not is_vlm(path):
            out.append(f"the {role} model {path.name} is text-only; both papers study vision-language models "
                       "(paper A: Qwen2.5-7B inside AffectGPT; paper B: LVLMs), so image claims are not judged")
    p = model_params(base)
    if p < MIN_PARAMS:
        out.append(f"the base model has about {p / 1e6:.1f}M parameters, a stand-in for the papers' 7B models")
    if MIN_STEPS <= cfg.budget.steps < PAPER_STEPS:
        out.append(f"LoRA budgets of {cfg.budget.steps} optimizer steps x {cfg.budget.batch_size} rows, far short "
                   "of the papers' full epochs: whether the locus holds after longer training is not measured")
    if full_ft and MIN_FULL_STEPS <= cfg.full_budget.steps < PAPER_STEPS:
        out.append(f"a full fine-tune of {cfg.full_budget.steps} optimizer steps: early AdamW steps move every "
                   "weight by about the learning rate, so its locus is weakly informative")
    if is_bundled_data(cfg.control_data):
        out.append(f"control_data {cfg.control_data} is the bundled synthetic arithmetic set (the paper's control "
                   "is GSM8K math)")
    bundled = [t for t in cfg.control_tasks if is_bundled_task(t)]
    if bundled:
        out.append(f"control task(s) {', '.join(bundled)} are bundled synthetic arithmetic, not a benchmark")
    if "circuits" in cfg.stages:
        if not cfg.circuits.get("pairs"):
            out.append("the circuits stage reads the bundled synthetic contrast pairs")
        if int(cfg.circuits.get("limit") or 0) < MIN_EXAMPLES:
            out.append(f"circuits interventions score {cfg.circuits.get('limit')} examples per task (< "
                       f"{MIN_EXAMPLES}): the power table says what they can detect")
    return out


def learned_nothing(frontier: Mapping[str, Any] | None) -> str | None:
    """A smoke-test reason known only after the run: the all-module LoRA did not beat max(base, majority
    class) on the affective tasks, so the module comparisons are between adapters that learned nothing."""
    if not frontier:
        return None
    ref = next((p for p in frontier.get("points") or [] if p.get("variant") == "all-module"), None)
    y = frontier.get("yardstick")
    if ref is None or y is None or ref["mean"] > y:
        return None
    return (f"the all-module LoRA scored {ref['mean']:.4f} on the affective tasks, not above max(base, majority "
            f"class) = {y:.4f}: it learned nothing, so comparing modules' adapters is not evidence")


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


__all__ = ["MIN_EXAMPLES", "MIN_FULL_STEPS", "MIN_PARAMS", "MIN_STEPS", "PAPER_STEPS", "design_problem", "is_vlm",
           "learned_nothing", "scope_limits", "smoke_test_reasons", "task_size"]
