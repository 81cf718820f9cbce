"""Emotional circuits on SmolLM2-135M-Instruct with the bundled contrast pairs.

    flock /tmp/affectlens-heavy.lock python benchmarks/bench_circuits.py [--out DIR] [--quick] [--sweep-only]

Prints and writes (DIR, default /tmp/affectlens-bench-circuits):
* the layer-sweep row: the per-layer loop (one steered scoring run per
  (emotion, layer), the pre-batching implementation) vs the batched sweep, two
  emotions x all 30 layers x 5 prompts, base probabilities included on both
  sides, each side in its own subprocess (paired, interleaved, median time;
  peak RSS = the subprocess's VmHWM), with the largest probability difference;
* steering vectors (pairs passing --min-score per emotion);
* the layer profile (critical layer) and the time per layer sweep;
* head attribution: top heads per emotion, specific/general heads, overlap by depth;
* attribution patching vs exact patching on one layer: rank agreement and speed ratio;
* candidate interventions (VEE head amplification, ENA neuron amplification, both)
  chosen on the bundled *train* split, the best one evaluated on the bundled
  emotion test split and GoEmotions-Ekman test (first 500) — change in accuracy
  and emotional-hallucination rate with paired bootstrap 95% CIs, perplexity guard.
Baselines are measured in the same run (no intervention; exact patching).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/affectlens-bench-circuits")
    ap.add_argument("--quick", action="store_true", help="fewer prompts (smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=1.0, help="steering strength, unit scale (× mean ‖h_l‖)")
    ap.add_argument("--sweep-only", action="store_true", help="only the layer-sweep row (~10 min on 2 busy cores)")
    ap.add_argument("--sweep-emotions", type=int, default=2, help="emotions in the layer-sweep row")
    ap.add_argument("--sweep-repeats", type=int, default=2, help="paired runs per side in the layer-sweep row")
    ap.add_argument("--sweep-child", nargs=2, metavar=("MODE", "VECTORS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sweep_child:
        return sweep_child(args)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("AFFECTLENS_NO_PROGRESS", "1")

    from affectlens import plots
    from affectlens.circuits.api import head_maps
    from affectlens.circuits.heads import (
        classify_heads,
        exact_patch,
        head_attribution,
        make_metric,
        overlap_by_layer,
        top_heads,
    )
    from affectlens.circuits.intervene import Intervention, run_interventions
    from affectlens.circuits.layers import layer_profile, normalised_mean
    from affectlens.circuits.neurons import neuron_attribution
    from affectlens.circuits.pairs import encoder_for, load_pairs
    from affectlens.circuits.vectors import compute_vectors
    from affectlens.models.loading import load_model
    from affectlens.tasks.corpus import bundled_path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    k_layers = 3 if args.quick else 5  # neutral prompts per emotion in the layer sweep
    k_heads = 3 if args.quick else 8  # pairs per emotion for head/neuron attribution
    limit = 60 if args.quick else 500
    sel_limit = 40 if args.quick else 84

    t0 = time.perf_counter()
    model, tok = load_model("smollm2")
    pairs = load_pairs(None)
    enc = encoder_for(tok, pairs)
    report: dict = {"model": "SmolLM2-135M-Instruct", "pairs": len(pairs)}

    t = time.perf_counter()
    if args.sweep_only:  # the row needs a vector per layer, not the best one: 6 pairs per emotion
        few = [p for e in sorted({q.label for q in pairs}) for p in [q for q in pairs if q.label == e][:6]]
        sv = compute_vectors(model, enc, few, min_score=0)
    else:  # the CLI defaults: min-score 0.5, falling back to the best pairs above chance per emotion
        sv = compute_vectors(model, enc, pairs, min_score=0.5)
    sel = sv.options.get("selection", {})
    report["vectors"] = {"seconds": time.perf_counter() - t, "used": sv.counts, "offered": sv.totals,
                         "selection": sel}
    print(f"vectors: {time.perf_counter() - t:.1f} s; pairs passing min-score {sv.options['min_score']:g} / used: "
          + ", ".join(f"{e} {sel[e]['passing'] if e in sel else '-'}/{sv.totals[e]} / {sv.counts[e]}"
                      + (" (fallback)" if sel.get(e, {}).get("rule") == "fallback" else "") for e in sv.labels))
    sv.save(out / "vectors.safetensors")
    report["layer_sweep"] = sweep_row(args, out / "vectors.safetensors", sv.labels[:args.sweep_emotions], k_layers)
    if args.sweep_only:
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        return 0

    prof = layer_profile(model, enc, pairs, sv, alpha=args.alpha, scale="unit", max_pairs=k_layers)
    n_layers = sv.num_layers
    mean = normalised_mean(prof.rows, sv.labels, range(n_layers))
    plots.save(plots.layer_profile(list(range(n_layers)), {e: prof.effects(e) for e in sv.labels}, mean,
                                   prof.critical["mean"]), out / "layer_profile.png")
    report["layers"] = {"critical": prof.critical, "mean_profile": mean,
                        "seconds_per_sweep": prof.seconds_per_sweep, "prompts_per_sweep": k_layers}
    print(f"layer profile (α={args.alpha:g}, unit scale, {k_layers} neutral prompts/emotion): critical layer "
          f"{prof.critical['mean']} ({', '.join(f'{e} {la}' for e, la in prof.critical.items() if e != 'mean')})")
    print("  mean of per-emotion profiles (each scaled to max |effect| 1), by layer: "
          + " ".join(f"{x:+.2f}" for x in mean))
    for e in sv.labels:
        eff = prof.effects(e)
        print(f"  {e:>9}: base p={prof.rows[[r['emotion'] for r in prof.rows].index(e)]['base']:.3f}, "
              f"max relative change {max(eff):+.2f} at layer {eff.index(max(eff))}")
    print(f"  time per layer sweep ({n_layers} layers x {k_layers} prompts, one emotion): "
          f"{prof.seconds_per_sweep:.1f} s")

    t = time.perf_counter()
    heads = head_attribution(model, enc, pairs, sv, target_layer=n_layers - 1, max_pairs=k_heads)
    t_heads = time.perf_counter() - t
    tops = top_heads(heads, 10)
    kinds = classify_heads(tops)
    overlap = overlap_by_layer(tops, n_layers)
    plots.save(plots.head_scores(head_maps(heads), f"head score (target layer {heads.target_layer})"),
               out / "heads.png")
    plots.save(plots.head_overlap([o["layer"] for o in overlap], [o["jaccard_pairwise"] for o in overlap],
                                  [o["jaccard_all"] for o in overlap]), out / "overlap.png")
    thirds = [range(0, n_layers // 3), range(n_layers // 3, 2 * n_layers // 3), range(2 * n_layers // 3, n_layers)]
    depth = []
    for rng in thirds:
        sets = {e: {h for h in s if h[0] in rng} for e, s in tops.items()}
        js = []
        emos = sorted(sets)
        for i in range(len(emos)):
            for j in range(i + 1, len(emos)):
                u = sets[emos[i]] | sets[emos[j]]
                if u:
                    js.append(len(sets[emos[i]] & sets[emos[j]]) / len(u))
        depth.append(sum(js) / len(js) if js else float("nan"))
    report["heads"] = {"seconds": t_heads, "top10": {e: sorted(f"L{a}.H{b}" for a, b in s) for e, s in tops.items()},
                       "general": sorted(f"L{a}.H{b}" for (a, b), k in kinds.items() if k == "general"),
                       "n_specific": sum(k == "specific" for k in kinds.values()),
                       "jaccard_by_third": depth, "overlap": overlap}
    print(f"heads: attribution for {n_layers}x{heads.n_heads} heads, {k_heads} pairs/emotion: {t_heads:.1f} s")
    for e, s in tops.items():
        print(f"  {e:>9}: {' '.join(f'L{a}.H{b}' for a, b in sorted(s))}")
    print(f"  general heads (top-10 of every emotion): {report['heads']['general'] or 'none'}; "
          f"specific heads: {report['heads']['n_specific']}")
    print("  mean pairwise Jaccard of top-10 sets by depth (early/mid/deep thirds): "
          + " / ".join(f"{x:.2f}" for x in depth))

    # attribution vs exact patching, one pair, one mid layer: agreement and speed (baseline = exact)
    pair = next(p for p in pairs if p.label == sv.labels[0])
    layer = n_layers // 2
    met = make_metric("proj", sv, pair.label, n_layers - 1, enc)
    t = time.perf_counter()
    one = head_attribution(model, enc, [pair], sv, target_layer=n_layers - 1, emotions=[pair.label])
    t_attr = time.perf_counter() - t
    t = time.perf_counter()
    exact = [exact_patch(model, enc, pair, met, layer, [h], "heads") for h in range(heads.n_heads)]
    t_exact = (time.perf_counter() - t) * n_layers  # all layers, extrapolated from one
    est = [-r["drop"] for r in one.rows if r["layer"] == layer]
    ra = torch.tensor(est).argsort().argsort().double()
    rb = torch.tensor(exact).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    rho = float(ra @ rb / (ra.norm() * rb.norm()))
    report["attribution_vs_exact"] = {"layer": layer, "spearman": rho, "attr_seconds_all_layers": t_attr,
                                      "exact_seconds_all_layers_est": t_exact, "speedup": t_exact / t_attr}
    print(f"attribution vs exact head patching (layer {layer}, one pair): Spearman {rho:.2f}; "
          f"all-heads cost {t_attr:.1f} s vs exact ≈{t_exact:.1f} s (×{t_exact / t_attr:.1f} faster)")

    t = time.perf_counter()
    neurons = neuron_attribution(model, enc, pairs, sv, target_layer=n_layers - 1, top_k=30,
                                 max_pairs=k_heads)
    agg: dict[tuple[int, int], float] = {}
    for r in neurons.rows:
        agg[(r["layer"], r["neuron"])] = agg.get((r["layer"], r["neuron"]), 0.0) + r["score"]
    top_neurons = sorted(agg, key=lambda k: -agg[k])[:20]
    print(f"neurons: {time.perf_counter() - t:.1f} s; top-20 (summed over emotions) in layers "
          f"{sorted({la for la, _ in top_neurons})}")

    agg_h: dict[tuple[int, int], float] = {}
    for r in heads.rows:
        agg_h[(r["layer"], r["head"])] = agg_h.get((r["layer"], r["head"]), 0.0) + r["score"]
    vee = sorted(agg_h, key=lambda k: -agg_h[k])[:10]
    vee_heads: dict[int, list[int]] = {}
    for la, h in vee:
        vee_heads.setdefault(la, []).append(h)
    ena: dict[int, list[int]] = {}
    for la, n in top_neurons:
        ena.setdefault(la, []).append(n)
    split = prof.critical["mean"]
    candidates = {
        "VEE β=2": Intervention(heads=vee_heads, beta=2.0, split_layer=split),
        "VEE β=4": Intervention(heads=vee_heads, beta=4.0, split_layer=split),
        "ENA γ=2": Intervention(neurons=ena, gamma=2.0),
        "VEE β=2 + ENA γ=2": Intervention(heads=vee_heads, beta=2.0, split_layer=split, neurons=ena, gamma=2.0),
    }
    t = time.perf_counter()
    sel = run_interventions(model, tok, [f"jsonl:{bundled_path('emotion_train')}"], candidates, limit=sel_limit,
                            n_boot=200)
    print(f"selection on bundled train split (first {sel_limit}), {time.perf_counter() - t:.1f} s:")
    score = {}
    for k, r in sel.items():
        (tr,) = r["tasks"].values()
        score[k] = tr["accuracy"]["change"] - tr["hallucination"]["change"]
        print(f"  {k:<20} Δacc {tr['accuracy']['change']:+.3f}  Δhalluc {tr['hallucination']['change']:+.3f}")
    best = max(score, key=lambda k: score[k])
    print(f"best: {best} ({candidates[best].describe()})")

    goem = SHARED / "data" / "goemotions" / "ekman"
    tasks = ["emotion", f"goemotions:{goem},split=test"]
    texts = [p.neutral for p in pairs][:40]
    t = time.perf_counter()
    final = run_interventions(model, tok, tasks, {best: candidates[best]}, limit=limit, n_boot=1000,
                              ppl_texts=texts)[best]
    print(f"evaluation ({time.perf_counter() - t:.1f} s), first {limit} per task:")
    for name, r in final["tasks"].items():
        r.pop("predictions")
        for m in ("accuracy", "hallucination"):
            x = r[m]
            print(f"  {name:<34} {m:<13} {x['before']:.3f} -> {x['after']:.3f}  "
                  f"Δ {x['change']:+.3f} [{x['ci_low']:+.3f}, {x['ci_high']:+.3f}]  n={r['n']}")
    p = final["perplexity"]
    print(f"  perplexity guard (neutral pair texts): {p['before']:.2f} -> {p['after']:.2f} (×{p['ratio']:.3f})")
    report["selection"] = {k: {"accuracy": list(r["tasks"].values())[0]["accuracy"],
                               "hallucination": list(r["tasks"].values())[0]["hallucination"]}
                           for k, r in sel.items()}
    report["best"] = {"name": best, "describe": candidates[best].describe(), "result": final}
    report["seconds_total"] = time.perf_counter() - t0
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"total {report['seconds_total']:.0f} s -> {out}")
    return 0


def sweep_child(args: argparse.Namespace) -> int:
    """One side of the layer-sweep row: prints seconds and the steered probabilities as JSON.

    Both sides do what ``layer_profile`` does per emotion: the unsteered base
    probabilities, then every layer's steered ones — the loop one steered
    scoring run per (emotion, layer), the batched sweep all variants at once.
    """
    from affectlens.circuits.layers import per_layer_probs
    from affectlens.circuits.pairs import answer_labels, emotion_probs, encoder_for, load_pairs
    from affectlens.circuits.sweep import sweep_probs
    from affectlens.circuits.vectors import SteeringVectors
    from affectlens.models.loading import load_model

    mode, vec_path = args.sweep_child
    model, tok = load_model("smollm2")
    pairs = load_pairs(None)
    enc = encoder_for(tok, pairs)
    sv = SteeringVectors.load(vec_path)
    labels = answer_labels(pairs)
    emotions = os.environ["BENCH_SWEEP_EMOTIONS"].split(",")
    layers = list(range(sv.num_layers))
    k = int(os.environ["BENCH_SWEEP_K"])
    stim = {e: [p.neutral for p in pairs if p.label == e][:k] for e in emotions}
    t = time.perf_counter()
    if mode == "loop":
        base = {e: emotion_probs(model, enc, stim[e], labels) for e in emotions}
        got = {e: per_layer_probs(model, enc, stim[e], [None] * k, labels, sv, e, args.alpha, "unit", layers)
               for e in emotions}
    else:  # the base probabilities come out of the sweep's shared base runs
        base = {}
        got = sweep_probs(model, enc, stim, labels, sv, args.alpha, "unit", layers, base_out=base) or {}
    for e in got:
        got[e][-1] = base[e]  # compared like a layer
    secs = time.perf_counter() - t
    probs = {e: {la: got[e][la].tolist() for la in got[e]} for e in got}
    status = Path("/proc/self/status").read_text().splitlines()
    hwm = [ln for ln in status if ln.startswith("VmHWM")][0].split()[1]
    print("RESULT " + json.dumps({"seconds": secs, "vmhwm_mib": int(hwm) / 1024, "probs": probs}))
    return 0


def sweep_row(args: argparse.Namespace, vec_path: Path, emotions: list[str], k: int) -> dict:
    """Per-layer loop (baseline) vs batched sweep, interleaved subprocesses; median seconds."""
    import subprocess

    env = {**os.environ, "BENCH_SWEEP_EMOTIONS": ",".join(emotions), "BENCH_SWEEP_K": str(k),
           "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    runs: dict[str, list[dict]] = {"loop": [], "batched": []}
    for _ in range(args.sweep_repeats):
        for mode in ("loop", "batched"):
            cmd = [sys.executable, __file__, "--alpha", str(args.alpha), "--threads", str(args.threads),
                   "--sweep-child", mode, str(vec_path)]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
            runs[mode].append(json.loads(line[7:]))

    def med(xs: list[float]) -> float:
        xs = sorted(xs)
        return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2

    t_loop = med([r["seconds"] for r in runs["loop"]])
    t_new = med([r["seconds"] for r in runs["batched"]])
    a, b = runs["loop"][0]["probs"], runs["batched"][0]["probs"]
    diff = max(abs(x - y) for e in a for la in a[e] if la in b[e]
               for ra, rb in zip(a[e][la], b[e][la], strict=True) for x, y in zip(ra, rb, strict=True))
    mem = {m: max(r["vmhwm_mib"] for r in runs[m]) for m in runs}
    row = {"emotions": emotions, "layers": 30, "prompts": k, "loop_seconds": t_loop, "batched_seconds": t_new,
           "speedup": t_loop / t_new, "goal": 5.0, "max_abs_prob_diff": diff, "peak_rss_mib": mem,
           "runs": {m: [r["seconds"] for r in runs[m]] for m in runs}}
    print(f"layer sweep ({len(emotions)} emotion(s) x 30 layers x {k} prompts, unit scale, SmolLM2): "
          f"batched {t_new:.1f} s vs per-layer loop {t_loop:.1f} s (baseline, same run) = x{t_loop / t_new:.1f} "
          f"(goal >= x5); peak RSS {mem['batched']:.0f} vs {mem['loop']:.0f} MiB; "
          f"max |p diff| {diff:.1e}; medians of {args.sweep_repeats} interleaved runs")
    print("BENCH " + json.dumps({  # run_all.py's table row
        "row": "layer sweep", "unit": "s", "ours": t_new, "baseline": t_loop, "ratio": t_loop / t_new,
        "goal": ">=5x", "met": t_loop / t_new >= 5, "peak_mib": mem["batched"], "baseline_peak_mib": mem["loop"],
        "note": f"{len(emotions)} emotions x 30 layers x {k} prompts vs the per-layer loop; max |p diff| {diff:.1e}; "
                f"load {os.getloadavg()[0]:.1f}"}), flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main())
