"""Reading checkpoints and adapters lazily, one tensor at a time."""

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

__all__ = [
    "GGUFStore",
    "LoraAdapter",
    "PickleStore",
    "SafetensorsStore",
    "TensorDictStore",
    "WeightStore",
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
