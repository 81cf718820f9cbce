"""Benchmarks for `locate` (issue 2), each ratio measured against a baseline in the same run.

1. Full-checkpoint diff of a synthetic >=1 GB bf16 sharded Llama-shaped pair: our streaming
   `locate` (default: norms + element-wise distributions + heatmaps; and --no-distribution) vs the
   naive approach (both models via `from_pretrained`, per-tensor diff norms, plus a log10 histogram
   for the default row), and vs the floor: reading both files, upcasting and one sum, with the same
   workers (issue 13). Goals: >=3x the baseline, within 2x of the floor (the whole command, and the
   tensor pass alone), peak RSS <= 1.5x the largest tensor + 400 MB. Rounds are interleaved and
   medians reported (a shared machine). With --gb-large G, a second, larger pair measures the
   whole default command against the floor again: the figures (matplotlib's import and four PNGs,
   ~0.9 CPU-s) are a fixed cost that a 1 GB pair's 0.6 s floor cannot absorb.
2. LoRA with 7B-shaped modules (r=16): r x r Gram norms vs forming BA.
   Goal: >=100x faster, relative error <= 1e-9.

Usage: python benchmarks/bench_locate.py [--gb 1.0] [--gb-large 0] [--repeats 3] [--layers-lora 4]
Each measured side runs in its own subprocess; peak RSS is its VmHWM (ru_maxrss would
inherit the parent's high-water mark across fork+exec).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN, FFN, HEADS, KV, VOCAB = 2048, 5632, 16, 4, 32000

NAIVE = r"""
import sys, time, torch
from transformers import AutoModelForCausalLM
t = time.perf_counter()
a = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16).state_dict()
b = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.bfloat16).state_dict()
out = {k: float(torch.linalg.vector_norm(b[k].float() - a[k].float())) for k in a}
if sys.argv[3] == "1":  # the element-wise relative change histogram, as a user would write it
    edges = torch.linspace(-6, 1, 71)
    hist = {k: torch.histc(torch.log10((b[k].float() - a[k].float()).abs() / (a[k].float().abs() + 1e-8)),
                           bins=70, min=-6, max=1) for k in a if ".layers." in k and k.endswith("proj.weight")}
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(time.perf_counter() - t, int(hwm) * 1024, len(out))
"""

FLOOR = r"""
import os, sys, time
import torch
from affectlens.locate import chunk_reader
from affectlens.locate.tensor_pass import SUB_ELEMS as SUB
from affectlens.weights.pool import TensorWorkers
from affectlens.weights.store import open_weights
t = time.perf_counter()  # after the imports, as for the other rows
stores = [open_weights(p) for p in sys.argv[1:3]]
jobs = [(s, n) for s in stores for n in s.names()]
def one(job, scratch):
    s, n = job
    shape = s.shape(n)
    rows = shape[0] if shape else 1
    cols = s.numel(n) // max(rows, 1)
    step = max(1, (1 << 22) // max(cols, 1))
    acc = 0.0
    read = chunk_reader(s, n, scratch.raw_for(step * cols)[0])
    for r0 in range(0, rows, step):
        raw = read(r0, min(rows, r0 + step)).reshape(-1)
        w = scratch.small(min(raw.numel(), SUB))[0]
        for i in range(0, raw.numel(), SUB):  # in L2-sized steps, as locate does: the fastest way measured
            k = min(SUB, raw.numel() - i)
            acc += float(w[:k].copy_(raw[i:i + k]).sum())
    return acc
with TensorWorkers() as pool:
    total = sum(pool.map(one, jobs))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(time.perf_counter() - t, int(hwm) * 1024, len(jobs))
"""

OURS = r"""
import os, sys, time
os.environ["AFFECTLENS_NO_PROGRESS"] = "1"
import affectlens.locate as L
write_run, spent = L.write_run, []
def timed(*a):
    s = time.perf_counter()
    write_run(*a)
    spent.append(time.perf_counter() - s)
L.write_run = timed
t = time.perf_counter()
r = L.locate(sys.argv[1], [sys.argv[2]], labels=["tuned"], out=sys.argv[3], distribution=sys.argv[4] == "1")
total = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(total, int(hwm) * 1024, total - sum(spent))
"""


def make_pair(root: Path, gb: float) -> tuple[Path, Path, int]:
    """Two bf16 Llama-shaped sharded checkpoints differing by small planted changes."""
    import torch
    from safetensors.torch import save_file

    per_layer = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * (HIDDEN // HEADS * KV) + 3 * HIDDEN * FFN
    layers = max(1, math.ceil((gb * 1e9 / 2 - VOCAB * HIDDEN) / per_layer))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
           "intermediate_size": FFN, "num_hidden_layers": layers, "num_attention_heads": HEADS,
           "num_key_value_heads": KV, "vocab_size": VOCAB, "tie_word_embeddings": True,
           "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"}
    kv = HIDDEN // HEADS * KV
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (kv, HIDDEN),
                       p + "self_attn.v_proj.weight": (kv, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                       p + "mlp.gate_proj.weight": (FFN, HIDDEN), p + "mlp.up_proj.weight": (FFN, HIDDEN),
                       p + "mlp.down_proj.weight": (HIDDEN, FFN), p + "input_layernorm.weight": (HIDDEN,),
                       p + "post_attention_layernorm.weight": (HIDDEN,)})
    g = torch.Generator().manual_seed(0)
    dirs = (root / "base", root / "tuned")
    for d in dirs:
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(cfg))
    weight_map: dict[str, str] = {}
    shard: dict[str, dict] = {"base": {}, "tuned": {}}
    size, n_shard = 0, 0

    def flush() -> None:
        nonlocal size, n_shard
        if not shard["base"]:
            return
        n_shard += 1
        fname = f"model-{n_shard:05d}.safetensors"
        for side, d in zip(("base", "tuned"), dirs, strict=True):
            save_file(shard[side], str(d / fname))
            shard[side] = {}
        size = 0

    for name, shape in shapes.items():
        w = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
        t = w
        if "mlp.gate_proj" in name or "self_attn.q_proj" in name:
            t = (w.float() + 0.002 * torch.randn(shape, generator=g)).to(torch.bfloat16)
        shard["base"][name], shard["tuned"][name] = w, t
        weight_map[name] = f"model-{n_shard + 1:05d}.safetensors"
        size += w.numel() * 2
        if size > 400e6:
            flush()
    flush()
    index = {"metadata": {}, "weight_map": weight_map}
    for d in dirs:
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
    largest = max(math.prod(s) for s in shapes.values()) * 2
    return dirs[0], dirs[1], largest


def run(code: str, *args: str) -> tuple[float, int, float]:
    """(seconds, peak RSS bytes, third field: for ours, the seconds before the run's files were written)."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"subprocess failed:\n{out.stderr[-2000:]}")
    secs, rss, extra = out.stdout.split()
    return float(secs), int(rss), float(extra)


def warm_pair(root: Path, gb: float) -> tuple[Path, Path, int, int]:
    """A fresh pair (``make_pair``) read once, so both sides of every row start from a warm page cache;
    also returns the bytes of one side."""
    base, tuned, largest = make_pair(root, gb)
    for f in [*base.glob("*.safetensors"), *tuned.glob("*.safetensors")]:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    return base, tuned, largest, sum(f.stat().st_size for f in base.glob("*.safetensors"))


def bench_full(gb: float, repeats: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="affectlens-bench-"))
    try:
        base, tuned, largest, total = warm_pair(root, gb)
        print(f"[full] pair: 2 x {total / 1e9:.2f} GB bf16, largest tensor {largest / 1e6:.0f} MB; "
              f"{repeats} interleaved rounds, medians")
        res: dict[str, list[tuple[float, int, float]]] = {"naive": [], "naive-norms": [], "floor": [], "norms": [],
                                                    "default": []}
        for i in range(repeats):
            res["floor"].append(run(FLOOR, str(base), str(tuned)))
            res["default"].append(run(OURS, str(base), str(tuned), str(root / f"o{i}d"), "1"))
            res["norms"].append(run(OURS, str(base), str(tuned), str(root / f"o{i}n"), "0"))
            res["naive"].append(run(NAIVE, str(base), str(tuned), "1"))
            res["naive-norms"].append(run(NAIVE, str(base), str(tuned), "0"))
        med = {k: (statistics.median(t for t, _, _ in v), max(m for _, m, _ in v)) for k, v in res.items()}
        stream = {k: statistics.median(x for _, _, x in res[k]) for k in ("default", "norms")}
        floor = med["floor"][0]
        print(f"{'row':<34}{'ours s':>8}{'baseline s':>11}{'ratio':>7}{'goal':>7}{'vs floor':>9}{'peak MB':>9}"
              f"{'base MB':>9}")
        for label, ours, naive in (("locate default (norms+dist+maps)", "default", "naive"),
                                   ("locate --no-distribution", "norms", "naive-norms")):
            t, m = med[ours]
            tn, mn = med[naive]
            print(f"{label:<34}{t:8.2f}{tn:11.2f}{tn / t:6.2f}x{'>=3x':>7}{t / floor:8.2f}x{m / 2**20:9.0f}"
                  f"{mn / 2**20:9.0f}")
        for k in ("default", "norms"):
            print(f"{'  of which the tensor pass (' + k + ')':<34}{stream[k]:8.2f}{'':>11}{'':>7}{'':>7}"
                  f"{stream[k] / floor:8.2f}x   (the rest: CSV, JSON, heatmap PNGs)")
        print(f"{'floor (read+upcast+sum, both)':<34}{floor:8.2f}{'':>11}{'':>7}{'':>7}{1.0:8.2f}x"
              f"{med['floor'][1] / 2**20:9.0f}")
        print(f"[full] goals: default within 2x of the floor: "
              f"{'met' if med['default'][0] <= 2 * floor else 'NOT met'}; >=3x the from_pretrained baseline: "
              f"{'met' if med['naive'][0] >= 3 * med['default'][0] else 'NOT met'}; RSS budget 1.5 x largest + "
              f"400 MB = {(1.5 * largest + 400e6) / 2**20:.0f} MiB: "
              f"{'met' if med['default'][1] <= 1.5 * largest + 400e6 else 'NOT met'}")
        load = os.getloadavg()[0]
        for label, ours, naive in (("locate default", "default", "naive"),
                                   ("locate --no-distribution", "norms", "naive-norms")):
            t, m = med[ours]
            tn, mn = med[naive]
            bench_line({"row": label, "unit": "s", "ours": t, "baseline": tn, "ratio": tn / t, "goal": ">=3x",
                        "met": tn / t >= 3, "peak_mib": m / 2**20, "baseline_peak_mib": mn / 2**20,
                        "note": f"vs from_pretrained; {t / floor:.2f}x the floor; 2x{total / 1e9:.2f} GB bf16; "
                                f"load {load:.1f}"})
        t, m = med["default"]
        bench_line({"row": "locate default vs floor", "unit": "s", "ours": t, "baseline": floor, "ratio": floor / t,
                    "goal": "<=2x floor", "met": t <= 2 * floor, "peak_mib": m / 2**20,
                    "baseline_peak_mib": med["floor"][1] / 2**20,
                    "note": f"{t / floor:.2f}x the floor (ratio = floor/ours); whole command incl. files+figures "
                            f"({t - stream['default']:.2f} s); floor = read+upcast+sum of both files, same workers"})
        bench_line({"row": "locate pass vs floor", "unit": "s", "ours": stream["default"], "baseline": floor,
                    "ratio": floor / stream["default"], "goal": "<=2x floor", "met": stream["default"] <= 2 * floor,
                    "peak_mib": m / 2**20, "baseline_peak_mib": med["floor"][1] / 2**20,
                    "note": f"{stream['default'] / floor:.2f}x the floor: the default's tensor pass (norms + sampled "
                            f"distributions); --no-distribution's {stream['norms'] / floor:.2f}x"})
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_large(gb: float, repeats: int) -> None:
    """The whole default command vs the floor on a larger pair: does the fixed figure cost amortise?"""
    root = Path(tempfile.mkdtemp(prefix="affectlens-bench-"))
    try:
        base, tuned, _, total = warm_pair(root, gb)
        floor, ours = [], []
        for i in range(repeats):
            floor.append(run(FLOOR, str(base), str(tuned)))
            ours.append(run(OURS, str(base), str(tuned), str(root / f"o{i}"), "1"))
        fl, t = statistics.median(x[0] for x in floor), statistics.median(x[0] for x in ours)
        stream = statistics.median(x[2] for x in ours)
        peak = max(x[1] for x in ours)
        print(f"[large] pair 2 x {total / 1e9:.2f} GB bf16: locate default {t:.2f} s (pass {stream:.2f} s), "
              f"floor {fl:.2f} s: {t / fl:.2f}x the floor (pass {stream / fl:.2f}x), peak {peak / 2**20:.0f} MiB")
        bench_line({"row": "locate default vs floor, large", "unit": "s", "ours": t, "baseline": fl,
                    "ratio": fl / t, "goal": "<=2x floor", "met": t <= 2 * fl, "peak_mib": peak / 2**20,
                    "baseline_peak_mib": max(x[1] for x in floor) / 2**20,
                    "note": f"{t / fl:.2f}x the floor, whole command, 2x{total / 1e9:.2f} GB bf16; "
                            f"pass {stream / fl:.2f}x"})
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_line(row: dict) -> None:
    """One machine-readable result line for run_all.py (format documented there)."""
    print("BENCH " + json.dumps(row), flush=True)


def bench_lora(layers: int) -> None:
    import torch

    from affectlens.weights.lora import lora_delta_norm

    h, f, kv, r = 3584, 18944, 512, 16
    shapes = {"q": (h, h), "k": (kv, h), "v": (kv, h), "o": (h, h), "gate": (f, h), "up": (f, h), "down": (h, f)}
    g = torch.Generator().manual_seed(0)
    mats = [(torch.randn(r, i, generator=g) * 0.01, torch.randn(o, r, generator=g) * 0.01)
            for _ in range(layers) for (o, i) in shapes.values()]
    s = 2.0
    t = time.perf_counter()
    gram = [lora_delta_norm(A, B, s) for A, B in mats]
    t_gram = time.perf_counter() - t
    t = time.perf_counter()
    formed = [float(torch.linalg.vector_norm(s * (B @ A))) for A, B in mats]
    t_form = time.perf_counter() - t
    ref = [float(torch.linalg.vector_norm(s * (B.double() @ A.double()))) for A, B in mats]
    err_gram = max(abs(a - b) / b for a, b in zip(gram, ref, strict=True))
    err_form = max(abs(a - b) / b for a, b in zip(formed, ref, strict=True))
    print(f"[lora] {layers} layers x 7 modules, 7B shapes, r={r}")
    print(f"[lora] forming BA (float32)  : {t_form:8.3f} s  max rel. error {err_form:.1e}")
    print(f"[lora] r x r Grams (float64) : {t_gram:8.3f} s  max rel. error {err_gram:.1e}"
          f"  -> {t_form / t_gram:.0f}x faster; goals 100x / 1e-9: "
          f"{'met' if t_form / t_gram >= 100 and err_gram <= 1e-9 else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="size of each synthetic checkpoint")
    ap.add_argument("--layers-lora", type=int, default=4)
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--gb-large", type=float, default=0.0, help="also measure a pair of this size vs the floor")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    bench_lora(args.layers_lora)
    if not args.skip_full:
        bench_full(args.gb, args.repeats)
    if args.gb_large > 0:
        bench_large(args.gb_large, max(1, args.repeats - 1))


if __name__ == "__main__":
    main()
