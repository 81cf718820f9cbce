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

# What ``--task`` and ``tune --data`` accept (evaluate, tune, grid/study configs, circuits intervene,
# export-task); parsed by evaluate.tasks.parse_task.
TASK_SYNTAX = """\
Task specs (evaluate --task, repeatable; tune --data; grid/study 'tasks' and 'data'):
  emotion, control        bundled test sets (emotion: 7 labels, the default; control: arithmetic)
  emotion_train, ...      bundled files by name (emotion_train/test, control_train/test)
  meld:FILE.csv|DIR       MELD CSV, Emotion column (7 labels); a DIR of train/dev/test CSVs
  meld-sentiment:FILE|DIR MELD CSV, Sentiment column (negative/neutral/positive)
  goemotions:DIR          GoEmotions TSV dir with labels.txt; multi=single|first (multi-label
                          rows: drop or keep the first)
  jsonl:FILE|DIR          rows {"text", "label" or "label_text"}; text=, label=,
                          labels=a|b|c (declared set), kind=emotion|sentiment|control
  csv:FILE|DIR            CSV/TSV/any delimiter: text=COL, label=COL, labels=, kind=,
                          delimiter=CHAR (default ',' or tab for .tsv; 'tab' spells tab),
                          quote=CHAR|none (default '"'; none: quotes are plain text),
                          bad_rows=error|skip|report (a row with too many/few fields:
                          stop naming it (default), drop it, or drop it and list it)
  sentiment:FILE          continuous valence (MOSI/SIMS style, CSV or JSONL); text=COL,
                          score=COL, center=0, margin=0 (|score-center|<=margin dropped),
                          labels3=1 (keep the dropped band as 'neutral': 3 classes);
                          EmoBank: sentiment:emobank.csv,score=V,center=3,split=test
  pairs:FILE              contrast pairs JSONL (the circuits format): each pair is two
                          examples, "emotional" with its "label" and "neutral" with neutral;
                          "image_emotional"/"image_neutral" give each side's image; split=
  ppl:FILE                perplexity on a plain-text file (paragraphs split at blank lines);
                          max_length=, stride= (sliding windows)
  PATH                    a bare file or dir: kind inferred from extension and header
                          (MELD columns, GoEmotions TSV, text+label CSV/JSONL, EmoBank)
Options for every labelled kind (meld, csv, ... also take delimiter=, quote=, bad_rows=):
  split=train|dev|test    a DIR's file named after the split (train_sent_emo.csv,
                          validation.jsonl, dev.tsv), or rows whose 'split' column says it;
                          a DIR is evaluated at test and trained at train by default
  labelmap=NAME|FILE.json raw labels onto the 7 basic emotions: emorynlp, iemocap,
                          goemotions-ekman, or JSON {"raw": "target" or null (drop)}
  balance=true            cut every class to the rarest class's count (seeded)
  per_class=N             keep at most N rows per class (seeded); seed=N (default 0)
  drop_train_rows=true    drop rows whose text is also in the same set's train split
  image=COL               (jsonl, csv) the column with each row's image file (relative to
                          the data file's folder; empty: a text row); image rows need a
                          vision-language model (Qwen-VL, LLaVA) and closed mode
Options follow the path, comma separated: csv:data.csv,text=utterance,label=emotion"""


__all__ = ["ABLATION_MODES", "ALIASES", "CLOSED_KINDS", "DIGITS", "EMOTIONS", "EVAL_KINDS", "EVAL_MODES",
           "CALIBRATIONS", "GEN_BACKENDS",
           "TASK_SYNTAX", "AblationMode", "SENTIMENTS2", "SENTIMENTS3",
           "TaskKind", "closed_labels", "infer_kind"]
