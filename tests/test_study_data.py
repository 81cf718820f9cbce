"""The study on real data, and what its methods record: every task syntax, checked before any work and
named with its file and row counts; the resolved device and dtype; a resume's true wall time; exact
parameter counts; the neuron count amplified; progress lines from the circuits stage."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import pytest
import torch

from affectlens.errors import AffectlensError
from affectlens.study import load_study_config, run_study
from affectlens.study.provenance import UNKNOWN, describe_data

from circuits_helpers import PAIRS, save_planted, write_pairs
from conftest import DATA, TINYSTORIES

DAIR = DATA / "dair-emotion"
EKMAN = DATA / "goemotions" / "ekman"
EMOBANK = DATA / "emobank" / "emobank.csv"
ROOT = Path(__file__).resolve().parents[1]
BUDGET = {"steps": 2, "rank": 2, "alpha": 4, "lr": 1.0e-2, "batch_size": 2, "max_length": 48}


def lines(path: Path) -> int:
    return sum(1 for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip())


def real_cfg(**over) -> dict:
    return {"name": "real", "model": str(TINYSTORIES), "data": f"jsonl:{DAIR}", "control_data": "control_train",
            "tasks": [f"jsonl:{DAIR},split=test"], "control_tasks": ["control"],
            "eval": {"limit": 8, "batch_size": 8}, "seeds": [0], "budget": BUDGET, "full_budget": {"steps": 2},
            "modules": {"single": ["gate_proj"], "groups": {}}, "stages": ["locate", "necessity"], **over}


def stub_evaluator(model, tokenizer, tasks, mode="closed", limit=None, batch_size=16, seed=0, calibration="none"):
    """A fixed score per task (the scoring stages' numbers are not what these tests read)."""
    out = {t: {"primary": 0.5, "primary_metric": "accuracy", "metrics": {"uncalibrated": {"accuracy": 0.4}},
               "n": limit or 8} for t in tasks}
    return type("R", (), {"scores": {"tasks": out}})


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A study trained on dair-ai emotion (adapters and locate with the real tune; necessity scored by a stub)."""
    out = tmp_path_factory.mktemp("real") / "out"
    first = run_study(real_cfg(), out, evaluator=stub_evaluator, echo=lambda s: None)
    return out, first


# --- item 6: real data ------------------------------------------------------------------------------------


def test_real_data_study_names_its_data_in_the_methods(real):
    out, study = real
    data = study["methods"]["data"]
    train = data["training"]["affective"]
    assert train["spec"] == f"jsonl:{DAIR}" and train["file"] == str(DAIR / "train.jsonl")  # a dir trains at train
    assert train["rows"] == lines(DAIR / "train.jsonl") == 16000 and train["labels"] == 6
    assert train["licence"] == UNKNOWN
    (task,) = data["tasks"]["affective"]
    assert task["file"] == str(DAIR / "test.jsonl") and task["rows"] == lines(DAIR / "test.jsonl")
    assert task["scored"] == 8  # eval.limit
    assert "Apache-2.0" in data["training"]["control"]["licence"]  # the bundled corpus says its own
    assert data["tasks"]["control"][0]["spec"] == "control"
    md = (out / "report.md").read_text()
    assert str(DAIR / "test.jsonl") in md and "16000" in md


def test_every_task_syntax_is_accepted_and_counted(tmp_path):
    semi = tmp_path / "semi.csv"
    semi.write_text("utt;emo\nI am so angry;anger\nwhat a lovely day;joy\nit is gone;sadness\n", encoding="utf-8")
    rows = csv.DictReader(io.StringIO(EMOBANK.read_text(encoding="utf-8"), newline=""))
    test_v = [float(r["V"]) for r in rows if r["split"] == "test"]
    dair_val = [json.loads(ln)["label_text"] for ln in (DAIR / "validation.jsonl").read_text().splitlines()]
    per_class = sum(min(50, dair_val.count(lab)) for lab in set(dair_val))
    specs = {
        str(DAIR): lines(DAIR / "test.jsonl"),  # a bare directory: its test split
        f"jsonl:{DAIR}/validation.jsonl": lines(DAIR / "validation.jsonl"),
        f"jsonl:{DAIR},split=validation,per_class=50,seed=1": per_class,
        f"goemotions:{EKMAN},multi=first": lines(EKMAN / "test.tsv"),
        f"sentiment:{EMOBANK},text=text,score=V,center=3,split=test": sum(1 for v in test_v if v != 3.0),
        f"csv:{semi},delimiter=;,text=utt,label=emo": 3,
    }
    cfg = load_study_config({"model": str(TINYSTORIES), "tasks": list(specs), "data": f"jsonl:{DAIR},split=validation",
                             "control_data": f"csv:{semi},delimiter=;,text=utt,label=emo", "eval": {"limit": 100}})
    data = describe_data(cfg)
    got = {t["spec"]: t["rows"] for t in data["tasks"]["affective"]}
    assert got == specs
    assert {t["spec"]: t["scored"] for t in data["tasks"]["affective"]} == {s: min(n, 100) for s, n in specs.items()}
    go = next(t for t in data["tasks"]["affective"] if t["spec"].startswith("goemotions:"))
    assert go["licence"].endswith("CC BY 4.0") and go["file"] == str(EKMAN / "test.tsv")
    assert data["training"]["affective"]["rows"] == 2000 and data["training"]["control"]["rows"] == 3


def test_a_licence_file_beside_the_data_is_named(tmp_path):
    (tmp_path / "d").mkdir()
    f = tmp_path / "d" / "x.jsonl"
    f.write_text('{"text": "a", "label": "joy"}\n{"text": "b", "label": "anger"}\n', encoding="utf-8")
    (tmp_path / "d" / "LICENSE").write_text("\nCC BY-SA 4.0, Example Corp.\nmore text\n", encoding="utf-8")
    cfg = load_study_config({"model": str(TINYSTORIES), "tasks": [f"jsonl:{f}"]})
    (task,) = describe_data(cfg)["tasks"]["affective"]
    assert task["licence"] == f"CC BY-SA 4.0, Example Corp. ({tmp_path / 'd' / 'LICENSE'})"


class CountingTuner:
    supports_full = True

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *a, **kw):
        self.calls += 1
        raise AssertionError("no stage may run on bad data")


def test_a_spec_cut_at_its_comma_gets_a_hint(tmp_path):
    """YAML's [a,b] splits ``jsonl:DIR,split=test`` in two: the stray option is named as such."""
    import yaml

    raw = yaml.safe_load(f"tasks: [jsonl:{DAIR},split=test]")
    assert raw["tasks"] == [f"jsonl:{DAIR}", "split=test"]
    with pytest.raises(AffectlensError, match="quote the spec"):
        describe_data(load_study_config({"model": str(TINYSTORIES), **raw}))


@pytest.mark.parametrize("field, value, says", [
    ("data", "BROKEN", "data '"),
    ("control_data", f"ppl:{DAIR}/test.jsonl", "control_data 'ppl:"),
    ("tasks", [f"csv:{EMOBANK},text=txt,label=V"], "tasks 'csv:"),
    ("tasks", [f"ppl:{DAIR}/test.jsonl"], "perplexity"),
    ("control_tasks", ["csv:/nonexistent/z.csv,text=a,label=b"], "control_tasks 'csv:/nonexistent"),
])
def test_bad_data_is_refused_before_any_work(tmp_path, field, value, says):
    if value == "BROKEN":
        value = tmp_path / "broken.jsonl"
        value.write_text('{"text": "fine", "label": "joy"}\n{this is not json\n', encoding="utf-8")
        value = str(value)
    tuner, out = CountingTuner(), tmp_path / "out"
    with pytest.raises(AffectlensError) as e:
        run_study(real_cfg(**{field: value}), out, tuner=tuner, evaluator=stub_evaluator, echo=lambda s: None)
    assert says in str(e.value) and "\n" not in str(e.value)
    assert tuner.calls == 0 and not out.exists()


def test_real_data_example_config_is_valid_and_its_data_loads():
    text = (ROOT / "examples" / "study_real_data.yaml").read_text()
    assert "DATA/" in text
    import yaml

    raw = yaml.safe_load(text.replace("DATA/", f"{DATA}/"))
    cfg = load_study_config(raw, profile="quick", model=str(TINYSTORIES))
    data = describe_data(cfg)
    assert data["training"]["affective"]["file"] == str(DAIR / "train.jsonl")
    assert [t["file"] for t in data["tasks"]["affective"]] == [str(DAIR / "test.jsonl")]
    assert data["tasks"]["control"] and all(t["kind"] == "control" for t in data["tasks"]["control"])


# --- item 8: provenance -----------------------------------------------------------------------------------


def test_methods_record_the_resolved_device_and_dtype(real):
    _, study = real
    m = study["methods"]
    cuda = torch.cuda.is_available()
    assert m["device"] == ("cuda" if cuda else "cpu")
    assert m["dtype"] == ("bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32")
    assert m["device_dtype_asked"] == "auto / auto" and "auto" not in (m["device"], m["dtype"])
    assert m["training_ran_on"] and all(x.startswith(m["device"]) for x in m["training_ran_on"])  # as tune recorded
    assert "circuits_dtype" not in m  # no circuits stage in this study


def test_a_resumed_study_keeps_the_cached_stages_seconds(real, tmp_path):
    import shutil

    src, first = real
    out = tmp_path / "out"
    shutil.copytree(src, out)
    echoed: list[str] = []
    again = run_study(real_cfg(), out, evaluator=stub_evaluator, echo=echoed.append)
    stages = ("adapters", "locate", "necessity")
    lines = [ln for ln in echoed[1:] if not ln.startswith(("SMOKE TEST", "what this run cannot", "power before"))]
    assert {ln.split(":")[0].strip() for ln in lines} == set(stages)
    assert all("cached" in ln for ln in lines)
    recorded = sum(json.loads((out / "stages" / s / "result.json").read_text())["seconds"] for s in stages)
    m = again["methods"]
    assert m["wall_time_cached_s"] == pytest.approx(recorded, abs=0.05)
    assert m["wall_time_s"] >= recorded - 0.05 and recorded > 0.5  # three adapters trained: not "actual 0 s"
    assert m["wall_time_s"] == pytest.approx(m["wall_time_cached_s"] + m["wall_time_run_now_s"], abs=0.1)
    assert m["wall_time_s"] >= 0.5 * first["methods"]["wall_time_s"]
    assert "from 3 cached stage(s)" in m["wall_time_parts"]
    assert first["methods"]["wall_time_parts"].startswith("nothing cached")


def test_parameter_counts_equal_the_models():
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from affectlens.study.budget import SMOLLM2_PARAMS, expected_seconds, model_params

    tiny = AutoModelForCausalLM.from_pretrained(TINYSTORIES)
    assert tiny.config.num_key_value_heads == 4 and tiny.config.num_attention_heads == 8
    assert model_params(TINYSTORIES) == sum(p.numel() for p in tiny.parameters())  # tied: counted once
    smol = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    gqa = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    import tempfile

    for conf, want in ((smol, SMOLLM2_PARAMS), (gqa, None)):
        with torch.device("meta"):
            n = sum(p.numel() for p in LlamaForCausalLM(conf).parameters())
        with tempfile.TemporaryDirectory() as d:
            conf.save_pretrained(d)
            assert model_params(Path(d)) == n == (want or n)
    est = expected_seconds(load_study_config({"model": str(TINYSTORIES)}), TINYSTORIES)
    assert est["basis"].startswith(f"{sum(p.numel() for p in tiny.parameters()) / 1e6:.0f}M parameters")


# --- circuits: the neuron count used, and progress lines -------------------------------------------------


@pytest.fixture(scope="module")
def circuits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("circ")
    save_planted(tmp / "planted")
    write_pairs(tmp / "pairs.jsonl", PAIRS)
    cfg = {"model": str(TINYSTORIES), "seeds": [0], "stages": ["circuits"],
           "circuits": {"model": str(tmp / "planted"), "pairs": str(tmp / "pairs.jsonl"), "emotions": ["anger", "joy"],
                        "max_pairs": 4, "min_score": 0.0, "top_k": 2, "top_neurons": 5, "limit": 6, "batch_size": 8}}
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setenv("AFFECTLENS_NO_PROGRESS", "0")
        result = run_study(cfg, tmp / "out", echo=lambda s: None)
    return tmp / "out", result, err.getvalue()


def test_the_neurons_amplified_are_the_top_neurons_counted(circuits):
    out, result, _ = circuits
    res = json.loads((out / "stages" / "circuits" / "result.json").read_text())["result"]
    got = res["interventions"]["neurons"]
    assert len(got["top_units"].split(",")) == 5 == len(got["random_units"].split(","))  # circuits.top_neurons
    assert len(res["interventions"]["heads"]["top_units"].split(",")) == 2  # circuits.top_k
    run = json.loads((out / got["top"] / "results.json").read_text())
    assert run["intervention"].startswith("5 neurons")
    notes = result["sections"]["circuits-intervention"]["notes"]
    assert any("amplified the top 5 neurons (circuits.top_neurons = 5)" in n for n in notes)


def test_a_circuits_only_study_names_the_data_it_read(circuits):
    _, result, _ = circuits
    data = result["methods"]["data"]
    assert "training" not in data  # no adapters were trained: their data was not used
    assert result["methods"]["circuits_dtype"] == "float32"  # asked auto; the circuits stage runs in float32
    (task,) = data["tasks"]["affective"]
    assert task["spec"] == "emotion" and task["scored_by_interventions"] == 6 and "scored" not in task


def test_intervention_section_has_one_figure_of_every_run(circuits):
    out, result, _ = circuits
    figs = result["sections"]["circuits-intervention"]["figures"]
    assert figs == {"interventions": "figures/circuits-intervention.png"}
    assert (out / figs["interventions"]).read_bytes()[:4] == b"\x89PNG"


def test_circuits_stage_reports_progress_per_step(circuits):
    _, _, err = circuits
    steps = ["vectors", "layers", "heads", "neurons", "intervene-heads-top", "intervene-heads-random",
             "intervene-neurons-top", "intervene-neurons-random"]
    for name in steps:
        assert f"affectlens: study circuits: {name} (about " in err, name
        assert f"affectlens: study circuits: {name}: done in " in err, name
