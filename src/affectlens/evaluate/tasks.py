"""Tasks are data: small declarative specs, a registry, and the ``KIND:PATH,opt=val`` syntax.

A spec says where examples come from (loader + path + options), which labels
are allowed, how to ask the model, and which metric is primary. Scorers never
look inside a spec beyond these fields, so a new data set is one spec, not code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from ..prompts import OPEN_QUESTION
from ..vocab import EMOTIONS, EVAL_KINDS, SENTIMENTS2, SENTIMENTS3, TASK_SYNTAX, TaskKind


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task, as data.

    ``loader`` picks a function in :mod:`affectlens.evaluate.loaders`; ``options``
    are that loader's keyword options (column names, split, thresholds).
    ``labels`` is the closed label set (None: taken from the whole file).
    ``question`` overrides the closed-set question (``{labels}`` and ``{text}`` are
    filled in; see :func:`affectlens.prompts.render`), ``open_question`` the
    open-vocabulary one of generative mode.
    """

    name: str
    kind: str  # a TaskKind in EVAL_KINDS
    loader: str
    path: str | None = None
    labels: tuple[str, ...] | None = None
    options: tuple[tuple[str, str], ...] = ()
    question: str | None = None
    open_question: str = OPEN_QUESTION
    primary: str | None = None  # None: by kind and mode (see primary_metric)
    description: str = ""

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    def with_options(self, **kw: str) -> TaskSpec:
        opts = dict(self.options)
        opts.update({k: str(v) for k, v in kw.items()})
        return replace(self, options=tuple(sorted(opts.items())))


def primary_metric(spec: TaskSpec, mode: str) -> str:
    """The number a task contributes to the mean (MER-UniBench: HIT / WAF)."""
    if spec.primary:
        return spec.primary
    if spec.kind == TaskKind.PERPLEXITY:
        return "perplexity"
    if spec.kind == TaskKind.CONTROL:
        return "accuracy"
    if spec.kind == TaskKind.EMOTION and mode == "generative":
        return "hit"
    return "weighted_f1"


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, overwrite: bool = False) -> TaskSpec:
    """Add a named task so ``get_task(name)`` and ``--task name`` find it."""
    if spec.kind not in EVAL_KINDS:
        raise AffectlensError(f"task {spec.name}: unknown kind '{spec.kind}'; "
                              f"choose from {', '.join(EVAL_KINDS)}")
    if spec.name in _REGISTRY and not overwrite:
        raise AffectlensError(f"task '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def registered_tasks() -> list[str]:
    return sorted(_REGISTRY)


# KIND -> (loader, task kind, fixed labels). Options after the path: ",key=value".
_SPEC_KINDS: dict[str, tuple[str, TaskKind, tuple[str, ...] | None]] = {
    "meld": ("meld", TaskKind.EMOTION, EMOTIONS),
    "meld-sentiment": ("meld_sentiment", TaskKind.SENTIMENT, SENTIMENTS3),
    "goemotions": ("goemotions", TaskKind.EMOTION, None),
    "jsonl": ("jsonl", TaskKind.EMOTION, None),
    "csv": ("csv", TaskKind.EMOTION, None),
    "sentiment": ("sentiment", TaskKind.SENTIMENT, SENTIMENTS2),
    "ppl": ("text", TaskKind.PERPLEXITY, None),
}
_ASKED = (TaskKind.EMOTION, TaskKind.SENTIMENT, TaskKind.CONTROL)  # what kind= may set
_OPTION_SPLIT = re.compile(r",(?=[A-Za-z_][A-Za-z0-9_]*=)")
_KNOWN_OPTIONS = {
    "meld": {"text", "label", "limit_dialogues"},
    "meld_sentiment": {"text", "label"},
    "goemotions": {"split", "multi"},
    "jsonl": {"text", "label", "labels", "kind", "split"},
    "csv": {"text", "label", "labels", "kind", "delimiter", "split"},
    "sentiment": {"text", "score", "center", "margin", "split", "delimiter", "labels3"},
    "text": {"max_length", "stride"},
}




def parse_task(name: str | TaskSpec) -> TaskSpec:
    """A registered name, or ``KIND:PATH[,key=value...]`` -> TaskSpec."""
    if isinstance(name, TaskSpec):
        return name
    name = str(name).strip()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        known = ", ".join(registered_tasks())
        raise AffectlensError(f"unknown task '{name}'; registered: {known}; or use KIND:PATH "
                              f"with KIND in {', '.join(_SPEC_KINDS)}")
    kind_key, rest = name.split(":", 1)
    if kind_key not in _SPEC_KINDS:
        raise AffectlensError(f"unknown task kind '{kind_key}' in '{name}'; choose from {', '.join(_SPEC_KINDS)}")
    loader, kind, labels = _SPEC_KINDS[kind_key]
    parts = _OPTION_SPLIT.split(rest)
    path, opts = parts[0], {}
    for p in parts[1:]:
        k, v = p.split("=", 1)
        opts[k.strip()] = v.strip()
    if not path:
        raise AffectlensError(f"task '{name}' has no path")
    unknown = sorted(set(opts) - _KNOWN_OPTIONS[loader])
    if unknown:
        raise AffectlensError(f"task '{name}': unknown option(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(sorted(_KNOWN_OPTIONS[loader]))}")
    if "labels" in opts:
        labels = tuple(x.strip().lower() for x in opts.pop("labels").split("|") if x.strip())
    if "kind" in opts:
        try:
            kind = TaskKind.parse(opts.pop("kind"), _ASKED)
        except AffectlensError:
            raise AffectlensError(f"task '{name}': kind must be emotion, sentiment or control") from None
    if loader == "sentiment" and opts.get("labels3") in ("1", "true", "yes"):
        labels = SENTIMENTS3
    short = f"{kind_key}:{Path(path).name}"
    if opts:
        short += "," + ",".join(f"{k}={v}" for k, v in sorted(opts.items()))
    return TaskSpec(name=short, kind=kind, loader=loader, path=path, labels=labels,
                    options=tuple(sorted(opts.items())))


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Look up a registered task or parse a ``KIND:PATH`` spec."""
    return parse_task(name)


register_task(TaskSpec(
    name="emotion", kind=TaskKind.EMOTION, loader="bundled", path="emotion_test", labels=EMOTIONS,
    description="bundled emotion test set (7 basic emotions)",
))
register_task(TaskSpec(
    name="control", kind=TaskKind.CONTROL, loader="bundled", path="control_test", labels=None,
    description="bundled non-affective control task (short answers)",
))
__all__ = ["EMOTIONS", "TaskSpec", "get_task", "parse_task", "register_task", "registered_tasks",
           "primary_metric", "TASK_SYNTAX"]
