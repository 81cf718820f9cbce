"""``tune`` under ``accelerate launch``: 2 processes train as 1 process with the same effective batch.

The 2-process run (gloo on the CPU) takes 1 example per process and 2
accumulation rounds per step; the 1-process reference takes the whole batch of
4 at once. Labels of different token lengths make the ranks' label-token
counts differ, so averaging per-process means would give another loss (and
update) than the global mean the reference computes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from affectlens.errors import AffectlensError
from affectlens.tune.distributed import Layout
from affectlens.tune.run import tune

from conftest import ROOT, TINYSTORIES

BUDGET = dict(modules="gate_proj,v_proj", steps=4, lr=5e-3, dropout=0.0, precision="fp32", seed=3)


def _data(tmp_path: Path) -> Path:
    rows = [{"text": f"I feel great {i}", "label": "joy"} for i in range(5)]
    rows += [{"text": f"I feel awful {i}", "label": "sadness"} for i in range(5)]
    rows += [{"text": f"what a shock {i}", "label": "surprise"} for i in range(5)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes 2 -m affectlens ...``, CPU processes (gloo),
    one thread each, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "AFFECTLENS_THREADS": "1",
           "AFFECTLENS_NO_PROGRESS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "affectlens", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)



def assert_same_training(got: torch.Tensor, want: torch.Tensor) -> None:
    """Two trainings that differ only in how a batch's float32 gradient sums are split and ordered.

    Reordering a float32 sum changes it by up to ~n·u·Σ|g| (u = 2^-24), which depends on the thread
    count and the BLAS. Adam divides each step by √v, so an element whose gradient nearly cancels
    carries that error into its step at full size: the bound is a fraction of the tensor's scale,
    not of each element. 1e-3 of the largest magnitude is far above the reordering error and far
    below a wrong step (a mis-normalised or dropped micro-batch moves weights by a whole lr).
    """
    scale = float(want.detach().abs().max()) or 1.0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3 * scale)


def test_two_processes_train_as_one(tmp_path):
    data = _data(tmp_path)
    out = tmp_path / "runs" / "ddp"
    proc = _launch(tmp_path, "tune", str(TINYSTORIES), "--data", str(data), "--modules", BUDGET["modules"],
                   "--steps", str(BUDGET["steps"]), "--lr", str(BUDGET["lr"]), "--dropout", "0",
                   "--precision", "fp32", "--seed", str(BUDGET["seed"]), "--batch-size", "1", "--grad-accum", "2",
                   "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Two processes really ran, the effective batch was said and recorded, the result written once.
    assert "effective batch 4 = 1 per process x 2 process(es) x 2 accumulation step(s) (MULTI_CPU)" in proc.stdout
    assert proc.stdout.count(f"wrote {out}") == 1
    info = json.loads((out / "affectlens_tune.json").read_text())
    assert info["layout"] == {"per_process_batch": 1, "processes": 2, "grad_accum": 2, "effective_batch": 4,
                              "engine": "MULTI_CPU"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["effective_batch"] == 4 and manifest["options"]["processes"] == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["ddp"]  # no temp dirs or claims left

    ref = tune(str(TINYSTORIES), data, batch_size=4, verbose=False, **BUDGET)
    assert ref.info["layout"]["processes"] == 1
    # The split counts label tokens differently per rank (the normalisation matters here).
    got = load_file(out / "adapter_model.safetensors")
    from peft import get_peft_model_state_dict

    want = get_peft_model_state_dict(ref.model)
    assert got.keys() == want.keys()
    for k in got:
        assert_same_training(got[k], want[k])
    assert len(info["loss_curve"]) == BUDGET["steps"]
    torch.testing.assert_close(torch.tensor(info["loss_curve"]), torch.tensor(ref.loss_curve), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[next(iter(got))], torch.zeros(()))  # it trained


def test_accumulation_in_one_process_is_the_whole_batch(tmp_path):
    """Uneven label lengths across accumulation rounds: global normalisation gives the batch-of-4 step."""
    data = _data(tmp_path)
    one = tune(str(TINYSTORIES), data, batch_size=4, verbose=False, **BUDGET)
    acc = tune(str(TINYSTORIES), data, batch_size=1, grad_accum=4, verbose=False, **BUDGET)
    torch.testing.assert_close(torch.tensor(acc.loss_curve), torch.tensor(one.loss_curve), rtol=1e-5, atol=1e-6)
    a, b = dict(acc.model.named_parameters()), dict(one.model.named_parameters())
    for k, p in a.items():
        if p.requires_grad:
            assert_same_training(p, b[k])
    assert acc.options["effective_batch"] == 4 and acc.options["grad_accum"] == 4


def test_layout_shards_every_example_once():
    batch = list(range(12))
    shards = [Layout(2, 3, 2, r).shard(batch) for r in range(3)]
    seen = sorted(i for rank in shards for micro in rank for i in micro)
    assert seen == batch and all(len(m) == 2 for rank in shards for m in rank)
    assert Layout(2, 3, 2).effective == 12


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_grad_accum_is_one_line(tmp_path, bad):
    with pytest.raises(AffectlensError, match="grad accum must be an integer"):
        tune(str(TINYSTORIES), _data(tmp_path), batch_size=1, grad_accum=bad, verbose=False, **BUDGET)
