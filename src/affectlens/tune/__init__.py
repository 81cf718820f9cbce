"""Tune: targeted LoRA and full fine-tuning of selected modules (the papers' Table 2 and GET).

- ``run``         the stage: data, base, adapter or full weights, the saved run (``tune``)
- ``training``    the loop: batches, loss on the answer tokens, checkpoints
- ``full``        full fine-tuning of the selected modules only
- ``precision``   dtype policy (bf16 autocast, float32 master weights)
- ``distributed`` the launcher environment (``accelerate launch``, DDP ranks)

May import ``tasks``, ``models``, ``selection``, ``tuneconfig`` and the ground floor.
"""

from __future__ import annotations

from typing import Any

_SUBMODULES = ('distributed', 'full', 'precision', 'run', 'training')


def __getattr__(name: str) -> Any:
    # PEP 562: the run module's names on first use, so that importing a light
    # submodule does not import torch. A submodule name is imported as such: ``from . import x``
    # asks the package for ``x`` before importing it, and must not recurse into this hook.
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module(".run", __name__), name)
