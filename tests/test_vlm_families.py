"""The papers' model families, built tiny and random in-process, through our loaders.

Qwen2-VL, Qwen2.5-VL, Qwen3-VL (M-RoPE) and LLaVA-OneVision: each is saved
with its own processor (PIL image processor, a word tokenizer with the
family's special tokens), loaded back through ``circuits.inputs.load_for_pairs``
and run through every circuits stage on image pairs. Expected values come from
the model's own forward (hidden states, logits, attention weights) and the
processor's own image-token id, never from the code under test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from affectlens.circuits import hooks as H
from affectlens.circuits.heads import exact_patch, head_attribution, make_metric
from affectlens.circuits.inputs import load_for_pairs
from affectlens.circuits.intervene import Intervention, intervened
from affectlens.circuits.layers import layer_profile
from affectlens.circuits.neurons import neuron_attribution
from affectlens.circuits.pairs import emotion_probs, encoder_for, load_pairs
from affectlens.circuits.vectors import compute_vectors
from affectlens.models import vlm
from affectlens.modules import MODULES, inventory
from affectlens.tune.training import lora_targets

from circuits_helpers import word_tokenizer

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision")
TEXT = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)


def _tiny(family: str, tok):
    """(model, image processor, processor kwargs, image side) of a tiny random ``family`` model."""
    import transformers as T

    f = vlm.FAMILIES[family]
    ids = {t: tok.convert_tokens_to_ids(t) for t in f.special_tokens}
    if f.mrope:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        ps = 16 if family == "qwen3_vl" else 14
        side = 4 * ps  # a 4x4 patch grid, merged 2x2: four image tokens
        ip = Qwen2VLImageProcessorPil(patch_size=ps, merge_size=2, temporal_patch_size=2,
                                      size={"shortest_edge": side * side, "longest_edge": side * side})
        text = dict(TEXT, vocab_size=len(tok), head_dim=16,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]})
        vis = dict(depth=1, num_heads=2, patch_size=ps, spatial_merge_size=2, temporal_patch_size=2)
        if family == "qwen2_vl":
            cls, vis = T.Qwen2VLForConditionalGeneration, dict(vis, embed_dim=32, hidden_size=64, mlp_ratio=2)
        elif family == "qwen2_5_vl":
            cls, vis = T.Qwen2_5_VLForConditionalGeneration, dict(vis, hidden_size=32, out_hidden_size=64,
                                                                  intermediate_size=48, window_size=56,
                                                                  fullatt_block_indexes=[0])
        else:
            cls, vis = T.Qwen3VLForConditionalGeneration, dict(vis, depth=2, hidden_size=32, out_hidden_size=64,
                                                                intermediate_size=48, deepstack_visual_indexes=[1],
                                                                num_position_embeddings=64)
        cfg = cls.config_class(text_config=text, vision_config=vis, image_token_id=ids[f.image_token],
                               video_token_id=ids[f.video_token], vision_start_token_id=ids[f.vision_start],
                               vision_end_token_id=ids[f.vision_end])
        return cls(cfg), ip, {}, side
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    ip = LlavaOnevisionImageProcessorPil(size={"height": 28, "width": 28}, image_grid_pinpoints=[[28, 28]])
    cfg = T.LlavaOnevisionConfig(
        vision_config=T.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=28, patch_size=14),
        text_config=T.Qwen2Config(**TEXT, vocab_size=len(tok)), image_token_id=ids["<image>"],
        video_token_id=ids["<video>"], vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_grid_pinpoints=[[28, 28]])
    kw = {"num_image_tokens": 4, "vision_feature_select_strategy": "full", "vision_aspect_ratio": "anyres_max_9"}
    return T.LlavaOnevisionForConditionalGeneration(cfg), ip, kw, 28


def _pairs_file(root, side: int):
    import json

    rng = np.random.default_rng(0)
    rows = []
    for i, (label, colour) in enumerate([("anger", (220, 20, 20)), ("anger", (200, 40, 10)),
                                         ("joy", (250, 220, 30)), ("joy", (240, 240, 60))]):
        emo, neu = root / f"e{i}.png", root / f"n{i}.png"
        noise = rng.integers(0, 60, (side, side, 3))
        Image.fromarray((np.array(colour) * 0.75 + noise).clip(0, 255).astype("uint8")).save(emo)
        Image.fromarray((np.full(3, 128) + noise).clip(0, 255).astype("uint8")).save(neu)
        rows.append({"emotional": "", "neutral": "", "label": label, "image_emotional": str(emo),
                     "image_neutral": str(neu)})
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def saved_family(family: str, root: Path) -> tuple[Any, Any, Any, Path]:
    """``(model, processor, tokenizer, pairs file)``: the tiny model and its processor saved in ``root/model``."""
    f = vlm.FAMILIES[family]
    tok = word_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": list(f.special_tokens)})
    torch.manual_seed(0)
    model, ip, kw, side = _tiny(family, tok)
    model.save_pretrained(root / "model")
    proc = vlm.build_processor(f, ip, tok, **kw)
    proc.save_pretrained(root / "model")
    return model, proc, tok, _pairs_file(root, side)


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request, tmp_path_factory):
    """The family's tiny model saved with its processor, loaded back through ``load_for_pairs``."""
    family = request.param
    f = vlm.FAMILIES[family]
    root = tmp_path_factory.mktemp(family)
    model, _, _, pairs_file = saved_family(family, root)
    pairs = load_pairs(pairs_file)
    loaded, tok2, proc = load_for_pairs(str(root / "model"), pairs, device="cpu", dtype="float32")
    return {"family": f, "built": model.eval(), "model": loaded, "proc": proc, "pairs": pairs,
            "enc": encoder_for(tok2, pairs, proc), "dir": root / "model"}


def _image_positions(fam, inputs) -> list[int]:
    """Where the processor put image tokens (its own id, read from the processor, not our code)."""
    return [i for i, t in enumerate(inputs["input_ids"][0].tolist()) if t == fam["proc"].image_token_id]


def test_loads_family_processor_and_language_layers(fam):
    model, proc, f = fam["model"], fam["proc"], fam["family"]
    assert type(model).__name__ == type(fam["built"]).__name__
    assert type(proc).__name__ == f.processor and type(proc.image_processor).__name__.endswith("Pil")
    x = fam["enc"]("", fam["pairs"][0].image_emotional)
    img = _image_positions(fam, x)
    assert len(img) >= 4 and img == list(range(img[0], img[0] + len(img)))  # one run of image features
    with torch.no_grad():  # the reloaded weights are the built ones
        torch.testing.assert_close(model(**x).logits, fam["built"](**x).logits)
    lm = dict(model.named_modules())
    assert H.decoder_layers(model) is lm["model.language_model.layers"]


def test_selections_reach_only_the_language_model(fam):
    from safetensors import safe_open

    paths, _ = lora_targets(fam["model"], "all")
    assert sorted(paths) == sorted(f"model.language_model.layers.{la}.{'self_attn' if m in MODULES[:4] else 'mlp'}.{m}"
                                   for la in range(2) for m in MODULES)
    with safe_open(str(fam["dir"] / "model.safetensors"), "pt") as fh:
        names = list(fh.keys())
    inv = inventory(names)
    assert sorted((k.layer, k.module) for k in inv.modules if k.param == "weight") == \
        sorted((la, m) for la in range(2) for m in MODULES)
    projector = [n for n in names if "merger" in n or "multi_modal_projector" in n]
    vision = [n for n in names if ("visual." in n or "vision_tower." in n) and n not in projector]
    assert vision and set(vision) <= set(inv.others.get("vision", []))
    assert projector and set(projector) <= set(inv.others.get("projector", []))


def test_vectors_match_hidden_states(fam):
    model, enc, pairs = fam["model"], fam["enc"], fam["pairs"]
    sv = compute_vectors(model, enc, pairs, min_score=0)
    assert sv.get("anger").shape == (2, 64)

    def hs(p, side):
        with torch.no_grad():
            return model(**enc("", getattr(p, f"image_{side}")), output_hidden_states=True).hidden_states[1][0, -1]

    anger = [p for p in pairs if p.label == "anger"]
    ref = sum(hs(p, "emotional").double() - hs(p, "neutral").double() for p in anger) / len(anger)
    assert float(ref.norm()) > 1e-4  # the images do make a difference
    torch.testing.assert_close(sv.get("anger")[0].double(), ref, atol=1e-5, rtol=1e-4)


def test_layers_heads_neurons_and_intervene(fam):
    model, enc, pairs = fam["model"], fam["enc"], fam["pairs"]
    sv = compute_vectors(model, enc, pairs, min_score=0)
    prof = layer_profile(model, enc, pairs, sv, alpha=4.0)
    assert len(prof.rows) == 2 * 2 and all(np.isfinite(r["effect"]) for r in prof.rows)
    res = head_attribution(model, enc, pairs, sv, target_layer=1)
    assert res.n_heads == 4 and len(res.rows) == 2 * 2 * 4 and all(np.isfinite(r["score"]) for r in res.rows)
    met = make_metric("proj", sv, "joy", 1, enc)
    a = exact_patch(model, enc, pairs[2], met, 0, None, "heads")
    b = exact_patch(model, enc, pairs[2], met, 0, None, "attn")
    assert a == pytest.approx(b, abs=1e-5) and a != 0.0
    nr = neuron_attribution(model, enc, pairs, sv, target_layer=1)
    assert nr.rows and all(np.isfinite(r["score"]) for r in nr.rows)
    x = enc("", pairs[0].image_emotional)
    with torch.no_grad():
        ref = model(**x).logits
    iv = Intervention(steer=[("anger", 1, 0.0)], vectors=sv, heads={1: [0, 1]}, beta=1.0,
                      neurons={0: [0, 1]}, gamma=1.0)
    with intervened(model, enc.layout, iv), torch.no_grad():
        assert torch.equal(model(**x).logits, ref)
    iv = Intervention(steer=[("anger", 0, 4.0)], vectors=sv, heads={1: [0, 1, 2, 3]}, beta=0.0, neurons={0: [0]},
                      gamma=3.0)
    with intervened(model, enc.layout, iv), torch.no_grad():
        assert not torch.allclose(model(**x).logits, ref)
    with torch.no_grad():
        assert torch.equal(model(**x).logits, ref)


def test_image_label_scores_match_full_prompts(fam):
    """Closed-set scores of image prompts = log-probs of the processor's own prompt+label encoding."""
    model, enc, pairs, proc = fam["model"], fam["enc"], fam["pairs"], fam["proc"]
    labels = ["anger", "joy", "neutral"]
    images = [p.image_emotional for p in pairs[:2]]
    got = emotion_probs(model, enc, ["", ""], labels, images)
    for i, im in enumerate(images):
        prompt = enc.prompt("", im)
        ref = []
        for lab in labels:
            with Image.open(im) as pic:
                x = proc(text=[prompt + " " + lab], images=[pic.convert("RGB")], return_tensors="pt")
            n = len(proc.tokenizer(" " + lab, add_special_tokens=False)["input_ids"])
            with torch.no_grad():
                logp = torch.log_softmax(model(**x).logits[0].double(), -1)
            ids = x["input_ids"][0]
            ref.append(sum(float(logp[t - 1, ids[t]]) for t in range(len(ids) - n, len(ids))))
        torch.testing.assert_close(got[i].double(), torch.softmax(torch.tensor(ref, dtype=torch.float64), -1), atol=1e-5, rtol=1e-4)


def _attention_weights(model, x, layout, iv):
    """Each decoder layer's attention weights ``[heads, q, k]`` under ``iv`` (read off the module output)."""
    got: dict[int, torch.Tensor] = {}
    with intervened(model, layout, iv), H.hooks(model) as h, torch.no_grad():
        for la, blk in enumerate(H.decoder_layers(model)):
            h.forward(H.self_attn(blk), lambda _m, _a, o, la=la: got.__setitem__(la, o[1][0].detach().clone()))
        model(**x)
    return got


def test_vee_masks_are_vision_to_query_and_vision_to_last(fam):
    """β = 0 knocks out exactly image keys → query rows (layer ≤ split) and → the last row (deeper)."""
    model, enc, pairs = fam["model"], fam["enc"], fam["pairs"]
    x = enc("", pairs[1].image_emotional)
    n = x["input_ids"].shape[1]
    img = _image_positions(fam, x)
    expect = {0: torch.zeros(n, n, dtype=torch.bool), 1: torch.zeros(n, n, dtype=torch.bool)}
    for q in range(img[-1] + 1, n):
        expect[0][q, img] = True  # vision -> query: every prompt position after the image
    expect[1][n - 1, img] = True  # vision -> last
    w = _attention_weights(model, x, enc.layout, Intervention(heads={0: [0, 1, 2, 3], 1: [0, 1, 2, 3]},
                                                              beta=0.0, split_layer=0))
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for la in (0, 1):
        assert w[la].shape == (4, n, n)
        zero = (w[la] == 0) & causal  # softmax weights are positive everywhere else
        assert torch.equal(zero, expect[la].expand(4, n, n)), la
    # only the selected head is touched
    w = _attention_weights(model, x, enc.layout, Intervention(heads={1: [2]}, beta=0.0, split_layer=0))
    zero = (w[1] == 0) & causal
    assert torch.equal(zero[2], expect[1]) and not zero[[0, 1, 3]].any()


def test_generation_under_intervention_follows_the_model(fam):
    """generate() (M-RoPE deltas, KV cache) is unchanged by an identity edit and the tracker follows it."""
    model, enc, pairs = fam["model"], fam["enc"], fam["pairs"]
    x = enc("", pairs[0].image_emotional)
    kw = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": 0}
    knock = Intervention(heads={0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}, beta=0.0, split_layer=-1)
    with torch.no_grad():
        ref = model.generate(**x, **kw)
        with intervened(model, enc.layout, Intervention(heads={1: [0]}, beta=1.0)):
            same = model.generate(**x, **kw)
        with intervened(model, enc.layout, knock):
            knocked = model.generate(**x, **kw, output_scores=True, return_dict_in_generate=True)
            last = model(**x).logits[0, -1]  # the knocked-out first step is the knocked-out forward's last row
    assert torch.equal(ref, same)
    torch.testing.assert_close(knocked.scores[0][0], last)
    assert not torch.allclose(knocked.scores[0][0], model(**x).logits[0, -1].detach())


# ----------------------------------------------------------------------------- text families and routing


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_text_families_load_and_match(family, tmp_path):
    """Llama / Qwen2.5 (model_type qwen2) / Qwen3 through ``models.load_model``; vectors on text pairs."""
    import transformers as T

    from affectlens.models.loading import load_model

    from circuits_helpers import write_pairs

    tok = word_tokenizer()
    cls = {"llama": T.LlamaForCausalLM, "qwen2": T.Qwen2ForCausalLM, "qwen3": T.Qwen3ForCausalLM}[family]
    torch.manual_seed(0)
    cls(cls.config_class(**TEXT, vocab_size=len(tok), head_dim=16)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    model, _ = load_model(tmp_path / "m", device="cpu", dtype="float32")
    assert type(model) is cls
    paths, _ = lora_targets(model, "all")
    assert sorted(paths) == sorted(f"model.layers.{la}.{'self_attn' if m in MODULES[:4] else 'mlp'}.{m}"
                                   for la in range(2) for m in MODULES)
    pairs = load_pairs(write_pairs(tmp_path / "p.jsonl"))
    model, tok2, proc = load_for_pairs(str(tmp_path / "m"), pairs, device="cpu", dtype="float32")
    assert proc is None
    enc = encoder_for(tok2, pairs, proc)
    sv = compute_vectors(model, enc, pairs, min_score=0)

    def hs(text):
        with torch.no_grad():
            return model(**enc(text), output_hidden_states=True).hidden_states[1][0, -1].double()

    joy = [p for p in pairs if p.label == "joy"]
    ref = sum(hs(p.emotional) - hs(p.neutral) for p in joy) / len(joy)
    torch.testing.assert_close(sv.get("joy")[0].double(), ref, atol=1e-5, rtol=1e-4)


def test_vlm_checkpoint_with_text_pairs(fam, tmp_path):
    """A VLM dir (no causal-LM class in its config) runs text pairs through the VLM loader, no processor."""
    from circuits_helpers import write_pairs

    pairs = load_pairs(write_pairs(tmp_path / "p.jsonl"))
    model, tok, proc = load_for_pairs(str(fam["dir"]), pairs, device="cpu", dtype="float32")
    assert proc is None and type(model).__name__ == type(fam["built"]).__name__
    enc = encoder_for(tok, pairs, proc)
    sv = compute_vectors(model, enc, pairs, min_score=0)
    x = enc(pairs[0].emotional)
    assert enc.layout.image_token_id is None and set(x) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        h0 = model(**x, output_hidden_states=True).hidden_states[1][0, -1]
    assert sv.get("anger").shape == (2, 64) and torch.isfinite(h0).all()


def test_processor_without_its_tokens_is_refused():
    from affectlens.errors import AffectlensError

    with pytest.raises(AffectlensError, match="lacks the qwen2_vl token"):
        vlm.build_processor("qwen2_vl", None, word_tokenizer())


def test_circuits_vectors_cli_on_image_pairs(fam, tmp_path, capfd):
    """The command line takes the family's checkpoint and image pairs end to end."""
    import json

    from faults import run_cli

    out = tmp_path / "vec"
    pairs_path = fam["dir"].parent / "pairs.jsonl"
    rc, _, err = run_cli(capfd, "circuits", "vectors", str(fam["dir"]), "--pairs", str(pairs_path),
                         "--out", str(out), "--min-score", "0", "--device", "cpu")
    assert rc == 0, err
    enc, model, pairs = fam["enc"], fam["model"], fam["pairs"]
    sv = compute_vectors(model, enc, pairs, min_score=0)
    from affectlens.circuits.vectors import SteeringVectors

    got = SteeringVectors.load(out)
    torch.testing.assert_close(got.get("joy"), sv.get("joy"))
    assert json.loads((out / "manifest.json").read_text())["inputs"]["model"]["path"] == str(fam["dir"])


def test_circuits_intervene_cli_on_a_vlm_checkpoint(fam, tmp_path, capfd):
    """Text tasks evaluate on the VLM's language side (M-RoPE with plain, padded ids), before and under VEE."""
    import json

    from faults import run_cli

    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in [
        ("i am furious the bus was late", "anger"), ("we won the game so happy", "joy"),
        ("the bus was late again", "neutral"), ("seething about the report", "anger")]))
    out = tmp_path / "iv"
    rc, _, err = run_cli(capfd, "circuits", "intervene", str(fam["dir"]), "--task", f"jsonl:{task}",
                         "--amplify-heads", "0.0,0.1,0.2,0.3,1.0,1.1,1.2,1.3", "--beta", "0", "--split-layer", "0",
                         "--out", str(out), "--device", "cpu", "--bootstrap", "10", "--batch-size", "3")
    assert rc == 0, err
    before = [json.loads(x) for x in next(out.glob("predictions_*_before.jsonl")).read_text().splitlines()]
    after = [json.loads(x) for x in next(out.glob("predictions_*_after.jsonl")).read_text().splitlines()]
    from affectlens.evaluate import load_task, parse_task
    from affectlens.evaluate.core import closed_prompt
    from affectlens.tasks.prompts import encode, encode_targets

    spec = parse_task(f"jsonl:{task}")
    labels = list(load_task(spec, None).labels)
    tok, model = fam["proc"].tokenizer, fam["model"]
    for row in before:  # the harness's batched, padded scores = one unpadded forward per label
        prompt = closed_prompt(tok, spec, labels, row["text"])
        ids, _ = encode(tok, prompt)
        for lab, target in zip(labels, encode_targets(tok, prompt, labels), strict=True):
            full = torch.tensor([ids + target])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=full).logits[0].double(), -1)
            ref = sum(float(logp[len(ids) + j - 1, t]) for j, t in enumerate(target))
            assert row["loglik"][lab] == pytest.approx(ref, abs=1e-4)
    assert any(a["loglik"] != b["loglik"] for a, b in zip(after, before, strict=True))  # VEE knockout acts
