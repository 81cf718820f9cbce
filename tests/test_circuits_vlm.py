"""The vision-language path: a tiny random LLaVA built in-process, image pairs, stimulus = image tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from affectlens.circuits import hooks as H
from affectlens.circuits.heads import exact_patch, head_attribution, make_metric
from affectlens.circuits.intervene import Intervention, intervened
from affectlens.circuits.layers import layer_profile
from affectlens.circuits.pairs import Pair, encoder_for
from affectlens.circuits.vectors import compute_vectors

from circuits_helpers import word_tokenizer


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = word_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    ip = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14, projection_dim=16),
        text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    root = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    pairs = []
    for i, (label, colour) in enumerate([("anger", (220, 20, 20)), ("anger", (200, 40, 10)),
                                         ("joy", (250, 220, 30)), ("joy", (240, 240, 60))]):
        emo = root / f"e{i}.png"
        neu = root / f"n{i}.png"
        noise = rng.integers(0, 30, (28, 28, 3))
        Image.fromarray((np.array(colour) * 0.85 + noise).clip(0, 255).astype("uint8")).save(emo)
        Image.fromarray((np.full(3, 128) + noise).clip(0, 255).astype("uint8")).save(neu)
        pairs.append(Pair("", "", label, None, str(emo), str(neu)))
    enc = encoder_for(tok, pairs, proc)
    return model, proc, pairs, enc


def test_stimulus_span_is_the_image_tokens(vlm):
    model, proc, pairs, enc = vlm
    inputs = enc(pairs[0].emotional, pairs[0].image_emotional)
    ids = inputs["input_ids"][0].tolist()
    img = [i for i, t in enumerate(ids) if t == model.config.image_token_id]
    assert len(img) == 4
    with H.hooks(model) as h, torch.no_grad():
        tr = h.track(enc.layout)
        model(**inputs)
    r = tr.rows[0]
    assert (r.stim_start, r.stim_end, r.prompt_end) == (img[0], img[-1] + 1, len(ids))


def test_vlm_vectors_match_hidden_states(vlm):
    model, proc, pairs, enc = vlm
    sv = compute_vectors(model, enc, pairs, min_score=0)
    assert sv.get("anger").shape == (3, 32)

    def hs(p, side):
        x = enc("", getattr(p, f"image_{side}"))
        with torch.no_grad():
            return model(**x, output_hidden_states=True).hidden_states[1][0, -1].double()

    anger = [p for p in pairs if p.label == "anger"]
    ref = sum(hs(p, "emotional") - hs(p, "neutral") for p in anger) / len(anger)
    assert float(ref.norm()) > 1e-4  # the images do make a difference
    torch.testing.assert_close(sv.get("anger")[0].double(), ref, atol=1e-5, rtol=1e-4)


def test_vlm_layers_heads_patching_and_identity(vlm):
    model, proc, pairs, enc = vlm
    sv = compute_vectors(model, enc, pairs, min_score=0)
    prof = layer_profile(model, enc, pairs, sv, alpha=4.0)
    assert len(prof.rows) == 2 * 3 and all(np.isfinite(r["effect"]) for r in prof.rows)
    assert prof.effects("anger")[0] != 0.0  # steering from the image tokens on does act
    res = head_attribution(model, enc, pairs, sv, target_layer=2)
    assert res.n_heads == 4 and len(res.rows) == 2 * 3 * 4
    met = make_metric("proj", sv, "joy", 2, enc)
    for layer in (0, 1):
        a = exact_patch(model, enc, pairs[2], met, layer, None, "heads")
        b = exact_patch(model, enc, pairs[2], met, layer, None, "attn")
        assert a == pytest.approx(b, abs=1e-5)
    x = enc("", pairs[0].image_emotional)
    with torch.no_grad():
        ref = model(**x).logits
    iv = Intervention(steer=[("anger", 1, 0.0)], vectors=sv, heads={1: [0, 1]}, beta=1.0,
                      neurons={0: [0, 1]}, gamma=1.0)
    with intervened(model, enc.layout, iv), torch.no_grad():
        assert torch.equal(model(**x).logits, ref)
    iv = Intervention(heads={0: [0, 1, 2, 3]}, beta=0.0, split_layer=2)
    with intervened(model, enc.layout, iv), torch.no_grad():
        assert not torch.allclose(model(**x).logits, ref)  # knocking out image attention matters
    with torch.no_grad():
        assert torch.equal(model(**x).logits, ref)
