"""Models: loading checkpoints and adapters, VLM families, devices, transformers shims.

- ``resolve``   model specs to paths (``smollm2``, adapter dirs to their base)
- ``loading``   ``load_model``/``load_tokenizer``: pickle policy, completeness, finiteness
- ``adapters``  an adapter's recorded base and its fingerprint
- ``merged``    a base plus a LoRA adapter read as one weight store
- ``vlm``       vision-language families (images in, the same scoring out)
- ``devices``   device, dtype and device_map choice
- ``hfcompat``  shims over transformers/PEFT version differences

May import ``tasks.prompts`` and the ground floor (``weights``, ``paths``, ``errors``, ``runs``).
"""

from __future__ import annotations

from typing import Any

_SUBMODULES = ('adapters', 'devices', 'hfcompat', 'loading', 'merged', 'resolve', 'vlm')


def __getattr__(name: str) -> Any:
    # PEP 562: the loading module's names on first use, so that importing a light
    # submodule does not import torch. A submodule name is imported as such: ``from . import x``
    # asks the package for ``x`` before importing it, and must not recurse into this hook.
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module(".loading", __name__), name)
