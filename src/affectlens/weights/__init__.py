"""Reading checkpoints and adapters lazily, one tensor at a time (``store.open_weights`` picks the format)."""

from .compat import check_adapter_fits, check_architecture
from .finite import check_finite, check_store_finite
from .lora import LoraAdapter, lora_delta_norm, lora_inner, open_adapter
from .merged import MergedStore, as_store
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
    "MergedStore",
    "PickleStore",
    "SafetensorsStore",
    "TensorDictStore",
    "WeightStore",
    "as_store",
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
