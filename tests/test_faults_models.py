"""Fault injection through the CLI: model loading, tuning, params and training data (issue 8).

Every faulty input is built from the tiny models (a NaN planted into one tensor,
a tensor deleted, a pickle checkpoint, an adapter with tensors for a layer the
base lacks, ...) and driven through ``affectlens`` as a user would; the error
contract is checked by ``faults.assert_refused``: exit 2, one stderr line, no
output dir, no leftovers, an existing result untouched.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINYSTORIES
from faults import assert_refused, run_cli, tree_digest

PICKLE_MSG = "is a pickle checkpoint; loading it can run code: pass --allow-pickle if you trust it"


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rows = [{"text": f"I feel great {i}", "label": "joy"} for i in range(4)]
    rows += [{"text": f"I feel awful {i}", "label": "sadness"} for i in range(4)]
    return _jsonl(tmp_path_factory.mktemp("data") / "easy.jsonl", rows)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, data) -> Path:
    """A real gate_proj adapter of tinystories (2 layers), trained in two steps."""
    from affectlens.tune.run import tune

    out = tmp_path_factory.mktemp("adapters") / "gate"
    tune(str(TINYSTORIES), data, "gate_proj", steps=2, lr=1e-2, batch_size=2, out=out, verbose=False)
    return out


def _copy_model(dst: Path, edit=None, config=None, src: Path = TINYSTORIES) -> Path:
    """A copy of a model (or adapter) dir, its safetensors tensors and/or config edited."""
    shutil.copytree(src, dst)
    if edit is not None:
        f = next(dst.glob("*.safetensors"))
        sd = load_file(f)
        edit(sd)
        save_file(sd, f, metadata={"format": "pt"})
    if config is not None:
        cfg_file = dst / ("adapter_config.json" if (dst / "adapter_config.json").is_file() else "config.json")
        cfg = json.loads(cfg_file.read_text())
        config(cfg)
        cfg_file.write_text(json.dumps(cfg))
    return dst


def _tune(base, data, out, *extra) -> list[str]:
    return ["tune", str(base), "--data", str(data), "--modules", "gate_proj", "--steps", "2",
            "--batch-size", "2", "--out", str(out), *extra]


def _evaluate(model, out, *extra) -> list[str]:
    return ["evaluate", str(model), "--limit", "2", "--bootstrap", "0", "--out", str(out), *extra]


# --- part 2: non-finite values are never a result ------------------------------------------------

def test_nonfinite_loss_stops_at_its_step_and_keeps_the_old_result(tmp_path, capfd, data):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "adapter_config.json").write_text('{"old": true}')
    before = tree_digest(out)
    argv = _tune(TINYSTORIES, data, out, "--force", "--lr", "1e30")
    argv[argv.index("--steps") + 1] = "4"
    argv[argv.index("--modules") + 1] = "all"
    line = assert_refused(run_cli(capfd, *argv), out=out, contains="non-finite", survivor=before)
    assert re.search(r"at step [1-4] of 4", line), line


def test_update_that_overflows_is_one_line(tmp_path, capfd, data):
    out = tmp_path / "out"
    line = assert_refused(run_cli(capfd, *_tune(TINYSTORIES, data, out, "--lr", "1e38")), out=out)
    assert re.search(r"step [1-2] of 2", line), line


@pytest.mark.parametrize("lr", ["inf", "nan", "-1"])
def test_non_finite_or_negative_lr_is_refused_before_training(tmp_path, capfd, data, lr):
    out = tmp_path / "out"
    assert_refused(run_cli(capfd, *_tune(TINYSTORIES, data, out, "--lr", lr)), out=out, contains="lr")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_base_weight_is_named_with_its_file(tmp_path, capfd, data, value):
    def plant(sd):
        sd["model.layers.1.mlp.up_proj.weight"][3, 4] = value

    base = _copy_model(tmp_path / "base", plant)
    out = tmp_path / "out"
    line = assert_refused(run_cli(capfd, *_tune(base, data, out)), out=out,
                          contains="model.layers.1.mlp.up_proj.weight")
    assert "non-finite" in line and str(base / "model.safetensors") in line


def test_non_finite_base_weight_stops_evaluate_too(tmp_path, capfd):
    def plant(sd):
        sd["model.layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")

    base = _copy_model(tmp_path / "base", plant)
    out = tmp_path / "out"
    assert_refused(run_cli(capfd, *_evaluate(base, out)), out=out,
                   contains="model.layers.0.self_attn.q_proj.weight")


def test_non_finite_adapter_tensor_is_named_with_its_file(tmp_path, capfd, adapter):
    def plant(sd):
        key = next(k for k in sorted(sd) if "layers.1" in k and "lora_A" in k)
        sd[key][0, 0] = float("nan")

    bad = _copy_model(tmp_path / "ad", plant, src=adapter)
    out = tmp_path / "out"
    line = assert_refused(run_cli(capfd, *_evaluate(TINYSTORIES, out, "--adapter", bad)), out=out,
                          contains="non-finite")
    assert "layers.1.mlp.gate_proj.lora_A" in line and "adapter_model.safetensors" in line


# --- part 6: partial models are errors ------------------------------------------------------------

def _extra_layer(sd):
    for k in list(sd):
        if ".layers.1." in k:
            sd[k.replace(".layers.1.", ".layers.5.")] = sd[k].clone()


def _drop_layer(sd):
    for k in [k for k in sd if ".layers.1." in k]:
        del sd[k]


@pytest.mark.parametrize("form", ["--adapter", "adapter-dir"])
def test_adapter_with_tensors_for_layers_the_base_lacks(tmp_path, capfd, adapter, form):
    bad = _copy_model(tmp_path / "ad", _extra_layer, src=adapter)
    out = tmp_path / "out"
    argv = _evaluate(TINYSTORIES, out, "--adapter", bad) if form == "--adapter" else _evaluate(bad, out)
    line = assert_refused(run_cli(capfd, *argv), out=out, contains="layers.5.mlp.gate_proj")
    assert "lacks" in line


def test_adapter_missing_tensors_for_a_module_it_targets(tmp_path, capfd, adapter):
    bad = _copy_model(tmp_path / "ad", _drop_layer, src=adapter)
    out = tmp_path / "out"
    assert_refused(run_cli(capfd, *_evaluate(TINYSTORIES, out, "--adapter", bad)), out=out,
                   contains="layers.1.mlp.gate_proj.lora_A")


@pytest.mark.parametrize("command", ["tune", "evaluate"])
def test_checkpoint_missing_a_tensor_is_refused_quietly(tmp_path, capfd, data, command):
    from transformers.utils import logging as hf_logging

    def drop(sd):
        del sd["model.layers.1.mlp.down_proj.weight"]

    base = _copy_model(tmp_path / "base", drop)
    out = tmp_path / "out"
    argv = _tune(base, data, out) if command == "tune" else _evaluate(base, out)
    # As a user runs it: transformers' load report and progress bars switched on.
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_warning()
    with warnings.catch_warnings():  # the hub's own bars stay off under the test env; transformers' are on
        warnings.simplefilter("ignore", UserWarning)
        hf_logging.enable_progress_bar()
    try:
        result = run_cli(capfd, *argv)
    finally:
        hf_logging.set_verbosity(level)
        if not bars:
            hf_logging.disable_progress_bar()
    assert_refused(result, out=out, contains="model.layers.1.mlp.down_proj.weight")


def _embed_only(sd):
    sd["model.embed_tokens.weight"] = sd.pop("lm_head.weight")


def test_tied_lm_head_is_not_missing(tmp_path, capfd, data):
    """tinystories ties lm_head to the embedding: a checkpoint storing only the embedding is whole."""
    base = _copy_model(tmp_path / "base", _embed_only)
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capfd, *_tune(base, data, out))
    assert rc == 0, err
    assert (out / "adapter_model.safetensors").is_file() and f"wrote {out}" in stdout


def test_untied_missing_lm_head_is_refused(tmp_path, capfd, data):
    base = _copy_model(tmp_path / "base", _embed_only, config=lambda c: c.update(tie_word_embeddings=False))
    out = tmp_path / "out"
    assert_refused(run_cli(capfd, *_tune(base, data, out)), out=out, contains="lm_head.weight")


# --- part 7: one pickle policy --------------------------------------------------------------------

def _pickle_base(dst: Path, legacy: bool = False) -> Path:
    shutil.copytree(TINYSTORIES, dst)
    sd = load_file(dst / "model.safetensors")
    (dst / "model.safetensors").unlink()
    torch.save(sd, dst / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    return dst


def test_pickle_base_needs_allow_pickle(tmp_path, capfd, data):
    base = _pickle_base(tmp_path / "base")
    out = tmp_path / "out"
    line = assert_refused(run_cli(capfd, *_tune(base, data, out)), out=out, contains=PICKLE_MSG)
    assert str(base / "pytorch_model.bin") in line


def test_legacy_pickle_base_trains_like_safetensors_with_allow_pickle(tmp_path, capfd, data):
    """A pre-zip .bin (which fails under mmap=True) loads with --allow-pickle, weights intact."""
    base = _pickle_base(tmp_path / "base", legacy=True)
    with open(base / "pytorch_model.bin", "rb") as f:
        assert f.read(2) != b"PK"  # really the legacy format, not a zip archive
    runs = {}
    for name, model in (("pickle", base), ("safetensors", TINYSTORIES)):
        out = tmp_path / name
        rc, _, err = run_cli(capfd, *_tune(model, data, out, "--allow-pickle", "--seed", "3"))
        assert rc == 0, err
        runs[name] = load_file(out / "adapter_model.safetensors")
    a, b = runs["pickle"], runs["safetensors"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_never_runs_even_with_allow_pickle(tmp_path, capfd, data):
    base = tmp_path / "base"
    shutil.copytree(TINYSTORIES, base)
    (base / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": _Payload(marker)}, base / "pytorch_model.bin")
    out = tmp_path / "out"
    assert_refused(run_cli(capfd, *_tune(base, data, out, "--allow-pickle")), out=out)
    assert not marker.exists()


def test_pickle_adapter_needs_allow_pickle(tmp_path, capfd, adapter):
    bad = tmp_path / "ad"
    shutil.copytree(adapter, bad)
    torch.save(load_file(bad / "adapter_model.safetensors"), bad / "adapter_model.bin")
    (bad / "adapter_model.safetensors").unlink()
    out = tmp_path / "out"
    line = assert_refused(run_cli(capfd, *_evaluate(TINYSTORIES, out, "--adapter", bad)), out=out,
                          contains=PICKLE_MSG)
    assert str(bad / "adapter_model.bin") in line


# --- part 8: the rest of the one-line contract ----------------------------------------------------

def test_tune_on_an_adapter_dir_is_one_line(tmp_path, capfd, data, adapter):
    out = tmp_path / "out"
    line = assert_refused(run_cli(capfd, *_tune(adapter, data, out)), out=out, contains="PEFT adapter")
    assert str(TINYSTORIES) in line  # it names the adapter's base


@pytest.mark.parametrize("command", ["params-dir", "params-file", "tune", "evaluate"])
@pytest.mark.parametrize("content", ["[1, 2]", '"llama"', "null"])
def test_config_json_that_is_not_an_object(tmp_path, capfd, data, command, content):
    base = tmp_path / "base"
    shutil.copytree(TINYSTORIES, base)
    (base / "config.json").write_text(content)
    out = tmp_path / "out"
    argv = {"params-dir": ["params", str(base), "--modules", "all"],
            "params-file": ["params", str(base / "config.json"), "--modules", "all"],
            "tune": _tune(base, data, out), "evaluate": _evaluate(base, out)}[command]
    assert_refused(run_cli(capfd, *argv), out=out, contains="JSON object")


@pytest.mark.parametrize("field, value", [("hidden_size", "big"), ("num_hidden_layers", -2),
                                          ("num_attention_heads", 0), ("intermediate_size", [1]),
                                          ("num_key_value_heads", 2.5)])
def test_params_config_with_bad_sizes(tmp_path, capfd, field, value):
    cfg = json.loads((TINYSTORIES / "config.json").read_text())
    cfg[field] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert_refused(run_cli(capfd, "params", path, "--modules", "all"), contains=field)


@pytest.mark.parametrize("spec", ["1-0", "0,1-0"])
def test_reversed_layer_range_is_an_error(tmp_path, capfd, data, spec):
    assert_refused(run_cli(capfd, "params", TINYSTORIES, "--modules", "all", "--layers", spec), contains="1-0")
    out = tmp_path / "out"
    assert_refused(run_cli(capfd, *_tune(TINYSTORIES, data, out, "--layers", spec)), out=out, contains="1-0")


@pytest.mark.parametrize("row, want", [
    ({"text": None, "label": "joy"}, "'text' must be a string, not null"),
    ({"text": "", "label": "joy"}, "'text' is empty"),
    ({"text": "fine", "label": None}, "'label' must be a string, not null"),
    ({"text": "fine", "label": ""}, "'label' is empty"),
    ({"text": "fine", "label": "  "}, "'label' is empty"),
    ({"text": "fine"}, "no 'label'"),
    ({"label": "joy"}, "no 'text'"),
    ({"text": "fine", "label": True}, "'label' must be a string"),
    ({"text": "fine", "label": ["joy"]}, "'label' must be a string"),
    ({"text": ["fine"], "label": "joy"}, "'text' must be a string"),
])
def test_bad_rows_are_refused_with_their_line_number(tmp_path, capfd, row, want):
    # line 1 good, line 2 blank, line 3 bad: the message names the line, not the row
    bad = _jsonl(tmp_path / "bad.jsonl", [{"text": "I feel great", "label": "joy"}, "", row])
    out = tmp_path / "out"
    line = assert_refused(run_cli(capfd, *_tune(TINYSTORIES, bad, out)), out=out, contains=want)
    assert f"{bad} line 3" in line


def test_data_file_that_is_not_utf8(tmp_path, capfd):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "caf\xe9", "label": "joy"}\n')
    out = tmp_path / "out"
    assert_refused(run_cli(capfd, *_tune(TINYSTORIES, bad, out)), out=out, contains="UTF-8")


@pytest.fixture(scope="module")
def phi3(tmp_path_factory) -> Path:
    """A tiny Phi-3 (fused qkv_proj and gate_up_proj) with tinystories' tokenizer."""
    from transformers import AutoModelForCausalLM

    from tiny import tiny_config

    cfg = tiny_config("phi3", vocab=2048)
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = 0, 1, 2
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("phi3") / "model"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TINYSTORIES / f, d / f)
    return d


@pytest.mark.parametrize("module, fused, others", [
    ("q_proj", "qkv_proj", ["k_proj", "v_proj"]),
    ("k_proj", "qkv_proj", ["q_proj", "v_proj"]),
    ("up_proj", "gate_up_proj", ["gate_proj"]),
    ("gate_proj", "gate_up_proj", ["up_proj"]),
])
def test_fused_module_message_names_exactly_the_other_modules(tmp_path, capfd, data, phi3, module, fused,
                                                             others):
    out = tmp_path / "out"
    argv = _tune(phi3, data, out)
    argv[argv.index("--modules") + 1] = module
    line = assert_refused(run_cli(capfd, *argv), out=out, contains=f"fused {fused}")
    assert f"would also train {', '.join(others)};" in line, line


def test_demo_retrains_a_cached_adapter_whose_training_was_not_finite(tmp_path, capfd, monkeypatch):
    """A cached adapter recorded with a NaN loss (trained before the finite checks) is not reused."""
    import affectlens.models.resolve as models
    import affectlens.study.demo as demo

    monkeypatch.setattr(models, "default_model_dir", lambda: TINYSTORIES)
    monkeypatch.setattr(demo, "BUDGET", demo.BUDGET.replace(batch_size=2))
    rc, _, err = run_cli(capfd, "demo", "--out", tmp_path / "d1", "--steps", "2")
    assert rc == 0, err
    first = json.loads((tmp_path / "d1" / "demo.json").read_text())
    info_file = Path(first["training"]["emotion"]["adapter"]) / "affectlens_tune.json"
    info = json.loads(info_file.read_text())
    info["loss_curve"] = [info["loss_curve"][0], float("nan")]
    info_file.write_text(json.dumps(info))  # json writes a bare NaN, as the old tune did

    rc, stdout, err = run_cli(capfd, "demo", "--out", tmp_path / "d2", "--steps", "2")
    assert rc == 0, err
    assert "nan" not in stdout.lower()
    second = json.loads((tmp_path / "d2" / "demo.json").read_text())
    assert second["cached"] is False
    curve = json.loads(info_file.read_text())["loss_curve"]
    assert len(curve) == 2 and all(x == x and abs(x) != float("inf") for x in curve)


@pytest.mark.parametrize("form", ["--adapter", "adapter-dir"])
def test_adapter_config_that_is_not_an_object(tmp_path, capfd, adapter, form):
    bad = tmp_path / "ad"
    shutil.copytree(adapter, bad)
    (bad / "adapter_config.json").write_text('["gate_proj"]')
    out = tmp_path / "out"
    argv = _evaluate(TINYSTORIES, out, "--adapter", bad) if form == "--adapter" else _evaluate(bad, out)
    assert_refused(run_cli(capfd, *argv), out=out, contains="adapter_config.json must hold a JSON object")
