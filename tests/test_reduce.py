"""Blocked sums of squares stay within their stated bound whatever the BLAS does; one dot per step does not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from affectlens.locate.tensor_pass import SUB_ELEMS, base_ssq, chunk_stats
from affectlens.weights import reduce
from affectlens.weights.pool import Scratch
from affectlens.weights.reduce import (
    BLOCK,
    U32,
    U64,
    BlockSums,
    float64_ref_tol,
    gamma,
    ssq,
    ssq_rel_bound,
)


def naive_block_dots(rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The worst a BLAS may do: float32 squares added one after another into one float32 accumulator."""
    sq = rows * rows  # float32 products, each rounded once
    out[...] = np.add.accumulate(sq, axis=-1, dtype=np.float32)[..., -1:].reshape(out.shape)
    return out


def exact_ssq(x: np.ndarray) -> float:
    """Σx² of float32 values, exactly rounded: their squares are exact in float64, fsum adds them exactly."""
    return math.fsum((x.astype(np.float64) ** 2).tolist())


def big_then_ones(n: int, period: int) -> np.ndarray:
    """2¹² (square 2²⁴) then ones, every ``period`` elements: a naive float32 sum past 2²⁴ drops every 1."""
    x = np.ones(n, np.float32)
    x[::period] = 2.0**12
    return x


def rel_err(got: float, ref: float) -> float:
    return abs(got - ref) / ref


def test_bound_is_about_block_times_u_and_does_not_grow_with_n():
    assert BLOCK * U32 < ssq_rel_bound(1) < (BLOCK + 2) * U32
    assert ssq_rel_bound(2**30) < 1.01 * ssq_rel_bound(1)  # a billion elements: the float64 part is ~1e-7 of it
    assert ssq_rel_bound(10, delta=True) - ssq_rel_bound(10) == pytest.approx(2 * U32, rel=1e-3)
    assert gamma(3, U64) == pytest.approx(3 * U64)
    with pytest.raises(ValueError):
        gamma(2**24, U32)


def test_worst_blas_one_dot_per_step_breaks_the_bound_blocks_keep_it(monkeypatch):
    """Emulate a naively accumulating BLAS: today's single dot per 64K step errs by ~n·u, blocks by < (B+1)·u."""
    monkeypatch.setattr(reduce, "block_dots", naive_block_dots)
    x = big_then_ones(4 * SUB_ELEMS, SUB_ELEMS)  # one 2¹² per step: the whole step's ones are lost
    ref, bound = exact_ssq(x), ssq_rel_bound(x.size)
    blocked = BlockSums(x)(x.size, (0,))[0]
    assert rel_err(blocked, ref) <= bound
    assert rel_err(blocked, ref) > 0.9 * gamma(BLOCK - 1, U32)  # the emulation is naive: the bound is nearly met
    monkeypatch.setattr(reduce, "BLOCK", SUB_ELEMS)  # one block per step: the pass before issue 18
    one_dot = sum(BlockSums(x[s:s + SUB_ELEMS])(SUB_ELEMS, (0,))[0] for s in range(0, x.size, SUB_ELEMS))
    assert rel_err(one_dot, ref) > 100 * bound  # 3.9e-3 against 3.1e-5


@pytest.mark.parametrize("worst", [False, True], ids=["this-blas", "naive-blas"])
def test_locate_pass_within_bound_on_adversarial_chunks(monkeypatch, worst):
    """chunk_stats and base_ssq on chunks built to defeat naive float32 sums: within the stated bound."""
    if worst:
        monkeypatch.setattr(reduce, "block_dots", naive_block_dots)
    n = 3 * SUB_ELEMS + 1000  # a partial step and a partial block
    d = big_then_ones(n, SUB_ELEMS)
    d[1::7] = 1.5  # mixed mantissas, still exact after the subtraction below
    base = torch.full((n,), 0.5).to(torch.bfloat16)
    tuned = (base.float() + torch.from_numpy(d)).to(torch.float32)  # 0.5 + d: exact in float32, so ΔW = d
    st = chunk_stats(base, tuned, Scratch())
    assert rel_err(st.ssq_delta, exact_ssq(d)) <= ssq_rel_bound(n, delta=True)
    assert rel_err(st.ssq_base, n * 0.25) <= ssq_rel_bound(n)
    assert rel_err(base_ssq(torch.from_numpy(d), Scratch(), "x"), exact_ssq(d)) <= ssq_rel_bound(n)


@pytest.mark.parametrize("kind", ["big-then-ones", "equal", "normal", "wide-range"])
def test_ssq_of_ten_million_against_float64(kind):
    """The real BLAS on n ≈ 10⁷ adversarial values: within the bound of a float64 brute force."""
    n = 10_000_019  # prime: a partial block at the end
    g = np.random.default_rng(5)
    if kind == "big-then-ones":
        x = big_then_ones(n, 1 << 20)
    elif kind == "equal":
        x = np.full(n, 1.1, np.float32)
    elif kind == "normal":
        x = g.standard_normal(n, dtype=np.float32)
    else:
        x = (g.standard_normal(n) * 10.0 ** g.uniform(-6, 6, n)).astype(np.float32)
    ref = float(np.sum(x.astype(np.float64) ** 2))  # pairwise float64: within γ_n(2⁻⁵³), inside the tolerance
    assert rel_err(ssq(torch.from_numpy(x)), ref) <= float64_ref_tol(n)


def test_ssq_refuses_other_dtypes_and_copies():
    with pytest.raises(TypeError):
        ssq(torch.ones(4, dtype=torch.bfloat16))
    with pytest.raises(ValueError):
        BlockSums(np.ones(8, np.float32)[::2])  # a strided view would be copied: the sums would read stale data
    assert ssq(torch.ones(3, 5)) == 15.0
    assert ssq(torch.empty(0)) == 0.0
