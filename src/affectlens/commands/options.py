"""The shared option vocabulary: one spelling, one meaning and one help text per option.

Commands add the options they share through these functions, so ``--out`` or
``--limit`` cannot drift apart between commands (README "Option vocabulary"
lists the same set). Renamed options keep their old spelling as a hidden alias
(:func:`renamed`) that still works and says once on stderr what the new name is.

This module is imported while the parser is built: stdlib only, so that
``affectlens --help`` answers without importing torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

REQUIRED_ALIAS = "required_alias"  # attribute of a required option that also has an old spelling
MODEL_HELP = "HF model dir, .gguf file, PEFT adapter dir, or 'smollm2' (the embedded SmolLM2-135M-Instruct)"


class _Renamed(argparse.Action):
    """An old option spelling: stores into the new option's dest and notes the rename on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from ..runs import note

        note(f"{option_string} is now {self.new}")
        if isinstance(getattr(namespace, self.dest, None), list) and not isinstance(values, list):
            getattr(namespace, self.dest).append(values)  # an old spelling of an append option
        else:
            setattr(namespace, self.dest, values)


def renamed(p: argparse.ArgumentParser, old: str, new: argparse.Action, **kwargs: Any) -> None:
    """Keep ``old`` working as a hidden alias of the option ``new`` (same dest, type and choices).

    argparse would refuse a required ``new`` given by its old name, so a required
    option becomes ``required_alias``: the affectlens parser checks it after parsing.
    """
    if new.required:
        new.required = False
        setattr(new, REQUIRED_ALIAS, True)
        new.help = f"{new.help} (required)"
    kwargs.setdefault("type", new.type)
    kwargs.setdefault("choices", new.choices)
    kwargs.setdefault("metavar", new.metavar)
    p.add_argument(old, action=_Renamed, new=new.option_strings[0], dest=new.dest,
                   default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def split_list(value: str | None) -> list[str] | None:
    """A comma-separated option value as a list (None when absent or empty)."""
    items = [x.strip() for x in value.split(",") if x.strip()] if value else []
    return items or None


# --- the shared options (README "Option vocabulary")

def model(p: argparse.ArgumentParser, name: str = "model", help: str = MODEL_HELP) -> None:
    p.add_argument(name, help=help)


def modules(p: argparse.ArgumentParser, required: bool = True, default: str | None = None,
            help: str = "module selection: q_proj … down_proj, attn, ffn, all, or a list like attn,gate_proj"
            ) -> None:
    p.add_argument("--modules", required=required, default=default, help=help)


def layers(p: argparse.ArgumentParser, help: str = "layer subset, e.g. 0-11,20 (default: all)") -> None:
    p.add_argument("--layers", default=None, help=help)


def rank(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--rank", type=int, default=default, help="LoRA rank r, the same default as `affectlens tune`")


def task(p: argparse.ArgumentParser) -> None:
    """``--task``: a data set (task name or spec); repeatable; the syntax is in the epilog."""
    p.add_argument("--task", action="append", dest="tasks", metavar="T",
                   help="task name or KIND:PATH[,opt=val...] (repeatable; default: emotion)")


def emotions(p: argparse.ArgumentParser, help: str = "comma-separated emotions (default: all in the pairs)"
             ) -> argparse.Action:
    return p.add_argument("--emotions", default=None, help=help)


def limit(p: argparse.ArgumentParser, help: str = "first N examples of each task (default: all)"
          ) -> argparse.Action:
    return p.add_argument("--limit", type=int, default=None, help=help)


def top_k(p: argparse.ArgumentParser, default: int, help: str) -> argparse.Action:
    return p.add_argument("--top-k", type=int, default=default, help=help)


def batch_size(p: argparse.ArgumentParser, default: int, help: str = "examples per forward pass") -> None:
    p.add_argument("--batch-size", type=int, default=default, help=help)


def dtype(p: argparse.ArgumentParser) -> None:
    """``--dtype``: resolved with the device by ``devices.resolve_dtype`` (``auto``: bf16 on GPU, fp32 on CPU)."""
    from ..devices import DTYPE_HELP

    p.add_argument("--dtype", default="auto", help=DTYPE_HELP)


def device(p: argparse.ArgumentParser) -> None:
    """``--device``: resolved by ``devices.resolve_device`` when the model loads (exit 2 if absent)."""
    from ..devices import DEVICE_HELP

    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def seed(p: argparse.ArgumentParser, default: int = 0, help: str = "random seed") -> None:
    p.add_argument("--seed", type=int, default=default, help=help)


def out(p: argparse.ArgumentParser, help: str = "run directory to create", required: bool = True) -> None:
    p.add_argument("--out", required=required, help=help)


def force(p: argparse.ArgumentParser, help: str = "replace an existing --out (default: refuse)") -> None:
    p.add_argument("--force", action="store_true", help=help)


def allow_pickle(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-pickle", action="store_true",
                   help="also read pickle checkpoints (pytorch_model.bin, adapter_model.bin) with "
                        "weights_only=True; only for files you trust (default: refuse)")


def run_dir(p: argparse.ArgumentParser, out_help: str = "run directory to create", pickle: bool = True) -> None:
    """``--out``, ``--force`` and (for commands that read checkpoints) ``--allow-pickle``."""
    out(p, out_help)
    force(p)
    if pickle:
        allow_pickle(p)
