"""The bundled non-affective control: arithmetic word problems with answers 0..9 (a stand-in for the
paper's GSM8K math), balanced per answer, each split text-disjoint from the others.

``corpus`` writes them into the package's data files with its seed; each generator takes the seed, so the
files are reproducible byte for byte.
"""

from __future__ import annotations

import random

from ..errors import AffectlensError

N_CONTROL_TRAIN, N_CONTROL_TEST = 30, 14  # per answer 0..9 -> 300 / 140
N_CONTROL_EVAL = 60  # per answer 0..9 -> 600: a control test large enough for a powered study (>= 500 rows)

CONTROL_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jun",
                 "Kofi", "Lena", "Mo", "Nia", "Omar", "Pia")
CONTROL_ITEMS = ("apples", "pencils", "marbles", "stamps", "cookies", "books", "shells", "cards",
                 "coins", "stickers")
CONTROL_TEMPLATES = (
    ("add", "{name} has {a} {items} and gets {b} more. How many {items} does {name} have now?"),
    ("sub", "{name} had {a} {items} and gave away {b}. How many {items} are left?"),
    ("mul", "{name} fills {a} bags with {b} {items} each. How many {items} is that in total?"),
    ("div", "{name} shares {a} {items} equally among {b} friends. How many {items} does each friend get?"),
    ("add", "There are {a} {items} on the table and {name} puts down {b} more. How many {items} are on the table?"),
    ("sub", "A box holds {a} {items}. {name} takes out {b}. How many {items} remain in the box?"),
)


def _problem(rng: random.Random, answer: int) -> str:
    kind, template = rng.choice(CONTROL_TEMPLATES)
    if kind == "add":
        a = rng.randint(0, answer)
        b = answer - a
    elif kind == "sub":
        b = rng.randint(1, 9)
        a = answer + b
    elif kind == "mul":
        pairs = [(a, b) for a in range(1, 10) for b in range(1, 10) if a * b == answer]
        if not pairs:  # 0 and primes > 7 have few factorisations; fall back to addition
            return _problem_add(rng, answer)
        a, b = rng.choice(pairs)
    else:
        b = rng.randint(2, 6)
        a = answer * b
    return template.format(name=rng.choice(CONTROL_NAMES), items=rng.choice(CONTROL_ITEMS), a=a, b=b)


def _problem_add(rng: random.Random, answer: int) -> str:
    a = rng.randint(0, answer)
    return CONTROL_TEMPLATES[0][1].format(name=rng.choice(CONTROL_NAMES),
                                          items=rng.choice(CONTROL_ITEMS), a=a, b=answer - a)


def control_splits(seed: int) -> tuple[list[dict], list[dict]]:
    """Balanced arithmetic word problems with answers 0..9, train/test text-disjoint."""
    rng = random.Random(seed + 1)
    train: list[dict] = []
    test: list[dict] = []
    taken: set[str] = set()
    for answer in range(10):
        rows: list[str] = []
        while len(rows) < N_CONTROL_TRAIN + N_CONTROL_TEST:
            text = _problem(rng, answer)
            if text not in taken:
                taken.add(text)
                rows.append(text)
        train += [{"text": t, "label": str(answer)} for t in rows[:N_CONTROL_TRAIN]]
        test += [{"text": t, "label": str(answer)} for t in rows[N_CONTROL_TRAIN:]]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def control_eval(seed: int) -> list[dict]:
    """A larger control test set (N_CONTROL_EVAL per answer), text-disjoint from control_train and
    control_test. Its own random stream, so the two older files stay byte-identical."""
    train, test = control_splits(seed)
    taken = {r["text"] for r in (*train, *test)}
    rng = random.Random(seed + 3)
    out: list[dict] = []
    for answer in range(10):
        rows: list[str] = []
        tries = 0
        while len(rows) < N_CONTROL_EVAL:
            tries += 1
            if tries > 100_000:  # pragma: no cover - the templates give thousands of distinct problems
                raise AffectlensError(f"cannot generate {N_CONTROL_EVAL} distinct control problems for {answer}")
            text = _problem(rng, answer)
            if text not in taken:
                taken.add(text)
                rows.append(text)
        out += [{"text": t, "label": str(answer)} for t in rows]
    rng.shuffle(out)
    return out


__all__ = ["CONTROL_ITEMS", "CONTROL_NAMES", "CONTROL_TEMPLATES", "N_CONTROL_EVAL", "N_CONTROL_TEST",
           "N_CONTROL_TRAIN", "control_eval", "control_splits"]
