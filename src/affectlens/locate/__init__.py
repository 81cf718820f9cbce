"""Locate: module-wise weight change between a base and its tuned models (Eq. 1, Eq. 2, distributions).

- ``weight_change`` the stage: open the models, run the pass, write the run dir (``locate``, ``Tuned``)
- ``tensor_pass``   one streaming pass over every tensor pair: norms and element-wise change codes
- ``stats``         histograms, quantiles and the module ranking from the pass's accumulators
- ``figures``       heatmaps and distributions, drawn in a child process while the pass runs

May import the ground floor (``weights``, ``modules``, ``runs``, ``plots``, ``errors``)
and ``models``; nothing of the other stages.
"""

from __future__ import annotations

from typing import Any

_SUBMODULES = ('figures', 'stats', 'tensor_pass', 'tuned', 'weight_change')


def __getattr__(name: str) -> Any:
    # PEP 562: the weight_change module's names on first use, so that importing a light
    # submodule does not import torch. A submodule name is imported as such: ``from . import x``
    # asks the package for ``x`` before importing it, and must not recurse into this hook.
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module(".weight_change", __name__), name)
