"""The label vocabularies and task kinds: named once, imported everywhere.

Training, evaluation, the bundled corpus and the circuits study must agree on
what ``"emotion"`` means and which labels it may answer with; a second copy of
these tuples is how they drift apart. Everything else imports from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from .errors import AffectlensError

EMOTIONS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")  # Ekman + neutral (MELD)
SENTIMENTS3 = ("negative", "neutral", "positive")
SENTIMENTS2 = ("negative", "positive")  # MOSI/SIMS-style binary polarity
DIGITS = tuple(str(d) for d in range(10))  # answers of the bundled arithmetic control task


class TaskKind(StrEnum):
    """What a task asks for; the value is what run files and options spell.

    ``control`` is the non-affective control task (the bundled one is
    arithmetic with digit answers); ``label`` is a generic closed set declared
    by the data; ``open`` is the open-vocabulary question of generative
    evaluation; ``perplexity`` scores text, it asks nothing.
    """

    EMOTION = "emotion"
    SENTIMENT = "sentiment"
    CONTROL = "control"
    LABEL = "label"
    OPEN = "open"
    PERPLEXITY = "perplexity"

    @classmethod
    def parse(cls, name: str | TaskKind, allowed: Sequence[TaskKind] | None = None) -> TaskKind:
        """The canonical kind of ``name`` (aliases accepted); unknown or not ``allowed`` is an error."""
        choices = list(allowed) if allowed is not None else list(cls)
        key = str(name).strip().lower()
        kind = ALIASES.get(key)
        if kind is None:
            try:
                kind = cls(key)
            except ValueError:
                kind = None
        if kind is None or kind not in choices:
            raise AffectlensError(f"unknown task kind '{name}'; choose from: {', '.join(choices)}")
        return kind


ALIASES: dict[str, TaskKind] = {
    "emotions": TaskKind.EMOTION,
    "arithmetic": TaskKind.CONTROL,
    "math": TaskKind.CONTROL,
    "generic": TaskKind.LABEL,
    "ppl": TaskKind.PERPLEXITY,
}

# Kinds a model is asked a closed-set question for (tuning and closed scoring).
CLOSED_KINDS = (TaskKind.EMOTION, TaskKind.SENTIMENT, TaskKind.CONTROL, TaskKind.LABEL)
# Kinds an evaluation task spec may have.
EVAL_KINDS = (TaskKind.EMOTION, TaskKind.SENTIMENT, TaskKind.CONTROL, TaskKind.PERPLEXITY)

_FIXED: dict[TaskKind, tuple[str, ...]] = {
    TaskKind.EMOTION: EMOTIONS,
    TaskKind.SENTIMENT: SENTIMENTS3,
    TaskKind.CONTROL: DIGITS,
}


def closed_labels(kind: str | TaskKind) -> tuple[str, ...] | None:
    """The fixed label set of a kind (None: the data declare it, as for ``label``)."""
    return _FIXED.get(TaskKind.parse(kind))


def infer_kind(labels: Sequence[str]) -> TaskKind:
    """The kind whose fixed label set holds all ``labels`` (emotion, sentiment, control), else ``label``."""
    found = set(labels)
    for kind, fixed in _FIXED.items():
        if found <= set(fixed):
            return kind
    return TaskKind.LABEL

# --- command-line vocabularies: the choices the CLI offers without importing the
# library that implements them (``affectlens --help`` must not import torch).

EVAL_MODES = ("closed", "generative")  # ``affectlens evaluate --mode``
CALIBRATIONS = ("none", "contextual", "pmi")  # ``affectlens evaluate --calibration``
GEN_BACKENDS = ("hf", "vllm")  # ``affectlens evaluate --backend`` (generation)


class AblationMode(StrEnum):
    """How the selected modules are destroyed (``--ablation`` of ``affectlens ablate``)."""

    RESET = "reset"
    ZERO_DELTA = "zero-delta"
    ZERO = "zero"
    MEAN = "mean"
    NOISE = "noise"

    @property
    def needs_base(self) -> bool:
        """The delta modes: they need BASE to know what fine-tuning changed."""
        return self in (AblationMode.RESET, AblationMode.ZERO_DELTA, AblationMode.NOISE)

    @classmethod
    def parse(cls, mode: str | AblationMode) -> AblationMode:
        """A mode from its name; an unknown one is a one-line error listing the choices."""
        try:
            return cls(mode)
        except ValueError:
            choices = ", ".join(ABLATION_MODES)
            raise AffectlensError(f"unknown ablation mode '{mode}'; choose from {choices}") from None


ABLATION_MODES = tuple(m.value for m in AblationMode)

# What ``--task`` accepts (evaluate, circuits intervene, export-task); parsed by evaluate.tasks.parse_task.
TASK_SYNTAX = """\
Task names (--task, repeatable):
  emotion                 bundled emotion test set (7 labels; the default)
  control                 bundled non-affective control task
  meld:FILE.csv           MELD CSV, Emotion column (7 labels)
  meld-sentiment:FILE.csv MELD CSV, Sentiment column (negative/neutral/positive)
  goemotions:DIR          GoEmotions TSV dir with labels.txt; split=test|dev|train,
                          multi=single|first (multi-label rows: drop or keep the first)
  jsonl:FILE              rows {"text", "label" or "label_text"}; text=, label=,
                          labels=a|b|c (declared set), kind=emotion|sentiment|control
  csv:FILE                generic CSV/TSV; text=COL, label=COL, labels=, delimiter=tab
  sentiment:FILE          continuous valence (MOSI/SIMS style, CSV or JSONL); text=COL,
                          score=COL, center=0, margin=0 (|score-center|<=margin dropped),
                          split=VALUE (filter a 'split' column), labels3=1 (keep the
                          dropped band as 'neutral': 3 classes); EmoBank:
                          sentiment:emobank.csv,score=V,center=3,split=test
  ppl:FILE                perplexity on a plain-text file (paragraphs split at blank lines);
                          max_length=, stride= (sliding windows)
Options follow the path, comma separated: csv:data.csv,text=utterance,label=emotion"""


__all__ = ["ABLATION_MODES", "ALIASES", "CLOSED_KINDS", "DIGITS", "EMOTIONS", "EVAL_KINDS", "EVAL_MODES",
           "CALIBRATIONS", "GEN_BACKENDS",
           "TASK_SYNTAX", "AblationMode", "SENTIMENTS2", "SENTIMENTS3",
           "TaskKind", "closed_labels", "infer_kind"]
