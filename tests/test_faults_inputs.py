"""Fault injection for input validation outside `study`, driven through the CLI.

Each fault must end in the one-line contract (exit 2, one stderr line, no
output directory, no hidden leftovers), before anything expensive runs:

a. grid variants whose names make one file name (``a b`` / ``a_b``);
b. non-finite numbers: ``plan --gpu-mem nan|inf``, config sizes ``Infinity``,
   ``NaN``, ``1e400``; JSON output never carries NaN;
c. seeds outside 0..2^32-1 and other bad numbers, in every command;
d. a labelmap mapping a label to ``""``;
e. contrast pairs with an empty side;
f. a 50 MB CSV field (and an oversized JSONL text);
g. an adapter that fits no module of its base (locate, as evaluate);
h. a ``.pt`` steering-vectors file (a pickle) without ``--allow-pickle``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINYSTORIES
from faults import assert_refused, run_cli

MIB = 2**20


@pytest.fixture
def task(tmp_path) -> Path:
    f = tmp_path / "task.jsonl"
    f.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in [
        ("Lily was very happy to play in the sun.", "joy"), ("Tom was angry at the dog.", "anger")]))
    return f


# ----------------------------------------------------------------------------- a. grid variant names


def _grid(tmp_path: Path, variants: list[dict], seeds: list[int] | None = None) -> Path:
    cfg = {"base": str(TINYSTORIES), "tasks": ["emotion"], "eval": {"limit": 2}, "variants": variants,
           **({"budget": {"seeds": seeds}} if seeds is not None else {})}
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


@pytest.mark.parametrize("names", [("a b", "a_b"), ("Joy", "joy"), ("x/y", "x:y")])
def test_grid_variant_names_that_share_a_file_name(tmp_path, capfd, names):
    variants = [{"name": n, "kind": "reference", "model": "base"} for n in names]
    out = tmp_path / "run"
    line = assert_refused(run_cli(capfd, "grid", _grid(tmp_path, variants), "--out", out), out=out,
                          contains="map to one file name")
    assert all(f"'{n}'" in line for n in names), line


# ----------------------------------------------------------------------------- b. non-finite numbers


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-3"])
def test_plan_gpu_mem_must_be_finite_and_positive(capfd, value):
    assert_refused(run_cli(capfd, "plan", TINYSTORIES, f"--gpu-mem={value}", "--json"),
                   contains="--gpu-mem must be a finite number > 0")


@pytest.mark.parametrize("command", ["plan", "params"])
@pytest.mark.parametrize("value", ["Infinity", "NaN", "1e400", "-Infinity", "1e20"])
def test_config_sizes_must_be_finite(tmp_path, capfd, command, value):
    text = (TINYSTORIES / "config.json").read_text()
    cfg = json.loads(text)
    cfg["hidden_size"] = "@"
    f = tmp_path / "config.json"
    f.write_text(json.dumps(cfg).replace('"@"', value))
    extra = ["--modules", "all", "--json"] if command == "params" else ["--json"]
    assert_refused(run_cli(capfd, command, f, *extra), contains="config 'hidden_size' must be a positive integer")


def test_json_output_refuses_nan():
    from affectlens.commands.options import json_text
    from affectlens.errors import AffectlensError

    assert json.loads(json_text({"a": 1.5})) == {"a": 1.5}
    with pytest.raises(AffectlensError, match="non-finite"):
        json_text({"a": float("nan")})


# ----------------------------------------------------------------------------- c. seeds and other numbers


def _tune(tmp_path: Path, task: Path, *extra: str) -> list:
    return ["tune", TINYSTORIES, "--data", "emotion_train", "--modules", "gate_proj", "--steps", "1",
            "--out", tmp_path / "run", *extra]


def _evaluate(tmp_path: Path, task: Path, *extra: str) -> list:
    return ["evaluate", TINYSTORIES, "--task", f"jsonl:{task}", "--bootstrap", "0", "--out", tmp_path / "run",
            *extra]


@pytest.mark.parametrize("build, flag, value, msg", [
    (_tune, "--seed", "99999999999999999999", "--seed must be an integer from 0 to 4294967295"),
    (_evaluate, "--seed", "-1", "--seed must be an integer from 0 to 4294967295"),
    (_evaluate, "--seed", "4294967296", "--seed must be an integer from 0 to 4294967295"),
    (_tune, "--rank", "0", "--rank must be positive"),
    (_tune, "--lr", "nan", "--lr must be a finite number > 0"),
    (_tune, "--alpha", "inf", "--alpha must be a finite number > 0"),
    (_tune, "--dropout", "1", "--dropout must be a finite number in [0, 1)"),
    (_tune, "--batch-size", "-2", "--batch-size must be positive"),
    (_tune, "--max-length", "3", "--max-length must be an integer from 8"),
    (_tune, "--steps", "1e3", "--steps must be a positive integer"),
    (_evaluate, "--limit", "0", "--limit must be positive"),
    (_evaluate, "--sample", "-3", "--sample must be positive"),
    (_evaluate, "--limit", "99999999999", "--limit must be at most 2147483647"),
])
def test_bad_numbers_are_one_line(tmp_path, capfd, task, build, flag, value, msg):
    line = assert_refused(run_cli(capfd, *build(tmp_path, task, flag, value)), out=tmp_path / "run", contains=msg)
    assert line.endswith(f"not {value}")


@pytest.mark.parametrize("argv, msg", [
    (["circuits", "layers", TINYSTORIES, "--max-pairs", "0"], "--max-pairs must be positive"),
    (["circuits", "heads", TINYSTORIES, "--seed", "-5"], "--seed must be an integer from 0"),
    (["circuits", "vectors", TINYSTORIES, "--denoise", "1"], "--denoise must be a finite number in (0, 1)"),
    (["circuits", "intervene", TINYSTORIES, "--beta", "-1"], "--beta must be a finite number >= 0"),
    (["ablate", TINYSTORIES, "--modules", "gate_proj", "--ablation", "noise", "--seed", "2e9"],
     "--seed must be an integer"),
    (["plan", TINYSTORIES, "--gpus", "0"], "--gpus must be positive"),
    (["locate", TINYSTORIES, TINYSTORIES, "--distribution-sample", "-1"], "--distribution-sample must be 0 or more"),
])
def test_bad_numbers_in_other_commands(tmp_path, capfd, argv, msg):
    out = tmp_path / "run"
    extra = [] if argv[0] == "plan" else ["--out", out]
    assert_refused(run_cli(capfd, *argv, *extra), out=out, contains=msg)


def test_grid_seeds_outside_the_seed_range(tmp_path, capfd):
    out = tmp_path / "run"
    cfg = _grid(tmp_path, [{"name": "base", "kind": "reference", "model": "base"}], seeds=[0, 2**32])
    assert_refused(run_cli(capfd, "grid", cfg, "--out", out), out=out,
                   contains="budget.seeds must be integers from 0 to 4294967295, not 4294967296")


# ----------------------------------------------------------------------------- d. labelmap targets


@pytest.mark.parametrize("target", ["", "   "])
def test_labelmap_empty_target(tmp_path, capfd, target):
    data = tmp_path / "d.csv"
    data.write_text("text,label\nfine day,happy\nbad day,mad\n")
    m = tmp_path / "map.json"
    m.write_text(json.dumps({"happy": "joy", "mad": target}))
    out = tmp_path / "run"
    line = assert_refused(run_cli(capfd, "evaluate", TINYSTORIES, "--task", f"csv:{data},labelmap={m}",
                                  "--out", out), out=out, contains="maps 'mad' to an empty label")
    assert "map.json" in line


# ----------------------------------------------------------------------------- e. contrast pairs


@pytest.mark.parametrize("side", ["emotional", "neutral"])
def test_pairs_with_an_empty_side(tmp_path, capfd, side):
    rows = [{"emotional": "Tom was furious.", "neutral": "Tom took the bus.", "label": "anger"},
            {"emotional": "Lily was happy.", "neutral": "Lily sat down.", "label": "joy"}]
    rows[1][side] = "  "
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    line = assert_refused(run_cli(capfd, "circuits", "vectors", TINYSTORIES, "--pairs", pairs, "--out", out),
                          out=out, contains=f"field '{side}' is empty")
    assert f"{pairs}:2" in line


# ----------------------------------------------------------------------------- f. oversized fields


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_oversized_field_is_refused_while_reading(tmp_path, capfd, kind):
    if kind == "csv":
        f = tmp_path / "big.csv"
        with open(f, "w") as fh:
            fh.write('text,label\nhello,joy\n"' + "x" * (50 * MIB) + '",anger\nbye,joy\n')
        where = "row 3"
    else:
        f = tmp_path / "big.jsonl"
        with open(f, "w") as fh:
            fh.write(json.dumps({"text": "hello", "label": "joy"}) + "\n")
            fh.write(json.dumps({"text": "x" * (9 * MIB), "label": "anger"}) + "\n")
        where = "line 2"
    out = tmp_path / "run"
    line = assert_refused(run_cli(capfd, "evaluate", TINYSTORIES, "--task", f"{kind}:{f}", "--limit", "4",
                                  "--out", out), out=out, contains=where)
    assert str(f) in line and "limit of 8,388,608" in line


# ----------------------------------------------------------------------------- g. adapters that fit no module


@pytest.mark.parametrize("targets, msg", [
    (["foo_proj"], "targets modules foo_proj, which match no module of base"),
    (["q_proj"], "lacks tensors for modules its config targets: model.layers.0.self_attn.q_proj"),
])
def test_locate_refuses_an_adapter_that_fits_no_module(tmp_path, capfd, targets, msg):
    from safetensors.torch import save_file

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 4, "target_modules": targets,
        "base_model_name_or_path": str(TINYSTORIES)}))
    save_file({}, str(adapter / "adapter_model.safetensors"))
    out = tmp_path / "run"
    assert_refused(run_cli(capfd, "locate", TINYSTORIES, adapter, "--out", out), out=out, contains=msg)


# ----------------------------------------------------------------------------- h. pickle vectors


@pytest.mark.parametrize("verb", ["layers", "heads", "intervene"])
def test_pt_vectors_need_allow_pickle(tmp_path, capfd, task, verb):
    f = tmp_path / "steer.pt"
    torch.save({"layers.1": {"action": "add", "steering_coefficient": 1.0, "steering_vector": torch.zeros(128),
                             "bias": None}}, f)
    out = tmp_path / "run"
    argv = ["circuits", verb, TINYSTORIES, "--vectors", f, "--vectors-label", "joy", "--out", out]
    if verb == "intervene":
        argv += ["--task", f"jsonl:{task}", "--steer", "joy@1*2"]
    line = assert_refused(run_cli(capfd, *argv), out=out, contains="pass --allow-pickle if you trust it")
    assert str(f) in line


def test_missing_vectors_file_is_refused_before_the_model_loads(tmp_path, capfd, monkeypatch):
    import affectlens.circuits.inputs as inputs

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before --vectors was checked")

    monkeypatch.setattr(inputs, "load_for_pairs", no_model)
    out = tmp_path / "run"
    assert_refused(run_cli(capfd, "circuits", "layers", TINYSTORIES, "--vectors", tmp_path / "none.pt",
                           "--out", out), out=out, contains="no steering vectors at")
