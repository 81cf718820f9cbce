"""Pickle checkpoints (``pytorch_model.bin``): only behind --allow-pickle, always ``weights_only``.

Loading a pickle can run code, so it is refused unless asked for, and even
then read with ``torch.load(weights_only=True)`` through the one loader here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import AffectlensError
from .base import TensorDictStore


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
