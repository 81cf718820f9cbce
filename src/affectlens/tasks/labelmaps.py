"""Label maps: a data set's own labels onto the 7 basic emotions (``labelmap=``).

Cross-corpus scores are only comparable on one label set, so the maps are
small tables written here, each with the source of its label set named:

- ``goemotions-ekman``: the Ekman grouping published with GoEmotions
  (Demszky et al. 2020, ``data/ekman_mapping.json`` in google-research's
  goemotions repository): 27 emotions + neutral -> anger, disgust, fear, joy,
  sadness, surprise, neutral.
- ``emorynlp``: EmoryNLP (Zahiri & Choi 2018) labels its Friends utterances
  with the seven primary feelings of Willcox's feeling wheel: Joyful, Mad,
  Scared, Peaceful, Powerful, Sad, Neutral. Joyful/Mad/Scared/Sad/Neutral
  are joy/anger/fear/sadness/neutral; Peaceful and Powerful are the wheel's
  other positive families and go to joy (the only positive basic emotion).
  This last choice is ours; pass a JSON file to map them otherwise.
- ``iemocap``: IEMOCAP's (Busso et al. 2008) categorical codes ang, hap, exc,
  sad, neu, fru, sur, fea, dis, oth, xxx. Happiness and excitement merge to
  joy (the usual 4-class protocol); frustration, other and no-agreement
  (xxx) have no basic emotion and are dropped (counted).

A JSON file maps raw labels (case-insensitive) to a target label, or to
``null`` to drop rows with that label (counted as dropped, never silent); an
empty target is refused, as empty labels in data are.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import AffectlensError
from ..vocab import EMOTIONS

_GOEMOTIONS_EKMAN = {
    "anger": ("anger", "annoyance", "disapproval"),
    "disgust": ("disgust",),
    "fear": ("fear", "nervousness"),
    "joy": ("joy", "amusement", "approval", "excitement", "gratitude", "love", "optimism", "relief", "pride",
            "admiration", "desire", "caring"),
    "sadness": ("sadness", "disappointment", "embarrassment", "grief", "remorse"),
    "surprise": ("surprise", "realization", "confusion", "curiosity"),
    "neutral": ("neutral",),
}

LABEL_MAPS: dict[str, dict[str, str | None]] = {
    "goemotions-ekman": {raw: target for target, raws in _GOEMOTIONS_EKMAN.items() for raw in raws},
    "emorynlp": {"joyful": "joy", "mad": "anger", "scared": "fear", "sad": "sadness", "neutral": "neutral",
                 "peaceful": "joy", "powerful": "joy"},
    "iemocap": {"ang": "anger", "hap": "joy", "exc": "joy", "sad": "sadness", "neu": "neutral", "sur": "surprise",
                "fea": "fear", "dis": "disgust", "fru": None, "oth": None, "xxx": None},
}


def load_label_map(name: str) -> dict[str, str | None]:
    """A shipped map by name, or a JSON file ``{"raw": "target" | null}``; keys are lower-cased."""
    if name in LABEL_MAPS:
        return dict(LABEL_MAPS[name])
    p = Path(name)
    if p.suffix.lower() != ".json" or not p.is_file():
        raise AffectlensError(f"unknown labelmap '{name}': choose {', '.join(LABEL_MAPS)} or a JSON file "
                              '{"raw label": "target label" or null}')
    try:
        raw = json.loads(p.read_text("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AffectlensError(f"labelmap {p} is not JSON: {e}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, str | None) for v in raw.values()):
        raise AffectlensError(f"labelmap {p} must map label strings to label strings (or null: drop)")
    table = {str(k).strip().lower(): (None if v is None else v.strip().lower()) for k, v in raw.items()}
    empty = next((k for k, v in table.items() if v == ""), None)
    if empty is not None:  # "" would become a class of its own, a label no row can honestly have
        raise AffectlensError(f"labelmap {p} maps '{empty}' to an empty label; map it to a label, "
                              "or to null to drop its rows")
    return table


def mapped_labels(table: dict[str, str | None]) -> tuple[str, ...]:
    """The label set after mapping: the 7 basic emotions when every target is one of them."""
    targets = {v for v in table.values() if v is not None}
    return EMOTIONS if targets <= set(EMOTIONS) else tuple(sorted(targets))


__all__ = ["LABEL_MAPS", "load_label_map", "mapped_labels"]
