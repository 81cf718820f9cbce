"""Circuits: planted ground truth is recovered; patching, hooks and identities hold exactly."""

from __future__ import annotations

import gc
import math

import pytest
import torch

from affectlens.circuits import hooks as H
from affectlens.circuits.heads import (
    classify_heads,
    exact_patch,
    head_attribution,
    make_metric,
    overlap_by_layer,
    top_heads,
)
from affectlens.circuits.intervene import Intervention, intervened
from affectlens.circuits.layers import layer_profile
from affectlens.circuits.neurons import neuron_attribution
from affectlens.circuits.pairs import Pair, encoder_for
from affectlens.circuits.vectors import (
    SteeringVectors,
    compute_vectors,
    export_lm_eval,
    export_steering_vectors_lib,
    import_lm_eval,
    import_steering_vectors_lib,
    select_pairs,
)
from affectlens.errors import AffectlensError

from circuits_helpers import PAIRS, PLANT_LAYER, planted_model, word_tokenizer

PAIR_OBJS = [Pair(e, n, lab) for e, n, lab in PAIRS]


@pytest.fixture(scope="module")
def planted():
    model, tok, v = planted_model()
    enc = encoder_for(tok, PAIR_OBJS)
    sv = compute_vectors(model, enc, PAIR_OBJS, min_score=0)
    return model, tok, v, enc, sv


@pytest.fixture(scope="module")
def random_llama():
    """A random tiny GQA Llama (4 query / 2 KV heads) with an o_proj bias, word tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer()
    torch.manual_seed(3)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok.get_vocab()), attention_bias=True,
                      max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    enc = encoder_for(tok, PAIR_OBJS)
    sv = compute_vectors(model, enc, PAIR_OBJS, min_score=0)
    return model, tok, enc, sv


def _logits(model, tok, text="i am furious the bus was late"):
    """Logits of a prompt in the evaluation format (so the stimulus span is found)."""
    ids = encoder_for(tok, PAIR_OBJS)(text)["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def _hook_ids(model) -> set:
    """Every registered forward (pre-)hook; transformers installs its own for output_hidden_states."""
    return {(n, k, id(f)) for n, m in model.named_modules()
            for k, f in [*m._forward_hooks.items(), *m._forward_pre_hooks.items()]}


# ----------------------------------------------------------------------------- planted ground truth


def test_planted_direction_recovered(planted):
    model, tok, v, enc, sv = planted
    for e in ("anger", "joy"):
        s = sv.get(e)
        assert s.shape == (4, 32)
        assert torch.cosine_similarity(s[PLANT_LAYER], v[e], dim=0) > 0.99
        assert float(s[:PLANT_LAYER].norm()) == 0.0  # nothing differs before the planted block
        assert int(s.norm(dim=1).argmax()) == PLANT_LAYER


def test_vectors_match_transformers_hidden_states(planted):
    """Oracle: HF output_hidden_states (float64 means) for pair / group / global centring."""
    model, tok, v, enc, sv = planted

    def hs(text):
        ids = enc(text)
        with torch.no_grad():
            out = model(**ids, output_hidden_states=True)
        return torch.stack([h[0, -1] for h in out.hidden_states[1:-1]]).double()  # blocks 0..L-2

    hp = {p: hs(p.emotional) for p in PAIR_OBJS}
    hn = {p: hs(p.neutral) for p in PAIR_OBJS}
    anger = [p for p in PAIR_OBJS if p.label == "anger"]
    ref_pair = sum(hp[p] - hn[p] for p in anger) / len(anger)
    ref_group = sum(hp[p] for p in anger) / len(anger) - sum(hn.values()) / len(PAIR_OBJS)
    ref_global = sum(hp[p] for p in anger) / len(anger) - sum(hp.values()) / len(PAIR_OBJS)
    for centring, ref in (("pair", ref_pair), ("group", ref_group), ("global", ref_global)):
        got = compute_vectors(model, enc, PAIR_OBJS, min_score=0, centring=centring).get("anger")
        torch.testing.assert_close(got[:-1].double(), ref, atol=1e-5, rtol=1e-5)


def test_denoise_projects_out_neutral_pcs(random_llama):
    model, tok, enc, sv = random_llama
    raw = compute_vectors(model, enc, PAIR_OBJS, min_score=0)
    den = compute_vectors(model, enc, PAIR_OBJS, min_score=0, denoise=0.9)
    neutral = torch.stack([torch.stack([h for h in _resid(model, enc, p.neutral)]) for p in PAIR_OBJS])
    x = neutral[:, 1].double()  # block 1 (the last entry is after the final norm)
    x = x - x.mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = int((torch.cumsum(s**2, 0) / (s**2).sum() < 0.9).sum()) + 1
    basis = vh[:k]
    ref = raw.get("anger")[1].double()
    ref = ref - basis.T @ (basis @ ref)
    torch.testing.assert_close(den.get("anger")[1].double(), ref, atol=1e-5, rtol=1e-4)


def _resid(model, enc, text):
    with torch.no_grad():
        out = model(**enc(text), output_hidden_states=True)
    return [h[0, -1] for h in out.hidden_states[1:]]


def _label_probs(model, enc, text, labels):
    """Independent scorer: the label words are single tokens of the word tokenizer."""
    ids = [enc.tokenizer.convert_tokens_to_ids(x) for x in labels]
    with torch.no_grad():
        return torch.softmax(model(**enc(text)).logits[0, -1, ids].double(), -1)


def test_min_score_fallback_uses_best_pairs_above_chance(planted):
    """Nothing passes τ: each emotion's U_e is its min_pairs best pairs (by p(label)), noted as a fallback."""
    model, tok, v, enc, sv = planted
    labels = ["anger", "joy", "neutral"]
    sv2 = compute_vectors(model, enc, PAIR_OBJS, min_score=1.0, min_pairs=2)
    for e in ("anger", "joy"):
        sel = sv2.options["selection"][e]
        assert sel["rule"] == "fallback" and sel["passing"] == 0 and sel["used"] == 2 and "min-score 1" in sel["note"]
        mine = [p for p in PAIR_OBJS if p.label == e]
        score = [float(_label_probs(model, enc, p.emotional, labels)[labels.index(e)]) for p in mine]
        assert min(score) > 1 / 3  # the planted model reads every pair: all are above chance
        best = sorted(range(len(mine)), key=lambda i: -score[i])[:2]
        ref = torch.stack([torch.stack(_resid(model, enc, mine[i].emotional))
                           - torch.stack(_resid(model, enc, mine[i].neutral)) for i in best]).double().mean(0)
        # hidden_states[-1] is after the final norm: compare blocks 0..L-2
        torch.testing.assert_close(sv2.get(e)[:-1].double(), ref[:-1], atol=1e-5, rtol=1e-5)
        assert sv2.counts[e] == 2 and sv2.totals[e] == 4


def _fake_pairs(scores: dict[str, list[float]]):
    pairs = [Pair(f"{e} {i}", f"n {i}", e) for e, ss in scores.items() for i in range(len(ss))]
    return pairs, torch.tensor([x for ss in scores.values() for x in ss])


def test_select_pairs_rules():
    # labels a, b, c + neutral: chance is 1/4
    pairs, score = _fake_pairs({"a": [0.9, 0.7, 0.6, 0.1], "b": [0.6, 0.4, 0.3, 0.2], "c": [0.3, 0.26, 0.2]})
    keep, rep = select_pairs(pairs, score, 0.5, 3)
    used = {e: sorted(float(score[i]) for i, k in enumerate(keep) if k and pairs[i].label == e) for e in "abc"}
    assert used == {"a": pytest.approx([0.6, 0.7, 0.9]), "b": pytest.approx([0.3, 0.4, 0.6]),
                    "c": pytest.approx([0.26, 0.3])}  # c: only two pairs beat chance
    assert [rep[e]["rule"] for e in "abc"] == ["min_score", "fallback", "fallback"]
    assert (rep["b"]["passing"], rep["b"]["used"], rep["b"]["pass_rate"]) == (1, 3, 0.25)
    assert "note" not in rep["a"] and "above chance (0.25)" in rep["c"]["note"]
    with pytest.raises(AffectlensError, match=r"no usable pair for c: .*--min-pairs 0.*a 3/4, b 1/4, c 0/3"):
        select_pairs(pairs, score, 0.5, 0)  # no fallback: c has no passing pair
    ab = [i for i, p in enumerate(pairs) if p.label != "c"]
    _, rep0 = select_pairs([pairs[i] for i in ab], score[ab], 0.5, 0)  # no fallback: exactly the passing pairs
    assert [(rep0[e]["used"], rep0[e]["rule"]) for e in "ab"] == [(3, "min_score"), (1, "min_score")]
    pairs, score = _fake_pairs({"a": [0.9, 0.8], "b": [0.2, 0.1]})  # chance 1/3: b has nothing usable
    with pytest.raises(AffectlensError, match=r"no usable pair for b: .* none scores above chance"):
        select_pairs(pairs, score, 0.5, 5)


def test_min_score_above_one_refused(planted):
    model, tok, v, enc, sv = planted
    with pytest.raises(AffectlensError, match="above 1"):
        compute_vectors(model, enc, PAIR_OBJS, min_score=1.5)


def test_planted_layer_found(planted):
    model, tok, v, enc, sv = planted
    prof = layer_profile(model, enc, PAIR_OBJS, sv, alpha=1.0)
    assert prof.critical == {"anger": PLANT_LAYER, "joy": PLANT_LAYER, "mean": PLANT_LAYER}
    for e in ("anger", "joy"):
        eff = prof.effects(e)
        assert eff[0] == 0.0  # S_0 is exactly zero: injecting it changes nothing
        assert eff[PLANT_LAYER] > 5 * max(abs(x) for i, x in enumerate(eff) if i != PLANT_LAYER)


def test_planted_heads_found_and_specific(planted):
    model, tok, v, enc, sv = planted
    res = head_attribution(model, enc, PAIR_OBJS, sv, target_layer=PLANT_LAYER)
    assert res.n_heads == 4 and len(res.rows) == 2 * 4 * 4
    tops = top_heads(res, k=1)
    assert tops == {"anger": {(PLANT_LAYER, 0)}, "joy": {(PLANT_LAYER, 2)}}
    assert classify_heads(tops) == {(PLANT_LAYER, 0): "specific", (PLANT_LAYER, 2): "specific"}
    ov = overlap_by_layer(tops, 4)
    assert ov[PLANT_LAYER]["jaccard_pairwise"] == 0.0 and math.isnan(ov[0]["jaccard_pairwise"])
    planted_row = next(r for r in res.rows if (r["emotion"], r["layer"], r["head"]) == ("anger", PLANT_LAYER, 0))
    assert planted_row["cos"] > 0.999
    # With the target at the planted layer, patching head 0 removes the whole projection.
    met = make_metric("proj", sv, "anger", PLANT_LAYER, enc)
    pair = PAIR_OBJS[0]
    full = exact_patch(model, enc, pair, met, PLANT_LAYER, None, "attn")
    one = exact_patch(model, enc, pair, met, PLANT_LAYER, [0], "heads")
    other = exact_patch(model, enc, pair, met, PLANT_LAYER, [1, 2, 3], "heads")
    assert full < -0.1 and one == pytest.approx(full, abs=1e-5) and abs(other) < 1e-6


# ----------------------------------------------------------------------------- patching


def test_all_heads_patch_equals_attention_output_patch(random_llama):
    model, tok, enc, sv = random_llama
    met = make_metric("proj", sv, "joy", 2, enc)
    for layer in range(3):
        for direction in ("denoise", "noise"):
            heads = exact_patch(model, enc, PAIR_OBJS[5], met, layer, None, "heads", direction)
            attn = exact_patch(model, enc, PAIR_OBJS[5], met, layer, None, "attn", direction)
            assert abs(heads) > 1e-4
            assert heads == pytest.approx(attn, abs=1e-5)


def test_head_writes_sum_to_o_proj_and_gqa_count(random_llama):
    model, tok, enc, sv = random_llama
    layer = model.model.layers[1].self_attn
    store = {}
    with H.hooks(model) as h:
        cap = H.capture(h, [1], resid=False, o_in=True)
        h.forward(layer.o_proj, lambda m, a, o: store.__setitem__("out", o.detach()))
        model(**enc("we won the game so happy"))
    n, kv, hd = H.head_geometry(model)
    assert (n, kv, hd) == (4, 2, 8)
    per_head = H.head_outputs(cap.o_in[1][0].double(), layer.o_proj.weight.detach().double(), n)
    assert per_head.shape[-2] == 4
    ref = store["out"][0].double() - layer.o_proj.bias.detach().double()
    torch.testing.assert_close(per_head.sum(-2), ref, atol=1e-5, rtol=1e-5)


def _spearman(a, b):
    ra = torch.argsort(torch.argsort(torch.tensor(a))).double()
    rb = torch.argsort(torch.argsort(torch.tensor(b))).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float(ra @ rb / (ra.norm() * rb.norm()))


def test_attribution_patching_agrees_with_exact(random_llama):
    model, tok, enc, sv = random_llama
    pair = next(p for p in PAIR_OBJS if p.label == "anger")
    met = make_metric("proj", sv, "anger", 2, enc)
    res = head_attribution(model, enc, [pair], sv, emotions=["anger"], target_layer=2)
    est, exact = [], []
    for r in res.rows:
        if r["layer"] <= 1:
            est.append(-r["drop"])
            exact.append(exact_patch(model, enc, pair, met, r["layer"], [r["head"]], "heads"))
    assert _spearman(est, exact) > 0.8
    big = sorted(range(len(exact)), key=lambda i: -abs(exact[i]))[:4]
    assert all(math.copysign(1, est[i]) == math.copysign(1, exact[i]) for i in big)

    nres = neuron_attribution(model, enc, [pair], sv, emotions=["anger"], target_layer=2, top_k=12)
    est_n, exact_n = [], []
    for r in nres.rows:
        if r["layer"] <= 1:
            est_n.append(-r["drop"])
            exact_n.append(exact_patch(model, enc, pair, met, r["layer"], [r["neuron"]], "neurons"))
    assert len(est_n) >= 6
    assert _spearman(est_n, exact_n) > 0.7
    assert sum(math.copysign(1, a) == math.copysign(1, b) for a, b in zip(est_n, exact_n, strict=True)) \
        >= len(est_n) - 1


# ----------------------------------------------------------------------------- hooks and identities


def test_hooks_removed_also_on_error(planted):
    model, tok, v, enc, sv = planted
    ref = _logits(model, tok)
    base_hooks = _hook_ids(model)
    impl = model.config._attn_implementation
    iv = Intervention(steer=[("anger", PLANT_LAYER, 3.0)], vectors=sv, heads={1: [0, 2]}, beta=3.0,
                      neurons={0: [1, 2]}, gamma=2.0)
    with intervened(model, enc.layout, iv):
        assert not torch.equal(_logits(model, tok), ref)  # the hooks do act
        assert model.config._attn_implementation == H.ATTN_IMPL
    assert _hook_ids(model) == base_hooks and torch.equal(_logits(model, tok), ref)
    assert model.config._attn_implementation == impl and not H._ATTN_RULES
    with pytest.raises(RuntimeError, match="boom"), intervened(model, enc.layout, iv):
        raise RuntimeError("boom")
    assert _hook_ids(model) == base_hooks and torch.equal(_logits(model, tok), ref)
    assert model.config._attn_implementation == impl and not H._ATTN_RULES
    # errors raised by the hooked forward itself
    with pytest.raises(ValueError), H.hooks(model) as h:
        h.forward(model.model.layers[0], lambda m, a, o: (_ for _ in ()).throw(ValueError("x")))
        _logits(model, tok)
    assert _hook_ids(model) == base_hooks and torch.equal(_logits(model, tok), ref)
    # and after every analysis call
    head_attribution(model, enc, PAIR_OBJS[:1], sv, emotions=["anger"], target_layer=1)
    assert _hook_ids(model) == base_hooks and torch.equal(_logits(model, tok), ref)


def test_identity_interventions_change_nothing(planted):
    model, tok, v, enc, sv = planted
    ref = _logits(model, tok)
    for scale in ("raw", "unit", "rms"):
        iv = Intervention(steer=[("anger", la, 0.0) for la in range(4)], scale=scale, vectors=sv,
                          heads={1: [0, 1, 2, 3], 2: [0]}, beta=1.0, neurons={0: list(range(64))},
                          gamma=1.0)
        with intervened(model, enc.layout, iv):
            assert torch.equal(_logits(model, tok), ref)
    for mode in ("after", "before"):
        with intervened(model, enc.layout, Intervention(heads={1: [0]}, beta=1.0, attn_mode=mode)):
            assert torch.equal(_logits(model, tok), ref)


def test_attention_amplification_matches_closed_form(planted):
    """Planted head 0 attends uniformly: after-softmax β gives weight β/(n+(β−1)|S|) per stimulus key."""
    model, tok, v, enc, sv = planted
    text = "i am furious the bus"
    ids = enc(text)["input_ids"][0].tolist()
    vocab = tok.get_vocab()
    start = ids.index(vocab["i"])
    end = start + 5
    n = len(ids)
    layout = H.Layout(prefix_len=start, suffix_ids=(vocab["emotion"], vocab[":"]), search_from=start)

    def proj(iv=None):
        ctx = intervened(model, layout, iv) if iv else H.hooks(model)
        with ctx, torch.no_grad(), H.hooks(model) as h:
            cap = H.capture(h, [PLANT_LAYER])
            model(**enc(text))
        return float(cap.resid[PLANT_LAYER][0, -1] @ v["anger"])

    base = proj()
    for beta in (0.0, 0.5, 3.0):
        got = proj(Intervention(heads={PLANT_LAYER: [0]}, beta=beta, split_layer=3))
        assert got == pytest.approx(base * beta * n / (n + (beta - 1) * (end - start)), rel=1e-4, abs=1e-5)
    # "before" scales the scores, which are all zero here: no change at all
    assert proj(Intervention(heads={PLANT_LAYER: [0]}, beta=3.0, attn_mode="before")) == pytest.approx(base, abs=1e-6)
    # knockout of the wrong head changes nothing
    assert proj(Intervention(heads={PLANT_LAYER: [1]}, beta=0.0)) == pytest.approx(base, abs=1e-6)


def test_neuron_amplification_scales_down_proj_input(random_llama):
    model, tok, enc, sv = random_llama
    down = model.model.layers[1].mlp.down_proj
    seen = {}
    with H.hooks(model) as h:
        h.pre(down, lambda m, a: seen.__setitem__("ref", a[0].detach().clone()))
        model(**enc("we won the game so happy"))
    with intervened(model, enc.layout, Intervention(neurons={1: [3, 5]}, gamma=2.5)), H.hooks(model) as h:
        h.pre(down, lambda m, a: seen.__setitem__("amp", a[0].detach().clone()))
        model(**enc("we won the game so happy"))
    expect = seen["ref"].clone()
    expect[..., [3, 5]] *= 2.5
    torch.testing.assert_close(seen["amp"], expect)


def test_no_memory_growth_across_calls(planted):
    model, tok, v, enc, sv = planted
    iv = Intervention(steer=[("anger", 1, 2.0)], vectors=sv, heads={1: [0]}, beta=2.0)

    def work():
        with intervened(model, enc.layout, iv):
            _logits(model, tok)
        head_attribution(model, enc, PAIR_OBJS[:2], sv, emotions=["anger"], target_layer=1)

    def n_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if torch.is_tensor(o))

    work()
    base_hooks = _hook_ids(model)
    before = n_tensors()
    for _ in range(5):
        work()
    assert n_tensors() <= before
    assert not H._ATTN_RULES and _hook_ids(model) == base_hooks


# ----------------------------------------------------------------------------- files


def test_vector_files_roundtrip_and_interchange(planted, tmp_path):
    model, tok, v, enc, sv = planted
    sv.save(tmp_path / "vectors.safetensors")
    back = SteeringVectors.load(tmp_path)
    assert back.labels == ["anger", "joy"] and back.counts == {"anger": 4, "joy": 4}
    torch.testing.assert_close(back.get("joy"), sv.get("joy"))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "vectors.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["anger", "joy"] and f.get_tensor("anger").shape == (4, 32)
        assert f.metadata()["num_layers"] == "4"

    export_steering_vectors_lib(sv, "anger", tmp_path / "sv.pt", layers=[1, 2])
    raw = torch.load(tmp_path / "sv.pt", weights_only=True)
    assert raw["layer_type"] == "decoder_block" and sorted(raw["layer_activations"]) == [1, 2]
    imp = import_steering_vectors_lib(tmp_path / "sv.pt", "anger", 4)
    torch.testing.assert_close(imp.get("anger")[1:3], sv.get("anger")[1:3])
    assert float(imp.get("anger")[0].abs().sum()) == 0.0

    export_lm_eval(sv, "joy", tmp_path / "steer.pt", layers=[1], coefficient=2.0)
    raw = torch.load(tmp_path / "steer.pt", weights_only=True)
    names = dict(model.base_model.named_modules())  # lm-eval resolves hookpoints here
    assert all(hp in names for hp in raw) and raw["layers.1"]["action"] == "add"
    imp = import_lm_eval(tmp_path / "steer.pt", "joy", 4)
    torch.testing.assert_close(imp.get("joy")[1], 2.0 * sv.get("joy")[1])
    with pytest.raises(AffectlensError):
        SteeringVectors.load(tmp_path / "sv.pt")


def test_cached_generation_matches_full_recompute_under_intervention(planted):
    """The tracker follows cached decoding: same logits as recomputing the whole sequence each step."""
    model, tok, v, enc, sv = planted
    iv = Intervention(steer=[("anger", PLANT_LAYER, 2.0)], vectors=sv, heads={1: [0], 2: [0, 2]}, beta=3.0,
                      split_layer=1, neurons={3: [4]}, gamma=3.0)
    ids = enc("i am furious the bus")["input_ids"]
    steps = 4
    with intervened(model, enc.layout, iv), torch.no_grad():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        seq = ids
        full = []
        for _ in range(steps):
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq), use_cache=False).logits[:, -1]
            full.append(logits)
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(gen.sequences, seq)
    for a, b in zip(gen.logits, full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                               output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    assert not torch.allclose(plain.logits[0], full[0])


def test_perplexity_guard_sees_attention_amplification(planted):
    """Plain text: first half = stimulus, second half = query, so VEE is visible to the guard."""
    from affectlens.circuits.intervene import guarded_perplexity
    from affectlens.evaluate.perplexity import perplexity

    model, tok, v, enc, sv = planted
    texts = ["i am furious the bus was late again and my boss called today", "we won the game so happy"]
    base = guarded_perplexity(model, tok, texts)
    assert base == pytest.approx(perplexity(model, tok, texts)["perplexity"])
    assert guarded_perplexity(model, tok, texts, Intervention(heads={1: [0, 2]}, beta=1.0)) == base
    assert guarded_perplexity(model, tok, texts, Intervention(heads={1: [0, 2]}, beta=5.0)) != pytest.approx(base)


def test_head_panels_share_one_colour_scale_and_one_colour_bar():
    """heads.png's panels are compared with each other: one symmetric scale, one colour bar."""
    import numpy as np

    from affectlens import plots

    maps = {"anger": np.array([[0.1, -0.2], [0.05, 0.0]]), "joy": np.array([[3.0, 0.0], [-1.0, 0.5]]),
            "fear": np.array([[0.0, 0.01], [0.0, -0.02]]), "sadness": np.array([[-4.5, 0.0], [0.2, 0.1]])}
    fig = plots.head_scores(maps, "head score")
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == len(maps)
    lim = 4.5  # the largest |score| of any panel (sadness)
    assert {(im.norm.vmin, im.norm.vmax) for im in images} == {(-lim, lim)}
    assert [ax.get_label() for ax in fig.axes].count("<colorbar>") == 1
    plots.pyplot().close(fig)
