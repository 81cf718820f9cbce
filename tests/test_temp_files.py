"""Temp files never overwrite a user's file, and the library keeps the pickle rule for steering vectors.

Each writer once wrote through a fixed temp name beside its target (``.X.tmp``,
``X.tmp``, ``.X.<pid>.tmp``): a user's file of that name was truncated and then
renamed over the target. They now create their temp exclusively (``claims.temp_file``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from affectlens.errors import AffectlensError

from conftest import TINYSTORIES

MINE = "a user's own file\n"


def test_finite_memo_record_leaves_a_look_alike_file_alone(tmp_path, monkeypatch):
    import affectlens.weights.finite as finite

    monkeypatch.setenv("AFFECTLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AFFECTLENS_NO_FINITE_MEMO", raising=False)
    monkeypatch.setattr(finite, "_RACY_S", 0.0)
    shard = tmp_path / "model.safetensors"
    shard.write_bytes(b"weights")

    class Store:
        def file_of(self, name: str) -> Path:
            return shard

    memo = finite.FiniteMemo()
    rec = memo._record(shard)
    rec.parent.mkdir(parents=True)
    mine = rec.with_name(f".{rec.name}.{os.getpid()}.tmp")  # the old fixed temp name
    mine.write_text(MINE)
    memo.checked(Store(), ["a.weight"])
    memo.commit()
    assert mine.read_text() == MINE
    assert json.loads(rec.read_text())["names"] == ["a.weight"]
    assert sorted(p.name for p in rec.parent.iterdir()) == sorted([rec.name, mine.name])  # no temp left
    assert finite.FiniteMemo().known(Store(), "a.weight")


def test_corpus_write_leaves_a_look_alike_file_alone(tmp_path):
    from affectlens.tasks.corpus import render, write

    out = tmp_path / "data"
    out.mkdir()
    mine = out / ".emotion_train.jsonl.tmp"
    mine.write_text(MINE)
    paths = write(out)
    assert mine.read_text() == MINE
    files = render()
    assert {p.name: p.read_text(encoding="utf-8") for p in paths} == files
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, mine.name])


def test_layer_sweep_cache_leaves_a_look_alike_file_alone(tmp_path):
    from affectlens.circuits.layers import _load, _save

    mine = tmp_path / "joy.tmp"
    mine.write_text(MINE)
    rows = [{"emotion": "joy", "layer": 1, "effect": 0.5}]
    _save(tmp_path, "joy", "k1", rows)
    assert mine.read_text() == MINE
    assert _load(tmp_path, "joy", "k1") == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["joy.json", "joy.tmp"]


# ----------------------------------------------------------------------------- pickle vectors in the library


@pytest.fixture()
def pt_vectors(tmp_path) -> Path:
    f = tmp_path / "steer.pt"
    torch.save({"layers.1": {"action": "add", "steering_coefficient": 1.0, "steering_vector": torch.ones(64),
                             "bias": None}}, f)
    return f


@pytest.fixture()
def no_model(monkeypatch):
    import affectlens.circuits.inputs as inputs

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the vectors file was checked")

    monkeypatch.setattr(inputs, "load_for_pairs", refuse)


def test_load_vectors_reads_a_pickle_only_when_allowed(pt_vectors):
    from affectlens.circuits.inputs import load_vectors

    with pytest.raises(AffectlensError, match="is a pickle checkpoint.*pass --allow-pickle if you trust it"):
        load_vectors(pt_vectors, 4, "joy")
    sv = load_vectors(pt_vectors, 4, "joy", allow_pickle=True)
    assert sv.num_layers == 4 and torch.equal(sv.get("joy")[1], torch.ones(64))


@pytest.mark.parametrize("run", ["layers", "heads", "neurons", "intervene"])
def test_circuits_runs_refuse_a_pickle_before_the_model_loads(tmp_path, pt_vectors, no_model, run):
    from affectlens.circuits import api

    out = str(tmp_path / "run")
    kw = {"vectors": str(pt_vectors), "vectors_label": "joy"}
    call = {"layers": lambda: api.layers_run(str(TINYSTORIES), out, **kw),
            "heads": lambda: api.heads_run(str(TINYSTORIES), out, **kw),
            "neurons": lambda: api.neurons_run(str(TINYSTORIES), out, **kw),
            "intervene": lambda: api.intervene_run(str(TINYSTORIES), out, ["emotion"], steer=["joy@1*2"], **kw)}
    with pytest.raises(AffectlensError, match=f"{pt_vectors} is a pickle checkpoint"):
        call[run]()
    assert not Path(out).exists()
