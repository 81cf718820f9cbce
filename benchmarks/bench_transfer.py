"""Transfer of gate_proj on a synthetic >=1 GB bf16 sharded pair: affectlens vs "load both, copy".

    flock /tmp/affectlens-heavy.lock python benchmarks/bench_transfer.py [--layers 12 --hidden 2048]

The baseline is what mergekit-style scripts do: ``load_file`` every shard of
BASE and DONOR, overwrite the selected tensors, ``save_file`` the shards (with
safetensors >= 0.6 ``load_file`` is mmap-backed, so this baseline is already
zero-copy on a warm page cache). A second reference is the transformers way:
``from_pretrained`` both models, copy the parameters, ``save_pretrained``.
affectlens copies every tensor's bytes in-kernel; in this common case
(safetensors, full donor, one dtype) it never imports torch (the child reports
whether it did). Each side runs in its own subprocess (so imports and peak RSS are
its own; RSS via ``getrusage(RUSAGE_SELF)`` inside the child; the parent stays
free of torch because a child inherits its parent's RSS high-water mark), ``--repeats`` times,
alternating, on a warm page cache (inputs read just before) and a cold one (their pages dropped
with posix_fadvise DONTNEED just before); medians are compared. affectlens is measured in its steady
state (``FiniteMemo`` filled by an untimed run: the base's copied tensors are not re-read for the finite
check) and as a first run (memo off: every copied tensor read and checked), both printed; the BENCH
line (see run_all.py) carries the steady state and quotes the first run. Goal: >= 2x faster on both, peak RSS
<= 1.5 x largest tensor + 400 MB. The pair is generated in a temp dir with
affectlens' own writer and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD_OURS = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from affectlens.interventions.transfer import transfer
t1 = time.perf_counter()
transfer(sys.argv[1], sys.argv[2], "gate_proj", sys.argv[3], max_shard_size=sys.argv[4], echo=lambda s: None)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "work_s": t2 - t1, "torch": "torch" in sys.modules,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CHILD_BASELINE = r"""
import json, os, re, resource, sys, time
t0 = time.perf_counter()
import torch
from safetensors.torch import load_file, save_file
t1 = time.perf_counter()
base, donor, out, max_bytes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def load_all(d):
    sd = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(d, f)))
    return sd
b, dn = load_all(base), load_all(donor)
for k in b:
    if re.search(r"\.mlp\.gate_proj\.", k):
        b[k] = dn[k]
os.makedirs(out, exist_ok=True)
shards, cur, size = [], {}, 0
for k, v in b.items():
    nb = v.numel() * v.element_size()
    if cur and size + nb > max_bytes:
        shards.append(cur); cur, size = {}, 0
    cur[k] = v; size += nb
shards.append(cur)
wm = {}
for i, s in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(s, os.path.join(out, name), metadata={"format": "pt"})
    wm.update({k: name for k in s})
json.dump({"metadata": {}, "weight_map": wm}, open(os.path.join(out, "model.safetensors.index.json"), "w"))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "work_s": t2 - t1,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CHILD_HF = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM
t1 = time.perf_counter()
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
donor = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.bfloat16)
dsd = donor.state_dict()
with torch.no_grad():
    for name, p in base.named_parameters():
        if ".mlp.gate_proj." in name:
            p.copy_(dsd[name])
base.save_pretrained(sys.argv[3], max_shard_size=int(sys.argv[4]))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "work_s": t2 - t1,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_pair(root: Path, layers: int, hidden: int, ffn: int, vocab: int, shard_bytes: int) -> int:
    """Write BASE and DONOR (Llama layout, bf16, sharded) with affectlens' writer; return largest tensor bytes."""
    import torch

    from affectlens.weights.writer import ShardedWriter

    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (hidden,)), (p + "post_attention_layernorm.weight", (hidden,))]
        shapes += [(p + f"self_attn.{m}.weight", (hidden, hidden)) for m in ("q_proj", "k_proj", "v_proj", "o_proj")]
        shapes += [(p + "mlp.gate_proj.weight", (ffn, hidden)), (p + "mlp.up_proj.weight", (ffn, hidden)),
                   (p + "mlp.down_proj.weight", (hidden, ffn))]
    shapes += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": hidden // 128,
              "num_key_value_heads": hidden // 128, "vocab_size": vocab, "torch_dtype": "bfloat16",
              "tie_word_embeddings": False}
    for name, seed in (("base", 0), ("donor", 1)):
        d = root / name
        g = torch.Generator().manual_seed(seed)
        with ShardedWriter(d, shard_bytes, plan=[(n, s, torch.bfloat16) for n, s in shapes]) as w:
            for n, s in shapes:
                w.add(n, (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16))
        (d / "config.json").write_text(json.dumps(config))
    return max(2 * torch.Size(s).numel() for _, s in shapes)


def set_cache(files: list[Path], state: str) -> None:
    """Warm: read every input file through the page cache. Cold: drop their pages (POSIX_FADV_DONTNEED)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            if state == "cold":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 1 << 24):
                    pass
        finally:
            os.close(fd)


def run_child(code: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       env=None if env is None else {**os.environ, **env})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"child failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["wall_s"] = wall
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--shard-bytes", type=int, default=500_000_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--hf", action="store_true", help="also time from_pretrained x2 + save_pretrained")
    ap.add_argument("--tmp", default=None, help="where to put the synthetic pair (default: system temp)")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="affectlens-bench-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        # Generated in a child: a forked child inherits the parent's RSS high-water mark, so the
        # parent must stay small (no torch) until every measurement is done.
        gen = subprocess.run(
            [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import bench_transfer as b; "
             "from pathlib import Path; print(b.make_pair(Path(sys.argv[2]), *map(int, sys.argv[3:])))",
             str(Path(__file__).resolve().parent), str(root), str(args.layers), str(args.hidden), str(args.ffn),
             str(args.vocab), str(args.shard_bytes)], capture_output=True, text=True)
        if gen.returncode != 0:
            raise SystemExit(f"generating the pair failed:\n{gen.stderr[-3000:]}")
        largest = int(gen.stdout.strip().splitlines()[-1])
        size = sum(f.stat().st_size for f in (root / "base").glob("*.safetensors"))
        print(f"synthetic pair: 2 x {size / 1e9:.2f} GB bf16, {len(list((root / 'base').glob('*.safetensors')))} "
              f"shards each, largest tensor {largest / 1e6:.0f} MB (generated in {time.perf_counter() - t0:.1f} s)")
        a = [str(root / "base"), str(root / "donor")]
        inputs = [f for d in a for f in sorted(Path(d).iterdir()) if f.suffix == ".safetensors"]
        # affectlens remembers which tensors of a file version it has checked finite (FiniteMemo, in its
        # cache): "affectlens" is the steady state of repeated transfers from one base (memo filled by an
        # untimed run first), "first run" has the memo off, so every copied tensor is read and checked.
        memo = {"AFFECTLENS_CACHE": str(root / "cache")}
        sides = [("baseline", CHILD_BASELINE, None), ("affectlens", CHILD_OURS, memo),
                 ("first run", CHILD_OURS, {**memo, "AFFECTLENS_NO_FINITE_MEMO": "1"})]
        if args.hf:
            sides.append(("hf-models", CHILD_HF, None))
        time.sleep(max(0.0, 2.5 - (time.time() - max(f.stat().st_ctime for f in inputs))))  # past the racy window
        run_child(CHILD_OURS, [*a, str(root / "out-warmup"), str(args.shard_bytes)], memo)
        shutil.rmtree(root / "out-warmup")
        results: dict[tuple[str, str], list[dict]] = {}
        for rep in range(args.repeats):
            for cache in ("warm", "cold"):
                for label, code, env in sides:
                    out = root / f"out-{label.replace(' ', '-')}"
                    shutil.rmtree(out, ignore_errors=True)
                    os.sync()  # flush earlier writes so neither side pays for the other's writeback
                    set_cache(inputs, cache)
                    r = run_child(code, [*a, str(out), str(args.shard_bytes)], env)
                    os.sync()  # the output is on disk before the next run (its writeback is this run's)
                    results.setdefault((label, cache), []).append(r)
                    torch_note = "" if "torch" not in r else f", torch imported: {r['torch']}"
                    print(f"  run {rep + 1} {cache} {label:<10}: wall {r['wall_s']:6.2f} s (work {r['work_s']:6.2f} s, "
                          f"imports {r['import_s']:.2f} s), peak RSS {r['maxrss_mb']:7.0f} MB{torch_note}; "
                          f"load {os.getloadavg()[0]:.1f}")
        # Same bytes out: every tensor of both outputs identical.
        from safetensors import safe_open

        def tensors(d: Path) -> dict:
            out = {}
            for f in sorted(d.glob("*.safetensors")):
                with safe_open(str(f), "pt") as h:
                    for k in h.keys():  # noqa: SIM118
                        out[k] = (f, k)
            return out

        ta, tb = tensors(root / "out-affectlens"), tensors(root / "out-baseline")
        assert set(ta) == set(tb), "outputs hold different tensor names"
        import torch

        same = 0
        for k in ta:
            with safe_open(str(ta[k][0]), "pt") as h1, safe_open(str(tb[k][0]), "pt") as h2:
                same += torch.equal(h1.get_tensor(k), h2.get_tensor(k))
        print(f"outputs identical: {same}/{len(ta)} tensors")

        budget = 1.5 * largest / 2**20 + 400
        print()
        print(f"{'row':<22}{'ours s':>8}{'baseline s':>11}{'ratio':>7}{'goal':>6}{'ours MB':>9}{'base MB':>9}"
              f"{'work ours':>10}{'work base':>10}{'ratio':>7}")
        for cache in ("warm", "cold"):
            med = {lab: {k: statistics.median(r[k] for r in results[(lab, cache)])
                         for k in ("wall_s", "work_s", "maxrss_mb")} for lab, _, _ in sides}
            ours, base = med["affectlens"], med["baseline"]
            print(f"{'transfer, ' + cache + ' cache':<22}{ours['wall_s']:8.2f}{base['wall_s']:11.2f}"
                  f"{base['wall_s'] / ours['wall_s']:6.2f}x{'>=2x':>6}{ours['maxrss_mb']:9.0f}{base['maxrss_mb']:9.0f}"
                  f"{ours['work_s']:10.2f}{base['work_s']:10.2f}{base['work_s'] / ours['work_s']:6.2f}x")
            first = med["first run"]
            print(f"{'  first run (no memo)':<22}{first['wall_s']:8.2f}{base['wall_s']:11.2f}"
                  f"{base['wall_s'] / first['wall_s']:6.2f}x{'':>6}{first['maxrss_mb']:9.0f}{'':>9}"
                  f"{first['work_s']:10.2f}{base['work_s']:10.2f}{base['work_s'] / first['work_s']:6.2f}x")
            print("BENCH " + json.dumps({
                "row": f"transfer, {cache} cache", "unit": "s", "ours": ours["wall_s"], "baseline": base["wall_s"],
                "ratio": base["wall_s"] / ours["wall_s"], "goal": ">=2x", "met": base["wall_s"] >= 2 * ours["wall_s"],
                "peak_mib": ours["maxrss_mb"], "baseline_peak_mib": base["maxrss_mb"],
                "note": f"after imports {base['work_s'] / ours['work_s']:.2f}x; first run (no memo) "
                        f"{base['wall_s'] / first['wall_s']:.2f}x wall, {base['work_s'] / first['work_s']:.2f}x after "
                        f"imports; 2x{size / 1e9:.2f} GB bf16; load {os.getloadavg()[0]:.1f}"}), flush=True)
            if args.hf:
                hf = med["hf-models"]
                print(f"{'  vs from_pretrained':<22}{'':>8}{hf['wall_s']:11.2f}{hf['wall_s'] / ours['wall_s']:6.2f}x")
        print("wall: the whole child, `import torch` included (both sides pay it); work: after the imports")
        print(f"peak RSS budget 1.5 x largest tensor + 400 MB = {budget:.0f} MB; medians of {args.repeats} "
              "interleaved rounds, wall time of each child (imports included)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
