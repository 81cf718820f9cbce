"""The ``affectlens`` command: thin subcommands over the Python API.

Each subcommand lives in ``affectlens.commands.<name>`` and exposes
``register(subparsers)``; the parser sets ``func``. User mistakes arrive as
``AffectlensError`` and leave as one line on stderr with exit code 2.

Before a command runs, ``main``

- claims its ``--out`` (any command whose arguments have ``out``): the path is
  checked creatable (no file in its parent path, a writable parent) and locked
  against a second concurrent run *before* any loading or training, and
  released when the command ends (see :func:`affectlens.runs.claim_output`);
- quiets transformers (verbosity ``error``, no progress bars) so its chatter
  never precedes our error line, unless the user set ``TRANSFORMERS_VERBOSITY``.

A closed stdout (``affectlens params ... | head -1``) ends the command quietly,
as Unix tools do, with exit code 141 (128 + SIGPIPE). SIGTERM (``kill``, a
scheduler's time limit) unwinds like Ctrl-C, so every temp dir and claim is
removed on the way out; it exits 143 (128 + SIGTERM), Ctrl-C 130. A full disk
is one line naming the path (and the bytes needed, where known), exit code 2.

Under a launcher (``accelerate launch``, ``torchrun``: ``WORLD_SIZE`` > 1) every
process meets the same error; only the main one (rank 0) says it, so the user
reads one line, not one per process. The others exit with the same code in
silence (a bug met by them alone is one line naming the rank, no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from .commands.options import REQUIRED_ALIAS
from .errors import AffectlensError, DiskFullError, is_disk_full
from .threads import apply_thread_policy

# One entry per command module; each registers one or more subcommands.
COMMAND_MODULES = (
    "locate",
    "tune",
    "demo",
    "evaluate",
    "rescore",
    "circuits",
    "compose",
    "params",
    "grid",
    "plan",
    "study",
)

EXIT_SIGPIPE = 141
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so it unwinds exactly as Ctrl-C does (every
    ``finally`` and ``except BaseException`` cleanup runs)."""


class _HelpFormatter(argparse.HelpFormatter):
    """Every option shows its default (unless its help already states one, "(default...", or there is none).

    Descriptions wrap; a multi-line description or epilog is shown as written.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False
                or default is argparse.SUPPRESS or "(default" in text.lower()):
            return text
        if default in ("", []):  # an empty list or text is no value to show
            return f"{text} (default: none)".strip()
        return f"{text} (default: %(default)s)".strip()

    def _format_actions_usage(self, actions: Any, groups: Any) -> str:
        # A required option with an old spelling is checked by _Parser, not argparse
        # (commands.options.renamed); the usage still shows it as required.
        aliased = [a for a in actions if getattr(a, REQUIRED_ALIAS, False)]
        for a in aliased:
            a.required = True
        try:
            return super()._format_actions_usage(actions, groups)
        finally:
            for a in aliased:
                a.required = False

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:  # laid out by hand (the task syntax table): keep it as written
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """All affectlens parsers (subcommands inherit it) share the help formatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["formatter_class"] = _HelpFormatter
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:
        if _side_rank():
            sys.exit(2)  # rank 0 prints the usage error for the job
        return super().error(message)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[Any, list[str]]:
        ns, rest = super().parse_known_args(args, namespace)
        # A required option with a deprecated spelling (commands.options.renamed) is checked here,
        # since argparse would count only the new spelling as given.
        missing = [a.option_strings[0] for a in self._actions
                   if getattr(a, REQUIRED_ALIAS, False) and getattr(ns, a.dest, None) is None]
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        return ns, rest


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("affectlens")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="affectlens",
        description="Find where emotion lives inside a model, prove it causally, tune or steer it.",
    )
    parser.add_argument("--version", action="version", version=f"affectlens {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"affectlens.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"affectlens.commands.{name}":
                continue  # command not built yet
            raise
        mod.register(sub)
    return parser


_USER_VERBOSITY = "TRANSFORMERS_VERBOSITY" in os.environ


def quiet_transformers() -> None:
    """transformers logs errors only and shows no progress bars (unless the user chose a verbosity).

    Works whether or not transformers is imported yet: the environment covers a
    later import, direct calls cover an earlier one (without importing it here).
    """
    if _USER_VERBOSITY:
        return
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers.utils.logging" in sys.modules:
        tlog = sys.modules["transformers.utils.logging"]
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    if "huggingface_hub.utils" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["huggingface_hub.utils"].disable_progress_bars()


def _side_rank() -> int:
    """This process's rank when it is one of several launched processes other than the main one, else 0."""
    from .tune.distributed import launched, rank_from_env

    return rank_from_env() if launched() else 0


def _claim(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    out = getattr(args, "out", None)
    if not isinstance(out, str | os.PathLike) or not str(out):
        return contextlib.nullcontext()
    if _side_rank():  # one of several processes: the main one (rank 0) writes --out
        return contextlib.nullcontext()
    from .runs import claim_output

    return claim_output(out)


def _stdout_gone() -> None:
    """stdout's reader went away: point it at /dev/null so the exit flush is silent too."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the command runs, SIGTERM raises :class:`Terminated` (once: a second one during the
    cleanup is ignored, so the cleanup finishes). Only where Python's default is in place (the main
    thread, no handler of the embedding program's), and the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _disk_full_line(e: BaseException, args: argparse.Namespace) -> str:
    """A full disk met outside a run dir (grid, study, a cache): the file if known, else the output."""
    name = e.filename if isinstance(e, OSError) and isinstance(e.filename, str | bytes) else None
    where = os.fsdecode(name) if name is not None else str(getattr(args, "out", None) or os.getcwd())
    return str(DiskFullError(where))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    quiet_transformers()
    side = _side_rank()
    try:
        with _sigterm_unwinds():
            apply_thread_policy()  # before any torch import: no oversubscribed cores on a busy machine
            with _claim(args):
                rc = args.func(args)
            sys.stdout.flush()
    except AffectlensError as e:
        _say(f"affectlens: error: {e}", side)
        return 2
    except Terminated:  # a launcher stops the other processes when one fails: no line from them
        _say("affectlens: terminated", side)
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        _say("affectlens: interrupted", side)
        return EXIT_SIGINT
    except BrokenPipeError:
        _stdout_gone()
        return EXIT_SIGPIPE
    except Exception as e:
        if is_disk_full(e):
            _say(f"affectlens: error: {_disk_full_line(e, args)}", side)
            return 2
        if not side:
            raise  # a bug: keeps its traceback (rank 0 shows it for the job)
        first = next((x.strip() for x in str(e).splitlines() if x.strip()), "")
        print(f"affectlens: rank {side} failed: {type(e).__name__}: {first}", file=sys.stderr)
        return 1
    return int(rc or 0)


def _say(line: str, side: int) -> None:
    """An error line, on rank 0 only (or without a launcher)."""
    if not side:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
