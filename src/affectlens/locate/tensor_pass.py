"""locate's tensor pass: every element read once, every statistic taken while it is in cache.

A chunk of rows is read from each file (large reads: few syscalls), then
walked in steps of ``SUB_ELEMS`` elements. Each step upcasts the base and
the tuned rows to float32 and forms ΔW, Σ(ΔW)² and Σ(W)² (``reduce.BlockSums``:
float32 BLAS dots of ``reduce.BLOCK`` elements, no write pass, added in
float64), all on buffers that stay in the core's L2 cache; on
4M-element chunks each torch op streamed 16-48 MB through memory. The
element-wise relative change is coded from its float32 bits and counted
with one bincount: over every element, or (a module above the sample
size) over a systematic sample gathered step by step and coded once per
chunk, since coding and counting every element cost ~3x the norms. The
block sums are added in float64, in a fixed order, so the numbers do not
depend on the number of workers, and each cell's Σ is within
``reduce.ssq_rel_bound(n)`` of the exact sum (``delta=True`` for Σ(ΔW)²,
whose float32 subtraction rounds once) whatever the CPU's BLAS: about 3.1e-5
at any size. One float32 dot per step let a naively accumulating BLAS (MKL on
AMD EPYC) err by up to 65536·2⁻²⁴ = 3.9e-3.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import AffectlensError
from ..modules import FUSED, ModuleKey, ParsedName, split_rows
from ..weights.lora import LoraAdapter, LoraModule, lora_delta_norm
from ..weights.pool import Scratch, TensorWorkers
from ..weights.reduce import BlockSums
from ..weights.store import SafetensorsStore, WeightStore
from .stats import N_CODES, Acc, ratio_codes, ratio_denominator

if TYPE_CHECKING:
    from .tuned import Tuned

SUB_ELEMS = 1 << 16  # float32 elements per in-cache step: 256 KB a buffer, four buffers well inside L2


@dataclass
class DeltaStats:
    """What one chunk of (base, tuned) contributes: Σ(W)², Σ(ΔW)² and, with a histogram, the code counts."""

    ssq_base: float = 0.0
    ssq_delta: float = 0.0
    codes: torch.Tensor | None = None


def chunk_stats(base: torch.Tensor, tuned: torch.Tensor, scratch: Scratch, *, is_delta: bool = False,
                hist: bool = False, base_ssq: bool = True, what_base: str = "the base",
                what: str = "the tuned model", stride: int = 1, phase: int = 0) -> DeltaStats:
    """Σ(W)², Σ(ΔW)² and the relative-change code counts of one chunk, in L2-sized steps.

    ``base`` and ``tuned`` are flat tensors of any float dtype (raw file
    views); ``tuned`` is ΔW itself with ``is_delta``. The codes are those of
    ``locate_stats.ratio_codes`` (r = |ΔW|/(|W|+ε) as float32, its bits
    shifted), counted over ``N_CODES``: of every element with ``stride`` 1,
    else of the elements ``phase``, ``phase + stride``, … only (a systematic
    sample, gathered per step and coded once per chunk). The sums always
    cover every element. A non-finite sum means a NaN/Inf element: refused
    here, so no separate finiteness pass is needed.
    """
    n = base.numel()
    out = DeltaStats()
    w_buf, d_buf, den_buf, r_buf = scratch.small(min(n, SUB_ELEMS))
    sums = BlockSums(w_buf.numpy(), d_buf.numpy())  # views made once per chunk; buffer 0 is W, 1 is ΔW
    which = (0, 1) if base_ssq else (1,)
    counts = torch.zeros(N_CODES, dtype=torch.int64) if hist else None
    sample = counts is not None and stride > 1
    if sample:
        sw, sd = scratch.sample((n - phase + stride - 1) // stride if n > phase else 0)
    taken = 0
    sb = sd_sum = 0.0
    for s in range(0, n, SUB_ELEMS):
        e = min(n, s + SUB_ELEMS)
        k = e - s
        w, d, den, r = w_buf[:k], d_buf[:k], den_buf[:k], r_buf[:k]
        w.copy_(base[s:e])
        if is_delta:
            d.copy_(tuned[s:e])
        else:
            d.copy_(tuned[s:e]).sub_(w)
        step_sums = sums(k, which)  # blocked BLAS dots, no write pass (mul+sum cost 2-3x)
        sb += step_sums[0] if base_ssq else 0.0
        sd_sum += step_sums[-1]
        if not math.isfinite(sb):  # before any code is counted: a NaN's code may be negative
            raise AffectlensError(f"non-finite values (NaN/Inf) in {what_base}")
        if not math.isfinite(sd_sum):
            raise AffectlensError(f"non-finite values (NaN/Inf) in {what}")
        if sample:
            f = (phase - s) % stride
            if f < k:
                m = (k - 1 - f) // stride + 1
                sw[taken:taken + m].copy_(w[f::stride])
                sd[taken:taken + m].copy_(d[f::stride])
                taken += m
        elif counts is not None:
            counts += ratio_codes(d, ratio_denominator(w, out=den), out=r)
    if sample and taken:
        assert counts is not None
        w_s, d_s = sw[:taken], sd[:taken]
        counts += ratio_codes(d_s, ratio_denominator(w_s, out=w_s))
    out.ssq_base, out.ssq_delta, out.codes = sb, sd_sum, counts
    return out


def base_ssq(base: torch.Tensor, scratch: Scratch, what: str) -> float:
    """Σ(W)² of a flat chunk in L2-sized steps (when no tuned model reads this chunk), as ``chunk_stats``."""
    n = base.numel()
    w_buf = scratch.small(min(n, SUB_ELEMS))[0]
    sums = BlockSums(w_buf.numpy())
    sb = 0.0
    for s in range(0, n, SUB_ELEMS):
        e = min(n, s + SUB_ELEMS)
        w_buf[: e - s].copy_(base[s:e])
        sb += sums(e - s, (0,))[0]
    if not math.isfinite(sb):
        raise AffectlensError(f"non-finite values (NaN/Inf) in {what}")
    return sb


def chunk_reader(store: WeightStore, name: str, into: torch.Tensor | None) -> Callable[[int, int], torch.Tensor]:
    """Rows [r0, r1) of ``name``: file reads into the raw buffer ``into`` for safetensors, else one decode."""
    if isinstance(store, SafetensorsStore):
        return lambda r0, r1: store.read_rows(name, r0, r1, out=into)
    full = store.get(name)
    return lambda r0, r1: full[r0:r1]


def segments(p: ParsedName, rows: int, config: dict[str, Any]) -> list[tuple[ModuleKey, int, int]]:
    """Canonical (key, row range) cells of one tensor; fused tensors give several."""
    assert p.key is not None
    if not p.fused:
        return [(p.key, 0, rows)]
    ranges = split_rows(p.fused, rows, config)
    return [(ModuleKey(p.key.layer, mod, p.key.param, p.key.expert), a, b)
            for mod in FUSED[p.fused] for a, b in [ranges[mod]]]


def _lora_seg_norm(ad: LoraAdapter, mod: LoraModule, r0: int, r1: int) -> float:
    A = ad.store.get(mod.a_name)
    B = ad.store.get(mod.b_name)[r0:r1]
    v = lora_delta_norm(A, B, mod.scale)
    if not math.isfinite(v):
        raise AffectlensError(f"non-finite values (NaN/Inf) in the LoRA tensors of {mod.path}")
    return v


# What one tensor contributes, in order: ("base", key, numel, Σw²), ("delta", label, key, Σd² | None,
# codes | None), ("zeros", label, module, n), ("exact", label, key, ‖ΔW‖ of a LoRA segment).
Contribution = tuple[Any, ...]


SAMPLE_BLOCK = 1 << 16  # sampled LoRA entries formed at a time: 2 x block x rank floats


def lora_factors(adapter: LoraAdapter, mod: LoraModule) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(Aᵀ [cols, rank], B [rows, rank], scale) in float32, read once per tensor for ``lora_sample_codes``."""
    At = adapter.store.get(mod.a_name).to(torch.float32).t().contiguous()  # row gathers, not column gathers
    return At, adapter.store.get(mod.b_name).to(torch.float32), mod.scale


def lora_sample_codes(factors: tuple[torch.Tensor, torch.Tensor, float], w_raw: torch.Tensor, r0: int, cols: int,
                      stride: int, phase: int) -> torch.Tensor:
    """Code counts of a chunk's sampled elements for a plain LoRA: only those entries of s·BA are formed.

    Entry (i, j) is s·Σ_k B[i,k]·A[k,j]: n_sampled x rank products instead of
    the chunk's rows x cols x rank for BA, so a 7B adapter's distribution
    costs about what its norms cost. Same codes as ``chunk_stats`` on the
    formed rows, up to float32 rounding of the sum.
    """
    At, B, scale = factors
    idx = torch.arange(phase, w_raw.numel(), stride)
    counts = torch.zeros(N_CODES, dtype=torch.int64)
    for s in range(0, idx.numel(), SAMPLE_BLOCK):
        part = idx[s:s + SAMPLE_BLOCK]
        rows, cols_j = torch.div(part, cols, rounding_mode="floor").add_(r0), torch.remainder(part, cols)
        d = torch.index_select(B, 0, rows).mul_(torch.index_select(At, 0, cols_j)).sum(1).mul_(scale)
        counts += ratio_codes(d, ratio_denominator(torch.index_select(w_raw, 0, part).to(torch.float32)))
    return counts


def sampled_count(g0: int, g1: int, stride: int) -> int:
    """How many flat indices g in [g0, g1) have g % stride == 0: the sampled elements of a range."""
    return -(-g1 // stride) - -(-g0 // stride)


def tensor_job(name: str, p: ParsedName, base_store: WeightStore, models: Sequence[Tuned], distribution: bool,
               chunk_elems: int, scratch: Scratch, strides: Mapping[str, int] | None = None) -> list[Contribution]:
    """Read one base tensor (and each model's change of it) chunk by chunk; return its contributions.

    Runs in a worker thread: touches no shared state, so the caller adds the
    contributions in tensor order and the sums do not depend on the workers.
    ``strides[module]`` > 1 samples that module's distribution: the elements
    whose flat index in the tensor is a multiple of the stride.
    """
    shape = base_store.shape(name)
    rows = shape[0]
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    segs = segments(p, rows, base_store.config)
    out: list[Contribution] = []
    lora_mod: dict[str, LoraModule | None] = {}
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}  # a LoRA's A and B, read once per tensor
    sources: dict[str, tuple[WeightStore, str] | None] = {}
    for m in models:
        if m.store is not None:
            sources[m.label] = (m.store, name)
            continue
        assert m.adapter is not None
        rep = m.adapter.replacement_for(name)
        sources[m.label] = (m.adapter.store, rep) if rep else None
        mod = lora_mod[m.label] = m.adapter.module_for(name)
        if sources[m.label] is None and mod is not None and not m.adapter.use_dora:
            # DoRA rescales W: its change needs the rows, read below
            out.extend(("exact", m.label, key, _lora_seg_norm(m.adapter, mod, a, b)) for key, a, b in segs)
    step = max(1, chunk_elems // max(cols, 1))
    scratch.raw_for(step * cols)
    base_rows = chunk_reader(base_store, name, scratch.raw[0])
    readers = {lab: chunk_reader(*src, scratch.raw[1]) for lab, src in sources.items() if src is not None}
    for key, a, b in segs:
        for r0 in range(a, b, step):
            r1 = min(b, r0 + step)
            n = (r1 - r0) * cols
            w_raw = base_rows(r0, r1).reshape(-1)
            hist = distribution and key.param == "weight"
            stride = (strides or {}).get(key.module, 1) if hist else 1
            phase = (-r0 * cols) % stride
            ssq_b: float | None = None
            w_full: torch.Tensor | None = None
            deltas: list[Contribution] = []
            for m in models:
                mod = lora_mod.get(m.label)
                if m.label in readers:
                    st = chunk_stats(w_raw, readers[m.label](r0, r1).reshape(-1), scratch, hist=hist,
                                     base_ssq=ssq_b is None, what_base=f"{name} of the base",
                                     what=f"{name} of {m.label}", stride=stride, phase=phase)
                elif mod is not None:
                    assert m.adapter is not None
                    if not distribution and not m.adapter.use_dora:
                        continue
                    if hist and stride > 1 and not m.adapter.use_dora:  # the norm is exact (Grams): codes only
                        if m.label not in factors:
                            factors[m.label] = lora_factors(m.adapter, mod)
                        deltas.append(("delta", m.label, key, 0.0,
                                       lora_sample_codes(factors[m.label], w_raw, r0, cols, stride, phase)))
                        continue
                    if w_full is None:
                        w_full = scratch.get(n)[0].copy_(w_raw)
                    dd = m.adapter.delta_rows(mod, r0, r1, base_rows=w_full.view(r1 - r0, cols)).reshape(-1)
                    st = chunk_stats(w_raw, dd, scratch, is_delta=True, hist=hist, base_ssq=ssq_b is None,
                                     what_base=f"{name} of the base", what=f"LoRA change of {name} in {m.label}",
                                     stride=stride, phase=phase)
                else:
                    if hist:
                        deltas.append(("zeros", m.label, key.module, sampled_count(r0 * cols, r1 * cols, stride)))
                    continue
                if ssq_b is None:
                    ssq_b = st.ssq_base
                deltas.append(("delta", m.label, key, st.ssq_delta, st.codes))
            if ssq_b is None:
                ssq_b = base_ssq(w_raw, scratch, f"{name} of the base")
            out.append(("base", key, n, ssq_b))
            out.extend(deltas)
    return out


def add_contributions(contribs: Sequence[Contribution], labels: Sequence[str], accs: dict[tuple[str, ModuleKey], Acc],
                      codes: dict[tuple[str, str], torch.Tensor], zeros: dict[tuple[str, str], int]) -> None:
    """Add one tensor's contributions to the running sums, in order."""
    for c in contribs:
        kind = c[0]
        if kind == "base":
            _, key, n, ssq_b = c
            for lab in labels:
                acc = accs.setdefault((lab, key), Acc())
                acc.ssq_base += ssq_b
                acc.numel += n
        elif kind == "delta":
            _, lab, key, ssq_d, cc = c
            acc = accs.setdefault((lab, key), Acc())
            if acc.exact_l2 is None:
                acc.ssq_delta += ssq_d
            if cc is not None:
                hk = (lab, key.module)
                codes[hk] = codes[hk] + cc if hk in codes else cc
        elif kind == "zeros":
            _, lab, mod, n = c
            zeros[(lab, mod)] = zeros.get((lab, mod), 0) + n
        else:  # exact
            _, lab, key, v = c
            acc = accs.setdefault((lab, key), Acc())
            acc.exact_l2 = math.sqrt((acc.exact_l2 or 0.0) ** 2 + v**2)


OTHER_BLOCK_ELEMS = 1 << 23  # an embedding or head is split into row blocks of this size, spread over the workers


def other_tensors(base: WeightStore, models: Sequence[Tuned], others: dict[str, list[str]],
                  chunk_elems: int, pool: TensorWorkers | None = None) -> list[dict[str, Any]]:
    """Embeddings, norms, heads, routers, encoders: reported with their change, never dropped.

    A large tensor (a 32K x 2K embedding is 65M elements) is one job per block
    of rows, so every worker shares it instead of one worker finishing it
    alone at the end of the pass; the blocks' sums are added in order.
    """
    jobs: list[tuple[str, str, int, int]] = []
    for scope, names in sorted(others.items()):
        for name in names:
            shape = base.shape(name)
            rows = shape[0] if shape else 1
            cols = max(1, base.numel(name) // max(rows, 1))
            block = max(1, OTHER_BLOCK_ELEMS // cols)
            jobs += [(scope, name, r0, min(rows, r0 + block)) for r0 in range(0, max(rows, 1), block)]

    def part(job: tuple[str, str, int, int], scratch: Scratch) -> dict[str, float | None]:
        return other_tensor_part(base, models, job[1], job[2], job[3], chunk_elems, scratch)

    if pool is not None:
        parts = list(pool.map(part, jobs))
    else:
        with TensorWorkers(1) as own:
            parts = list(own.map(part, jobs))
    out: dict[str, dict[str, Any]] = {}
    for (scope, name, _, _), ssq in zip(jobs, parts, strict=True):
        row = out.setdefault(name, {"tensor": name, "scope": scope, "numel": base.numel(name),
                                    **{f"l2:{m.label}": 0.0 for m in models}})
        for lab, v in ssq.items():
            key = f"l2:{lab}"
            row[key] = None if v is None or row[key] is None else row[key] + v
    for row in out.values():
        for m in models:
            v = row[f"l2:{m.label}"]
            row[f"l2:{m.label}"] = None if v is None else math.sqrt(v)
    return list(out.values())


def other_tensor_part(base: WeightStore, models: Sequence[Tuned], name: str, r0: int, r1: int, chunk_elems: int,
                      scratch: Scratch) -> dict[str, float | None]:
    """Σ(ΔW)² of rows [r0, r1) of one tensor of ``other_tensors.csv``, per model (None: no value)."""
    shape = base.shape(name)
    out: dict[str, float | None] = {}
    for m in models:
        src: tuple[WeightStore, str] | None = None
        rep = m.adapter.replacement_for(name) if m.adapter is not None else None
        if m.store is not None and name in m.store:
            src = (m.store, name)
        elif m.adapter is not None and rep:
            src = (m.adapter.store, rep)
        if src is None:
            # An adapter leaves it unchanged; a full checkpoint lacking it has no value (empty cell,
            # listed under only_in_base in summary.json), never a NaN.
            out[m.label] = 0.0 if m.adapter is not None else None
            continue
        if tuple(src[0].shape(src[1])) != shape:
            raise AffectlensError(
                f"shape mismatch for {name}: base {list(shape)} vs {m.label} {list(src[0].shape(src[1]))}")
        rows = shape[0] if shape else 1
        cols = max(1, base.numel(name) // max(rows, 1))
        step = max(1, chunk_elems // cols)
        scratch.raw_for(step * cols)
        b_read, t_read = chunk_reader(base, name, scratch.raw[0]), chunk_reader(*src, scratch.raw[1])
        ssq = 0.0
        what = f"{name} of {m.label} or the base"
        for a in range(r0, r1, step):
            b = min(r1, a + step)
            st = chunk_stats(b_read(a, b).reshape(-1), t_read(a, b).reshape(-1), scratch, base_ssq=False,
                             what=what)
            ssq += st.ssq_delta
        out[m.label] = ssq
    return out


__all__ = ["SUB_ELEMS", "Contribution", "DeltaStats", "add_contributions", "base_ssq", "chunk_reader",
           "chunk_stats", "lora_factors", "lora_sample_codes", "other_tensor_part", "other_tensors", "sampled_count", "segments", "tensor_job"]
