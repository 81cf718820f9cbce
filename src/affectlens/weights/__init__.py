"""Reading checkpoints and adapters lazily, one tensor at a time (``store.open_weights`` picks the format).

The names are resolved on first use (PEP 562): importing a torch-free
submodule (``weights.rawcopy``, ``weights.compat``) must not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .compat import check_adapter_fits, check_architecture
    from .finite import check_finite, check_store_finite
    from .lora import LoraAdapter, lora_delta_norm, lora_inner, open_adapter
    from .store import (
        GGUFStore,
        PickleStore,
        SafetensorsStore,
        TensorDictStore,
        WeightStore,
        load_pickle,
        load_pickle_state_dict,
        open_weights,
        pickle_refusal,
    )

_WHERE = {
    "check_adapter_fits": "compat", "check_architecture": "compat",
    "check_finite": "finite", "check_store_finite": "finite",
    "LoraAdapter": "lora", "lora_delta_norm": "lora", "lora_inner": "lora", "open_adapter": "lora",
    **{n: "store" for n in ("GGUFStore", "PickleStore", "SafetensorsStore", "TensorDictStore", "WeightStore",
                            "load_pickle", "load_pickle_state_dict", "open_weights", "pickle_refusal")},
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "GGUFStore",
    "LoraAdapter",
    "PickleStore",
    "SafetensorsStore",
    "TensorDictStore",
    "WeightStore",
    "check_adapter_fits",
    "check_architecture",
    "check_finite",
    "check_store_finite",
    "load_pickle",
    "load_pickle_state_dict",
    "lora_delta_norm",
    "lora_inner",
    "open_adapter",
    "open_weights",
    "pickle_refusal",
]
