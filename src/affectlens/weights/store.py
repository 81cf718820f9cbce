"""Lazy, one-tensor-at-a-time access to checkpoints of every common format.

Diffing two 7B models must not need two 7B models in memory: a store maps
each tensor name to where it lives and reads it only on ``get`` (safetensors
and GGUF through mmap). Names and orientation are always Hugging Face's, so a
GGUF base compares directly with an HF fine-tune.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..errors import AffectlensError
from ..modules import Inventory, inventory
from .finite import check_finite, tensor_file

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "F8_E5M2": getattr(torch, "float8_e5m2", None),
    "U16": getattr(torch, "uint16", None), "U32": getattr(torch, "uint32", None),
    "U64": getattr(torch, "uint64", None),
}

# GGUF tensor names -> HF names (llama-family layout).
_GGUF_LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
_GGUF_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class WeightStore:
    """A checkpoint's tensors by HF name, read lazily. Use as a context manager."""

    path: Path

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, name: str) -> torch.dtype:
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def get_finite(self, name: str) -> torch.Tensor:
        """``get(name)``, refused with one line naming the tensor and its file if it holds a NaN or an Inf."""
        t = self.get(name)
        check_finite(t, f"tensor {name} of {tensor_file(self, name)}")
        return t

    @property
    def config(self) -> dict[str, Any]:
        return {}

    @cached_property
    def inventory(self) -> Inventory:
        return inventory(self.names())

    def numel(self, name: str) -> int:
        n = 1
        for d in self.shape(name):
            n *= d
        return n

    def nbytes(self, name: str) -> int:
        return self.numel(name) * torch.empty((), dtype=self.dtype(name)).element_size()

    def __contains__(self, name: str) -> bool:
        return name in self._name_set

    @cached_property
    def _name_set(self) -> frozenset[str]:
        return frozenset(self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def close(self) -> None:
        pass

    def __enter__(self) -> WeightStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _st_itemsize(dtype: str) -> int | None:
    dt = _ST_DTYPES.get(dtype)
    return None if dt is None else torch.empty((), dtype=dt).element_size()


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and validate a safetensors header; a truncated, corrupt or lying file is an error.

    The checks are the ones ``safetensors`` itself makes on load (every entry a
    dict with a known ``dtype``, a ``shape`` and ``data_offsets``; ``end - start
    == numel * itemsize``; tensors packed back to back from offset 0 to the end
    of the file), so a header lying about a tensor is refused by every reader
    instead of being copied into a file that ``safetensors.load_file`` rejects.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than its header length field")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise ValueError(f"header length {n} exceeds file size {size}")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise AffectlensError(f"corrupt safetensors file {path}: {e}") from None
    except OSError as e:
        raise AffectlensError(f"cannot read {path}: {e.strerror or e}") from None

    def bad(msg: str) -> AffectlensError:
        return AffectlensError(f"corrupt safetensors file {path}: {msg}")

    if not isinstance(header, dict):
        raise bad(f"header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__")
    if meta is not None and not isinstance(meta, dict):
        raise bad("__metadata__ is not an object")
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise bad(f"entry for tensor {name} is not an object")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
        if missing:
            raise bad(f"entry for tensor {name} lacks {', '.join(missing)}")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        itemsize = _st_itemsize(dtype) if isinstance(dtype, str) else None
        if itemsize is None:
            raise bad(f"tensor {name} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"tensor {name} has an invalid shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2 or not all(type(x) is int for x in offs)
                or not 0 <= offs[0] <= offs[1]):
            raise bad(f"tensor {name} has invalid data_offsets {offs!r}")
        numel = 1
        for d in shape:
            numel *= d
        if offs[1] - offs[0] != numel * itemsize:
            raise bad(f"tensor {name} is {dtype} {shape} ({numel * itemsize} bytes) but its data_offsets "
                      f"span {offs[1] - offs[0]} bytes")
        spans.append((offs[0], offs[1], name))
    data = size - 8 - n
    pos = 0
    for start, end, name in sorted(spans):
        if start != pos:
            raise bad(f"tensor {name} starts at byte {start} of the data, expected {pos} "
                      "(overlapping or non-contiguous tensors)")
        pos = end
    if pos > data:
        raise AffectlensError(
            f"truncated safetensors file {path}: header promises {8 + n + pos} bytes, file has {size}")
    if pos != data:
        raise bad(f"{data - pos} bytes after the last tensor's data")
    header["__header_bytes__"] = 8 + n
    return header


class SafetensorsStore(WeightStore):
    """A single ``.safetensors`` file, or an HF dir (sharded with an index, or not)."""

    def __init__(self, path: Path, files: list[Path], config: dict[str, Any]) -> None:
        self.path = path
        self._config = config
        self._where: dict[str, Path] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        for f in files:
            header = read_safetensors_header(f)
            base = header.pop("__header_bytes__")
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                info = dict(info, base=base)
                if name in self._where:
                    raise AffectlensError(f"tensor {name} appears in both {self._where[name].name} and {f.name}")
                self._where[name] = f
                self._meta[name] = info

    def names(self) -> list[str]:
        return list(self._where)

    def file_of(self, name: str) -> Path:
        """The file (shard) holding ``name``."""
        self._info(name)
        return self._where[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info(name)["shape"])

    def dtype(self, name: str) -> torch.dtype:
        dt = _ST_DTYPES.get(self._info(name)["dtype"])
        if dt is None:
            raise AffectlensError(f"unsupported dtype {self._info(name)['dtype']} for {name}")
        return dt

    def _info(self, name: str) -> dict[str, Any]:
        try:
            return self._meta[name]
        except KeyError:
            raise AffectlensError(f"tensor {name} not found in {self.path}") from None

    def location(self, name: str) -> tuple[Path, int, int]:
        """(file, byte offset, byte count) of a tensor's data, for kernel-side copies."""
        info = self._info(name)
        start, end = info["data_offsets"]
        return self._where[name], info["base"] + start, end - start

    def get(self, name: str) -> torch.Tensor:
        return self.read_rows(name, 0, self.shape(name)[0] if self.shape(name) else 1)

    def read_rows(self, name: str, r0: int, r1: int) -> torch.Tensor:
        """Rows [r0, r1) of a tensor, read with plain file I/O.

        Not mmap: pages touched through a long-lived mapping stay in RSS, so a
        whole-model diff would grow to the size of the files it read.
        """
        info = self._info(name)
        dtype = self.dtype(name)
        shape = list(info["shape"])
        itemsize = torch.empty((), dtype=dtype).element_size()
        row = itemsize
        for d in shape[1:]:
            row *= d
        start, end = info["data_offsets"]
        if not shape:
            r0, r1 = 0, 1
        off = info["base"] + start + r0 * row
        n = (r1 - r0) * row
        if off + n > info["base"] + end:
            raise AffectlensError(f"row range {r0}:{r1} outside tensor {name}")
        buf = bytearray(n)
        with open(self._where[name], "rb", buffering=0) as f:
            f.seek(off)
            got = f.readinto(buf)
        if got != n:
            raise AffectlensError(f"truncated read of {name} from {self._where[name]}")
        if n == 0:
            return torch.empty([r1 - r0, *shape[1:]], dtype=dtype)
        t = torch.frombuffer(buf, dtype=dtype)
        return t.reshape([r1 - r0, *shape[1:]] if shape else [])

    @property
    def config(self) -> dict[str, Any]:
        return self._config



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
            mapped = _GGUF_LAYER.get(parts[2])
            if mapped:
                return f"model.layers.{parts[1]}.{mapped}.{parts[-1]}"
        elif parts[0] in _GGUF_GLOBAL:
            return f"{_GGUF_GLOBAL[parts[0]]}.{parts[-1]}"
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


class TensorDictStore(WeightStore):
    """A dict of tensors (e.g. a loaded model's ``state_dict()``) seen as a store."""

    def __init__(self, tensors: dict[str, torch.Tensor], config: dict[str, Any] | None = None,
                 path: str | os.PathLike = "<memory>") -> None:
        self._t = tensors
        self._config = dict(config or {})
        self.path = Path(path)

    def names(self) -> list[str]:
        return list(self._t)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._get(name).shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._get(name).dtype

    def _get(self, name: str) -> torch.Tensor:
        try:
            return self._t[name]
        except KeyError:
            raise AffectlensError(f"tensor {name} not found in {self.path}") from None

    def get(self, name: str) -> torch.Tensor:
        return self._get(name).detach()

    def __contains__(self, name: str) -> bool:
        return name in self._t

    @property
    def config(self) -> dict[str, Any]:
        return self._config


def pickle_refusal(path: str | os.PathLike) -> AffectlensError:
    """The one message for a pickle checkpoint read without --allow-pickle."""
    return AffectlensError(
        f"{path} is a pickle checkpoint; loading it can run code: pass --allow-pickle if you trust it")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def load_pickle(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True``: the one pickle loader of affectlens.

    Memory-mapped when the file allows it; a legacy (pre-zip) file, which
    cannot be mapped, is read again without mmap. Any failure is one line.
    """
    p = Path(path)
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
    except Exception as first:
        try:
            return torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            # The mmap attempt's message is the useful one unless the file is legacy.
            err = e if "zipfile" in str(first) or "mmap" in str(first) else first
            raise AffectlensError(
                f"cannot read pickle checkpoint {p} with weights_only=True: {_first_line(err)}") from None


def load_pickle_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A pickled state dict (``pytorch_model.bin``): its tensors, by name."""
    obj = load_pickle(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise AffectlensError(f"pickle checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


class PickleStore(TensorDictStore):
    """``pytorch_model.bin`` (loaded with ``weights_only=True``; only behind --allow-pickle)."""

    def __init__(self, path: Path, files: list[Path], config: dict[str, Any]) -> None:
        tensors: dict[str, torch.Tensor] = {}
        self._files: dict[str, Path] = {}
        for f in files:
            sd = load_pickle_state_dict(f)
            for k in sd:
                if k in tensors:
                    raise AffectlensError(f"tensor {k} appears in both {self._files[k].name} and {f.name}")
                self._files[k] = f
            tensors.update(sd)
        if not tensors:
            raise AffectlensError(f"pickle checkpoint {path} holds no tensors")
        super().__init__(tensors, config, path)

    def file_of(self, name: str) -> Path:
        self._get(name)
        return self._files[name]


def read_config(directory: Path) -> dict[str, Any]:
    cfg = directory / "config.json"
    if not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AffectlensError(f"corrupt config.json in {directory}: {e}") from None
    if not isinstance(data, dict):
        raise AffectlensError(f"corrupt config.json in {directory}: a JSON {type(data).__name__}, not an object")
    # VLMs nest the language model's config.
    for key in ("text_config", "language_config", "llm_config"):
        if isinstance(data.get(key), dict):
            merged = dict(data[key])
            merged.setdefault("model_type", data.get("model_type"))
            merged["wrapper_model_type"] = data.get("model_type")
            return merged
    return data


def open_weights(path: str | os.PathLike, allow_pickle: bool = False) -> WeightStore:
    """Open a checkpoint lazily: HF dir (sharded or not), ``.safetensors``, ``.gguf``, ``.bin``."""
    p = Path(path)
    if str(path) in ("smollm2", "default"):
        from ..models import default_gguf_path

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
        absent = [n for n in weight_map if n not in store._where]
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
