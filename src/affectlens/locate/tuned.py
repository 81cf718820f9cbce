"""The one tuned model a locate pass compares with its base (shared by the pass, its statistics and the stage)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..weights.lora import LoraAdapter
from ..weights.store import WeightStore


@dataclass
class Tuned:
    """One tuned model to compare with the base: a full checkpoint or a PEFT adapter."""

    label: str
    path: Path
    store: WeightStore | None = None
    adapter: LoraAdapter | None = None

    @property
    def kind(self) -> str:
        return "adapter" if self.adapter is not None else "full"
