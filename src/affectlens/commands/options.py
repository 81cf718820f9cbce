"""The shared option vocabulary: one spelling, one meaning and one help text per option.

Commands add the options they share through these functions, so ``--out`` or
``--limit`` cannot drift apart between commands (README "Option vocabulary"
lists the same set). Renamed options keep their old spelling as a hidden alias
(:func:`renamed`) that still works and says once on stderr what the new name is.

Numbers are checked here too, once for every command (:func:`integer`,
:func:`number`, :data:`SEED`): argparse's ``int``/``float`` take ``nan``,
``inf``, ``-1`` or a 20-digit seed and leave the command to fail late, with a
traceback or a ``NaN`` in its JSON. A bad number turns the parsed command into
its refusal (:class:`_Refusal`), so it is one line on stderr and exit code 2,
like every other bad input, before anything loads.

This module is imported while the parser is built: stdlib and the torch-free
``tuneconfig`` only, so that
``affectlens --help`` answers without importing torch.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..tuneconfig import DEFAULT, SEED_MAX

REQUIRED_ALIAS = "required_alias"  # attribute of a required option that also has an old spelling
MODEL_HELP = "HF model dir, .gguf file, PEFT adapter dir, or 'smollm2' (the embedded SmolLM2-135M-Instruct)"
COUNT_MAX = 2**31 - 1  # examples, tokens, steps, ranks: larger is no count a machine holds, and overflows floats

Check = Callable[[str], Any]  # option text -> value; ValueError(requirement) when the text is not one


def integer(lo: int | None = 1, hi: int = COUNT_MAX) -> Check:
    """An integer option in ``lo .. hi`` (``lo`` None: down to ``-hi``)."""
    low = -hi if lo is None else lo
    if hi == COUNT_MAX and lo in (0, 1):  # a count: worded as the library's own checks word it
        kind, below, above = ("a positive integer" if lo else "an integer >= 0", "positive" if lo else "0 or more",
                              f"at most {hi}")
    else:
        kind = below = above = f"an integer from {low} to {hi}"

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(kind) from None
        if value < low:
            raise ValueError(below)
        if value > hi:
            raise ValueError(above)
        return value

    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False
           ) -> Check:
    """A finite float option within ``lo``/``hi`` (each inclusive unless ``*_open``; None: unbounded)."""
    if lo is not None and hi is not None:
        cond = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        cond = f"{'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        cond = f"{'<' if hi_open else '<='} {hi:g}"
    else:
        cond = ""

    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)) \
                or (hi is not None and (value >= hi if hi_open else value > hi)):
            raise ValueError(f"a finite number {cond}".strip())
        return value

    return check


SEED: Check = integer(0, SEED_MAX)


class _Refusal:
    """The command of a parse that met a bad number: its first act is to refuse it.

    The error then leaves as every bad input does (``main`` prints one line and
    returns 2, after nothing was loaded) instead of as argparse's usage block.
    """

    def __init__(self, message: str) -> None:
        self.message = message

    def __call__(self, args: argparse.Namespace) -> int:
        from ..errors import AffectlensError

        raise AffectlensError(self.message)


def _refuse(namespace: argparse.Namespace, option: str | None, text: Any, requirement: ValueError) -> None:
    """Make the command a :class:`_Refusal` of ``text`` (the first bad option is the one reported)."""
    if not isinstance(getattr(namespace, "func", None), _Refusal):
        namespace.func = _Refusal(f"{option} must be {requirement}, not {text}")


class _Checked(argparse.Action):
    """A number option: converted and range-checked by ``check``; a bad value is one line, exit 2."""

    def __init__(self, option_strings: Sequence[str], dest: str, check: Check = str, **kwargs: Any) -> None:
        self.check = check
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        try:
            setattr(namespace, self.dest, self.check(str(values)))
        except ValueError as e:
            _refuse(namespace, option_string, values, e)


def add_number(p: argparse._ActionsContainer, flag: str, check: Check, **kwargs: Any) -> argparse.Action:
    """Add a numeric option checked by ``check`` (:func:`integer`, :func:`number`, :data:`SEED`)."""
    return p.add_argument(flag, action=_Checked, check=check, **kwargs)


class _CommaList(argparse.Action):
    """A list option given comma-separated, repeated, or both (``--emotions joy,anger --emotions fear``).

    The value is the names in order, each once, or None when none was given.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        items += [x for x in split_list(str(values)) or [] if x not in items]
        setattr(namespace, self.dest, items or None)


class _Renamed(argparse.Action):
    """An old option spelling: stores into the new option's dest and notes the rename on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", check: Check | None = None,
                 into: argparse.Action | None = None, **kwargs: Any) -> None:
        self.new = new
        self.check = check
        self.into = into  # a list option: the old spelling adds to it as the new one does
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from ..runs import note

        if self.check is not None:
            try:
                values = self.check(str(values))
            except ValueError as e:
                _refuse(namespace, option_string, values, e)
                return
        note(f"{option_string} is now {self.new}")
        if self.into is not None:
            self.into(parser, namespace, values, option_string)
        elif isinstance(getattr(namespace, self.dest, None), list) and not isinstance(values, list):
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
    if isinstance(new, _Checked):  # the old spelling of a number option is checked alike
        kwargs.setdefault("check", new.check)
    if isinstance(new, _CommaList):
        kwargs.setdefault("into", new)
    p.add_argument(old, action=_Renamed, new=new.option_strings[0], dest=new.dest,
                   default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def json_text(obj: Any) -> str:
    """``obj`` as indented JSON for stdout; NaN/Infinity is no JSON, so it is refused, never printed."""
    import json

    from ..errors import AffectlensError

    try:
        return json.dumps(obj, indent=2, allow_nan=False)
    except ValueError as e:
        raise AffectlensError(f"the result holds a non-finite number, which JSON cannot carry ({e})") from None


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


def rank(p: argparse.ArgumentParser, help: str = "LoRA rank r, as `affectlens tune --rank`") -> None:
    """``--rank``: TuneConfig's rank by default, so ``params``/``plan`` count what ``tune`` trains."""
    add_number(p, "--rank", integer(1), default=DEFAULT.rank, help=help)


def max_length(p: argparse.ArgumentParser, lo: int = 1, help: str = "tokens per example") -> argparse.Action:
    """``--max-length``: TuneConfig's by default, so ``plan`` sizes the run ``tune`` makes."""
    return add_number(p, "--max-length", integer(lo), default=DEFAULT.max_length, help=help)


def task(p: argparse.ArgumentParser) -> None:
    """``--task``: a data set (task name or spec); repeatable; the syntax is in the epilog."""
    p.add_argument("--task", action="append", dest="tasks", metavar="T",
                   help="task name or KIND:PATH[,opt=val...] (repeatable; default: emotion)")


def emotions(p: argparse.ArgumentParser,
             help: str = "emotions, comma-separated and/or repeated (default: all in the pairs)") -> argparse.Action:
    """``--emotions``: a list (``joy,anger``, ``--emotions joy --emotions anger``), or None for all."""
    return p.add_argument("--emotions", action=_CommaList, default=None, metavar="E[,E...]", help=help)


def limit(p: argparse.ArgumentParser, help: str = "first N examples of each task (default: all)"
          ) -> argparse.Action:
    return add_number(p, "--limit", integer(1), default=None, help=help)


def top_k(p: argparse.ArgumentParser, default: int, help: str) -> argparse.Action:
    return add_number(p, "--top-k", integer(1), default=default, help=help)


def batch_size(p: argparse.ArgumentParser, default: int, help: str = "examples per forward pass") -> None:
    add_number(p, "--batch-size", integer(1), default=default, help=help)


def bootstrap(p: argparse.ArgumentParser, default: int = 1000) -> None:
    add_number(p, "--bootstrap", integer(0), default=default, help="bootstrap resamples for CIs (0: none)")


def dtype(p: argparse.ArgumentParser) -> None:
    """``--dtype``: resolved with the device by ``devices.resolve_dtype`` (``auto``: bf16 on GPU, fp32 on CPU)."""
    from ..models.devices import DTYPE_HELP

    p.add_argument("--dtype", default="auto", help=DTYPE_HELP)


def device(p: argparse.ArgumentParser) -> None:
    """``--device``: resolved by ``devices.resolve_device`` when the model loads (exit 2 if absent)."""
    from ..models.devices import DEVICE_HELP

    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def seed(p: argparse.ArgumentParser, default: int = 0, help: str = "random seed") -> None:
    add_number(p, "--seed", SEED, default=default, help=help)


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
