"""Few-shot examples: K labelled examples from the task's *train* split, balanced, seeded.

Small instruction models often answer a closed-set question better after a
few solved examples. The examples come from another split than the one
scored (a shot that is also a test item inflates the score), are balanced by
label (round robin over the labels, so no label's prior is planted by the
prompt), and are drawn with a seed recorded in the manifest. Any example
whose text also occurs in the evaluated split is never drawn.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ..errors import AffectlensError
from ..tasks.loaders import Example, LoadedTask, load_task
from ..tasks.spec import TaskSpec, parse_task
from ..tasks.tables import sibling_split


@dataclass(frozen=True)
class Shots:
    """The drawn examples (prompt order) and where they came from."""

    examples: tuple[Example, ...]
    source: str
    seed: int

    def __len__(self) -> int:  # zero-shot is falsy
        return len(self.examples)

    def pairs(self) -> list[tuple[str, str]]:
        return [(e.text, e.gold) for e in self.examples]

    def record(self) -> dict:
        """What the manifest and scores.json keep: enough to rebuild the prompt."""
        return {"k": len(self.examples), "source": self.source, "seed": self.seed,
                "examples": [{"text": e.text, "label": e.gold} for e in self.examples]}


def train_split(spec: TaskSpec) -> TaskSpec | None:
    """The train split beside ``spec`` (None when the data have none)."""
    return sibling_split(spec, "train")


def source_spec(spec: TaskSpec, fewshot_from: str | TaskSpec | None = None) -> TaskSpec:
    """Where shots come from: ``fewshot_from`` when given, else the task's train split."""
    if fewshot_from is not None:
        src = parse_task(fewshot_from)
    else:
        found = train_split(spec)
        if found is None:
            raise AffectlensError(f"task {spec.name} has no train split to draw few-shot examples from; "
                                  "pass fewshot_from=SPEC (--fewshot-from)")
        src = found
    if (src.loader, src.path, src.options) == (spec.loader, spec.path, spec.options):
        raise AffectlensError(f"task {spec.name}: few-shot examples must come from another split "
                              "than the one evaluated")
    return src


def draw_shots(task: LoadedTask, k: int, seed: int, fewshot_from: str | TaskSpec | None = None) -> Shots:
    """``k`` examples for ``task``: balanced over its labels, none whose text is in ``task``."""
    if k < 0:
        raise AffectlensError(f"--num-fewshot must be 0 or more, not {k}")
    if k == 0:
        return Shots((), "", seed)
    src = source_spec(task.spec, fewshot_from)
    pool = load_task(src)
    return Shots(tuple(balanced_draw(pool.examples, task.labels, k, seed,
                                     exclude={e.text for e in task.examples}, where=task.spec.name)),
                 src.name, seed)


def balanced_draw(pool: Sequence[Example], labels: Sequence[str], k: int, seed: int,
                  exclude: Collection[str] = (), where: str = "task") -> list[Example]:
    """Round robin over ``labels`` in a seeded order (candidates shuffled by ``seed``), then shuffled."""
    rng = random.Random(seed)
    exclude = set(exclude)
    by_label: dict[str, list[Example]] = {lab: [] for lab in labels}
    for e in pool:
        if e.label in by_label and e.text not in exclude:
            by_label[e.label].append(e)
    for cands in by_label.values():
        rng.shuffle(cands)
    out: list[Example] = []
    order = [lab for lab in labels if by_label[lab]]
    rng.shuffle(order)  # with k not a multiple of the labels, which labels get one more is drawn too
    while len(out) < k and any(by_label[lab] for lab in order):
        for lab in order:
            if by_label[lab] and len(out) < k:
                out.append(by_label[lab].pop())
    if len(out) < k:
        raise AffectlensError(f"{where}: only {len(out)} usable few-shot examples, {k} asked")
    rng.shuffle(out)
    return out


__all__ = ["Shots", "balanced_draw", "draw_shots", "source_spec", "train_split"]
