"""affectlens: where does emotion live inside a model, is it causal, can we tune or steer it?

The public API; the CLI (``affectlens ...``) only wraps these.
"""

from .errors import AffectlensError
from .modules import ModuleKey, parse_layers, parse_name, parse_selection

__version__ = "0.1.0"

_LAZY = {"bundled_path": "tasks.corpus", "count_params": "params", "TuneResult": "tune",
         "default_model_dir": "models", "load_model": "models", "load_tokenizer": "models"}


def __getattr__(name: str):
    # Imported on first use: `import affectlens` (and so the CLI's --help and argument
    # errors) must not import torch, and `python -m affectlens.tasks.corpus` runs without
    # runpy's "found in sys.modules" warning.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AffectlensError",
    "ModuleKey",
    "TuneResult",
    "bundled_path",
    "count_params",
    "default_model_dir",
    "load_model",
    "load_tokenizer",
    "parse_layers",
    "parse_name",
    "parse_selection",
]
