"""The exponent/mantissa-bit histogram of locate equals numpy's log10 histogram, bin for bin (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from affectlens.locate.stats import (
    HIST_BINS,
    HIST_EXP_HI,
    HIST_EXP_LO,
    HIST_HI,
    HIST_LO,
    hist_counts,
    hist_edge_values,
    hist_edges,
    quantiles,
)
from affectlens.weights.reduce import float64_ref_tol


def numpy_reference(delta: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, int]:
    """[under, bins..., over] and zeros from np.histogram of log10(|ΔW|/(|W|+1e-8)).

    The ratio is formed in float32 as locate forms it (one correctly rounded
    division); the log and the binning are numpy's, in float64. Bins are
    half-open [lo, hi): the overflow bin starts at the last edge, so a value
    exactly on it is overflow (numpy closes its last bin, hence the +inf edge).
    """
    d32, w32 = delta.astype(np.float32), base.astype(np.float32)
    r = (np.abs(d32) / (np.abs(w32) + np.float32(1e-8))).astype(np.float64)
    zeros = int((r == 0).sum())
    with np.errstate(divide="ignore"):
        logs = np.log10(r[r > 0])
    edges = hist_edges()
    bins = np.concatenate([[-np.inf], edges, [np.inf]])
    counts, _ = np.histogram(logs, bins=bins)
    return counts.astype(np.int64), zeros


def random_pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights over many magnitudes and relative changes from 1e-9 to 1e3, some exact zeros."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 1, n)
    d = w * 10.0 ** rng.uniform(-9, 3, n) * rng.choice([-1.0, 1.0], n)
    d[rng.random(n) < 0.05] = 0.0
    w[rng.random(n) < 0.01] = 0.0
    return d.astype(np.float32), w.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exponent_histogram_equals_numpy_log10_histogram(seed):
    d, w = random_pair(200_000, seed)
    got, zeros = hist_counts(torch.from_numpy(d.copy()), torch.from_numpy(w.copy()))
    ref, ref_zeros = numpy_reference(d, w)
    assert zeros == ref_zeros == int((d == 0).sum())
    assert got.tolist() == ref.tolist()
    assert got[1:-1].sum() > 0.5 * d.size  # most values land in the inner bins: the test bites


def test_values_exactly_on_every_edge_go_to_the_bin_above():
    # |W| + 1e-8 == 1 in float32 for W = ±1, so r is the edge value itself.
    edges = hist_edge_values().astype(np.float32)
    assert (edges.astype(np.float64) == hist_edge_values()).all()  # exact in float32
    below = np.nextafter(edges, np.float32(0))
    d = np.concatenate([edges, -edges, below]).astype(np.float32)
    w = np.concatenate([np.ones_like(edges), -np.ones_like(edges), np.ones_like(edges)]).astype(np.float32)
    got, zeros = hist_counts(torch.from_numpy(d.copy()), torch.from_numpy(w.copy()))
    ref, _ = numpy_reference(d, w)
    assert got.tolist() == ref.tolist()
    assert zeros == 0
    # Each inner bin holds its lower edge twice (±) and the value just below the next edge once.
    assert got[1:-1].tolist() == [3] * HIST_BINS
    assert got[0] == 1 and got[-1] == 2  # just below 2^-20: under; exactly 16 (both signs): over


def test_bins_are_quarter_octaves_between_documented_ends():
    v = hist_edge_values()
    assert len(v) == HIST_BINS + 1
    assert v[0] == 2.0**HIST_EXP_LO and v[-1] == 2.0**HIST_EXP_HI
    assert hist_edges()[0] == pytest.approx(HIST_LO) and hist_edges()[-1] == pytest.approx(HIST_HI)
    assert v[4] / v[0] == 2.0 and v[1] / v[0] == 1.25
    assert (np.diff(hist_edges()) <= 0.1).all()  # never coarser than the old 0.1-decade bins


def test_zero_code_counts_exactly_the_zero_deltas_at_the_extremes():
    # ΔW is a float32 difference of two stored weights: subnormal differences, huge weights, and
    # the smallest changes of each; none is mistaken for an exact zero.
    f = np.float32
    tiny = np.nextafter(f(0), f(1))
    big = f(2.0**127)
    pairs = [(f(0), f(0)), (tiny, f(0)), (f(0), tiny), (f(1e-38), f(-1e-38)), (np.nextafter(big, f(0)), big),
             (f(3e38), f(3e38)), (np.nextafter(f(1), f(2)), f(1)), (np.nextafter(f(3e38), f(0)), f(3e38))]
    t = np.array([a for a, _ in pairs], np.float32)
    w = np.array([b for _, b in pairs], np.float32)
    d = t - w
    got, zeros = hist_counts(torch.from_numpy(d.copy()), torch.from_numpy(w.copy()))
    ref, ref_zeros = numpy_reference(d, w)
    assert zeros == ref_zeros == int((d == 0).sum()) == 2
    assert got.tolist() == ref.tolist()


def test_quantiles_read_lower_edges():
    counts = np.zeros(HIST_BINS + 2, np.int64)
    counts[2] = 10
    counts[-1] = 10
    q = quantiles(counts, 10, (0.25, 0.5, 0.95))
    assert q == {"q25": 0.0, "q50": hist_edge_values()[1], "q95": 16.0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_pass_equals_numpy_bin_for_bin_across_step_boundaries(dtype):
    """locate's in-cache pass (several L2 steps, raw file dtypes) gives numpy's histogram and float64 sums."""
    from affectlens.locate.stats import fold_codes
    from affectlens.locate.tensor_pass import SUB_ELEMS, chunk_stats
    from affectlens.weights.pool import Scratch

    n = 2 * SUB_ELEMS + 12_345  # three steps, the last one partial
    d, w = random_pair(n, 7)
    base = torch.from_numpy(w).to(dtype)
    tuned = (torch.from_numpy(w) + torch.from_numpy(d)).to(dtype)
    b64, t64 = base.double().numpy(), tuned.double().numpy()
    st = chunk_stats(base, tuned, Scratch(), hist=True)
    assert st.codes is not None
    got, zeros = fold_codes(st.codes)
    delta32 = (tuned.float() - base.float()).numpy()  # ΔW as locate forms it: float32 of the raw values
    ref, ref_zeros = numpy_reference(delta32, base.float().numpy())
    assert zeros == ref_zeros and got.tolist() == ref.tolist()
    assert got[1:-1].sum() > 0.3 * n
    # the stated bound of the blocked float32 sums (issue 18), not what one BLAS happens to give
    assert st.ssq_base == pytest.approx(float((b64**2).sum()), rel=float64_ref_tol(n), abs=0)
    assert st.ssq_delta == pytest.approx(float(((t64 - b64) ** 2).sum()), rel=float64_ref_tol(n, delta=True), abs=0)
