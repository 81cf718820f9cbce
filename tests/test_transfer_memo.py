"""transfer's fast path (issue 13): a remembered finite check changes no byte and lets no NaN through."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import affectlens.weights.finite as finite
from affectlens.errors import AffectlensError
from affectlens.interventions.transfer import transfer

from tiny import save_tiny

GATE = ".mlp.gate_proj."


@pytest.fixture()
def memo_env(tmp_path, monkeypatch):
    """A private cache, files trusted at once (no 2 s racy window), and a count of base tensors checked."""
    monkeypatch.setenv("AFFECTLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AFFECTLENS_NO_FINITE_MEMO", raising=False)
    monkeypatch.setattr(finite, "_RACY_S", 0.0)
    checked: list[str] = []
    real = finite.check_store_finite

    def counting(store, names=None, chunk_elems=finite._CHUNK_ELEMS):
        names = list(store.names() if names is None else names)
        checked.extend(names)
        return real(store, names, chunk_elems)

    monkeypatch.setattr(finite, "check_store_finite", counting)
    return checked


@pytest.fixture()
def pair(tmp_path):
    save_tiny(tmp_path / "base", "llama", seed=0, max_shard_size="20KB")
    save_tiny(tmp_path / "donor", "llama", seed=1, max_shard_size="20KB")
    return tmp_path / "base", tmp_path / "donor"


def files(d: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(d.iterdir()) if "safetensors" in f.name}


def tensors(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def rewrite_with_nan(d: Path, pattern: str) -> str:
    """Put a NaN into the first tensor whose name holds ``pattern``, rewriting its shard in place."""
    for f in sorted(d.glob("*.safetensors")):
        sd = load_file(str(f))
        hit = next((n for n in sd if pattern in n), None)
        if hit is not None:
            sd[hit].view(-1)[0] = float("nan")
            save_file(sd, str(f), metadata={"format": "pt"})
            return hit
    raise AssertionError(f"no tensor matches {pattern}")


def run(base: Path, donor: Path, out: Path) -> None:
    transfer(base, donor, "gate_proj", out, max_shard_size="30KB", echo=lambda s: None)


def test_remembered_check_gives_byte_identical_output_and_reads_nothing_again(pair, tmp_path, memo_env,
                                                                             monkeypatch):
    base, donor = pair
    run(base, donor, tmp_path / "first")
    base_names = [n for n in tensors(base) if GATE not in n]
    assert sorted(memo_env) == sorted(base_names)  # first run: every copied base tensor checked
    memo_env.clear()
    run(base, donor, tmp_path / "second")
    assert memo_env == []  # the same file versions: nothing checked again
    memo_env.clear()
    assert files(tmp_path / "first") == files(tmp_path / "second")
    # And both are what an independent reader expects: BASE with DONOR's gate_proj.
    b, d, o = tensors(base), tensors(donor), tensors(tmp_path / "second")
    assert set(o) == set(b)
    for name, t in o.items():
        assert torch.equal(t, (d if GATE in name else b)[name]), name
    # With the memo off, the slow path writes the same bytes.
    finite_off = tmp_path / "off"
    monkeypatch.setenv("AFFECTLENS_NO_FINITE_MEMO", "1")
    run(base, donor, finite_off)
    assert sorted(memo_env) == sorted(base_names)
    assert files(finite_off) == files(tmp_path / "first")


def test_a_nan_written_after_the_check_is_still_refused(pair, tmp_path, memo_env):
    base, donor = pair
    run(base, donor, tmp_path / "first")
    # BASE changes in place after it was remembered: its version changes, so it is checked again.
    bad = rewrite_with_nan(base, ".mlp.up_proj.")
    with pytest.raises(AffectlensError, match=f"non-finite.*{bad}"):
        run(base, donor, tmp_path / "second")
    assert not (tmp_path / "second").exists()


def test_a_nan_donor_tensor_is_refused_with_the_memo(pair, tmp_path, memo_env):
    base, donor = pair
    clean = tmp_path / "clean_donor"
    shutil.copytree(donor, clean)
    run(base, clean, tmp_path / "first")  # remembers BASE
    bad = rewrite_with_nan(donor, GATE)
    with pytest.raises(AffectlensError, match=f"non-finite.*{bad}"):
        run(base, donor, tmp_path / "second")
    assert not (tmp_path / "second").exists()
