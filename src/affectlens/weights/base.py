"""The store interface: a checkpoint's tensors by Hugging Face name, read one at a time.

Every format (``safetensors_store``, ``gguf_store``, ``pickle_store``) and the
in-memory ``TensorDictStore`` answer the same few questions (names, shape,
dtype, one tensor), so diffing, transferring and ablating never care where a
tensor lives or how it is encoded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AffectlensError
from ..modules import Inventory, inventory
from .finite import check_finite, tensor_file

if TYPE_CHECKING:  # torch is imported by the stores that decode tensors, not by the interface
    import torch


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
        import torch

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
