"""A study's YAML as a typed, validated ``StudyConfig``; profiles are overlays on it.

One config names the base model, the affective and the non-affective
(control) training data and tasks, the budget shared by every LoRA, the
seeds, and the circuits options. A *profile* (``quick``, ``standard`` or
``default``) is a partial config: the built-in defaults, then the file, then
the built-in overlay (quick: one seed, short budgets; standard: the powered
design a laptop runs in about an hour), then the file's own
``profiles: {quick: {...}}`` entry, then the command line -- so a file that
spells out the defaults still runs quick with ``--profile quick``, and a
config can say what "quick" means for a 7B model. Every problem
is one clear line naming the field.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from ..tuneconfig import BUDGET_FIELDS, SEED_MAX, TuneConfig

STAGES = ("adapters", "locate", "sufficiency", "efficiency", "necessity", "frontier", "circuits")
PROFILES = ("quick", "standard", "default")
TOP_KEYS = frozenset({"name", "description", "model", "models", "calibration", "data", "control_data", "tasks", "control_tasks", "eval",
                      "budget", "full_budget", "seeds", "stages", "modules", "circuits", "profiles"})
CIRCUIT_KEYS = frozenset({"model", "pairs", "emotions", "max_pairs", "min_score", "top_k", "top_neurons",
                          "beta", "gamma", "limit", "layers", "batch_size"})

# The built-in defaults (the "default" profile): >= 3 seeds, budgets that mean something on a small model.
DEFAULTS: dict[str, Any] = {
    "name": "study",
    "model": "smollm2",
    "data": "emotion_train",
    "control_data": "control_train",
    "tasks": ["emotion"],
    "control_tasks": ["control"],
    "eval": {"limit": None, "batch_size": 16, "dev_per_class": None},
    # Closed-set scoring of the scored stages. auto: each model's calibration (none / contextual / pmi) is
    # chosen on the affective tasks' dev split and applied on test; none where no dev split exists (a prior
    # fitted on nothing would remove what a model trained on the label distribution learned). A named mode
    # is used as given. Either way every claim is judged a second time on the raw scores (raw_verdict).
    "calibration": "auto",
    "budget": {"steps": 40, "rank": 8, "alpha": 16, "lr": 1.0e-3, "batch_size": 8, "max_length": 128},
    "full_budget": {"steps": 40, "lr": 2.0e-5},
    "seeds": [0, 1, 2],
    "stages": list(STAGES),
    "modules": {"single": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                "groups": {"attn": "attn", "mlp": "mlp", "Att.+gate": "attn,gate_proj", "Att.+up": "attn,up_proj",
                           "Att.+down": "attn,down_proj", "o+gate": "o_proj,gate_proj"}},
    "circuits": {"model": None, "pairs": None, "emotions": None, "max_pairs": 12, "min_score": 0.5,
                 "top_k": 10, "top_neurons": 50, "beta": 2.0, "gamma": 2.0, "limit": 70, "layers": None,
                 "batch_size": 16},
}
# What "quick" changes: one seed, short budgets, a subset of modules, tasks' examples and emotions.
QUICK: dict[str, Any] = {
    "seeds": [0],
    "eval": {"limit": 14},
    "budget": {"steps": 12, "batch_size": 4, "max_length": 96},
    "full_budget": {"steps": 6},
    "modules": {"single": ["gate_proj", "up_proj", "down_proj"], "groups": {"attn": "attn"}},
    "circuits": {"emotions": ["anger", "joy", "sadness"], "max_pairs": 4, "min_score": 0.3, "top_k": 8,
                 "top_neurons": 20, "limit": 14},
}
# What "standard" changes: a powered design that fits 2 CPU cores in about an hour on SmolLM2-135M with a
# real affective set of >= 500 test rows. Three seeds and 500 scored examples per task (the n and the
# replicates the claims need) are kept; the cost is cut where it buys no power: the modules are the ones
# the gate_proj study's claims compare (gate/up/down alone; attention alone and with each MLP module;
# o+gate), LoRAs get 16 steps, the full fine-tune (read only by the LoRA-vs-SFT locus claim) 4, the
# calibration is chosen on 20 dev rows per label, and circuits runs on fewer pairs and examples.
STANDARD: dict[str, Any] = {
    "seeds": [0, 1, 2],
    "eval": {"limit": 500, "batch_size": 32, "dev_per_class": 20},
    "budget": {"steps": 16, "batch_size": 8, "max_length": 64, "lr": 2.0e-3},
    "full_budget": {"steps": 4},
    "modules": {"single": ["gate_proj", "up_proj", "down_proj"],
                "groups": {"attn": "attn", "Att.+gate": "attn,gate_proj", "Att.+up": "attn,up_proj",
                           "Att.+down": "attn,down_proj", "o+gate": "o_proj,gate_proj"}},
    "circuits": {"max_pairs": 6, "min_score": 0.3, "top_k": 8, "top_neurons": 20, "limit": 100},
}
OVERLAYS = {"quick": QUICK, "standard": STANDARD}


REPLACED = frozenset({"groups"})  # a mapping that names a whole set: given, it replaces the default set


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``; mappings merge key by key (except ``REPLACED``),
    anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        deep = isinstance(v, dict) and isinstance(out.get(k), dict) and k not in REPLACED
        out[k] = merge(out[k], v) if deep else copy.deepcopy(v)
    return out


def _err(where: str, msg: str) -> AffectlensError:
    return AffectlensError(f"{where}: {msg}")


@dataclass
class StudyConfig:
    """The merged, checked config (``raw`` is what every stage fingerprint is cut from)."""

    name: str
    model: str
    data: str
    control_data: str
    tasks: list[str]
    control_tasks: list[str]
    eval: dict[str, Any]
    budget: TuneConfig
    full_budget: TuneConfig
    seeds: list[int]
    stages: list[str]
    single: list[str]
    groups: dict[str, str]
    circuits: dict[str, Any]
    profile: str
    raw: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    calibration: str = "auto"
    bases: list[str] = field(default_factory=list)  # every base: ``model`` first, then ``models``' others
    # eval.allow_train_overlap: score task rows the adapters were trained on (kept out of ``eval``, which
    # every scored stage's fingerprint holds: the counts do not change a score)
    allow_train_overlap: bool = False

    @property
    def other_bases(self) -> list[str]:
        """The bases beyond the first: adapters and locate run on each, the later stages do not."""
        return [b for b in self.bases if b != self.model]

    @property
    def circuits_model(self) -> str:
        return str(self.circuits.get("model") or self.model)


def _read(source: str | Path | dict[str, Any] | None) -> tuple[dict[str, Any], str, str]:
    import yaml

    if source is None:
        return {}, "study config", ""
    if isinstance(source, dict):
        return dict(source), "study config", ""
    p = Path(source)
    if not p.is_file():
        raise AffectlensError(f"study config {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise _err(p.name, f"not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise _err(p.name, "must be a mapping (model, data, tasks, budget, seeds, ...)")
    return raw, p.name, str(p)


def _str_list(v: Any, key: str, where: str, allow_empty: bool = False) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or (not v and not allow_empty) or not all(isinstance(x, str) and x for x in v):
        raise _err(where, f"{key} must be a {'' if allow_empty else 'non-empty '}list of names")
    return list(v)


def _budget(raw: Any, key: str, where: str, base: dict[str, Any] | None = None) -> TuneConfig:
    if not isinstance(raw, dict):
        raise _err(where, f"{key} must be a mapping of {', '.join(BUDGET_FIELDS)}")
    bad = sorted(set(raw) - set(BUDGET_FIELDS))
    if bad:
        raise _err(where, f"{key} has unknown field(s) {', '.join(bad)}; allowed: {', '.join(BUDGET_FIELDS)}")
    return TuneConfig.from_mapping({**(base or {}), **raw}, f"{where}: {key}")


MAX_SEED = SEED_MAX  # numpy's and torch's seed range: a seed outside it fails only when a stage seeds
MAX_SEED_COUNT = 1000  # --seeds N: each seed trains three models; a typo's 10**9 must not allocate 10**9 ints


def _seeds(v: Any, where: str) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(s, int) and not isinstance(s, bool) for s in v):
        raise _err(where, "seeds must be a non-empty list of integers")
    bad = [s for s in v if not 0 <= s <= MAX_SEED]
    if bad:
        raise _err(where, f"seeds must be integers from 0 to {MAX_SEED}, not {bad[0]}")
    if len(set(v)) != len(v):
        raise _err(where, "seeds has duplicates")
    return list(v)


RESERVED_VARIANTS = frozenset({"base", "all-module"})  # the scored stages' own reference rows
_POS_INT = ("max_pairs", "top_k", "top_neurons", "limit", "batch_size")


def _circuits(circ: Any, where: str) -> dict[str, Any]:
    """Every circuits option's type and range, so a typo fails here and not after the other stages ran."""
    if not isinstance(circ, dict) or sorted(set(circ) - CIRCUIT_KEYS):
        raise _err(where, f"circuits takes {', '.join(sorted(CIRCUIT_KEYS))}")
    for k in _POS_INT:
        v = circ.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise _err(where, f"circuits.{k} must be a positive integer, not {v!r}")
    for k in ("min_score", "beta", "gamma"):
        v = circ.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
            raise _err(where, f"circuits.{k} must be a finite number, not {v!r}")
    ms = circ.get("min_score")
    if ms is not None and not 0 <= ms <= 1:
        raise _err(where, f"circuits.min_score is a probability: it must be from 0 to 1, not {ms!r}")
    for k in ("model", "pairs", "layers"):
        v = circ.get(k)
        if v is not None and (not isinstance(v, str) or not v):
            raise _err(where, f"circuits.{k} must be a {'layer spec such as 0-3,7' if k == 'layers' else 'path'}"
                              f", not {v!r}")
    if circ.get("emotions") is not None:
        _str_list(circ["emotions"], "circuits.emotions", where)
    from ..circuits.inputs import check_layer_spec

    try:
        check_layer_spec(circ.get("layers"), "circuits.layers")
    except AffectlensError as e:
        raise _err(where, str(e)) from None
    return dict(circ)


def parse_stages(spec: str | list[str] | None, where: str = "--stages") -> list[str] | None:
    """``"locate,frontier"`` -> the stages in run order (a stage's inputs are computed as needed)."""
    if spec is None:
        return None
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    bad = [s for s in names if s not in STAGES]
    if bad or not names:
        raise AffectlensError(f"{where}: unknown stage(s) {', '.join(bad) or '(none given)'}; "
                              f"choose from {', '.join(STAGES)}")
    return [s for s in STAGES if s in names]


def load_study_config(source: str | Path | dict[str, Any] | None = None, *, profile: str = "default",
                      model: str | None = None, stages: str | list[str] | None = None,
                      seeds: int | None = None) -> StudyConfig:
    """Merge built-in defaults, the profile, the file and the overrides; check every field."""
    if profile not in PROFILES:
        raise AffectlensError(f"unknown profile '{profile}'; choose from {', '.join(PROFILES)}")
    raw, where, path = _read(source)
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise _err(where, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOP_KEYS))}")
    own_profiles = raw.pop("profiles", None) or {}
    if raw.get("models") and "model" not in raw and isinstance(raw["models"], list):
        raw["model"] = raw["models"][0]  # `models:` alone: its first is the base the later stages run on
    if not isinstance(own_profiles, dict) or sorted(set(own_profiles) - set(PROFILES)):
        raise _err(where, f"profiles must map {' / '.join(PROFILES)} to partial configs")
    merged = merge(DEFAULTS, raw)
    if profile in OVERLAYS:
        merged = merge(merged, OVERLAYS[profile])
    over = own_profiles.get(profile) or {}
    if not isinstance(over, dict) or "profiles" in over:
        raise _err(where, f"profiles.{profile} must be a mapping of config fields")
    merged = merge(merged, over)
    if model:
        merged["model"] = model
    if seeds is not None:
        if not 1 <= seeds <= MAX_SEED_COUNT:
            raise AffectlensError(f"--seeds must be from 1 to {MAX_SEED_COUNT}, not {seeds}")
        merged["seeds"] = list(range(seeds))
    if stages is not None:
        merged["stages"] = parse_stages(stages)
    return _check(merged, where, path, profile)


def _check(m: dict[str, Any], where: str, path: str, profile: str) -> StudyConfig:
    for key in ("model", "data", "control_data"):
        if not isinstance(m.get(key), str) or not m[key]:
            raise _err(where, f"{key} must be a model/data name or path")
    ev = m.get("eval") or {}
    if not isinstance(ev, dict) or sorted(set(ev) - {"limit", "batch_size", "dev_per_class", "allow_train_overlap"}):
        raise _err(where, "eval takes limit, batch_size, dev_per_class and allow_train_overlap")
    if not isinstance(ev.get("allow_train_overlap", False), bool):
        raise _err(where, f"eval.allow_train_overlap must be true or false, not {ev['allow_train_overlap']!r}")
    for k in ("limit", "batch_size", "dev_per_class"):
        v = ev.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise _err(where, f"eval.{k} must be a positive integer, not {v!r}")
    budget = _budget(m.get("budget"), "budget", where)
    full = _budget(m.get("full_budget") or {}, "full_budget", where, {**budget.budget(), "lr": 2.0e-5})
    mods = m.get("modules") or {}
    if not isinstance(mods, dict) or sorted(set(mods) - {"single", "groups"}):
        raise _err(where, "modules takes single (a list) and groups (name: selection)")
    single = _str_list(mods.get("single") or [], "modules.single", where)
    if "gate_proj" not in single:
        raise _err(where, "modules.single must include gate_proj (the module the study is about)")
    dup = sorted({m for m in single if single.count(m) > 1})
    if dup:
        raise _err(where, f"modules.single lists {', '.join(dup)} twice")
    groups = mods.get("groups") or {}
    if not isinstance(groups, dict) or not all(isinstance(v, str) and v for v in groups.values()):
        raise _err(where, "modules.groups must map a name to a module selection such as 'attn,gate_proj'")
    clash = sorted(str(g) for g in groups if str(g) in RESERVED_VARIANTS or not str(g).strip())
    if clash:
        raise _err(where, f"modules.groups cannot be named {clash[0]!r} (reserved: {', '.join(sorted(RESERVED_VARIANTS))})")
    from ..modules import parse_selection

    for sel in [*single, *groups.values()]:
        try:
            parse_selection(sel)
        except AffectlensError as e:
            raise _err(where, f"modules: {e}") from None
    circ = _circuits(m.get("circuits") or {}, where)
    stages = parse_stages(m.get("stages") or list(STAGES), f"{where}: stages") or list(STAGES)
    from ..vocab import CALIBRATIONS

    cal = m.get("calibration", "auto")
    if cal not in ("auto", *CALIBRATIONS):
        raise _err(where, f"calibration must be one of auto, {', '.join(CALIBRATIONS)}, not {cal!r}")
    others = _str_list(m.get("models") or [], "models", where, allow_empty=True)
    bases = list(dict.fromkeys([m["model"], *others]))
    return StudyConfig(
        name=str(m.get("name") or "study"), model=m["model"], data=m["data"], control_data=m["control_data"],
        tasks=_str_list(m.get("tasks"), "tasks", where),
        control_tasks=_str_list(m.get("control_tasks") or [], "control_tasks", where, allow_empty=True),
        eval={"limit": ev.get("limit"), "batch_size": int(ev.get("batch_size") or 16),
              "dev_per_class": ev.get("dev_per_class")}, budget=budget,
        full_budget=full, seeds=_seeds(m.get("seeds"), where), stages=stages, single=single,
        groups={str(k): str(v) for k, v in groups.items()}, circuits=dict(circ), profile=profile,
        raw=m, path=path, calibration=str(cal), bases=bases,
        allow_train_overlap=bool(ev.get("allow_train_overlap", False)))


DEPS: dict[str, tuple[str, ...]] = {"adapters": (), "locate": ("adapters",), "sufficiency": ("adapters",),
                                     "efficiency": ("adapters",), "necessity": ("adapters",),
                                     "frontier": ("efficiency",), "circuits": ()}


def needed(stages: list[str]) -> list[str]:
    """The asked stages and everything they read, in run order."""
    want: set[str] = set()
    todo = list(stages)
    while todo:
        s = todo.pop()
        if s not in want:
            want.add(s)
            todo.extend(DEPS[s])
    return [s for s in STAGES if s in want]


def base_labels(cfg: StudyConfig) -> dict[str, str]:
    """A short, unique, stable label per base (its dir or hub name); the first base's stages keep their
    plain keys, another base's are ``<stage>@<label>`` (so adding a base leaves the others' caches alone)."""
    from ..runs import slug

    out: dict[str, str] = {}
    for b in cfg.bases:
        lab = slug(Path(b).name or b, "base")
        k = 2
        while lab in out.values():
            lab, k = f"{slug(Path(b).name or b, 'base')}-{k}", k + 1
        out[b] = lab
    return out


__all__ = ["DEFAULTS", "DEPS", "MAX_SEED", "OVERLAYS", "PROFILES", "QUICK", "STANDARD", "STAGES", "StudyConfig", "base_labels", "load_study_config", "merge",
           "needed", "parse_stages"]
