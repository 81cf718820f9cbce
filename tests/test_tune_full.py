"""``tune --method full``: the selected modules' whole weights train, nothing else moves, and the
result is a model dir that ``locate`` (and every model reader) takes as a tuned model."""

from __future__ import annotations

import json

import pytest
import torch

from affectlens.cli import main
from affectlens.errors import AffectlensError
from affectlens.locate.weight_change import locate
from affectlens.models.loading import load_model, load_tokenizer
from affectlens.tune.run import tune

from conftest import TINYSTORIES
from faults import run_cli


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINYSTORIES)


def _easy(tmp_path):
    rows = [{"text": f"I feel great {i}", "label": "joy"} for i in range(8)]
    rows += [{"text": f"I feel awful {i}", "label": "sadness"} for i in range(8)]
    path = tmp_path / "easy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_full_changes_exactly_the_selected_weights(tmp_path, tok):
    model, _ = load_model(TINYSTORIES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = tune(model, _easy(tmp_path), "gate_proj,o_proj", layers="1", method="full", steps=3, lr=1e-3,
               batch_size=4, tokenizer=tok, verbose=False)
    assert res.model is model  # trained in place, no PEFT wrapper
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.layers.1.mlp.gate_proj.weight", "model.layers.1.self_attn.o_proj.weight"}
    want = before["model.layers.1.mlp.gate_proj.weight"].numel() + before["model.layers.1.self_attn.o_proj.weight"].numel()
    assert res.trainable_params == want and res.options["method"] == "full" and res.options["rank"] is None


def test_full_loss_decreases_on_learnable_data(tmp_path):
    res = tune(str(TINYSTORIES), _easy(tmp_path), "all", method="full", steps=20, lr=3e-3, batch_size=4, seed=1,
               verbose=False)
    first, last = sum(res.loss_curve[:3]) / 3, sum(res.loss_curve[-5:]) / 5
    assert last < 0.25 * first, res.loss_curve


def test_full_dir_is_a_model_and_locate_finds_only_the_trained_modules(tmp_path, capsys):
    out = tmp_path / "full"
    rc = main(["tune", str(TINYSTORIES), "--data", str(_easy(tmp_path)), "--modules", "gate_proj", "--layers", "0",
               "--method", "full", "--steps", "3", "--lr", "1e-3", "--batch-size", "4", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    for f in ("config.json", "model.safetensors", "tokenizer.json", "affectlens_tune.json", "loss_curve.png",
              "manifest.json"):
        assert (out / f).is_file(), f
    assert not (out / "adapter_config.json").exists()
    tuned, tok2 = load_model(out)  # an ordinary HF model dir, with its tokenizer
    assert tok2 is not None and tok2.vocab_size == load_tokenizer(TINYSTORIES).vocab_size
    base = load_model(TINYSTORIES)[0].state_dict()
    diff = {k for k, v in tuned.state_dict().items() if not torch.equal(v, base[k])}
    assert diff == {"model.layers.0.mlp.gate_proj.weight"}

    res = locate(TINYSTORIES, [out], labels=["full"], show_progress=False)
    moved = {(r.layer, r.module, r.param) for r in res.rows if r.l2 > 0}
    assert moved == {(0, "gate_proj", "weight")}
    # Embeddings and norms unchanged (a tied lm_head is not saved apart: absent, None).
    others = {row["tensor"]: row["l2:full"] for row in res.other_rows}
    assert any(v == 0 for v in others.values()) and all(v in (0, None) for v in others.values()), others
    info = json.loads((out / "affectlens_tune.json").read_text())
    assert info["options"]["method"] == "full" and len(info["loss_curve"]) == 3


def test_failed_full_tune_hands_the_in_memory_base_back(tmp_path, tok):
    model, _ = load_model(TINYSTORIES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    with pytest.raises(AffectlensError, match="non-finite"):
        tune(model, _easy(tmp_path), "all", method="full", steps=4, lr=1e30, batch_size=2, tokenizer=tok,
             verbose=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == {k: p.requires_grad for k, p in model.named_parameters()}


def test_unknown_method_is_refused(tmp_path, capfd):
    with pytest.raises(AffectlensError, match="method must be one of lora, full"):
        tune(str(TINYSTORIES), _easy(tmp_path), "gate_proj", method="sft", steps=1, verbose=False)
    rc, _, err = run_cli(capfd, "tune", TINYSTORIES, "--data", _easy(tmp_path), "--modules", "gate_proj",
                         "--method", "sft", "--out", tmp_path / "o")
    assert rc == 2 and "invalid choice: 'sft'" in err and not (tmp_path / "o").exists()


def test_bf16_full_tune_keeps_float32_master_weights(tmp_path, tok):
    """At a learning rate whose per-step AdamW updates (~lr) are far below a bf16 weight's resolution
    (~2^-8 of it), pure-bf16 training changes nothing; float32 master weights accumulate the updates and
    round them into the saved bf16 weights like a float32 run rounded at the end."""
    data = _easy(tmp_path)
    kw = dict(layers="0", method="full", steps=12, lr=2e-5, batch_size=4, tokenizer=tok, verbose=False, seed=3)
    name = "model.layers.0.mlp.gate_proj.weight"
    ref_model, _ = load_model(TINYSTORIES)  # float32 run: the reference, rounded to bf16 at the end
    base32 = ref_model.state_dict()[name].clone()
    tune(ref_model, data, "gate_proj", **kw)
    ref = ref_model.state_dict()[name].to(torch.bfloat16)

    model, _ = load_model(TINYSTORIES, dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = tune(model, data, "gate_proj", **kw)
    after = model.state_dict()
    assert all(v.dtype == torch.bfloat16 for v in after.values())  # saved and handed back in the model's dtype
    assert {k for k in before if not torch.equal(before[k], after[k])} == {name}
    assert res.options["fp32_master_weights"] is True and res.options["precision_used"] == "bf16"
    moved_ref = ref != base32.to(torch.bfloat16)
    moved = after[name] != before[name]
    # Each update is ~2e-5 against a bf16 resolution of ~1e-4 at these weights: a bf16 parameter rounds
    # most of them away (measured: 603 elements moved against float32's 3710); the master weights move
    # nearly the same elements as the float32 run (measured: 3678 of them).
    assert moved_ref.sum() > 1000
    assert moved.sum() >= 0.9 * moved_ref.sum()
    assert (moved & moved_ref).sum() >= 0.9 * moved_ref.sum()
