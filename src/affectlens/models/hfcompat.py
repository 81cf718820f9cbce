"""The few places where transformers' API moved under us, decided in one spot.

transformers 5.2x renamed the KV-cache argument and output field from
``past_key_values`` to ``cache`` (the old name still works but warns, and
``generate`` hands the cache to ``forward`` under the new name). Code that
reads the cache from a forward call's kwargs must look under both names, or
it silently believes nothing is cached.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator
from functools import cache
from typing import Any

CACHE_NAMES = ("cache", "past_key_values")


@cache
def _forward_takes(cls: type[Any], name: str) -> bool:
    try:
        return name in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def cache_kwarg(model: Any) -> str:
    """The name this model's ``forward`` takes its KV cache under."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cls: type = type(inner)  # a plain `type`: mypy deems `type[Any]` unhashable for the cache
    return "cache" if _forward_takes(cls, "cache") else "past_key_values"


def cache_from_kwargs(kwargs: dict[str, Any]) -> Any:
    """The KV cache passed to a forward call, under whichever name it came."""
    for name in CACHE_NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def output_cache(output: Any) -> Any:
    """The KV cache a forward call returned (``cache`` on new releases)."""
    value = getattr(output, "cache", None)
    if value is None and "past_key_values" in getattr(output, "keys", lambda: ())():
        value = output["past_key_values"]
    return value


def cached_length(kwargs: dict[str, Any]) -> int:
    """Tokens already in the KV cache of a forward call (0 without one)."""
    cache = cache_from_kwargs(kwargs)
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    return int(cache.get_seq_length())


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Wrap PEFT model construction: PEFT itself still reads transformers'
    deprecated ``is_gradient_checkpointing`` and would print a FutureWarning
    to every user for a call they never made. Only that warning is hidden."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
