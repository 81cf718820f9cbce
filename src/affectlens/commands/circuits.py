"""``affectlens circuits {vectors,layers,heads,neurons,intervene}``: emotional circuits."""

from __future__ import annotations

import argparse

from ..vocab import TASK_SYNTAX
from . import options as o

SCALES = ("raw", "unit", "rms")  # how an injected steering vector is scaled


def _common(p: argparse.ArgumentParser, pairs: bool = True) -> None:
    o.model(p)
    p.add_argument("--adapter", default=None, help="PEFT adapter dir applied on MODEL")
    if pairs:
        p.add_argument("--pairs", default=None,
                       help="contrast pairs JSONL {emotional, neutral, label[, query, image_*]} "
                            "(default: the bundled pairs)")
    o.device(p)
    o.dtype(p)
    o.seed(p)
    o.run_dir(p)


def _vector_opts(p: argparse.ArgumentParser, reuse: bool = True) -> None:
    if reuse:
        p.add_argument("--vectors", default=None,
                       help="vectors from `circuits vectors` (dir or .safetensors), or a steering-vectors/"
                            "lm-eval .pt file (default: computed from the pairs)")
        p.add_argument("--vectors-label", default=None,
                       help="emotion name for a single-vector .pt file (default: from the file)")
    o.add_number(p, "--min-score", o.number(0, 1), default=0.5,
                 help="keep pairs whose emotional side scores p(label) >= this (0 keeps all)")
    p.add_argument("--position", choices=["last", "mean"], default="last",
                   help="last prompt token, or mean from --from-token")
    o.add_number(p, "--from-token", o.integer(0), default=0, help="first token of the --position mean")
    p.add_argument("--centring", choices=["pair", "group", "global"], default="pair",
                   help="subtract the neutral side per pair, per emotion group, or over all pairs")
    o.add_number(p, "--denoise", o.number(0, 1, lo_open=True, hi_open=True), default=None,
                 help="project out neutral principal components explaining this variance share "
                      "(default: off)")


def _vec_kwargs(a: argparse.Namespace) -> dict:
    return {"vectors": getattr(a, "vectors", None), "vectors_label": getattr(a, "vectors_label", None),
            "min_score": a.min_score, "position": a.position, "from_token": a.from_token,
            "centring": a.centring, "denoise": a.denoise}


def _pair_limit(p: argparse.ArgumentParser) -> None:
    """``--limit`` (formerly ``--max-pairs``): pairs used per emotion."""
    o.renamed(p, "--max-pairs", o.limit(p, help="first N pairs per emotion (default: all)"))


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("circuits", help="emotion steering vectors, layer/head/neuron attribution, interventions",
                       description="Steering-vector causal attribution of emotion (Zhang et al., ICML 2026).")
    cs = c.add_subparsers(dest="circuits_command", metavar="STEP")
    c.set_defaults(func=lambda a: (c.print_help(), 2)[1])

    v = cs.add_parser("vectors", help="S_l^e = mean(h+ - h-) per emotion and layer -> vectors.safetensors")
    _common(v)
    _vector_opts(v, reuse=False)
    o.add_number(v, "--min-pairs", o.integer(0), default=5,
                 help="fewer pairs than this pass --min-score for an emotion: use its best-scoring "
                      "pairs above chance instead, noted in the output (0: no fallback)")
    v.add_argument("--export", default="", help="also write lm-eval,steering-vectors .pt files (default: none)")
    v.add_argument("--export-layers", default=None, help="layers for exported files, e.g. 8-12 (default: all)")
    o.add_number(v, "--coefficient", o.number(), default=1.0, help="lm-eval steering_coefficient")
    v.set_defaults(func=_vectors)

    la = cs.add_parser("layers", help="layer profile: inject α·S_l into neutral runs, relative change of p(e)",
                       description="Each emotion's finished rows are cached (keyed by the weights, prompts, "
                                   "vector and options): rerunning the same command after an interruption "
                                   "computes only the unfinished emotions. --force only lets OUT be replaced; "
                                   "cached emotions are reused (they are the same numbers).")
    _common(la)
    _vector_opts(la)
    o.add_number(la, "--alpha", o.number(), default=1.0, help="injection strength α")
    la.add_argument("--scale", choices=SCALES, default="raw",
                    help="raw α·S; unit α·Ŝ·mean‖h_l‖; rms α·Ŝ·‖h‖ per position")
    o.layers(la, help="layers to sweep, e.g. 0-11 (default: all)")
    o.emotions(la)
    _pair_limit(la)
    o.batch_size(la, 16)
    la.set_defaults(func=_layers)

    for name, helptext in (("heads", "head attribution (cosine + patching), specific vs general heads"),
                           ("neurons", "MLP neuron attribution (patching + direct effect)")):
        h = cs.add_parser(name, help=helptext)
        _common(h)
        _vector_opts(h)
        o.add_number(h, "--target-layer", o.integer(None), default=None,
                     help="layer l* whose projection ⟨h, Ŝ⟩ is the metric (default: last layer)")
        h.add_argument("--metric", choices=["proj", "score"], default="proj",
                       help="projection onto Ŝ at l*, or the label score p(e)")
        o.top_k(h, 10 if name == "heads" else 50, help=f"{name} kept per emotion")
        o.emotions(h)
        _pair_limit(h)
        o.batch_size(h, 8, help="prompts per forward+backward pass (a pair is two); the scores do not depend on it")
        h.set_defaults(func=_heads if name == "heads" else _neurons)

    i = cs.add_parser("intervene", help="evaluate with steering / attention / neuron amplification active",
                      description="Runs the evaluation harness before and with the intervention; reports "
                                  "the change in accuracy and emotional-hallucination rate with paired "
                                  "bootstrap CIs and a perplexity guard on neutral text.",
                      epilog=TASK_SYNTAX)
    _common(i, pairs=False)
    o.task(i)
    i.add_argument("--vectors", default=None,
                   help="vectors from `circuits vectors`, or a .pt file (needed by --steer)")
    i.add_argument("--vectors-label", default=None,
                   help="emotion name for a single-vector .pt file (default: from the file)")
    i.add_argument("--steer", action="append", default=[], metavar="E@L*A",
                   help="add α·S_L^E from the stimulus on, e.g. joy@12*4 (repeatable)")
    i.add_argument("--scale", choices=SCALES, default="raw", help="as in `circuits layers`")
    i.add_argument("--amplify-heads", default=None,
                   help="L.H,L.H… or a heads.csv from `circuits heads` (its top --top-k)")
    o.add_number(i, "--beta", o.number(0), default=2.0, help="attention factor (0 = knockout)")
    i.add_argument("--attn-mode", choices=["after", "before"], default="after",
                   help="after softmax + renormalise, or scale pre-softmax scores")
    o.add_number(i, "--split-layer", o.integer(None), default=None,
                 help="heads up to this layer act on query positions, deeper ones on the last "
                      "position (default: half depth)")
    i.add_argument("--amplify-neurons", default=None,
                   help="L.N,L.N… or a neurons.csv from `circuits neurons` (its top --top-k)")
    o.add_number(i, "--gamma", o.number(), default=2.0, help="neuron activation factor")
    o.renamed(i, "--top", o.top_k(i, 10, help="units taken from a heads/neurons CSV"))
    o.renamed(i, "--emotion", o.emotions(i, help="take each named emotion's top --top-k units from a CSV, "
                                                 "comma-separated and/or repeated (default: the top of all "
                                                 "emotions' summed scores)"))
    o.limit(i)
    o.batch_size(i, 16)
    o.bootstrap(i)
    i.add_argument("--ppl-texts", default=None, help="plain-text file (paragraphs) for the perplexity guard "
                                                    "(default: neutral sides of the bundled pairs)")
    i.set_defaults(func=_intervene)


def _check_vectors(a: argparse.Namespace) -> None:
    """``--vectors``: a .pt file is a pickle, so it needs --allow-pickle (before the model loads)."""
    if getattr(a, "vectors", None):
        from ..circuits.vectors import check_vectors_file

        check_vectors_file(a.vectors, a.allow_pickle)


def _emotions(names: list[str] | None) -> list[str] | None:
    """``--emotions`` (already a list: comma-separated and/or repeated), lower-cased, each once."""
    return list(dict.fromkeys(x.lower() for x in names)) if names else None


def _base(a: argparse.Namespace) -> dict:
    return {"force": a.force, "adapter": a.adapter, "dtype": a.dtype, "device": a.device, "seed": a.seed,
            "allow_pickle": a.allow_pickle}


def _vectors(a: argparse.Namespace) -> int:
    from ..circuits.api import vectors_run
    sv = vectors_run(a.model, a.out, a.pairs, min_score=a.min_score, position=a.position,
                     from_token=a.from_token, centring=a.centring, denoise=a.denoise,
                     export=[x.strip() for x in a.export.split(",")], export_layers=a.export_layers,
                     coefficient=a.coefficient, min_pairs=a.min_pairs, **_base(a))
    sel = sv.options.get("selection", {})
    print(f"{'emotion':>10}  {'pass rate':>9}  {'used':>4}  pairs")
    for e in sv.labels:
        r = sel.get(e, {"passing": sv.counts[e], "offered": sv.totals[e], "rule": "min_score"})
        rule = "fallback: best above chance" if r["rule"] == "fallback" else f"p(label) >= {a.min_score:g}"
        print(f"{e:>10}  {r['passing']:>4}/{r['offered']:<4}  {sv.counts[e]:>4}  {rule}")
    for e in sv.labels:
        if sel.get(e, {}).get("note"):
            print(f"note: {e}: {sel[e]['note']}")
    print(f"-> {a.out}/vectors.safetensors")
    return 0


def _layers(a: argparse.Namespace) -> int:
    from ..circuits.api import layers_run

    _check_vectors(a)
    prof = layers_run(a.model, a.out, a.pairs, alpha=a.alpha, scale=a.scale, layers=a.layers,
                      emotions=_emotions(a.emotions), max_pairs=a.limit, batch_size=a.batch_size,
                      **_base(a), **_vec_kwargs(a))
    print(f"critical layer: {prof.critical['mean']} "
          f"({', '.join(f'{e} {la}' for e, la in prof.critical.items() if e != 'mean')}); "
          f"{prof.seconds_per_sweep:.1f} s per sweep -> {a.out}")
    if prof.options.get("resumed"):
        print(f"note: reused the finished sweeps of {', '.join(prof.options['resumed'])} (same inputs)")
    return 0


def _heads(a: argparse.Namespace) -> int:
    from ..circuits.api import heads_run

    _check_vectors(a)
    rk = heads_run(a.model, a.out, a.pairs, target_layer=a.target_layer, metric=a.metric, top_k=a.top_k,
                   emotions=_emotions(a.emotions), max_pairs=a.limit, batch_size=a.batch_size, **_base(a),
                   **_vec_kwargs(a))
    for e, s in rk.tops.items():
        print(f"{e:>10}: {' '.join(f'L{la}.H{h}' for la, h in sorted(s))}")
    print(f"-> {a.out}")
    return 0


def _neurons(a: argparse.Namespace) -> int:
    from ..circuits.api import neurons_run

    _check_vectors(a)
    res = neurons_run(a.model, a.out, a.pairs, target_layer=a.target_layer, metric=a.metric,
                      top_k=a.top_k, emotions=_emotions(a.emotions), max_pairs=a.limit,
                      batch_size=a.batch_size, **_base(a), **_vec_kwargs(a))
    print(f"{len(res.rows)} top neurons (target layer {res.target_layer}) -> {a.out}")
    return 0


def _intervene(a: argparse.Namespace) -> int:
    from ..circuits.api import intervene_run

    _check_vectors(a)
    res = intervene_run(a.model, a.out, a.tasks or ["emotion"], vectors=a.vectors,
                        vectors_label=a.vectors_label, steer=a.steer, scale=a.scale,
                        amplify_heads=a.amplify_heads, beta=a.beta, attn_mode=a.attn_mode,
                        split_layer=a.split_layer, amplify_neurons=a.amplify_neurons, gamma=a.gamma,
                        top=a.top_k, emotions=_emotions(a.emotions), limit=a.limit, batch_size=a.batch_size,
                        n_boot=a.bootstrap, ppl_texts=a.ppl_texts, **_base(a))
    print(res.intervention)
    for what, per in res.units.items():
        print(f"{what} from the CSV: " + "; ".join(f"{e} {' '.join(names)}" for e, names in per.items()))
    for name, r in res.tasks.items():
        for m in ("accuracy", "hallucination"):
            x = r[m]
            print(f"{name:>24} {m:<13} {x['before']:.3f} -> {x['after']:.3f} "
                  f"({x['change']:+.3f}, 95% CI {x['ci_low']:+.3f}..{x['ci_high']:+.3f})")
    if res.perplexity is not None:
        p = res.perplexity
        print(f"{'perplexity guard':>24} {p['before']:.2f} -> {p['after']:.2f} (×{p['ratio']:.3f})")
    print(f"-> {a.out}")
    return 0
