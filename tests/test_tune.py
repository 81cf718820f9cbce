"""Targeted LoRA tuning: only the chosen modules change, labels are masked, runs are reproducible."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from affectlens.cli import main
from affectlens.errors import AffectlensError
from affectlens.models.adapters import base_fingerprint, resolve_adapter_base
from affectlens.models.loading import load_model, load_tokenizer
from affectlens.params import count_params
from affectlens.tasks.prompts import render
from affectlens.tune.run import IGNORE, collate, encode, label_loss, load_dataset, tune

from conftest import TINYSTORIES
from tiny import tiny_model


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINYSTORIES)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _easy(tmp_path):
    """Two emotions, each with one fixed cue word: trivially learnable."""
    rows = [{"text": f"I feel great {i}", "label": "joy"} for i in range(8)]
    rows += [{"text": f"I feel awful {i}", "label": "sadness"} for i in range(8)]
    return _write(tmp_path / "easy.jsonl", rows)


@pytest.mark.parametrize("side", ["left", "right"])
def test_prompt_tokens_are_masked_exactly(tok, side):
    ds = load_dataset("emotion_train")
    ds.rows = ds.rows[:3]
    ids, n_prompts, _ = encode(tok, ds)
    input_ids, attention, labels = collate(ids, n_prompts, pad_id=tok.pad_token_id, side=side)
    width = input_ids.shape[1]
    for i, row in enumerate(ds.rows):
        # Independently: tokenize the prompt string on its own; those positions must be -100.
        prompt_ids = tok(render(tok, row["text"], "emotion"))["input_ids"]
        n = len(prompt_ids)
        length = int(attention[i].sum())
        start = width - length if side == "left" else 0
        assert (attention[i, start:start + length] == 1).all()
        assert input_ids[i, start:start + n].tolist() == prompt_ids
        assert (labels[i, :start + n] == IGNORE).all() and (labels[i, start + length:] == IGNORE).all()
        target = labels[i, start + n:start + length]
        assert (target != IGNORE).all() and target.tolist() == input_ids[i, start + n:start + length].tolist()
        assert tok.decode(target.tolist()[:-1]).strip() == row["label"]
        assert target[-1].item() == tok.eos_token_id


def test_label_loss_equals_hf_loss(tok):
    model, _ = load_model(TINYSTORIES)
    ds = load_dataset("control_train")
    ds.rows = ds.rows[:5]
    ids, n_prompts, _ = encode(tok, ds)
    with torch.no_grad():
        x, a, y = collate(ids, n_prompts, tok.pad_token_id, side="left")
        ours = label_loss(model, x, a, y)
        hf_left = model(input_ids=x, attention_mask=a, labels=y).loss
        xr, ar, yr = collate(ids, n_prompts, tok.pad_token_id, side="right")
        hf_right = model(input_ids=xr, attention_mask=ar, labels=yr).loss
    torch.testing.assert_close(ours, hf_left, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, hf_right, rtol=1e-4, atol=1e-5)  # RoPE: shift-invariant
    assert ours.item() > 0.5  # the untrained model does not already know the answers


def test_gate_only_changes_gate_and_nothing_else(tmp_path, tok):
    model, _ = load_model(TINYSTORIES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = tune(model, _easy(tmp_path), "gate_proj", steps=6, lr=1e-2, batch_size=4, seed=0,
               tokenizer=tok, verbose=False)
    merged = res.model.merge_and_unload().state_dict()
    assert set(merged) == set(before)
    changed = {k for k in before if not torch.equal(before[k], merged[k])}
    gates = {k for k in before if ".mlp.gate_proj.weight" in k}
    assert len(gates) == 2 and changed == gates


def test_layer_subset_on_qwen2(tmp_path, tok):
    model = tiny_model("qwen2", seed=3, layers=3, vocab=tok.vocab_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = tune(model, _easy(tmp_path), "attn", layers="1", steps=4, lr=1e-2, batch_size=4, tokenizer=tok,
               verbose=False)
    assert res.trainable_params == count_params(model.config.to_dict(), "attn", rank=8, layers="1").lora_total
    merged = res.model.merge_and_unload().state_dict()
    changed = {k for k in before if not torch.equal(before[k], merged[k])}
    want = {f"model.layers.1.self_attn.{m}.weight" for m in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert changed == want  # biases untouched (bias="none")


def test_loss_decreases_on_learnable_data(tmp_path, tok):
    res = tune(str(TINYSTORIES), _easy(tmp_path), "all", steps=20, lr=1e-2, batch_size=4, seed=1,
               verbose=False)
    first, last = sum(res.loss_curve[:3]) / 3, sum(res.loss_curve[-5:]) / 5
    assert last < 0.25 * first, res.loss_curve


def test_saved_adapter_is_standard_and_reproducible(tmp_path):
    data = _easy(tmp_path)
    outs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = tmp_path / name
        tune(str(TINYSTORIES), data, "gate_proj,v_proj", steps=5, lr=5e-3, batch_size=4, seed=seed,
             out=out, verbose=False)
        outs.append(out)
    a, b, c = (load_file(o / "adapter_model.safetensors") for o in outs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)

    cfg = json.loads((outs[0] / "adapter_config.json").read_text())
    # Portable: the base by its path relative to the adapter dir, plus its content fingerprint.
    assert cfg["base_model_name_or_path"] == Path(os.path.relpath(TINYSTORIES.resolve(), outs[0].resolve())).as_posix()
    assert sorted(cfg["target_modules"]) == ["gate_proj", "v_proj"] and cfg["r"] == 8
    info = json.loads((outs[0] / "affectlens_tune.json").read_text())
    assert len(info["loss_curve"]) == 5 and info["seed"] == 7
    assert info["base_fingerprint"] == base_fingerprint(TINYSTORIES)
    # PEFT is the oracle for the trainable count, per module and in total.
    from peft import LoraConfig, get_peft_model

    ref = get_peft_model(load_model(TINYSTORIES)[0], LoraConfig(r=8, target_modules=["gate_proj", "v_proj"]))
    assert info["trainable_params"] == ref.get_nb_trainable_parameters()[0]
    assert set(info["trainable_params_per_module"]) == {"gate_proj", "v_proj"}
    for f in ("loss_curve.png", "manifest.json"):
        assert (outs[0] / f).is_file()

    # The dir loads as a normal adapter and reproduces the trained model's logits.
    model, tok = load_model(outs[0])
    x = torch.tensor([tok("I feel great")["input_ids"]])
    merged = load_model(TINYSTORIES, adapter=outs[0], merge=True)[0]
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, merged(x).logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(x).logits, load_model(TINYSTORIES)[0](x).logits)


def test_in_memory_base_is_restored_by_unload(tmp_path, tok):
    model, _ = load_model(TINYSTORIES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = tune(model, _easy(tmp_path), "ffn", steps=3, lr=1e-2, batch_size=4, tokenizer=tok, verbose=False)
    base = res.model.unload()
    after = base.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


def test_cli_tune_prints_match_and_params(tmp_path, capsys):
    out = tmp_path / "ad"
    rc = main(["tune", str(TINYSTORIES), "--data", str(_easy(tmp_path)), "--modules", "gate_proj",
               "--steps", "2", "--batch-size", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and (out / "adapter_model.safetensors").is_file()
    assert "gate_proj  0-1" in text and "8,192 trainable parameters" in text  # 2 layers * 8*(128+384)


def test_tune_and_params_report_one_trainable_share(tmp_path, capsys):
    """tune said 0.375 % (its LoRA weights in the denominator) where params said 0.377 %: one definition,
    trainable / the base model's parameters, checked against a count of the model's own tensors."""
    from transformers import AutoModelForCausalLM

    from affectlens.tuneconfig import TuneConfig

    base = AutoModelForCausalLM.from_pretrained(TINYSTORIES)
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight  # tied: counted once
    n_base = sum(p.numel() for p in base.parameters())
    r = TuneConfig().rank
    lora = sum(r * (m.in_features + m.out_features) for n, m in base.named_modules() if n.endswith("gate_proj"))
    line = f"{lora:,} trainable parameters = {100 * lora / n_base:.3f} % of the base model's {n_base:,}"
    out = tmp_path / "ad"
    assert main(["tune", str(TINYSTORIES), "--data", str(_easy(tmp_path)), "--modules", "gate_proj",
                 "--steps", "1", "--batch-size", "2", "--out", str(out)]) == 0
    assert line in capsys.readouterr().out
    info = json.loads((out / "affectlens_tune.json").read_text())
    assert (info["model_params"], info["trainable_params"], info["trainable_share"]) == (n_base, lora, lora / n_base)
    assert main(["params", str(TINYSTORIES), "--modules", "gate_proj"]) == 0
    assert line in capsys.readouterr().out
    assert main(["params", str(TINYSTORIES), "--modules", "gate_proj", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lora_share_of_model"] == lora / n_base


def test_progress_label_is_short(tmp_path, monkeypatch):
    """The bar's label is the selection as spelled, or a count: seven module names left a 3-character bar."""
    import affectlens.runs as runs

    labels = []

    class Recorder(runs.Progress):
        def __init__(self, total, desc, *args, **kwargs):
            labels.append(desc)
            super().__init__(total, desc, *args, **kwargs)

    monkeypatch.setattr(runs, "Progress", Recorder)
    data = _easy(tmp_path)
    every = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    for modules in (every, "all", "gate_proj", "attn, gate_proj"):
        tune(str(TINYSTORIES), data, modules, steps=1, batch_size=2, verbose=False)
    assert labels == ["tune 7 modules", "tune all", "tune gate_proj", "tune attn,gate_proj"]
    assert all(len(x) <= 24 for x in labels)


def _rc_err(capsys, argv):
    rc = main(argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", ["module", "missing", "badjson", "label", "empty", "layers", "notext"])
def test_bad_inputs_one_line_exit_2(tmp_path, capsys, case):
    data = _easy(tmp_path)
    out = tmp_path / "out"
    argv = ["tune", str(TINYSTORIES), "--data", str(data), "--modules", "gate_proj", "--steps", "1",
            "--out", str(out)]
    want = {"module": "unknown module", "missing": "does not exist", "badjson": "not valid JSON",
            "label": "unknown to the emotion task", "empty": "has no rows", "layers": "out of range",
            "notext": "'text'"}[case]
    if case == "module":
        argv[5] = "gate_prj"
    elif case == "missing":
        argv[3] = str(tmp_path / "nope.jsonl")
    elif case == "badjson":
        (tmp_path / "b.jsonl").write_text('{"text": "a", "label": "joy"}\n{"text": \n')
        argv[3] = str(tmp_path / "b.jsonl")
    elif case == "label":
        _write(tmp_path / "l.jsonl", [{"text": "a", "label": "joy"}, {"text": "b", "label": "happy"}])
        argv[3:4] = [str(tmp_path / "l.jsonl"), "--task-kind", "emotion"]
    elif case == "empty":
        (tmp_path / "e.jsonl").write_text("\n")
        argv[3] = str(tmp_path / "e.jsonl")
    elif case == "layers":
        argv += ["--layers", "0-5"]
    elif case == "notext":
        _write(tmp_path / "t.jsonl", [{"utterance": "a", "label": "joy"}])
        argv[3] = str(tmp_path / "t.jsonl")
    rc, err = _rc_err(capsys, argv)
    assert rc == 2 and err.count("\n") == 1 and want in err, err
    assert not out.exists()


def test_existing_out_needs_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    rc, err = _rc_err(capsys, ["tune", str(TINYSTORIES), "--data", str(_easy(tmp_path)), "--modules",
                               "gate_proj", "--steps", "1", "--out", str(out)])
    assert rc == 2 and "--force" in err and (out / "keep.txt").is_file()


def test_demo_trains_caches_and_locates(tmp_path, monkeypatch, capsys):
    """The demo pipeline on tinystories (SmolLM2 is benchmark-only): train, cache, locate, reuse."""
    import affectlens.models.resolve as models
    import affectlens.study.demo as demo

    monkeypatch.setenv("AFFECTLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "default_model_dir", lambda: TINYSTORIES)
    monkeypatch.setattr(demo, "BUDGET", demo.BUDGET.replace(batch_size=2))
    first = demo.run_demo(out=tmp_path / "d1", steps=2, verbose=False)
    assert not first.cached and set(first.locate.summary["models"]) == {"emotion", "control"}
    for label, path in first.adapters.items():
        assert (path / "adapter_model.safetensors").is_file(), label
        assert json.loads((path / "affectlens_tune.json").read_text())["options"]["steps"] == 2
    # Same budget for both adapters, identical except for the data.
    opts = [json.loads((p / "affectlens_tune.json").read_text())["options"] for p in first.adapters.values()]
    assert {k: v for k, v in opts[0].items() if k not in ("data", "task", "labels")} == \
        {k: v for k, v in opts[1].items() if k not in ("data", "task", "labels")}
    stamp = {k: (p / "adapter_model.safetensors").stat().st_mtime_ns for k, p in first.adapters.items()}
    d = json.loads((tmp_path / "d1" / "demo.json").read_text())
    assert set(d["locus"]) == {"emotion", "control"}
    # One run dir: demo.json and its manifest at the root, locate's whole run inside, nothing else.
    assert (tmp_path / "d1" / "locate" / "weight_change.csv").is_file()
    assert json.loads((tmp_path / "d1" / "manifest.json").read_text())["command"] == "demo"
    assert json.loads((tmp_path / "d1" / "locate" / "manifest.json").read_text())["command"] == "locate"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("d1")) == ["d1"]
    assert d["options"] == demo.BUDGET.replace(steps=2).to_dict()

    second = demo.run_demo(out=tmp_path / "d2", steps=2, verbose=False)
    assert second.cached and second.adapters == first.adapters
    assert stamp == {k: (p / "adapter_model.safetensors").stat().st_mtime_ns for k, p in second.adapters.items()}
    assert second.summary["locus"] == first.summary["locus"]
    other = demo.run_demo(out=tmp_path / "d3", steps=3, verbose=False)  # another budget, another key
    assert not other.cached and other.adapters["emotion"] != first.adapters["emotion"]

    assert main(["demo", "--out", str(tmp_path / "d1"), "--steps", "2"]) == 2
    assert "--force" in capsys.readouterr().err


def test_failed_tune_hands_the_in_memory_base_back(tmp_path, tok):
    """A run that stops (here: the loss diverges) leaves no LoRA layers in the caller's model."""
    from peft.tuners.lora import LoraLayer

    from affectlens.errors import AffectlensError

    model, _ = load_model(TINYSTORIES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AffectlensError, match="non-finite"):
        tune(model, _easy(tmp_path), "all", steps=4, lr=1e30, batch_size=2, tokenizer=tok, verbose=False)
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


def test_adapter_moves_with_its_base_and_detects_another_base(tmp_path):
    """Base + adapter moved together to another folder still load; another model under the
    base's name is refused by the recorded fingerprint (an error, not a warning: the adapter
    would silently run as a different model)."""
    here = tmp_path / "here"
    shutil.copytree(TINYSTORIES, here / "base")
    tune(str(here / "base"), _easy(tmp_path), "gate_proj", steps=2, batch_size=2, out=here / "runs" / "ad",
         verbose=False)
    cfg = json.loads((here / "runs" / "ad" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "../../base"
    x = torch.tensor([[1, 5, 9, 17]])
    with torch.no_grad():
        want = load_model(here / "runs" / "ad")[0](x).logits
    there = tmp_path / "cluster" / "project"
    shutil.move(str(here), str(there))
    assert not here.exists()
    with torch.no_grad():
        got = load_model(there / "runs" / "ad")[0](x).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # Another model where the base was: same name, other content.
    shutil.rmtree(there / "base")
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(123)  # same architecture and shapes, other weights: it would load and run
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINYSTORIES)).save_pretrained(there / "base")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (TINYSTORIES / f).is_file():
            shutil.copy(TINYSTORIES / f, there / "base" / f)
    assert base_fingerprint(there / "base") != base_fingerprint(TINYSTORIES)
    with pytest.raises(AffectlensError, match="trained on a base with fingerprint"):
        load_model(there / "runs" / "ad")


def test_smollm2_base_is_recorded_by_name(tmp_path, tok, monkeypatch):
    import affectlens.models.resolve as models

    monkeypatch.setattr(models, "default_model_dir", lambda: TINYSTORIES)
    model, _ = load_model(TINYSTORIES)
    tune(model, _easy(tmp_path), "gate_proj", steps=1, batch_size=2, tokenizer=tok, base_path="smollm2",
         out=tmp_path / "ad", verbose=False)
    assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2"
    assert resolve_adapter_base(tmp_path / "ad") == TINYSTORIES


def test_tune_config_is_the_one_budget():
    import argparse
    import inspect

    from affectlens.commands.tune import register
    from affectlens.tuneconfig import TuneConfig

    d = TuneConfig()
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["tune", "m", "--data", "x", "--modules", "gate_proj", "--out", "o"])
    for f in ("rank", "alpha", "dropout", "steps", "lr", "batch_size", "max_length", "seed", "warmup", "precision"):
        assert getattr(args, f) == getattr(d, f), f
    assert inspect.signature(count_params).parameters["rank"].default == d.rank  # params --rank agrees
    assert TuneConfig(alpha=16) == TuneConfig(alpha=16.0) and TuneConfig(modules=["gate_proj", "up_proj"]).modules \
        == "gate_proj,up_proj"
    with pytest.raises(AffectlensError, match="steps must be"):
        TuneConfig(steps=0)
    with pytest.raises(TypeError, match="unknown TuneConfig field"):
        d.replace(stepz=3)
