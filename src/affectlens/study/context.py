"""What every stage gets: the config, the study dir, the resolved base and the injectable workers."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import StageStore
from .config import StudyConfig


@dataclass
class Context:
    """One study run: ``tuner``/``evaluator`` default to affectlens' own (tests pass stand-ins)."""

    cfg: StudyConfig
    root: Path
    store: StageStore
    base_path: Path
    fps: dict[str, Any]  # content fingerprints of the inputs (base, data, tasks, pairs)
    tuner: Callable[..., Any] | None = None
    evaluator: Callable[..., Any] | None = None
    echo: Callable[[str], None] = print
    dtype: str = "auto"
    device: str = "auto"
    executor: Any = None
    allow_pickle: bool = False
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> result (this run)
    train_overlap: dict[str, Any] | None = None  # scored task rows in the training data (preflight's count)
    provenance: dict[str, Any] = field(default_factory=dict)  # data, resolved device/dtype, time split: methods

    def tune_fn(self) -> Callable[..., Any]:
        if self.tuner is not None:
            return self.tuner
        from ..tune.run import tune

        return tune

    def full_ft_supported(self) -> bool:
        """Whether ``tune`` can fine-tune all weights (``method="full"``); a stand-in tuner says itself."""
        fn = self.tune_fn()
        flag = getattr(fn, "supports_full", None)
        if flag is not None:
            return bool(flag)
        try:
            return "method" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            return False

    def abs(self, rel: str) -> str:
        return str((self.root / rel).resolve())


__all__ = ["Context"]
