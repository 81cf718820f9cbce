"""Opening a checkpoint of any common format lazily, one tensor at a time.

Diffing two 7B models must not need two 7B models in memory: a store maps
each tensor name to where it lives and reads it only on ``get``. This module
decides the format of a path (HF dir, sharded or not; ``.safetensors``;
``.gguf``; pickle ``.bin`` behind --allow-pickle) and reads ``config.json``;
the formats live in their own modules and are re-exported here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import AffectlensError
from .base import TensorDictStore, WeightStore
from .gguf_store import GGUFStore
from .pickle_store import PickleStore, load_pickle, load_pickle_state_dict, pickle_refusal
from .rawcopy import read_config
from .safetensors_store import SafetensorsStore, read_safetensors_header


def open_weights(path: str | os.PathLike, allow_pickle: bool = False) -> WeightStore:
    """Open a checkpoint lazily: HF dir (sharded or not), ``.safetensors``, ``.gguf``, ``.bin``."""
    p = Path(path)
    if str(path) in ("smollm2", "default"):
        from ..paths import default_gguf_path

        p = default_gguf_path()
    if not p.exists():
        raise AffectlensError(f"checkpoint {p} does not exist")
    if p.is_file():
        if p.suffix == ".safetensors":
            return SafetensorsStore(p, [p], read_config(p.parent))
        if p.suffix == ".gguf":
            return GGUFStore(p)
        if p.suffix in (".bin", ".pt", ".pth"):
            if not allow_pickle:
                raise pickle_refusal(p)
            return PickleStore(p, [p], read_config(p.parent))
        raise AffectlensError(f"unknown checkpoint format: {p.name}")
    if (p / "adapter_config.json").is_file():
        raise AffectlensError(f"{p} is a PEFT adapter, not a full checkpoint")
    config = read_config(p)
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise AffectlensError(f"corrupt index {index}: {type(e).__name__}: {e}") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise AffectlensError(f"corrupt index {index}: weight_map is not a map of tensor names to files")
        files = sorted({p / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise AffectlensError(f"{index.name} names missing shard(s): {', '.join(missing[:3])}")
        store = SafetensorsStore(p, files, config)
        absent = [n for n in weight_map if n not in store]
        if absent:
            raise AffectlensError(f"index lists tensor {absent[0]} that its shard does not hold")
        return store
    st = sorted(p.glob("*.safetensors"))
    if st:
        return SafetensorsStore(p, st, config)
    gg = sorted(p.glob("*.gguf"))
    if len(gg) == 1:
        return GGUFStore(gg[0])
    bins = sorted(p.glob("pytorch_model*.bin"))
    if bins:
        if not allow_pickle:
            raise pickle_refusal(bins[0])
        return PickleStore(p, bins, config)
    raise AffectlensError(f"no weights found in {p} (no .safetensors, .gguf or pytorch_model.bin)")


__all__ = [
    "GGUFStore",
    "PickleStore",
    "SafetensorsStore",
    "TensorDictStore",
    "WeightStore",
    "load_pickle",
    "load_pickle_state_dict",
    "open_weights",
    "pickle_refusal",
    "read_config",
    "read_safetensors_header",
]
