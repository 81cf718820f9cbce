"""The batched layer sweep equals the per-layer loop; finished emotions are reused on rerun."""

from __future__ import annotations

import pytest
import torch

from affectlens.circuits.layers import layer_profile, per_layer_probs
from affectlens.circuits.pairs import Pair, answer_labels, emotion_probs, encoder_for
from affectlens.circuits.sweep import batched_probs, sweep_probs
from affectlens.circuits.vectors import compute_vectors

from circuits_helpers import PAIRS, planted_model
from conftest import TINYSTORIES

PAIR_OBJS = [Pair(e, n, lab) for e, n, lab in PAIRS]


def _check_equal(model, enc, pairs, sv, emotion, alpha, scale, batch_size):
    """Every layer's closed-set probabilities: batched vs one steered scoring run per layer."""
    labels = answer_labels(pairs)
    stim = [p.neutral for p in pairs if p.label == emotion]
    layers = list(range(sv.num_layers))
    got = batched_probs(model, enc, stim, labels, sv, emotion, alpha, scale, layers, batch_size)
    assert got is not None, "the batched shortcut declined this model"
    ref = per_layer_probs(model, enc, stim, [None] * len(stim), labels, sv, emotion, alpha, scale, layers)
    for la in layers:
        if la not in got:  # a zero vector: nothing injected, the base run
            assert float(sv.get(emotion)[la].abs().max()) == 0.0
            continue
        torch.testing.assert_close(got[la], ref[la], rtol=1e-5, atol=1e-7)
    return got, ref


@pytest.fixture(scope="module")
def planted():
    model, tok, _ = planted_model()
    enc = encoder_for(tok, PAIR_OBJS)
    return model, enc, compute_vectors(model, enc, PAIR_OBJS, min_score=0)


@pytest.mark.parametrize("scale", ["raw", "unit", "rms"])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_planted_gqa_batched_equals_loop(planted, scale, batch_size):
    model, enc, sv = planted
    for e in ("anger", "joy"):
        _check_equal(model, enc, PAIR_OBJS, sv, e, 3.0, scale, batch_size)


@pytest.mark.parametrize("batch_size", [3, 7])
def test_emotions_batched_together_equal_loop(planted, batch_size):
    """Rows of both emotions (and several layers) share batches; each row still gets its own vector."""
    model, enc, sv = planted
    labels = answer_labels(PAIR_OBJS)
    stim = {e: [p.neutral for p in PAIR_OBJS if p.label == e][:3] for e in ("anger", "joy")}
    ticks = []
    got = sweep_probs(model, enc, stim, labels, sv, 2.5, "raw", range(4), batch_size, ticks.append)
    assert got is not None and sum(ticks) == 2 * 4 * 3  # every (emotion, layer, prompt) counted once
    for e, st in stim.items():
        ref = per_layer_probs(model, enc, st, [None] * len(st), labels, sv, e, 2.5, "raw", range(4))
        assert sorted(got[e]) == [la for la in range(4) if sv.get(e)[la].any()]
        for la in got[e]:
            torch.testing.assert_close(got[e][la], ref[la], rtol=1e-5, atol=1e-7)


def test_base_probabilities_and_a_declining_check(planted, monkeypatch):
    """The shared base runs give the unsteered probabilities; a failed check means the per-layer loop."""
    import affectlens.evaluate.scorer as scorer

    model, enc, sv = planted
    labels = answer_labels(PAIR_OBJS)
    stim = [p.neutral for p in PAIR_OBJS if p.label == "joy"]
    base: dict = {}
    assert sweep_probs(model, enc, {"joy": stim}, labels, sv, 1.0, "raw", range(4), base_out=base)
    torch.testing.assert_close(base["joy"], emotion_probs(model, enc, stim, labels), rtol=1e-5, atol=1e-7)
    good = layer_profile(model, enc, PAIR_OBJS, sv, alpha=1.5)
    real = scorer.score_items
    monkeypatch.setattr(scorer, "score_items", lambda *a, **k: real(*a, **k) + 0.01)  # off by 1e-2
    assert sweep_probs(model, enc, {"joy": stim}, labels, sv, 1.0, "raw", range(4)) is None
    monkeypatch.setattr(scorer, "score_items", real)
    n, handle = _count_forwards(model)
    try:
        layer_profile(model, enc, PAIR_OBJS, sv, alpha=1.5, batch_size=4)  # warm: verified once per profile
        batched = n[0]
        monkeypatch.setattr(scorer, "score_items", lambda *a, **k: real(*a, **k) + 0.01)
        n[0] = 0
        loop = layer_profile(model, enc, PAIR_OBJS, sv, alpha=1.5, batch_size=4)
        assert n[0] > batched  # the loop ran: one scoring run per layer
    finally:
        handle.remove()
    assert [r["steered"] for r in loop.rows] == pytest.approx([r["steered"] for r in good.rows], rel=1e-5, abs=1e-9)
    assert [r["base"] for r in loop.rows] == pytest.approx([r["base"] for r in good.rows], rel=1e-5, abs=1e-9)


@pytest.fixture(scope="module")
def tinystories():
    from transformers import AutoModelForCausalLM

    from affectlens.models.loading import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(TINYSTORIES), dtype=torch.float32).eval()
    tok = load_tokenizer(TINYSTORIES)
    enc = encoder_for(tok, PAIR_OBJS)
    return model, tok, enc, compute_vectors(model, enc, PAIR_OBJS, min_score=0)


def test_tinystories_multi_token_labels_batched_equals_loop(tinystories):
    model, tok, enc, sv = tinystories
    from affectlens.evaluate.scorer import tokenize_pairs

    items = tokenize_pairs(tok, [enc.prompt(PAIR_OBJS[0].neutral)], answer_labels(PAIR_OBJS))
    assert any(len(r) > 1 for r in items[0].rests)  # the continuation path is exercised
    for scale, bs in (("unit", 4), ("rms", 16), ("raw", 1)):
        _check_equal(model, enc, PAIR_OBJS, sv, "anger", 2.0, scale, bs)


def test_adapter_model_batched_equals_loop(tinystories):
    from peft import LoraConfig, get_peft_model

    base, tok, enc, sv = tinystories
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False)).eval()
    try:
        _check_equal(model, enc, PAIR_OBJS, sv, "joy", 2.0, "unit", 5)
    finally:
        model.unload()


def test_profile_matches_reference_rows(planted):
    model, enc, sv = planted
    prof = layer_profile(model, enc, PAIR_OBJS, sv, alpha=2.0, scale="unit", batch_size=5)
    labels = answer_labels(PAIR_OBJS)
    for e in ("anger", "joy"):
        stim = [p.neutral for p in PAIR_OBJS if p.label == e]
        ref = per_layer_probs(model, enc, stim, [None] * len(stim), labels, sv, e, 2.0, "unit", range(4))
        got = [r["steered"] for r in sorted(prof.rows, key=lambda r: r["layer"]) if r["emotion"] == e]
        want = [float(ref[la][:, labels.index(e)].mean()) for la in range(4)]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-9)


def _count_forwards(model):
    n = [0]
    handle = model.register_forward_pre_hook(lambda *_: n.__setitem__(0, n[0] + 1))
    return n, handle


def test_interrupted_sweep_reuses_finished_emotions(planted, tmp_path):
    model, enc, sv = planted
    n, handle = _count_forwards(model)
    try:
        first = layer_profile(model, enc, PAIR_OBJS, sv, emotions=["anger"], resume=tmp_path)
        one = n[0]
        assert one > 0 and (tmp_path / "anger.json").is_file()

        class Stop(Exception):
            pass

        # the second emotion is interrupted: anger comes from the cache, joy starts and is cut off
        def stop(*_):
            raise Stop

        h2 = model.register_forward_pre_hook(stop)
        n[0] = 0
        with pytest.raises(Stop):
            layer_profile(model, enc, PAIR_OBJS, sv, emotions=["anger", "joy"], resume=tmp_path)
        h2.remove()
        assert not (tmp_path / "joy.json").exists()
        n[0] = 0
        both = layer_profile(model, enc, PAIR_OBJS, sv, emotions=["anger", "joy"], resume=tmp_path)
        assert n[0] == one  # only joy ran, as many forwards as anger took alone
        assert [r for r in both.rows if r["emotion"] == "anger"] == first.rows
        n[0] = 0
        again = layer_profile(model, enc, PAIR_OBJS, sv, emotions=["anger", "joy"], resume=tmp_path)
        assert n[0] == 0 and again.rows == both.rows
        n[0] = 0
        layer_profile(model, enc, PAIR_OBJS, sv, alpha=2.0, emotions=["anger"], resume=tmp_path)
        assert n[0] == one  # other options: a different key, recomputed
    finally:
        handle.remove()
