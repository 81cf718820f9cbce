"""The bundled data: a small affective corpus, a non-affective control task, contrast pairs.

Everything here is *written by code* from seeded templates, so the files in
``affectlens/data/`` are reproducible byte for byte (``python -m
affectlens.tasks.corpus`` regenerates them, and a test checks the committed copies
are exactly what this code writes). Nothing is copied from third-party data,
which keeps the package Apache-2.0 clean.

- ``emotion_train`` / ``emotion_test``: short English utterances labelled with
  one of seven emotions, balanced. The two splits use disjoint *events* (not
  only disjoint strings), so test accuracy is not template memorisation of the
  same situation.
- ``control_train`` / ``control_test`` / ``control_eval``: arithmetic word
  problems (generated in :mod:`.arithmetic`), answers ``0``..``9`` (a closed
  label set) - the non-affective task tuned under the same budget as the
  emotion adapter (paper Fig. 5); ``control_eval`` is a 600-row test set for
  studies that need >= 500 scored rows.
- ``pairs``: an emotional utterance and a neutral report of the same event,
  for steering vectors in the circuits study.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

from ..claims import temp_file
from ..errors import AffectlensError
from ..runs import parse_jsonl_lines
from ..vocab import EMOTIONS
from .arithmetic import (
    N_CONTROL_EVAL,
    N_CONTROL_TEST,
    N_CONTROL_TRAIN,
    control_eval,
    control_splits,
)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # affectlens/data, beside the package root
SEED = 20260121
N_TRAIN, N_TEST = 42, 20  # per emotion label -> 294 / 140
N_PAIRS = 20  # per emotional label
NAMES = ("emotion_train", "emotion_test", "control_train", "control_test", "control_eval", "pairs")

WHO = ("my neighbour", "my boss", "my sister", "my brother", "my roommate", "a coworker",
       "my friend Sam", "my aunt", "my cousin", "my teacher", "my partner", "my best friend")

# Per label: events (past-tense clauses; ``{who}`` is filled from WHO) and
# templates that express the emotion around an ``{event}`` (``{Event}`` = capitalised).
EVENTS: dict[str, tuple[str, ...]] = {
    "anger": (
        "{who} scratched my car and drove off", "{who} took credit for my work",
        "{who} read my private messages", "{who} cut in front of me in the queue",
        "{who} lied to me about the money", "{who} blamed me for their own mistake",
        "the airline lost my luggage for the third time", "the shop charged me twice for one order",
        "{who} cancelled our plans at the last minute again", "{who} broke my laptop and refused to pay",
        "{who} insulted my family in front of everyone", "the landlord kept my deposit for no reason",
        "{who} parked across my driveway again", "{who} ignored every email I sent",
    ),
    "disgust": (
        "{who} left rotten food in the fridge for weeks", "I found a hair baked into my sandwich",
        "{who} spat on the floor of the bus", "the hotel sheets were stained and smelled of sweat",
        "there were maggots crawling in the kitchen bin", "{who} wiped their nose on the tablecloth",
        "the milk had curdled into lumps", "{who} licked the serving spoon and put it back",
        "the restaurant toilet was covered in filth", "I stepped in something slimy on the carpet",
        "{who} coughed right into the salad bowl", "the soup had a dead fly floating in it",
        "{who} clipped their toenails at the dinner table", "the sink was clogged with old grease",
    ),
    "fear": (
        "I heard footsteps behind me on the dark street", "{who} called to say the test results look bad",
        "the plane dropped suddenly during the storm", "someone tried to open my front door at midnight",
        "the brakes stopped working on the steep hill", "a stranger followed me all the way home",
        "the smoke alarm went off in the middle of the night", "{who} has not answered the phone for two days",
        "the doctor found a lump and ordered more scans", "a huge dog ran at me barking",
        "the lift got stuck between two floors", "I got lost alone in the woods after dark",
        "the river started rising towards our house", "{who} warned me that someone is watching the flat",
    ),
    "joy": (
        "I passed my driving test on the first try", "{who} got the job they always wanted",
        "we won the final in the last minute", "my first paper was accepted",
        "{who} is finally coming home for the holidays", "I got a promotion at work",
        "the sun came out just in time for our picnic", "our baby took her first steps",
        "{who} remembered our anniversary", "I finished my first marathon",
        "the whole family came to my birthday party", "{who} cooked my favourite meal for me",
        "my team finished the project ahead of schedule", "I got into the university I dreamed of",
    ),
    "neutral": (
        "the meeting starts at ten tomorrow", "{who} bought bread on the way home",
        "the bus leaves from platform four", "the library closes at six on Fridays",
        "I moved the chairs into the other room", "{who} sent the report on Tuesday",
        "the printer is on the second floor", "we are having pasta for dinner",
        "the package arrived this afternoon", "{who} changed the wifi password",
        "the train takes about forty minutes", "I watered the plants this morning",
        "the shop restocked the shelves overnight", "{who} booked the room for Thursday",
    ),
    "sadness": (
        "my old dog died this morning", "{who} moved away to another country",
        "I did not get the job after all", "{who} forgot my birthday again",
        "we had to sell my grandmother's house", "{who} stopped talking to me",
        "my best friend is leaving town for good", "the garden I planted dried up",
        "nobody came to my exhibition", "{who} ended our relationship",
        "I failed the exam I studied months for", "my grandfather passed away last week",
        "I lost the letters my mother wrote me", "{who} said we can never go back to how it was",
    ),
    "surprise": (
        "{who} showed up at my door after ten years", "the quiet intern turned out to own the company",
        "it snowed in the middle of July", "{who} knew my name although we had never met",
        "the old vase I bought for a pound was worth thousands", "the deadline was suddenly moved to today",
        "{who} shaved off their beard overnight", "my shy cousin won the singing contest",
        "the shop refunded me without my asking", "{who} turned out to have a twin",
        "the exam was cancelled five minutes before it started", "there was a piano in the middle of the street",
        "a letter arrived that was posted twenty years ago", "{who} threw me a party I knew nothing about",
    ),
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "anger": (
        "I can't believe {event}! This is outrageous.", "{Event}, and I am absolutely furious.",
        "How dare they? {Event}!", "I'm so angry right now: {event}.",
        "{Event}. I'm fed up and livid about it.", "It makes my blood boil that {event}.",
        "Unacceptable! {Event}, and nobody even apologised.", "I am seething because {event}.",
    ),
    "disgust": (
        "Ugh, {event}. That is disgusting.", "{Event}, and it made me want to throw up.",
        "Gross! {Event}.", "I feel sick just thinking about it: {event}.",
        "{Event}. Absolutely revolting.", "Yuck, {event}; I couldn't even look at it.",
        "It was so nasty: {event}.", "I'm repulsed because {event}.",
    ),
    "fear": (
        "I'm terrified: {event}.", "{Event}, and I was shaking with fear.",
        "I'm so scared because {event}.", "Help, {event} and I don't know what to do.",
        "{Event}. My heart is pounding and I can't calm down.", "I was frightened out of my mind when {event}.",
        "What if something terrible happens? {Event}.", "I'm panicking because {event}.",
    ),
    "joy": (
        "I'm so happy: {event}!", "{Event}, and I couldn't stop smiling all day.",
        "Best day ever! {Event}.", "I'm thrilled that {event}.",
        "{Event}. I feel wonderful!", "What a joy, {event}!",
        "I'm over the moon because {event}.", "Yay! {Event}, and I'm delighted.",
    ),
    "neutral": (
        "Just so you know, {event}.", "For the record, {event}.", "Quick update: {event}.",
        "By the way, {event}.",
        "{Event}, as planned.", "As far as I know, {event}.", "Note that {event}.", "I was told that {event}.",
    ),
    "sadness": (
        "I feel so sad: {event}.", "{Event}, and I cried all night.",
        "It breaks my heart that {event}.", "{Event}. I feel empty and alone.",
        "I'm heartbroken because {event}.", "Sigh. {Event}, and nothing feels the same.",
        "I miss how things were; {event}.", "I'm so down today because {event}.",
    ),
    "surprise": (
        "Wow, I did not see that coming: {event}!", "{Event}? I'm completely astonished.",
        "No way! {Event}.", "I was stunned when {event}.",
        "{Event}, and I can hardly believe it.", "What a surprise, {event}!",
        "I never expected that {event}.", "Whoa, {event}! Totally unexpected.",
    ),
}

# Flat templates shared by every label: here only the event tells the emotion,
# so the task cannot be solved from the wording of the template alone.
SHARED_TEMPLATES = ("Well, {event}.", "So, {event}.", "Guess what: {event}.", "Today {event}.")

# Flat, report-style rewrites of an event: the neutral side of a contrast pair.
NEUTRAL_REWRITES = (
    "{Event}.", "It was noted that {event}.", "According to the log, {event}.",
    "For the record, {event}.", "The report says {event}.", "Update: {event}.",
)

# Control task: (template, answer function, operand constraint). Items are
# plural nouns; names give variety.
def _fill(template: str, event: str) -> str:
    return template.replace("{event}", event).replace("{Event}", event[0].upper() + event[1:])


def _split(items: Sequence[str], n_test: int, rng: random.Random) -> tuple[list[str], list[str]]:
    items = list(items)
    rng.shuffle(items)
    return items[n_test:], items[:n_test]


def _utterances(events: Sequence[str], templates: Sequence[str], n: int, rng: random.Random,
                taken: set[str]) -> list[str]:
    """``n`` distinct utterances cycling over shuffled (event, template) cells."""
    cells = [(e, t) for e in events for t in templates]
    rng.shuffle(cells)
    out: list[str] = []
    for _ in range(6):  # a few passes: events with {who} yield new strings on revisits
        for event, template in cells:
            text = _fill(template, event.replace("{who}", rng.choice(WHO)))
            if text not in taken:
                taken.add(text)
                out.append(text)
                if len(out) == n:
                    return out
    raise AffectlensError(f"cannot generate {n} distinct utterances")  # pragma: no cover


def emotion_splits(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """Balanced train/test rows ``{"text", "label"}`` over EMOTIONS.

    Test events *and* label-specific test templates are held out of training;
    the label-neutral SHARED_TEMPLATES appear in both splits (with different
    events), so part of the test set can only be solved from the event.
    """
    rng = random.Random(seed)
    train: list[dict] = []
    test: list[dict] = []
    taken: set[str] = set()
    for label in EMOTIONS:
        tr_events, te_events = _split(EVENTS[label], len(EVENTS[label]) // 3, rng)
        tr_tmpl, te_tmpl = _split(TEMPLATES[label], 3, rng)
        train += [{"text": t, "label": label}
                  for t in _utterances(tr_events, tr_tmpl + list(SHARED_TEMPLATES), N_TRAIN, rng, taken)]
        test += [{"text": t, "label": label}
                 for t in _utterances(te_events, te_tmpl + list(SHARED_TEMPLATES), N_TEST, rng, taken)]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def contrast_pairs(seed: int = SEED) -> list[dict]:
    """``{"emotional", "neutral", "label"}``: the same event told with and without affect."""
    rng = random.Random(seed + 2)
    out: list[dict] = []
    for label in EMOTIONS:
        if label == "neutral":
            continue
        cells = [(e, t) for e in EVENTS[label] for t in TEMPLATES[label]]
        rng.shuffle(cells)
        seen: set[str] = set()
        for event, template in cells:
            ev = event.replace("{who}", rng.choice(WHO))
            emotional = _fill(template, ev)
            if emotional in seen:
                continue
            seen.add(emotional)
            out.append({"emotional": emotional, "neutral": _fill(rng.choice(NEUTRAL_REWRITES), ev),
                        "label": label})
            if len(seen) == N_PAIRS:
                break
    return out


def _jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n" for r in rows)


README = """\
# Bundled data (generated by affectlens)

Every file here is written by `affectlens/tasks/corpus.py` from seeded templates
(seed {seed}); regenerate with `python -m affectlens.tasks.corpus`. A test checks
that these files are byte-identical to what the code writes.

| file | rows | content |
|---|---|---|
| emotion_train.jsonl | {etr} | `{{"text", "label"}}`, labels {emotions}, {ntr} per label |
| emotion_test.jsonl | {ete} | same labels, {nte} per label; events and emotion-specific templates disjoint from train |
| control_train.jsonl | {ctr} | arithmetic word problems, `label` = answer "0".."9", {nctr} per answer |
| control_test.jsonl | {cte} | same, {ncte} per answer; texts disjoint from train |
| control_eval.jsonl | {cev} | same, {ncev} per answer; texts disjoint from control_train and control_test (a control of >= 500 rows for a powered study: task `control_eval`) |
| pairs.jsonl | {npairs} | `{{"emotional", "neutral", "label"}}`: one event told with and without affect, {npp} per emotional label |

The emotion corpus is synthetic: utterances are built from label-specific
templates (e.g. "I'm so angry right now: ...") and label-neutral ones
("Well, ...") around label-specific events. The test split holds out both
events and emotion-specific templates, so a model must generalise from cue
words and event meaning, not recall strings; it is still small and easy. It is a smoke-test and a controlled
workload for comparing *where* fine-tuning changes a model, not a benchmark of
emotion recognition; use MELD or your own data for claims about affect.

Licence: generated by affectlens, Apache-2.0 (same as the package). No
third-party text is included.
"""


def render() -> dict[str, str]:
    """File name -> exact file contents, as committed in ``affectlens/data/``."""
    etr, ete = emotion_splits()
    ctr, cte = control_splits(SEED)
    cev = control_eval(SEED)
    pairs = contrast_pairs()
    files = {
        "emotion_train.jsonl": _jsonl(etr),
        "emotion_test.jsonl": _jsonl(ete),
        "control_train.jsonl": _jsonl(ctr),
        "control_test.jsonl": _jsonl(cte),
        "control_eval.jsonl": _jsonl(cev),
        "pairs.jsonl": _jsonl(pairs),
    }
    files["README.md"] = README.format(
        seed=SEED, etr=len(etr), ete=len(ete), ctr=len(ctr), cte=len(cte), cev=len(cev), ncev=N_CONTROL_EVAL,
        npairs=len(pairs),
        emotions=", ".join(EMOTIONS), ntr=N_TRAIN, nte=N_TEST, nctr=N_CONTROL_TRAIN,
        ncte=N_CONTROL_TEST, npp=N_PAIRS)
    return files


def write(out_dir: str | Path = DATA_DIR) -> list[Path]:
    """Write all bundled files into ``out_dir`` (default: the package's data dir)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render().items():
        p = out / name
        tmp = temp_file(p)  # a new file: a user's look-alike of the temp name is never truncated
        try:
            tmp.write_text(text, encoding="utf-8", newline="\n")
            tmp.replace(p)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        paths.append(p)
    return paths


def bundled_path(name: str) -> Path:
    """Path of a bundled file by name (``emotion_train``, ``control_test``, ``pairs``, ...)."""
    stem = name[:-6] if name.endswith(".jsonl") else name
    if stem not in NAMES:
        raise AffectlensError(f"unknown bundled data '{name}'; choose from: {', '.join(NAMES)}")
    p = DATA_DIR / f"{stem}.jsonl"
    if not p.is_file():
        raise AffectlensError(f"bundled data {p} is missing; run `python -m affectlens.tasks.corpus`")
    return p


def read_jsonl_lines(path: str | Path) -> list[tuple[int, dict]]:
    """``(line number, row)`` of every non-blank line of a JSONL file.

    A line that is not a JSON object, a file that is not UTF-8 text and a file
    without rows are one-line errors naming the file (and the line).
    """
    p = Path(path)
    if not p.is_file():
        raise AffectlensError(f"data file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise AffectlensError(f"data file {p} is not UTF-8 text (byte {e.start})") from None
    rows = parse_jsonl_lines(text, p)
    if not rows:
        raise AffectlensError(f"data file {p} has no rows")
    return rows


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a malformed line is a one-line error naming the line."""
    return [row for _, row in read_jsonl_lines(path)]


_JSON_NAMES = {"NoneType": "null", "bool": "a boolean", "float": "a number", "int": "a number",
               "list": "a list", "dict": "an object", "str": "a string"}


def labelled_rows(path: str | Path) -> list[tuple[int, str, str]]:
    """``(line, text, label)`` of a ``{"text", "label"}`` JSONL file, every field checked.

    ``text`` must be a non-empty string; ``label`` a non-empty string or an
    integer (answers like ``7``). Missing, null, empty or other-typed fields
    stop with one line naming the file and line number.
    """
    p = Path(path)
    out = []
    for i, row in read_jsonl_lines(p):
        for key in ("text", "label"):
            if key not in row:
                raise AffectlensError(f"{p} line {i}: no '{key}' field")
            value = row[key]
            ok = isinstance(value, str) or (key == "label" and isinstance(value, int)
                                             and not isinstance(value, bool))
            if not ok:
                raise AffectlensError(f"{p} line {i}: '{key}' must be a string, not "
                                      f"{_JSON_NAMES.get(type(value).__name__, type(value).__name__)}")
            if not str(value).strip():
                raise AffectlensError(f"{p} line {i}: '{key}' is empty")
        out.append((i, row["text"], str(row["label"]).strip()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m affectlens.tasks.corpus",
                                     description="Regenerate the bundled data files.")
    parser.add_argument("--out", default=str(DATA_DIR), help="output dir (default: the package data dir)")
    args = parser.parse_args(argv)
    for p in write(args.out):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
