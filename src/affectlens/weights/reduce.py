"""Sums of squares whose error bound does not grow with the tensor, whatever BLAS the CPU has.

One float32 dot product over n elements may accumulate naively (MKL's sdot
does, at one and two threads): its worst-case relative error is about n·u,
measured at 5e-6 on 600K normals, and on 7B-sized tensors it nears the
differences locate ranks. Here a flat float32 array is cut into blocks of
``BLOCK`` elements; each block's Σx² is one float32 BLAS dot (numpy's batched
matmul: no write pass, any summation order inside), converted to float64,
and the blocks are added in float64.

The bound (``ssq_rel_bound``). With u = 2⁻²⁴ (float32), v = 2⁻⁵³ (float64),
γ_k(u) = k·u / (1 − k·u) and B = ``BLOCK``, the computed Ŝ of n float32
values x satisfies

    |Ŝ − Σx²| ≤ ((1 + γ_{B+1}(u)) · (1 + γ_n(v)) − 1) · Σx²

γ_{B+1}(u): inside a block each square rounds once, each term passes through
at most B − 1 additions in whatever order (naive, pairwise, SIMD lanes, FMA)
the BLAS picks, and the block's result may round once more to float32; all
terms are non-negative, so the componentwise bound is a relative one.
γ_n(v): each of the m ≤ n block sums passes through at most m − 1 float64
additions, in any order (numpy's pairwise sum here, the callers' running sums
over steps, chunks and tensors). With B = 512: 3.058e-5 at n = 10⁷, 3.070e-5
at n = 2³⁰, where a single dot's n·u is 0.06 at n = 10⁶. (A square below
float32's normal range, |x| < 2⁻⁶³, may add 2⁻¹⁵⁰ absolute; a block sum
above 3.4e38 overflows to inf, which callers refuse as non-finite.)

ΔW = a − b formed in float32 from float32-representable a and b (bf16, fp16
and fp32 files all are) rounds once: d̂ = d·(1 + δ), |δ| ≤ u (exact when
b/2 ≤ a ≤ 2b, and when the result is subnormal), so Σd̂² gains a factor
(1 + u)² over the exact Σ(a − b)²: ``ssq_rel_bound(n, delta=True)``. A norm
√S, correctly rounded, errs by at most E/(1 + √(1 − E)) + v where S errs by E:
about half.
"""

from __future__ import annotations

import numpy as np
import torch

# Elements per float32 block: γ_513(u) = 3.06e-5. Each block is one BLAS call, and a call's overhead,
# not its arithmetic, sets the cost: Σ(W)² and Σ(ΔW)² of a 64K step took 17.5 µs with B = 256, 13.6
# with 512, 12.8 with 1024, against 9 for one dot each; locate's pass CPU time +11 % with 256, +2-4 %
# with 512 (issue 18, one worker, bf16 pair).
BLOCK = 512
U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53  # float64 unit roundoff


def gamma(k: int, u: float) -> float:
    """γ_k = k·u / (1 − k·u): the relative error bound of k roundings (Higham, Lemma 3.1)."""
    if k * u >= 1:
        raise ValueError(f"no bound for {k} roundings of unit roundoff {u}")
    return k * u / (1 - k * u)


def ssq_rel_bound(n: int, *, delta: bool = False) -> float:
    """Worst-case relative error of ``ssq`` over n float32 values (``delta``: of float32 a − b, vs exact a − b)."""
    e = (1 + gamma(BLOCK + 1, U32)) * (1 + gamma(max(n, 1), U64))
    return e * (1 + U32) ** 2 - 1 if delta else e - 1


def float64_ref_tol(n: int, *, delta: bool = False) -> float:
    """Relative tolerance of ``ssq`` against a float64 Σx² of the same n stored values (tests, benchmarks).

    The reference errs too: float32 squares (and a − b of float32 values) are
    exact or round once in float64, and its sum adds γ_n(v); (e + r)/(1 − r)
    covers both sides relative to the reference.
    """
    r = gamma(n + 3, U64)
    return (ssq_rel_bound(n, delta=delta) + r) / (1 - r)


def block_dots(rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Each block's Σx² in float32: (k, 1, b) row @ (k, b, 1) column of the same values, b ≤ ``BLOCK``, into ``out``.

    The one place a BLAS sums (numpy's matmul: one dot per block, no write pass), so a
    test can put the worst a BLAS may do here: a naive float32 accumulation.
    """
    return np.matmul(rows, cols, out=out)


class BlockSums:
    """Σx² of the first k elements of fixed flat float32 buffers, step after step.

    The views and the float32 outputs are made once per buffer set and every
    step's block sums go through one float64 reduction: numpy's per-call
    overhead, not the dots, is what separates this from one BLAS dot per step.
    """

    def __init__(self, *bufs: np.ndarray) -> None:
        if not all(b.ndim == 1 and b.dtype == np.float32 and b.flags.c_contiguous for b in bufs):
            raise ValueError("BlockSums needs flat contiguous float32 buffers: its views must not be copies")
        self.bufs = bufs
        n = min((b.shape[0] for b in bufs), default=0)
        k = n // BLOCK
        self.rows = [b[: k * BLOCK].reshape(k, 1, BLOCK) for b in bufs]
        self.cols = [b[: k * BLOCK].reshape(k, BLOCK, 1) for b in bufs]
        self.parts = np.empty((len(bufs), k + 1, 1, 1), np.float32)  # + a partial block's sum

    def __call__(self, k: int, which: tuple[int, ...]) -> list[float]:
        """Σx² of elements [0, k) of the buffers numbered ``which``, each within ``ssq_rel_bound(k)``."""
        nb, m = k // BLOCK, k // BLOCK * BLOCK
        used = nb + (m < k)
        for j, i in enumerate(which):
            if nb:
                block_dots(self.rows[i][:nb], self.cols[i][:nb], self.parts[j, :nb])
            if m < k:
                tail = self.bufs[i][m:k]
                block_dots(tail.reshape(1, 1, k - m), tail.reshape(1, k - m, 1), self.parts[j, nb:used])
        sums = np.add.reduce(self.parts[: len(which), :used].reshape(len(which), used), axis=1, dtype=np.float64)
        return [float(v) for v in sums]


def ssq_array(a: np.ndarray) -> float:
    """Σx² of a flat contiguous float32 numpy array within ``ssq_rel_bound(a.size)``."""
    out = 0.0
    for s in range(0, a.shape[0], 1 << 16):  # bounded scratch: a (k, 1, 1) output per 64K elements
        part = a[s:s + (1 << 16)]
        out += BlockSums(part)(part.shape[0], (0,))[0]
    return out


def ssq(x: torch.Tensor) -> float:
    """Σx² of a float32 tensor (any shape) within ``ssq_rel_bound(x.numel())``."""
    if x.dtype != torch.float32:
        raise TypeError(f"ssq takes float32, not {x.dtype}: upcast first so the bound's inputs are exact")
    return ssq_array(x.detach().contiguous().reshape(-1).numpy())


__all__ = ["BLOCK", "U32", "U64", "BlockSums", "block_dots", "float64_ref_tol", "gamma", "ssq", "ssq_array",
           "ssq_rel_bound"]
