"""Never train on the test set: names resolve to train for tune and to test for evaluate, adapters
record the rows they were trained on, and evaluate / grid / study refuse to score those rows."""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil

import pytest
import yaml

from affectlens.grid import load_config, run_grid, validate_config
from affectlens.tasks.loaders import load_rows
from affectlens.tasks.spec import parse_task
from affectlens.tasks.trained import (
    DIGEST_BYTES,
    TrainRows,
    read_train_rows,
    row_digest,
    training_spec,
)
from affectlens.tune.run import load_dataset, resolve_data

from conftest import ROOT, TINYSTORIES
from faults import assert_refused, run_cli

TUNE = ["--modules", "gate_proj", "--steps", "1", "--batch-size", "2", "--max-length", "64"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A LoRA tuned on the task name ``emotion`` and one tuned on the bundled test file (1 step each)."""
    from affectlens.cli import main

    root = tmp_path_factory.mktemp("adapters")
    for name, data in (("on_name", "emotion"), ("on_test", "emotion_test")):
        assert main(["tune", str(TINYSTORIES), "--data", data, *TUNE, "--out", str(root / name)]) == 0
    return root


def _texts(spec: str) -> list[str]:
    return [t for t, _ in load_rows(spec)]


def _record(path) -> TrainRows:
    tuned, rec = read_train_rows(path)
    assert tuned and rec is not None
    return rec


def test_a_task_name_trains_at_its_train_split_and_scores_at_its_test_split():
    for name in ("emotion", "control"):
        spec, note = training_spec(name)
        assert (spec.path, note) == (f"{name}_train", None)
        assert parse_task(name).path == f"{name}_test"  # what evaluate --task reads
        assert resolve_data(name).name == f"{name}_train.jsonl"  # grid's and study's fingerprints
        assert [r["text"] for r in load_dataset(name).rows] == _texts(f"{name}_train")
    # a bundled file names its split: kept as said
    assert training_spec("emotion_test")[0].path == "emotion_test"


def test_a_split_column_trains_at_train_and_a_missing_train_split_is_noted(tmp_path, capfd):
    rows = [("a calm morning", "joy", "train"), ("rain again", "sadness", "train"),
            ("the dog barked", "fear", "test"), ("lost keys", "anger", "dev")]
    p = tmp_path / "d.csv"
    p.write_text("text,label,split\n" + "".join(f"{t},{lab},{s}\n" for t, lab, s in rows))
    ds = load_dataset(f"csv:{p}")
    assert [r["text"] for r in ds.rows] == ["a calm morning", "rain again"]
    assert ds.source == f"csv:{p},split=train"
    only_test = tmp_path / "t.csv"
    only_test.write_text("text,label,split\n" + "".join(f"{t},{lab},test\n" for t, lab, _ in rows))
    capfd.readouterr()
    assert len(load_dataset(f"csv:{only_test}").rows) == 4  # what was given, said on stderr
    assert "no train rows in its split column (test); training on all its rows" in capfd.readouterr().err


def test_row_digests_ignore_case_width_and_spacing_and_round_trip():
    assert row_digest("  I feel\tGREAT ") == row_digest("i feel great") != row_digest("i feel greater")
    assert row_digest("ｆｕｌｌ width") == row_digest("full width")  # NFKC
    rec = TrainRows.of(["b", "a", "A", "c"], "x")
    doc = rec.to_json()
    assert (doc["rows"], doc["unique"]) == (4, 3)
    blob = base64.b64decode(doc["hashes"])
    assert len(blob) == 3 * DIGEST_BYTES
    parts = [blob[i:i + DIGEST_BYTES] for i in range(0, len(blob), DIGEST_BYTES)]
    assert parts == sorted(parts)
    assert TrainRows.from_json(doc, "here").digests == rec.digests
    assert rec.count(["A", "z", "c "]) == 2


def test_tune_data_emotion_trains_on_the_bundled_train_rows(adapters):
    ad = adapters / "on_name"
    info = json.loads((ad / "affectlens_tune.json").read_text())
    manifest = json.loads((ad / "manifest.json").read_text())
    assert info["options"]["data"].endswith("emotion_train.jsonl")
    assert manifest["options"]["data"] == info["options"]["data"]
    assert manifest["train_rows"]["rows"] == info["train_rows"]["rows"] == len(_texts("emotion_train")) == 294
    assert "hashes" not in manifest["train_rows"]  # the digests live in affectlens_tune.json only
    rec = _record(ad)
    assert rec.digests == {row_digest(t) for t in _texts("emotion_train")}
    assert rec.count(_texts("emotion_test")) == 0


def test_evaluate_scores_the_train_adapter_on_the_test_split_and_records_zero(adapters, tmp_path, capfd):
    out = tmp_path / "eval"
    rc, _, err = run_cli(capfd, "evaluate", TINYSTORIES, "--adapter", adapters / "on_name", "--task", "emotion",
                         "--limit", "7", "--bootstrap", "0", "--out", out)
    assert rc == 0, err
    scores = json.loads((out / "scores.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    for doc in (scores, manifest):
        assert doc["train_overlap"]["tasks"] == {"emotion": {"rows": 7, "overlap": 0}}
        assert doc["train_overlap"]["trained_on"][0]["rows"] == 294
        assert doc["train_overlap"]["allowed"] is False


@pytest.mark.parametrize("how", ["adapter", "model dir", "renamed copy"])
def test_evaluate_refuses_rows_the_adapter_was_trained_on(adapters, tmp_path, capfd, how):
    from affectlens.tasks.corpus import bundled_path

    ad = adapters / "on_test"
    out = tmp_path / "eval"
    task = "emotion"
    if how == "renamed copy":  # the check compares content, not names
        task = f"jsonl:{shutil.copy(bundled_path('emotion_test'), tmp_path / 'heldout.jsonl')}"
    model = ["evaluate", ad] if how == "model dir" else ["evaluate", TINYSTORIES, "--adapter", ad]
    line = assert_refused(run_cli(capfd, *model, "--task", task, "--out", out), out=out)
    name = "jsonl:heldout.jsonl" if how == "renamed copy" else "emotion"
    assert f"evaluate: 140 of 140 rows of task '{name}' were in the adapter's training data ({ad})" in line
    assert line.endswith("pass --allow-train-overlap to score them anyway")


def test_allow_train_overlap_scores_them_and_records_the_count(adapters, tmp_path, capfd):
    out = tmp_path / "eval"
    rc, _, err = run_cli(capfd, "evaluate", TINYSTORIES, "--adapter", adapters / "on_test", "--task", "emotion",
                         "--limit", "7", "--bootstrap", "0", "--allow-train-overlap", "--out", out)
    assert rc == 0, err
    assert "scoring 7 of 7 rows of task 'emotion' that the model was trained on" in err
    for f in ("scores.json", "manifest.json"):
        ov = json.loads((out / f).read_text())["train_overlap"]
        assert ov["allowed"] is True and ov["tasks"] == {"emotion": {"rows": 7, "overlap": 7}}


def test_a_full_fine_tune_records_its_rows_and_is_refused_too(tmp_path, capfd):
    model = tmp_path / "sft"
    rc, _, err = run_cli(capfd, "tune", TINYSTORIES, "--data", "emotion_test", *TUNE, "--method", "full",
                         "--out", model)
    assert rc == 0, err
    assert _record(model).rows == 140
    line = assert_refused(run_cli(capfd, "evaluate", model, "--task", "emotion", "--out", tmp_path / "e"))
    assert "140 of 140 rows of task 'emotion' were in the model's training data" in line


def test_a_split_column_file_scored_whole_is_refused_with_advice(tmp_path, capfd):
    p = tmp_path / "d.csv"
    p.write_text("text,label,split\n" + "".join(f"text {i},{'joy' if i % 2 else 'sadness'},{'train' if i < 6 else 'test'}\n"
                                                 for i in range(8)))
    fake = tmp_path / "adapter"
    fake.mkdir()  # only the record matters: the refusal comes before anything is loaded
    rec = TrainRows.of(_texts(f"csv:{p},split=train"), f"csv:{p},split=train")
    (fake / "affectlens_tune.json").write_text(json.dumps({"train_rows": rec.to_json()}))
    line = assert_refused(run_cli(capfd, "evaluate", TINYSTORIES, "--adapter", fake, "--task", f"csv:{p}",
                                  "--out", tmp_path / "e"))
    assert "6 of 8 rows of task 'csv:d.csv'" in line and "add split=test" in line


def _grid(tmp_path, **over) -> dict:
    cfg = {"name": "g", "base": str(TINYSTORIES), "data": "emotion", "tasks": ["emotion"],
           "budget": {"steps": 1, "rank": 2, "lr": 1e-2, "batch_size": 2, "max_length": 64},
           "variants": [{"name": "base", "kind": "reference", "model": "base"},
                        {"name": "GET", "kind": "tune", "modules": "gate_proj"}]}
    cfg.update(over)
    return cfg


def test_grid_trains_a_task_name_on_its_train_split(tmp_path):
    cfg = load_config(_grid(tmp_path))
    validate_config(cfg)
    assert cfg.train_overlap is not None
    assert cfg.train_overlap["tasks"] == {"emotion": {"rows": 140, "overlap": 0}}
    assert cfg.train_overlap["trained_on"][0]["rows"] == 294


@pytest.mark.parametrize("case", ["data", "adapter path"])
def test_grid_refuses_rows_its_cells_were_trained_on(adapters, tmp_path, capfd, case):
    over: dict = {"data": "emotion_test"}
    if case == "adapter path":  # a fixed reference model tuned elsewhere on the test rows
        over = {"variants": [{"name": "base", "kind": "reference", "model": "base"},
                             {"name": "theirs", "kind": "reference", "model": str(adapters / "on_test")}]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_grid(tmp_path, **over)))
    out = tmp_path / "run"
    line = assert_refused(run_cli(capfd, "grid", path, "--out", out))
    source = "emotion_test" if case == "data" else str(adapters / "on_test")
    assert f"grid.yaml: 140 of 140 rows of task 'emotion' were in the training data ({source})" in line
    assert "allow_train_overlap: true" in line
    assert not (out / "cells").exists()


def test_grid_allow_train_overlap_runs_and_records_the_count(adapters, tmp_path):
    def evaluator(model, tok, tasks, **kw):
        return {"tasks": {t: {"primary": 0.5, "metrics": {"accuracy": 0.5}, "n": 7} for t in tasks}}

    cfg = _grid(tmp_path, eval={"allow_train_overlap": True, "limit": 7},
                variants=[{"name": "theirs", "kind": "reference", "model": str(adapters / "on_test")}])
    key = load_config(cfg).variants[0].hash
    assert key == load_config({**cfg, "eval": {"limit": 7}}).variants[0].hash  # not part of a cell's key
    run_grid(cfg, tmp_path / "run", evaluator=evaluator, echo=lambda s: None)
    ov = json.loads((tmp_path / "run" / "manifest.json").read_text())["train_overlap"]
    assert ov["allowed"] is True and ov["tasks"] == {"emotion": {"rows": 7, "overlap": 7}}


def test_study_refuses_before_training_when_its_data_holds_task_rows(tmp_path, capfd):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(TINYSTORIES), "data": "emotion_test", "tasks": ["emotion"],
                                   "control_tasks": [], "stages": ["sufficiency"]}))
    out = tmp_path / "study"
    line = assert_refused(run_cli(capfd, "study", cfg, "--profile", "quick", "--out", out), out=out)
    assert "study.yaml: 14 of 14 rows of task 'emotion' were in the training data (emotion_test)" in line
    cfg.write_text(yaml.safe_dump({"model": str(TINYSTORIES), "data": "emotion_test", "tasks": ["emotion"],
                                   "eval": {"allow_train_overlap": "yes"}}))
    assert "eval.allow_train_overlap must be true or false" in assert_refused(
        run_cli(capfd, "study", cfg, "--out", out), out=out)


def _commands(text: str) -> list[list[str]]:
    """Every ``affectlens tune`` / ``affectlens evaluate`` command line in the README's code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"(?:.* -m )?affectlens (tune|evaluate) (.*)$", line) if fenced else None
        if m:
            out.append([m.group(1), *shlex.split(m.group(2))])
    return out


def _opt(words: list[str], flag: str) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == flag]


def _split(spec) -> str:
    """The split a spec reads: a bundled file's own, or split= (a directory's default: test)."""
    return spec.path.rsplit("_", 1)[1] if spec.loader == "bundled" else spec.option("split", "test")


def test_readme_recipes_train_and_score_different_splits():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    cmds = _commands(text)
    trained = {_opt(c, "--out")[0]: _opt(c, "--data")[0] for c in cmds if c[0] == "tune"}
    pairs = []
    for c in cmds:
        if c[0] != "evaluate":
            continue
        for model in (c[1], *_opt(c, "--adapter")):
            if model in trained:
                pairs += [(trained[model], task) for task in _opt(c, "--task") or ["emotion"]]
    assert len(pairs) >= 2, pairs  # the paper's setting and the MELD recipe
    for data, task in pairs:
        train, scored = training_spec(data)[0], parse_task(task)
        assert (_split(train), _split(scored)) == ("train", "test"), (data, task)
        if train.loader == "bundled":  # the rows themselves are disjoint
            assert TrainRows.of(_texts(train.name), data).count(_texts(task)) == 0
    assert "trains at its train split" in text and "scores at its test split" in text
