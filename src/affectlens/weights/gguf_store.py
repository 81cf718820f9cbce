"""GGUF files (llama.cpp) seen with Hugging Face names and orientation.

A GGUF base must compare directly with an HF fine-tune: tensor names are
mapped to HF's, tensors are dequantised to float32 on read, and llama.cpp's
rotary row permutation of q/k is undone as transformers does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import AffectlensError
from .base import WeightStore

# GGUF tensor names -> HF names (llama-family layout).
GGUF_LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
GGUF_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class GGUFStore(WeightStore):
    """A GGUF file (mmap); tensors dequantised to float32 on ``get``, in HF names/orientation."""

    def __init__(self, path: Path) -> None:
        import gguf

        self.path = path
        try:
            self._reader = gguf.GGUFReader(str(path))
        except Exception as e:
            raise AffectlensError(f"corrupt or unreadable GGUF file {path}: {type(e).__name__}: {e}") from None
        self._arch = self._field("general.architecture") or "llama"
        a = self._arch
        self._config = {
            "model_type": a,
            "architectures": [f"{a.capitalize()}ForCausalLM"],
            "num_hidden_layers": self._field(f"{a}.block_count"),
            "hidden_size": self._field(f"{a}.embedding_length"),
            "intermediate_size": self._field(f"{a}.feed_forward_length"),
            "num_attention_heads": self._field(f"{a}.attention.head_count"),
            "num_key_value_heads": self._field(f"{a}.attention.head_count_kv"),
            "vocab_size": self._field(f"{a}.vocab_size"),
            "source_format": "gguf",
        }
        self._tensors: dict[str, Any] = {}
        self._gguf_name: dict[str, str] = {}
        for t in self._reader.tensors:
            hf = self._hf_name(t.name)
            self._tensors[hf] = t
            self._gguf_name[hf] = t.name

    def _field(self, key: str) -> Any:
        f = self._reader.fields.get(key)
        if f is None:
            return None
        try:
            v = f.contents()
        except Exception:
            return None
        return v

    @staticmethod
    def _hf_name(name: str) -> str:
        parts = name.split(".")
        if parts[0] == "blk" and len(parts) >= 4:
            mapped = GGUF_LAYER.get(parts[2])
            if mapped:
                return f"model.layers.{parts[1]}.{mapped}.{parts[-1]}"
        elif parts[0] in GGUF_GLOBAL:
            return f"{GGUF_GLOBAL[parts[0]]}.{parts[-1]}"
        return name  # unknown: kept verbatim so the inventory reports it

    def names(self) -> list[str]:
        return list(self._tensors)

    def _t(self, name: str) -> Any:
        try:
            return self._tensors[name]
        except KeyError:
            raise AffectlensError(f"tensor {name} not found in {self.path}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(x) for x in reversed(self._t(name).shape.tolist()))

    def dtype(self, name: str) -> torch.dtype:
        return torch.float32

    def get(self, name: str) -> torch.Tensor:
        import numpy as np
        from gguf.quants import dequantize

        t = self._t(name)
        arr = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        arr = arr.reshape(self.shape(name))
        # llama.cpp permutes q/k rows for its rotary layout; undo it as transformers does.
        if self._arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            n_head = int(self._config["num_attention_heads"])
            n_kv = int(self._config.get("num_key_value_heads") or n_head)
            heads = n_head if ".q_proj." in name else n_kv
            dim = arr.shape[0] // heads // 2
            arr = arr.reshape(heads, dim, 2, *arr.shape[1:]).swapaxes(2, 1).reshape(arr.shape)
        return torch.from_numpy(np.array(arr, dtype=np.float32, order="C", copy=arr.flags.writeable is False or None))

    @property
    def config(self) -> dict[str, Any]:
        return self._config
