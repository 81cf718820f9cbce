"""The CLI reads as one tool: a version, every option documented with its default, one
vocabulary (old spellings kept as noted aliases), a README that names only what exists,
and a parser that answers without importing torch."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import pytest

from affectlens.cli import build_parser, main

from conftest import ROOT, TINYSTORIES

HEAVY = ("torch", "transformers", "numpy", "matplotlib", "peft", "safetensors")


def _parsers(parser: argparse.ArgumentParser, path: str = "affectlens"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _visible_options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def test_version(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"affectlens {metadata.version('affectlens')}"


def test_every_option_has_help_and_shows_its_default():
    missing, no_default = [], []
    for path, parser in _parsers(build_parser()):
        fmt = parser._get_formatter()
        for a in parser._actions:
            if not a.option_strings or a.help == argparse.SUPPRESS or isinstance(a, argparse._HelpAction):
                continue
            words = re.sub(r"\(default: [^)]*\)", "", a.help or "").strip()
            if not words:  # help that only repeats the default does not say what the option does
                missing.append(f"{path} {a.option_strings[0]}")
            has_default = a.default is not None and a.default is not False and a.default != argparse.SUPPRESS
            if has_default and "default" not in fmt._get_help_string(a).lower():
                no_default.append(f"{path} {a.option_strings[0]}")
    assert not missing, missing
    assert not no_default, no_default


def test_every_default_is_shown_with_its_value():
    """--help prints each default's value; `params`/`plan --rank` once said only "the same default as tune"."""
    from affectlens.tuneconfig import TuneConfig

    hidden = []
    for path, parser in _parsers(build_parser()):
        fmt = parser._get_formatter()
        for a in parser._actions:
            if (not a.option_strings or a.help == argparse.SUPPRESS or isinstance(a, argparse._HelpAction)
                    or a.default is None or a.default is False or a.default is argparse.SUPPRESS):
                continue
            shown = fmt._expand_help(a)
            value = "none" if a.default in ("", []) else str(a.default)
            if "default" not in shown.lower() or value not in shown:
                hidden.append(f"{path} {a.option_strings[0]}: {shown}")
    assert not hidden, hidden
    for command in ("params", "plan", "tune"):
        text = " ".join(_subparser(build_parser(), command).format_help().split())
        assert re.search(rf"--rank RANK LoRA rank r[^(]*\(default: {TuneConfig().rank}\)", text), command


def test_every_positional_has_help():
    missing = [f"{path} {a.dest}" for path, parser in _parsers(build_parser()) for a in parser._actions
               if not a.option_strings and not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert not missing, missing


def test_one_spelling_per_meaning():
    """The renamed spellings are hidden everywhere; `--task` is a data set wherever it is shown."""
    old = {"--top", "--emotion", "--max-pairs", "--seq-len"}
    for path, parser in _parsers(build_parser()):
        shown = _visible_options(parser)
        assert not shown & old, (path, shown & old)
        for a in parser._actions:
            if "--task" in a.option_strings and a.help != argparse.SUPPRESS:
                assert a.dest == "tasks" and "KIND:PATH" in a.help, path
            if "--mode" in a.option_strings and a.help != argparse.SUPPRESS:
                assert set(a.choices) == {"closed", "generative"}, path


# (argv with the old spelling, the same argv with the new one, the dest both must set)
ALIASES = [
    (["tune", "m", "--data", "d", "--modules", "all", "--out", "o", "--task", "emotion"], "--task-kind", "task_kind"),
    (["ablate", "m", "--modules", "gate_proj", "--out", "o", "--mode", "zero"], "--ablation", "ablation"),
    (["plan", "m", "--task", "evaluate"], "--command", "planned"),
    (["plan", "m", "--seq-len", "64"], "--max-length", "max_length"),
    (["circuits", "layers", "m", "--out", "o", "--max-pairs", "3"], "--limit", "limit"),
    (["circuits", "heads", "m", "--out", "o", "--max-pairs", "3"], "--limit", "limit"),
    (["circuits", "neurons", "m", "--out", "o", "--max-pairs", "3"], "--limit", "limit"),
    (["circuits", "intervene", "m", "--out", "o", "--top", "3"], "--top-k", "top_k"),
    (["circuits", "intervene", "m", "--out", "o", "--emotion", "joy"], "--emotions", "emotions"),
]


@pytest.mark.parametrize("argv,new,dest", ALIASES, ids=[f"{a[0]}{a[-2]}" for a, _, _ in ALIASES])
def test_old_spellings_still_work_with_a_note(argv, new, dest, capsys):
    parser = build_parser()
    old_args = parser.parse_args(argv)
    err = capsys.readouterr().err
    assert err == f"affectlens: note: {argv[-2]} is now {new}\n"
    new_args = parser.parse_args([*argv[:-2], new, argv[-1]])
    assert capsys.readouterr().err == ""
    value = int(argv[-1]) if argv[-1].isdigit() else argv[-1]  # the old spelling converts like the new
    value = [value] if dest == "emotions" else value  # a list option: a list either way
    assert getattr(old_args, dest) == getattr(new_args, dest) == value


def test_emotions_comma_separated_and_repeated_make_one_list(capsys):
    parser = build_parser()
    for cmd in (["circuits", "intervene", "m", "--out", "o"], ["circuits", "heads", "m", "--out", "o"]):
        assert parser.parse_args(cmd).emotions is None
        assert parser.parse_args([*cmd, "--emotions", "anger,joy"]).emotions == ["anger", "joy"]
        assert parser.parse_args([*cmd, "--emotions", "anger", "--emotions", "joy,fear"]).emotions == \
            ["anger", "joy", "fear"]
    old = parser.parse_args(["circuits", "intervene", "m", "--out", "o", "--emotion", "anger", "--emotions", "joy"])
    assert old.emotions == ["anger", "joy"]  # the old spelling adds to the list as the new one does
    capsys.readouterr()


def test_renamed_required_option_is_still_required(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["ablate", "m", "--modules", "gate_proj", "--out", "o"])
    assert e.value.code == 2
    assert "required: --ablation" in capsys.readouterr().err
    usage = " ".join(_subparser(build_parser(), "ablate").format_usage().split())
    assert " --ablation {reset," in usage and "[--ablation" not in usage  # shown as required


# --- README names only what exists, and every command is in its table

def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def _readme_command_lines(text: str) -> list[str]:
    spans = re.findall(r"`(affectlens [^`]+)`", text)
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        spans += [line.split("#")[0] for line in block.splitlines() if line.startswith("affectlens ")]
        spans += ["affectlens" + _affectlens_part(line) for line in block.splitlines()
                  if line.startswith(tuple(f + " " for f in FOREIGN)) and "-m affectlens" in line]  # accelerate launch … -m affectlens tune …
    return spans


def _resolve(parser: argparse.ArgumentParser, words: list[str]) -> list[tuple[str, argparse.ArgumentParser]]:
    """The (sub)parsers a README command line names ('a/b' names several), and its remaining words."""
    for i, word in enumerate(words):
        names = word.split("/")
        subs = [_subparser(parser, n) for n in names]
        if not all(subs):
            return [(" ".join(words[:i]), parser)]
        found: list[tuple[str, argparse.ArgumentParser]] = []
        for sub in subs:
            assert sub is not None
            found += _resolve(sub, words[i + 1:])
        return found
    return [("", parser)]


def test_readme_command_lines_parse():
    parser = build_parser()
    lines = _readme_command_lines(_readme())
    assert len(lines) > 10
    bad = []
    for line in lines:
        words = [w for w in re.split(r"[\s\[\]]+", line.removeprefix("affectlens ")) if w]
        head = [w for w in words if not w.startswith("-")][:2]  # command and circuits step
        for _, sub in _resolve(parser, head):
            flags = {w.split("=")[0] for w in words if w.startswith("--")}
            bad += [f"{line}: {f}" for f in flags - _visible_options(sub)]
    assert not bad, bad


FOREIGN = ("accelerate", "ray", "torchrun", "pip", "python", ".venv/bin/python")  # other tools' command lines


def _affectlens_part(command: str) -> str:
    """Of another tool's command line, only what follows ``-m affectlens`` (its flags are ours)."""
    return command.split("-m affectlens", 1)[1] if "-m affectlens" in command else ""


def _without_foreign_flags(text: str) -> str:
    tools = "|".join(map(re.escape, FOREIGN))
    text = re.sub(rf"`((?:{tools})\s[^`]*)`", lambda m: _affectlens_part(m.group(1)), text)
    return "\n".join(_affectlens_part(line) if line.startswith(tuple(f + " " for f in FOREIGN)) else line
                     for line in text.splitlines())


def test_readme_flags_exist():
    every = set().union(*(_visible_options(p) for _, p in _parsers(build_parser())))
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", _without_foreign_flags(_readme())))
    renamed = {"--top", "--emotion", "--max-pairs", "--seq-len", "--mode", "--task"}  # listed as old spellings
    assert not named - every - renamed, named - every


def test_readme_lists_every_command():
    text = _readme()
    table = text[text.index("| command |"):text.index("### Option vocabulary")]
    listed = set(re.findall(r"`affectlens ([a-z-]+)", table))
    commands = {path.split()[1] for path, _ in _parsers(build_parser()) if path.count(" ") == 1}
    assert commands <= listed, commands - listed
    assert "`affectlens --version`" in table


def test_readme_vocabulary_names_real_shared_options():
    text = _readme()
    vocab = text[text.index("### Option vocabulary"):text.index("### Module selections")]
    flags = re.findall(r"^\| `(--[a-z-]+)", vocab, flags=re.M)
    uses = {f: [path for path, p in _parsers(build_parser()) if f in _visible_options(p)] for f in flags}
    assert len(flags) >= 12
    assert all(uses.values()), [f for f, u in uses.items() if not u]


# --- instant CLI: the parser, --help, argument errors and `params` never import torch

def _imported_after(code: str) -> dict:
    probe = (f"import sys\n{code}\n"
             f"import json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_building_the_parser_imports_no_heavy_library():
    assert _imported_after("import affectlens.cli as c; c.build_parser()") == []


def test_help_errors_and_params_import_no_heavy_library():
    paths = [path.split()[1:] for path, _ in _parsers(build_parser())]
    code = f"""
import contextlib, io
from affectlens.cli import main
paths = {paths!r}
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    for argv in [[*p, "--help"] for p in paths] + [["tune", "m"], ["evaluate"], ["ablate", "m", "--ablation", "x"]]:
        try:
            main(argv)
        except SystemExit:
            pass
    assert main(["params", {str(TINYSTORIES)!r}, "--modules", "all"]) == 0
    assert main(["plan", {str(TINYSTORIES)!r}, "--command", "tune"]) == 0
"""
    assert _imported_after(code) == []
