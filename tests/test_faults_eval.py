"""Fault injection for `evaluate`, `export-task` and `circuits`, driven through the CLI.

Each fault must end in the one-line contract (exit 2, one stderr line, no
output directory, no hidden leftovers; an existing result survives --force):

* non-finite numbers are never a result: a NaN planted in one weight of a
  tiny model saved to disk, NaN/Inf steering vectors, NaN/Inf options;
* partial models: an adapter naming layers the base lacks, a checkpoint
  missing a tensor (refused by ``models.load_model``);
* one pickle policy: pickle-only checkpoints need --allow-pickle, `.pt`
  steering vectors never run code;
* task files: null/empty labels, null text (with the line/row), non-finite
  sentiment scores, CSV fields over csv's 128 KiB default limit, reversed
  layer ranges.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from circuits_helpers import save_planted, write_pairs
from conftest import TINYSTORIES
from faults import assert_refused, run_cli, tree_digest

NAN_TENSOR = "model.layers.0.mlp.down_proj.weight"
OVERFLOW_TENSOR = "model.layers.0.input_layernorm.weight"
VERBS = ("vectors", "layers", "heads", "neurons", "intervene")


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def _edit_weights(model_dir: Path, edit) -> Path:
    f = model_dir / "model.safetensors"
    sd = load_file(str(f))
    edit(sd)
    save_file(sd, str(f), metadata={"format": "pt"})
    return model_dir


def _plant_nan(sd: dict) -> None:
    """Finite weights whose forward overflows to NaN (a NaN weight itself is refused at load):
    a 3e38 norm gain makes layer 0's projections sum +inf and -inf."""
    sd[OVERFLOW_TENSOR].fill_(3e38)


def _to_pickle(src: Path, dst: Path) -> Path:
    """The same model as a pickle-only checkpoint (pytorch_model.bin, no safetensors)."""
    _copy_model(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    torch.save(sd, dst / "pytorch_model.bin")
    return dst


def _adapter_beyond(base: Path, out: Path, extra_layers: int = 2) -> Path:
    """A LoRA adapter trained on a deeper sibling of ``base``: its tensors name layers ``base`` lacks."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(base))
    cfg.num_hidden_layers += extra_layers
    torch.manual_seed(0)
    deeper = AutoModelForCausalLM.from_config(cfg)
    peft_model = get_peft_model(deeper, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                   init_lora_weights=False))
    peft_model.save_pretrained(str(out))
    ac = json.loads((out / "adapter_config.json").read_text())
    ac["base_model_name_or_path"] = str(base)
    (out / "adapter_config.json").write_text(json.dumps(ac))
    return out


class _Evil:
    """Unpickling this creates ``marker``: proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class _NullCap:
    """A stand-in for capfd in a module fixture (the fixture's own output is not checked)."""

    def readouterr(self):
        return "", ""


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_eval")
    a = {"root": root}
    a["nan_model"] = _edit_weights(_copy_model(TINYSTORIES, root / "nan_model"), _plant_nan)
    a["task"] = root / "task.jsonl"
    a["task"].write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in [
        ("Lily was very happy to play in the sun.", "joy"), ("Tom was angry at the dog.", "anger"),
        ("The ball was red.", "joy"), ("He shouted and stomped his feet.", "anger")]))
    a["ppl"] = root / "story.txt"
    a["ppl"].write_text("Once upon a time there was a little girl named Lily.\n\nShe liked the sun.\n")
    a["planted"] = root / "planted"
    save_planted(a["planted"])
    a["nan_planted"] = _edit_weights(_copy_model(a["planted"], root / "nan_planted"), _plant_nan)
    a["pairs"] = write_pairs(root / "pairs.jsonl")
    a["vec"] = root / "vec"
    rc, _, err = run_cli(_NullCap(), "circuits", "vectors", a["planted"], "--pairs",
                         a["pairs"], "--min-score", "0", "--out", a["vec"])
    assert rc == 0, err
    return a


def _circuits_argv(verb: str, model: Path, a: dict, out: Path, *extra: str) -> list:
    if verb == "vectors":
        return ["circuits", "vectors", model, "--pairs", a["pairs"], "--out", out, *extra]
    if verb == "intervene":
        return ["circuits", "intervene", model, "--task", f"jsonl:{a['task']}", "--amplify-neurons", "1.1",
                "--bootstrap", "10", "--out", out, *extra]
    return ["circuits", verb, model, "--pairs", a["pairs"], "--vectors", a["vec"], "--out", out, *extra]


# ----------------------------------------------------------------------------- non-finite values


@pytest.mark.parametrize("task", ["closed", "generative", "perplexity"])
def test_evaluate_nan_weight_is_not_a_score(assets, tmp_path, capfd, task):
    """A NaN in one weight: today a confident 'anger' and accuracy 0.125 with exit 0."""
    out = tmp_path / "run"
    argv = ["evaluate", assets["nan_model"], "--bootstrap", "10", "--out", out]
    if task == "perplexity":
        argv += ["--task", f"ppl:{assets['ppl']}"]
    else:
        argv += ["--task", f"jsonl:{assets['task']}", "--mode", task, "--max-new-tokens", "2"]
    line = assert_refused(run_cli(capfd, *argv), out=out,
                          contains="text 0" if task == "perplexity" else "example 0")
    assert str(assets["nan_model"]) in line
    assert "nan" in line.lower()


def test_evaluate_nan_weight_is_refused_at_load(assets, tmp_path, capfd):
    """A NaN stored in a weight never reaches a forward pass: the tensor and file are named."""
    bad = _edit_weights(_copy_model(TINYSTORIES, tmp_path / "nan_weight"),
                        lambda sd: sd[NAN_TENSOR].__setitem__((0, 0), float("nan")))
    out = tmp_path / "run"
    line = assert_refused(run_cli(capfd, "evaluate", bad, "--task", f"jsonl:{assets['task']}",
                                  "--out", out), out=out, contains="non-finite")
    assert NAN_TENSOR in line and "model.safetensors" in line


def test_evaluate_nan_keeps_existing_result(assets, tmp_path, capfd):
    out = tmp_path / "run"
    out.mkdir()
    (out / "scores.json").write_text('{"mean": 0.5}\n')
    before = tree_digest(out)
    assert_refused(run_cli(capfd, "evaluate", assets["nan_model"], "--task", f"jsonl:{assets['task']}",
                           "--bootstrap", "10", "--out", out, "--force"),
                   out=out, contains="not a result", survivor=before)


@pytest.mark.parametrize("min_score", ["0", "0.5"])
def test_circuits_vectors_nan_model(assets, tmp_path, capfd, min_score):
    """Today `circuits vectors` writes NaN vectors (with --min-score 0) and exit 0."""
    out = tmp_path / "vec"
    line = assert_refused(run_cli(capfd, *_circuits_argv("vectors", assets["nan_planted"], assets, out,
                                                         "--min-score", min_score)),
                          out=out, contains="pair 0")
    assert str(assets["nan_planted"]) in line and "non-finite" in line


@pytest.mark.parametrize("verb", ["layers", "heads", "neurons", "intervene"])
def test_circuits_nan_model_writes_nothing(assets, tmp_path, capfd, verb):
    out = tmp_path / verb
    line = assert_refused(run_cli(capfd, *_circuits_argv(verb, assets["nan_planted"], assets, out)), out=out)
    assert "nan" in line.lower() and str(assets["nan_planted"]) in line


@pytest.mark.parametrize("kind", ["safetensors", "lm-eval", "steering-vectors"])
def test_circuits_non_finite_vectors_file(assets, tmp_path, capfd, kind):
    from affectlens.circuits.vectors import SteeringVectors

    sv = SteeringVectors.load(assets["vec"])
    bad = sv.vectors["anger"].clone()
    bad[1, 3] = float("inf")
    extra: list[str] = []
    if kind == "safetensors":
        f = tmp_path / "bad.safetensors"
        SteeringVectors({**sv.vectors, "anger": bad}, sv.counts, sv.totals, sv.options, sv.resid_norm).save(f)
    elif kind == "lm-eval":
        f = tmp_path / "bad_lm_eval.pt"
        torch.save({f"layers.{la}": {"action": "add", "steering_coefficient": 1.0, "steering_vector": bad[la],
                                     "bias": None} for la in range(bad.shape[0])}, f)
        extra = ["--vectors-label", "anger", "--allow-pickle"]
    else:
        f = tmp_path / "bad_sv.pt"
        torch.save({"layer_activations": {la: bad[la] for la in range(bad.shape[0])},
                    "layer_type": "decoder_block"}, f)
        extra = ["--vectors-label", "anger", "--allow-pickle"]
    out = tmp_path / "layers"
    line = assert_refused(run_cli(capfd, "circuits", "layers", assets["planted"], "--pairs", assets["pairs"],
                                  "--vectors", f, *extra, "--out", out), out=out, contains="non-finite")
    assert f.name in line and "layer 1" in line


@pytest.mark.parametrize("argv", [
    ["layers", "--alpha", "nan"], ["vectors", "--coefficient", "inf"], ["intervene", "--gamma", "nan"],
], ids=["alpha", "coefficient", "gamma"])
def test_circuits_non_finite_options(assets, tmp_path, capfd, argv):
    out = tmp_path / "out"
    verb, *opt = argv
    assert_refused(run_cli(capfd, *_circuits_argv(verb, assets["planted"], assets, out, *opt)),
                   out=out, contains=f"{opt[0]} must be a finite number")


def test_intervene_infinite_steering_refused(assets, tmp_path, capfd):
    out = tmp_path / "iv"
    assert_refused(run_cli(capfd, "circuits", "intervene", assets["planted"], "--task", f"jsonl:{assets['task']}",
                           "--vectors", assets["vec"], "--steer", "anger@1*inf", "--out", out),
                   out=out, contains="finite")


# ----------------------------------------------------------------------------- partial models
# These rely on models.load_model refusing partial models (issue 8 part 6, helper C).


def test_evaluate_adapter_with_layers_the_base_lacks(assets, tmp_path, capfd):
    adapter = _adapter_beyond(TINYSTORIES, tmp_path / "adapter")
    out = tmp_path / "run"
    assert_refused(run_cli(capfd, "evaluate", TINYSTORIES, "--adapter", adapter, "--task",
                           f"jsonl:{assets['task']}", "--bootstrap", "10", "--out", out),
                   out=out, contains="layer")


@pytest.mark.parametrize("verb", VERBS)
def test_circuits_adapter_with_layers_the_base_lacks(assets, tmp_path, capfd, verb):
    adapter = _adapter_beyond(assets["planted"], tmp_path / "adapter")
    out = tmp_path / "out"
    extra = ["--min-score", "0"] if verb == "vectors" else []  # fail for the adapter, not the pairs
    assert_refused(run_cli(capfd, *_circuits_argv(verb, assets["planted"], assets, out, "--adapter", adapter,
                                                  *extra)),
                   out=out, contains="layer")


def test_evaluate_checkpoint_missing_a_tensor(assets, tmp_path, capfd):
    missing = "model.layers.1.mlp.up_proj.weight"
    model = _edit_weights(_copy_model(TINYSTORIES, tmp_path / "partial"), lambda sd: sd.pop(missing))
    out = tmp_path / "run"
    assert_refused(run_cli(capfd, "evaluate", model, "--task", f"jsonl:{assets['task']}", "--out", out),
                   out=out, contains="up_proj")


# ----------------------------------------------------------------------------- pickle policy


def test_evaluate_pickle_checkpoint_needs_allow_pickle(assets, tmp_path, capfd):
    model = _to_pickle(TINYSTORIES, tmp_path / "pickled")
    out = tmp_path / "run"
    assert_refused(run_cli(capfd, "evaluate", model, "--task", f"jsonl:{assets['task']}", "--out", out),
                   out=out, contains="--allow-pickle")
    rc, _, err = run_cli(capfd, "evaluate", model, "--task", f"jsonl:{assets['task']}", "--bootstrap", "10",
                         "--allow-pickle", "--out", out)
    assert rc == 0, err
    scores = json.loads((out / "scores.json").read_text())
    assert scores["tasks"]["jsonl:task.jsonl"]["n"] == 4


@pytest.mark.parametrize("verb", VERBS)
def test_circuits_pickle_checkpoint_needs_allow_pickle(assets, tmp_path, capfd, verb):
    model = _to_pickle(assets["planted"], tmp_path / "pickled")
    out = tmp_path / "out"
    assert_refused(run_cli(capfd, *_circuits_argv(verb, model, assets, out)), out=out,
                   contains="pass --allow-pickle if you trust it")


def test_circuits_vectors_run_on_pickle_with_allow_pickle(assets, tmp_path, capfd):
    model = _to_pickle(assets["planted"], tmp_path / "pickled")
    out = tmp_path / "vec"
    rc, _, err = run_cli(capfd, *_circuits_argv("vectors", model, assets, out, "--min-score", "0",
                                                "--allow-pickle"))
    assert rc == 0, err
    assert (out / "vectors.safetensors").is_file()


@pytest.mark.parametrize("content", ["evil", "garbage", "not-a-dict", "no-tensor"])
def test_circuits_pt_vectors_never_run_code(assets, tmp_path, capfd, content):
    marker = tmp_path / "pwned"
    f = tmp_path / "steer.pt"
    if content == "evil":
        torch.save({"layers.1": {"action": "add", "steering_vector": _Evil(marker)}}, f)
    elif content == "garbage":
        f.write_bytes(b"PK\x03\x04 this is no torch file" * 10)
    elif content == "not-a-dict":
        torch.save([torch.zeros(32)], f)
    else:
        torch.save({"layers.1": {"action": "add", "steering_vector": "0.1 0.2"}}, f)
    out = tmp_path / "layers"
    assert_refused(run_cli(capfd, "circuits", "layers", assets["planted"], "--pairs", assets["pairs"],
                           "--vectors", f, "--vectors-label", "anger", "--allow-pickle", "--out", out),
                   out=out, contains="steer.pt")
    assert not marker.exists()  # even allowed, a pickle is read weights_only: no code runs


# ----------------------------------------------------------------------------- task files


@pytest.mark.parametrize("case", [
    ("jsonl", [{"text": "fine", "label": "joy"}, None, {"text": "x", "label": None}], "line 3: label 'label' is null"),
    ("jsonl", [{"text": "fine", "label": "joy"}, {"text": None, "label": "anger"}], "line 2: text 'text' is null"),
    ("jsonl", [{"text": "fine", "label": "joy"}, {"text": "y", "label": "  "}], "line 2: label 'label' is empty"),
    ("csv", "text,label\nfine,joy\nplain,\n", "row 3: label 'label' is empty"),
    ("meld", None, "row 6: label 'Emotion' is empty"),
], ids=["jsonl-null-label", "jsonl-null-text", "jsonl-empty-label", "csv-empty-label", "meld-empty-label"])
def test_task_file_null_or_empty_fields(tmp_path, capfd, case):
    kind, rows, msg = case
    if kind == "jsonl":
        f = tmp_path / "t.jsonl"
        f.write_text("".join("\n" if r is None else json.dumps(r) + "\n" for r in rows))  # a blank line counts
    elif kind == "csv":
        f = tmp_path / "t.csv"
        f.write_text(rows)
    else:
        from test_evaluate_loaders import write_meld

        f = tmp_path / "meld.csv"
        write_meld(f, extra_rows=b"5,Nothing to say,Phoebe,,neutral,1,2,3,20,0,1\n")
    out = tmp_path / "run"
    assert_refused(run_cli(capfd, "evaluate", TINYSTORIES, "--task", f"{kind}:{f}", "--out", out),
                   out=out, contains=msg)


@pytest.mark.parametrize("score", ["inf", "-Infinity"])
def test_sentiment_non_finite_score(tmp_path, capfd, score):
    f = tmp_path / "s.csv"
    f.write_text(f"text,score\ngood day,1.5\nbad day,{score}\n")
    out = tmp_path / "run"
    assert_refused(run_cli(capfd, "evaluate", TINYSTORIES, "--task", f"sentiment:{f}", "--out", out),
                   out=out, contains="row 3: score is")


def test_csv_field_over_128k_is_read(tmp_path, capfd):
    """csv's default field limit (128 KiB) raised a bare _csv.Error; a long text is a text."""
    long_text = "word " * 40_000  # 200 KB
    f = tmp_path / "long.csv"
    f.write_text(f'text,label\n"{long_text}",joy\nshort,anger\n')
    out = tmp_path / "lm_eval"
    rc, _, err = run_cli(capfd, "export-task", f"csv:{f}", "--out", out)
    assert rc == 0, err
    rows = [json.loads(x) for x in next(out.glob("*.jsonl")).read_text().splitlines()]
    assert [len(r["text"]) for r in rows] == [len(long_text), 5]
    import csv

    assert csv.field_size_limit() == 131072  # the process-wide limit is restored


def test_csv_malformed_is_one_line_with_row(tmp_path, capfd):
    f = tmp_path / "bad.csv"
    f.write_text('text,label\nfine,joy\n"unterminated,anger,extra\nmore,joy\n')  # the quote is text; 3 fields
    out = tmp_path / "run"
    line = assert_refused(run_cli(capfd, "evaluate", TINYSTORIES, "--task", f"csv:{f}", "--out", out), out=out)
    assert "bad.csv" in line and "row 3 has 3 fields" in line


@pytest.mark.parametrize("argv", [
    ["vectors", "--export", "lm-eval", "--export-layers", "3-1"],
    ["layers", "--layers", "3-1"],
    ["layers", "--layers", "0-9"],
], ids=["export-layers-reversed", "layers-reversed", "layers-out-of-range"])
def test_circuits_layer_ranges(assets, tmp_path, capfd, argv):
    verb, *opt = argv
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier result\n")
    before = tree_digest(out)
    assert_refused(run_cli(capfd, *_circuits_argv(verb, assets["planted"], assets, out, *opt, "--min-score", "0",
                                                  "--force")),
                   out=out, contains="reversed" if "3-1" in opt else "out of range", survivor=before)


@pytest.mark.parametrize("opts, msg", [
    (["--mode", "generative", "--max-new-tokens", "0"], "--max-new-tokens must be positive"),
    (["--bootstrap", "-5"], "--bootstrap must be 0 or more"),
    (["--batch-size", "0"], "--batch-size must be positive"),
], ids=["max-new-tokens", "bootstrap", "batch-size"])
def test_evaluate_bad_counts(assets, tmp_path, capfd, opts, msg):
    out = tmp_path / "run"
    assert_refused(run_cli(capfd, "evaluate", TINYSTORIES, "--task", f"jsonl:{assets['task']}", *opts,
                           "--out", out), out=out, contains=msg)


@pytest.mark.parametrize("opt, msg", [("max_length=1", "max_length must be at least 2"),
                                      ("stride=0", "stride must be in")])
def test_perplexity_degenerate_windows(assets, tmp_path, capfd, opt, msg):
    """max_length=1 scored no token at all and reported perplexity exactly 1.0."""
    out = tmp_path / "run"
    assert_refused(run_cli(capfd, "evaluate", TINYSTORIES, "--task", f"ppl:{assets['ppl']},{opt}", "--out", out),
                   out=out, contains=msg)


@pytest.mark.parametrize("content, msg", [
    ("layer,head,score\n1,0,abc\n", "row 2: layer/head/score are not numbers"),
    ("layer,head,score\n1,0,0.5\n1,2,nan\n", "row 3: score is nan"),
], ids=["text-score", "nan-score"])
def test_intervene_units_csv(assets, tmp_path, capfd, content, msg):
    f = tmp_path / "heads.csv"
    f.write_text(content)
    out = tmp_path / "iv"
    assert_refused(run_cli(capfd, "circuits", "intervene", assets["planted"], "--task", f"jsonl:{assets['task']}",
                           "--amplify-heads", f, "--out", out), out=out, contains=msg)


@pytest.mark.parametrize("row, msg", [
    ({"emotional": "i am furious", "neutral": None, "label": "anger"}, ":3: field 'neutral' is null"),
    ({"emotional": "i am furious", "neutral": "i am", "label": None}, ":3: field 'label' is null"),
    ({"emotional": "i am furious", "neutral": "i am", "label": " "}, ":3: field 'label' is empty"),
    ({"emotional": ["i", "am"], "neutral": "i am", "label": "anger"}, ":3: field 'emotional' is list"),
], ids=["null-neutral", "null-label", "empty-label", "list-text"])
def test_pairs_null_fields(assets, tmp_path, capfd, row, msg):
    """A null label was read as the emotion 'none'."""
    f = tmp_path / "pairs.jsonl"
    good = {"emotional": "we won the game so happy", "neutral": "we won the game", "label": "joy"}
    f.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")
    out = tmp_path / "vec"
    assert_refused(run_cli(capfd, "circuits", "vectors", assets["planted"], "--pairs", f, "--out", out),
                   out=out, contains=msg)


def test_write_run_never_writes_bare_nan(tmp_path):
    """The Python API too: a result holding NaN is refused before anything is written."""
    from affectlens.errors import AffectlensError
    from affectlens.evaluate import EvalResult, TaskScore, write_run

    res = EvalResult({"t": TaskScore("t", "emotion", "weighted_f1", 0.5, {"accuracy": float("nan")}, 4)},
                     predictions=[], mode="closed", mean=0.5)
    out = tmp_path / "run"
    with pytest.raises(AffectlensError, match=r"non-finite value nan in scores \(tasks\.t\.metrics\.accuracy\)"):
        write_run(res, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
