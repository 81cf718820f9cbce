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
from ..vocab import EMOTIONS, EVAL_KINDS, SENTIMENTS2, SENTIMENTS3, TASK_SYNTAX, TaskKind
from .prompts import OPEN_QUESTION
from .splits import DATA_EXTS, canonical_split, infer_spec


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task, as data.

    ``loader`` picks a function in :mod:`affectlens.tasks.loaders`; ``options``
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

    def with_options(self, **kw: str | None) -> TaskSpec:
        """The spec with options set (None: removed); a parsed spec's name shows them (names key the results)."""
        opts = dict(self.options)
        opts.update({k: str(v) for k, v in kw.items() if v is not None})
        for k in [k for k, v in kw.items() if v is None]:
            opts.pop(k, None)
        name = self.name
        if self.path is not None and self.loader in _KIND_OF_LOADER:
            name = _short(_KIND_OF_LOADER[self.loader], self.path, opts)
        elif self.loader == "bundled" and self.path is not None:
            name = self.path + "".join(f",{k}={v}" for k, v in sorted(opts.items()))
        return replace(self, name=name, options=tuple(sorted(opts.items())))


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
    "pairs": ("pairs", TaskKind.EMOTION, None),
}
_KIND_OF_LOADER = {loader: key for key, (loader, _, _) in _SPEC_KINDS.items()}
_ASKED = (TaskKind.EMOTION, TaskKind.SENTIMENT, TaskKind.CONTROL)  # what kind= may set
_OPTION_SPLIT = re.compile(r",(?=[A-Za-z_][A-Za-z0-9_]*=)")
# Every labelled loader: split (a file per split or a 'split' column), label map, balancing/limits.
_COMMON = {"split", "split_column", "labelmap", "balance", "per_class", "seed", "drop_train_rows"}
_TABLE = {"delimiter", "quote", "bad_rows"}  # delimiter-separated files
_KNOWN_OPTIONS = {
    "meld": {"text", "label", "limit_dialogues"} | _COMMON | _TABLE,
    "meld_sentiment": {"text", "label"} | _COMMON | _TABLE,
    "goemotions": {"multi"} | _COMMON,
    "jsonl": {"text", "label", "labels", "kind", "image"} | _COMMON,
    "csv": {"text", "label", "labels", "kind", "image"} | _COMMON | _TABLE,
    "sentiment": {"text", "score", "center", "margin", "labels3"} | _COMMON | _TABLE,
    "text": {"max_length", "stride"},
    "pairs": {"split"},
    "bundled": _COMMON - {"split", "split_column"},
}
_CHOICES = {"bad_rows": ("error", "skip", "report"), "balance": ("true", "false", "1", "0", "yes", "no"),
            "drop_train_rows": ("true", "false", "1", "0", "yes", "no")}


def _short(kind_key: str, path: str, opts: dict[str, str]) -> str:
    short = f"{kind_key}:{Path(path).name}"
    if opts:
        short += "," + ",".join(f"{k}={v}" for k, v in sorted(opts.items()))
    return short


def spec_text(spec: TaskSpec) -> str:
    """The spec as text that parses back to it (``name`` is for display: it keeps only a path's last part)."""
    if spec.path is None or spec.loader not in _KIND_OF_LOADER or spec.loader == "bundled":
        return spec.name
    text = f"{_KIND_OF_LOADER[spec.loader]}:{spec.path}"
    return text + "".join(f",{k}={v}" for k, v in sorted(spec.options))


def _check_options(name: str, loader: str, opts: dict[str, str]) -> None:
    unknown = sorted(set(opts) - _KNOWN_OPTIONS[loader])
    if unknown:
        raise AffectlensError(f"task '{name}': unknown option(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(sorted(_KNOWN_OPTIONS[loader]))}")
    for key, choices in _CHOICES.items():
        if key in opts and opts[key].lower() not in choices:
            raise AffectlensError(f"task '{name}': {key} must be one of {'|'.join(choices[:3])}, not '{opts[key]}'")
    for key in ("per_class", "seed"):
        if key in opts and not re.fullmatch(r"\d+", opts[key]):
            raise AffectlensError(f"task '{name}': {key} must be a non-negative integer, not '{opts[key]}'")
    if opts.get("per_class") == "0":
        raise AffectlensError(f"task '{name}': per_class must be positive")
    if "split" in opts:
        opts["split"] = canonical_split(opts["split"])
    if "labelmap" in opts:
        from .labelmaps import load_label_map

        load_label_map(opts["labelmap"])  # a typo fails here, before any data is read


def _bundled(name: str, opts: dict[str, str]) -> TaskSpec | None:
    """A bundled file by name (``emotion_train``, ``control_train.jsonl``), when no such file exists."""
    from .corpus import NAMES

    stem = name[:-6] if name.endswith(".jsonl") else name
    if stem not in NAMES or Path(name).exists():
        return None
    _check_options(name, "bundled", opts)
    labels = EMOTIONS if stem.startswith("emotion") else None
    kind = TaskKind.CONTROL if stem.startswith("control") else TaskKind.EMOTION
    return TaskSpec(name=stem + ("," + ",".join(f"{k}={v}" for k, v in sorted(opts.items())) if opts else ""),
                    kind=kind, loader="bundled", path=stem, labels=labels, options=tuple(sorted(opts.items())))


def parse_task(name: str | TaskSpec) -> TaskSpec:
    """A registered or bundled name, ``KIND:PATH[,key=value...]``, or a bare path -> TaskSpec.

    A bare path (``meld.csv``, ``data.jsonl``, a directory of split files) is
    read by :func:`affectlens.evaluate.splits.infer_spec` from its extension
    and header; what it cannot tell is an error naming the explicit spec.
    """
    if isinstance(name, TaskSpec):
        return name
    name = str(name).strip()
    if name in _REGISTRY:
        return _REGISTRY[name]
    head, *tail = _OPTION_SPLIT.split(name)
    opts = {}
    for p in tail:
        k, v = p.split("=", 1)
        opts[k.strip()] = v.strip()
    bundled = _bundled(head, dict(opts))
    if bundled is not None:
        return bundled
    kind_key = head.split(":", 1)[0] if ":" in head else ""
    if kind_key not in _SPEC_KINDS:
        looks_kind = re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", kind_key) is not None
        if Path(head).exists() or not looks_kind and (Path(head).suffix.lower() in DATA_EXTS or "/" in head):
            inferred = infer_spec(Path(head))
            return parse_task(inferred + "".join(f",{k}={v}" for k, v in opts.items()))
        if ":" not in head:
            known = ", ".join(registered_tasks())
            raise AffectlensError(f"unknown task '{name}'; registered: {known}; or use KIND:PATH "
                                  f"with KIND in {', '.join(_SPEC_KINDS)}, or a data file path")
        raise AffectlensError(f"unknown task kind '{kind_key}' in '{name}'; choose from {', '.join(_SPEC_KINDS)}")
    loader, kind, labels = _SPEC_KINDS[kind_key]
    path = head.split(":", 1)[1]
    if not path:
        raise AffectlensError(f"task '{name}' has no path")
    _check_options(name, loader, opts)
    if "labels" in opts:
        labels = tuple(x.strip().lower() for x in opts.pop("labels").split("|") if x.strip())
    if "kind" in opts:
        try:
            kind = TaskKind.parse(opts.pop("kind"), _ASKED)
        except AffectlensError:
            raise AffectlensError(f"task '{name}': kind must be emotion, sentiment or control") from None
    if loader == "sentiment" and opts.get("labels3") in ("1", "true", "yes"):
        labels = SENTIMENTS3
    return TaskSpec(name=_short(kind_key, path, opts), kind=kind, loader=loader, path=path, labels=labels,
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
__all__ = ["EMOTIONS", "TaskSpec", "get_task", "parse_task", "register_task", "registered_tasks", "spec_text",
           "primary_metric", "TASK_SYNTAX"]
