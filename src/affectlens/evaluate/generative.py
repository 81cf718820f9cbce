"""The generative MER-UniBench protocol: ask, parse the answer, map words to categories.

The model answers the open question ("Please recognize all possible
emotional states of the character."); the answer is parsed into a word list
("The character's emotional state is a, b and c." -> [a, b, c]); each word
is mapped to a category through an emotion-wheel table (a file; the shipped
one maps synonyms and inflections onto the 7 basic categories). HIT and
sentiment polarity are computed from the mapped sets, so predictions.jsonl
(raw answer + parsed words) is enough to re-score with another wheel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ..errors import AffectlensError
from ..runs import Progress
from ..tasks.prompts import encode_prompts, render
from ..vocab import TaskKind
from .scorer import model_device, non_finite_error, padding_id, text_start

_PREFIXES = re.compile(
    r"^(?:(?:the\s+)?(?:character|speaker|person|author|writer|narrator)(?:'s|’s)?\s+"
    r"(?:main\s+|possible\s+)?(?:emotional\s+states?|emotions?|feelings?|sentiment|mood)\s+"
    r"(?:is|are|was|were|include|includes|could be|might be|seems? to be|appears? to be)\s*:?"
    r"|(?:possible\s+)?(?:emotional\s+states?|emotions?|feelings?|answer|sentiment)\s*:"
    r"|(?:the\s+character|he|she|they|i)\s+(?:is|are|feels?|seems?|am)\s+(?:feeling\s+)?)",
    re.IGNORECASE,
)
_SPLIT = re.compile(r"\s*(?:,|;|/|\n|\band\b|\bor\b|&|\|)\s*", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")
_STOP = {"a", "an", "the", "very", "quite", "slightly", "somewhat", "a bit", "bit", "little", "feeling",
         "feel", "feels", "being", "be", "is", "of", "sense", "mixed", "with", "some", "possibly",
         "maybe", "also", "extremely", "really", "deeply", "mild", "mildly", "strong", "strongly",
         "absolutely", "totally", "so", "too", "overwhelming", "overwhelmed", "by"}
_LEAD_IN = re.compile(r"emotion|feel|state|mood|sentiment|answer", re.IGNORECASE)
_INCLUDING = re.compile(r"^(?:including|such as|like|mainly|mostly|especially|a mix of|mixture of)\s+",
                        re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:not|no|never|without|n't)\b", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*+\u2022\u2013]|\d{1,2}[.)])\s+")


@dataclass(frozen=True)
class Wheel:
    """Word -> category tables (one per emotion wheel) and a category -> polarity table."""

    wheels: dict[str, dict[str, str]]
    polarity: dict[str, str]
    source: str

    def categories(self, words: Sequence[str]) -> dict[str, list[str]]:
        """Mapped categories of a parsed answer, per wheel (in answer order, unique)."""
        return {name: map_ordered(words, table) for name, table in self.wheels.items()}


SHIPPED = "emotion_wheels.json"


def load_wheel(path: str | Path | None = None) -> Wheel:
    """The shipped table, a JSON file like it, or a CSV/TSV ``word,category`` file (one wheel)."""
    if path is None:
        text = resources.files("affectlens").joinpath(f"data/{SHIPPED}").read_text("utf-8")
        src = f"affectlens/data/{SHIPPED}"
    else:
        p = Path(path)
        if not p.is_file():
            raise AffectlensError(f"emotion-wheel file {p} does not exist")
        text, src = p.read_text("utf-8", errors="replace"), str(p)
        if p.suffix in (".csv", ".tsv", ".txt"):
            table = {}
            for i, line in enumerate(text.splitlines(), 1):
                if not line.strip() or line.startswith("#"):
                    continue
                parts = re.split(r"[,\t]", line)
                if len(parts) < 2:
                    raise AffectlensError(f"{p}:{i}: expected 'word,category'")
                table[parts[0].strip().lower()] = parts[1].strip().lower()
            if not table:
                raise AffectlensError(f"emotion-wheel file {p} is empty")
            return Wheel({p.stem: table}, _default_polarity(), src)
    try:
        doc = json.loads(text)
        wheels = {str(k): {str(w).lower(): str(c).lower() for w, c in v.items()}
                  for k, v in doc["wheels"].items()}
    except (json.JSONDecodeError, KeyError, AttributeError) as e:
        raise AffectlensError(f"emotion-wheel file {src} is not valid ({type(e).__name__}); "
                              "expected {\"wheels\": {name: {word: category}}}") from None
    if not wheels:
        raise AffectlensError(f"emotion-wheel file {src} has no wheels")
    return Wheel(wheels, {**_default_polarity(), **doc.get("polarity", {})}, src)


def _default_polarity() -> dict[str, str]:
    return {"joy": "positive", "anger": "negative", "disgust": "negative", "fear": "negative",
            "sadness": "negative", "surprise": "neutral", "neutral": "neutral"}


def _unbullet(text: str) -> str:
    """The answer's first paragraph and every list item anywhere, items as clauses.

    "- Anger: he shouts" -> "anger," (the label, not its explanation); prose
    after the first paragraph is explanation ("Explanation: the subtitle
    says ..."), a list after it is the answer ("a mix of emotions:\n\n- Anger").
    """
    lines = []
    for k, para in enumerate(re.split(r"\n\s*\n", text)):
        for line in para.splitlines():
            if _BULLET.match(line):
                lines.append(_BULLET.sub("", line).split(":")[0].split(" - ")[0] + ",")
            elif k == 0:
                lines.append(line)
    return "\n".join(lines)


def parse_answer(answer: str) -> list[str]:
    """Open-vocabulary answer (lists after a blank line included) -> lower-case emotion words/phrases, in order."""
    text = _unbullet(answer.strip().replace("’", "'"))
    text = re.sub(r"[\"“”*_`()\[\]]", " ", text).lower()
    out: list[str] = []
    for sentence in re.split(r"(?<=[a-z])[.!?](?:\s+|$)", text):
        head, colon, tail = sentence.partition(":")
        if colon and _LEAD_IN.search(head):  # "... a mix of emotions: a, b" -> "a, b"
            sentence = tail
        sentence = _PREFIXES.sub("", sentence.strip()).strip(" .:!?")
        for item in _SPLIT.split(sentence):
            item = _INCLUDING.sub("", _PREFIXES.sub("", item.strip())).strip(" .:!?-")
            if not item or _NEGATION.search(item):
                continue
            words = [w for w in _WORD.findall(item) if w not in _STOP]
            if not words or len(words) > 4:
                continue
            phrase = " ".join(words)
            if phrase not in out:
                out.append(phrase)
    return out


def map_ordered(words: Sequence[str], table: dict[str, str]) -> list[str]:
    """Categories of parsed words in answer order (unique): whole phrase first, else each word in it."""
    cats: list[str] = []
    for phrase in words:
        found = [table[phrase]] if phrase in table else [table[w] for w in phrase.split() if w in table]
        cats.extend(c for c in found if c not in cats)
    return cats


def unmapped(words: Sequence[str], table: dict[str, str]) -> list[str]:
    """Parsed phrases no word of which the table knows (reported, never silently dropped)."""
    return [p for p in words if p not in table and not any(w in table for w in p.split())]


def map_words(words: Sequence[str], table: dict[str, str]) -> set[str]:
    """Categories of parsed words (a set; :func:`map_ordered` keeps the answer order)."""
    return set(map_ordered(words, table))


def answer_polarity(words: Sequence[str], wheel: Wheel) -> str:
    """positive / negative / neutral from explicit polarity words, else mapped categories' votes."""
    pos = neg = 0
    for phrase in words:
        if re.search(r"\bpositive\b", phrase):
            pos += 1
        elif re.search(r"\bnegative\b", phrase):
            neg += 1
    if pos == neg == 0:
        first = next(iter(wheel.wheels.values()))
        for cat in map_words(words, first):
            pol = wheel.polarity.get(cat, "neutral")
            pos += pol == "positive"
            neg += pol == "negative"
    return "positive" if pos > neg else "negative" if neg > pos else "neutral"


class _FiniteLogits:
    """A logits processor that records which batch rows ever saw NaN/Inf logits.

    Greedy decoding picks *some* token from NaN logits, so garbage would pass
    as an answer; the rows seen here are refused after ``generate`` returns.
    """

    def __init__(self) -> None:
        self.bad: dict[int, float] = {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ok = torch.isfinite(scores).all(-1)
        if not bool(ok.all()):
            for r in (~ok).nonzero().flatten().tolist():
                row = scores[r]
                self.bad.setdefault(r, float(row[~torch.isfinite(row)][0]))
        return scores


@torch.inference_mode()
def generate_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 48,
                     batch_size: int = 8, progress: bool = False, seed: int = 0,
                     texts: Sequence[str] | None = None, where: str = "generation") -> list[str]:
    """Greedy answers, batched with left padding (length-sorted to limit padding).

    Non-finite logits are an error naming the prompt (by ``texts[i]`` when given).
    """
    from transformers import LogitsProcessorList

    if tokenizer is None:
        raise AffectlensError("generative evaluation needs the model's tokenizer; the model has none")
    torch.manual_seed(seed)
    enc = encode_prompts(tokenizer, prompts)
    order = sorted(range(len(enc)), key=lambda i: (-len(enc[i]), i))
    pad = padding_id(tokenizer)
    dev = model_device(model)
    out = [""] * len(enc)
    bar = Progress(len(enc), "generating", unit="ex", enabled=progress)
    eos = getattr(tokenizer, "eos_token_id", None)
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        T = max(len(enc[i]) for i in rows)
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):
            ids[r, T - len(enc[i]):] = torch.tensor(enc[i])
            mask[r, T - len(enc[i]):] = 1
        guard = _FiniteLogits()
        gen = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=pad, eos_token_id=eos, temperature=None, top_p=None,
                             top_k=None, logits_processor=LogitsProcessorList([guard]))
        if guard.bad:
            r = min(guard.bad, key=lambda r: rows[r])
            i = rows[r]
            shown = text_start(texts[i] if texts is not None else prompts[i])
            raise non_finite_error(model, where, f"example {i} ({shown}): the next-token logits are "
                                   f"{guard.bad[r]}")
        for r, i in enumerate(rows):
            out[i] = tokenizer.decode(gen[r, T:], skip_special_tokens=True)
        bar.update(len(rows))
    bar.close()
    return out


def open_prompt(tokenizer, text: str, question: str) -> str:
    """MER-UniBench's open question about one text (:func:`affectlens.prompts.render`, kind ``open``)."""
    return render(tokenizer, text, TaskKind.OPEN, query=question)


__all__ = ["Wheel", "load_wheel", "parse_answer", "map_words", "map_ordered", "unmapped", "answer_polarity",
           "generate_answers", "open_prompt"]
