"""``TuneConfig``: the one LoRA training budget, with the one set of defaults.

The gate_proj study compares adapters that differ only in *where* LoRA sits,
so the budget (rank, alpha, dropout, steps, lr, batch, warmup, max length,
seed) must be spelled once. ``affectlens tune`` (library and CLI defaults),
grid budgets, the demo and the study all build a ``TuneConfig``; a caller that
deviates does so with :meth:`TuneConfig.replace`, in one visible place.

Defaults: rank 8 / alpha 16 (PEFT's usual scaling 2), dropout 0.05, 100 steps at
lr 5e-4 with 5 % linear warm-up, batch 8, 256 tokens per example, seed 0,
precision ``auto`` (bf16 autocast where the hardware runs bf16 natively, else
fp32; see :mod:`affectlens.tune.precision`).
``affectlens params --rank`` defaults to the same rank (AffectGPT's r=16 is
``--rank 16``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import AffectlensError

SEED_MAX = 2**32 - 1  # numpy's seeders take 0 .. 2^32-1 and refuse the rest (mid-run, as a traceback)

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TuneConfig:
    """Where LoRA goes (``modules``/``layers``) and the budget it trains with."""

    modules: str = "all"
    layers: str | None = None
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    steps: int = 100
    lr: float = 5e-4
    batch_size: int = 8
    seed: int = 0
    max_length: int = 256
    warmup: float = 0.05
    precision: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.modules, str):  # a list of names is the same selection
            object.__setattr__(self, "modules", ",".join(str(m) for m in self.modules))
        if self.layers is not None and not isinstance(self.layers, str):
            object.__setattr__(self, "layers", ",".join(str(x) for x in self.layers))
        for name, lo in (("steps", 1), ("rank", 1), ("batch_size", 1), ("max_length", 8)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise AffectlensError(f"{name.replace('_', ' ')} must be an integer >= {lo}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise AffectlensError(f"seed must be an integer, got {self.seed!r}")
        if not 0 <= self.seed <= SEED_MAX:
            raise AffectlensError(f"seed must be from 0 to {SEED_MAX}, not {self.seed}")
        for name in ("alpha", "lr", "dropout", "warmup"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise AffectlensError(f"{name} must be a finite number, got {value!r}")
        for name in ("alpha", "lr", "dropout", "warmup"):  # 16 and 16.0 are one budget
            object.__setattr__(self, name, float(getattr(self, name)))
        if not (self.lr > 0 and self.alpha > 0 and 0 <= self.dropout < 1):
            raise AffectlensError("need a finite lr > 0, a finite alpha > 0 and 0 <= dropout < 1")
        if self.precision not in PRECISIONS:
            raise AffectlensError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0 <= self.warmup < 1:
            raise AffectlensError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")

    def replace(self, **changes: Any) -> TuneConfig:
        """A copy with ``changes``; an unknown field is an error, not a silent no-op."""
        bad = sorted(set(changes) - set(FIELDS))
        if bad:
            raise TypeError(f"unknown TuneConfig field(s) {', '.join(bad)}; known: {', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "budget") -> TuneConfig:
        """From a YAML/JSON mapping (a grid's ``budget``); unknown keys are one-line errors."""
        bad = sorted(set(values) - set(FIELDS))
        if bad:
            raise AffectlensError(f"{where} has unknown field(s) {', '.join(bad)}; allowed: {', '.join(FIELDS)}")
        try:
            return cls(**dict(values))
        except AffectlensError as e:
            raise AffectlensError(f"{where}: {e}") from None

    def budget(self) -> dict[str, Any]:
        """The training budget without placement or seed: what every compared adapter shares."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("modules", "layers", "seed")}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TuneConfig))
BUDGET_FIELDS: tuple[str, ...] = tuple(k for k in FIELDS if k not in ("modules", "layers", "seed"))
DEFAULT = TuneConfig()

__all__ = ["BUDGET_FIELDS", "DEFAULT", "FIELDS", "PRECISIONS", "TuneConfig"]
