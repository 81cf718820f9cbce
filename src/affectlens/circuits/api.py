"""``affectlens circuits …`` as library calls: one ``*_run`` per command, each writing one run dir.

Each function checks its options and output first (one-line errors before
any model loads), then loads, computes and writes its run directory through
``runs.RunDir`` (all or nothing, manifest included, never a NaN), and returns
a typed result. The CLI (``commands/circuits.py``) only parses and prints.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import plots
from ..errors import AffectlensError
from ..models.devices import check, ran_on
from ..runs import RunDir, check_out_dir, slug
from .heads import HeadResult
from .inputs import (
    check_layer_spec,
    finite_options,
    hidden_size,
    inputs_of,
    load_vectors,
    positive,
    ppl_texts_of,
    require_finite_out,
    select_layers,
    setup,
    units_of,
    vectors_for,
)
from .layers import LayerProfile
from .neurons import NeuronResult
from .pairs import encoder_for
from .vectors import SteeringVectors, check_vectors_file

EXPORTS = ("lm-eval", "steering-vectors")


def _vec_options(vec_opts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in vec_opts.items() if v is not None}


def _run_inputs(model_path: str, pairs_path: str | None, adapter: str | None,
                vec_opts: dict[str, Any]) -> dict[str, Any]:
    return inputs_of(model_path, pairs_path, {"adapter": adapter, "vectors": vec_opts.get("vectors")})


# ----------------------------------------------------------------------------- vectors


def _check_vectors(vectors: str | None, allow_pickle: bool) -> None:
    """Given vectors exist, and a pickle (``.pt``) only with ``allow_pickle``: before any model loads."""
    if vectors:
        check_vectors_file(vectors, allow_pickle)


def vector_rows(sv: SteeringVectors) -> list[dict[str, Any]]:
    """``vectors.csv``: norm, norm relative to the residual, cosine to the previous layer."""
    rows = []
    for e in sv.labels:
        v = sv.get(e)
        for la in range(sv.num_layers):
            prev = v[la - 1] if la else None
            rows.append({"emotion": e, "layer": la, "norm": float(v[la].norm()),
                         "relative_norm": float(v[la].norm()) / max(sv.resid_norm[la], 1e-12)
                         if sv.resid_norm else "",
                         "cos_prev_layer": float(torch.cosine_similarity(v[la], prev, dim=0))
                         if prev is not None else ""})
    return rows


def _vectors_figure(sv: SteeringVectors) -> Any:
    norms = {}
    for e in sv.labels:
        n = sv.get(e).norm(dim=1)
        if sv.resid_norm:
            n = n / torch.tensor(sv.resid_norm).clamp_min(1e-12)
        norms[e] = n.tolist()
    return plots.vector_norms(norms, sv.counts, relative=bool(sv.resid_norm))


def vectors_run(model_path: str, out: str, pairs_path: str | None = None, force: bool = False,
                adapter: str | None = None, dtype: str = "auto", min_score: float = 0.5,
                position: str = "last", from_token: int = 0, centring: str = "pair",
                denoise: float | None = None, export: Sequence[str] = (),
                export_layers: str | None = None, coefficient: float = 1.0,
                seed: int = 0, allow_pickle: bool = False, device: str = "auto", min_pairs: int = 5
                ) -> SteeringVectors:
    """``vectors.safetensors`` (+ ``.pt`` exports), ``vectors.csv/png``, ``summary.json``.

    ``summary.json["selection"]`` (and the manifest's ``pair_selection``) give
    per emotion the pairs offered, passing ``min_score``, used, and whether
    the ``min_pairs`` fallback was taken, with a note saying why.
    """
    from .hooks import decoder_layers
    from .vectors import compute_vectors, export_lm_eval, export_steering_vectors_lib

    formats = [f for f in export if f]
    bad = sorted(set(formats) - set(EXPORTS))
    if bad:
        raise AffectlensError(f"unknown export format(s) {', '.join(bad)}; use {', '.join(EXPORTS)}")
    check_out_dir(out, force)
    check(device, dtype)
    check_layer_spec(export_layers, "--export-layers")
    finite_options(coefficient=coefficient, min_score=min_score)
    if min_pairs < 0:
        raise AffectlensError(f"--min-pairs must be >= 0, not {min_pairs}")
    torch.manual_seed(seed)
    options = {"min_score": min_score, "min_pairs": min_pairs, "position": position, "from_token": from_token,
               "centring": centring,
               "denoise": denoise, "export": formats, "export_layers": export_layers,
               "coefficient": coefficient, "dtype": dtype, "device": device}
    with RunDir(out, command="circuits vectors", force=force, options=options, seed=seed,
                inputs=inputs_of(model_path, pairs_path, {"adapter": adapter})) as run:
        model, tok, proc, pairs = setup(model_path, pairs_path, adapter, dtype, None, allow_pickle, device)
        run.extra["ran_on"] = ran_on(model)
        layers = list(select_layers(export_layers, len(decoder_layers(model)), "--export-layers"))
        run.options["export_layers"] = layers
        sv = compute_vectors(model, encoder_for(tok, pairs, proc), pairs, min_score, position, from_token,
                             centring, denoise, min_pairs=min_pairs)
        rows = vector_rows(sv)
        selection = sv.options.get("selection", {})
        fallback = {e: r["note"] for e, r in selection.items() if r["rule"] == "fallback"}
        summary = {"labels": sv.labels, "counts": sv.counts, "totals": sv.totals,
                   "num_layers": sv.num_layers, "selection": selection, "fallback": fallback,
                   "options": sv.options}
        run.extra["pair_selection"] = {"selection": selection, "fallback": fallback}
        require_finite_out(rows, "vectors", model_path)
        require_finite_out(summary, "vectors", model_path)
        sv.save(run.file("vectors.safetensors"))
        run.csv("vectors.csv", rows)
        for f in formats:
            for e in sv.labels:
                path = run.file(f"{f.replace('-', '_')}/{e}.pt")
                if f == "lm-eval":
                    export_lm_eval(sv, e, path, layers, coefficient)
                else:
                    export_steering_vectors_lib(sv, e, path, layers)
        run.figure("vectors.png", _vectors_figure(sv))
        run.json("summary.json", summary)
    return sv


# ----------------------------------------------------------------------------- layers / heads / neurons


def layers_run(model_path: str, out: str, pairs_path: str | None = None, force: bool = False,
               adapter: str | None = None, dtype: str = "auto", alpha: float = 1.0,
               scale: str = "raw", layers: str | None = None, emotions: Sequence[str] | None = None,
               max_pairs: int | None = None, batch_size: int = 16, seed: int = 0,
               allow_pickle: bool = False, device: str = "auto", **vec_opts: Any) -> LayerProfile:
    """``layers.csv``, ``layer_profile.png``, ``summary.json`` (critical layer per emotion and mean)."""
    from .hooks import decoder_layers
    from .layers import layer_profile, normalised_mean, sweep_cache_dir

    check_out_dir(out, force)
    check(device, dtype)
    check_layer_spec(layers, "--layers")
    finite_options(alpha=alpha, min_score=vec_opts.get("min_score"))
    positive(limit=max_pairs, batch_size=batch_size)
    _check_vectors(vec_opts.get("vectors"), allow_pickle)
    torch.manual_seed(seed)
    options = {"alpha": alpha, "scale": scale, "layers": layers, "emotions": emotions, "max_pairs": max_pairs,
               "batch_size": batch_size, "dtype": dtype, "device": device, **_vec_options(vec_opts)}
    with RunDir(out, command="circuits layers", force=force, options=options, seed=seed,
                inputs=_run_inputs(model_path, pairs_path, adapter, vec_opts)) as run:
        model, tok, proc, pairs = setup(model_path, pairs_path, adapter, dtype, emotions, allow_pickle, device)
        run.extra["ran_on"] = ran_on(model)
        sel = select_layers(layers, len(decoder_layers(model)), "--layers")
        run.options["layers"] = list(sel)
        enc = encoder_for(tok, pairs, proc)
        sv = vectors_for(model, enc, pairs, vec_opts, allow_pickle)
        # finished emotions survive an interruption here (keyed by weights, prompts, vector, options)
        resume = sweep_cache_dir() / hashlib.sha256(repr((model_path, adapter, ran_on(model))).encode()).hexdigest()[:16]
        prof = layer_profile(model, enc, pairs, sv, alpha, scale, sel, emotions, max_pairs, batch_size, resume)
        selection = sv.options.get("selection", {})  # vectors computed here: which pairs they came from
        fallback = {e: r["note"] for e, r in selection.items() if r["rule"] == "fallback"}
        summary = {"critical_layer": prof.critical, "seconds_per_sweep": prof.seconds_per_sweep,
                   "options": prof.options, "vector_pairs": selection, "vector_fallback": fallback}
        run.extra["pair_selection"] = {"selection": selection, "fallback": fallback}
        run.extra["resumed_emotions"] = prof.options.get("resumed", [])
        require_finite_out(prof.rows, "layers", model_path)
        require_finite_out(summary, "layers", model_path)
        run.csv("layers.csv", prof.rows)
        emos = sorted({r["emotion"] for r in prof.rows})
        xs = sorted({r["layer"] for r in prof.rows})
        run.figure("layer_profile.png", plots.layer_profile(
            xs, {e: prof.effects(e) for e in emos}, normalised_mean(prof.rows, emos, xs), prof.critical["mean"]))
        run.json("summary.json", summary)
    return prof


@dataclass
class HeadRanking:
    """Head attribution plus its reading: top-K heads per emotion, their kind, overlap by layer."""

    result: HeadResult
    tops: dict[str, set[tuple[int, int]]]
    kinds: dict[tuple[int, int], str]  # specific / shared / general
    overlap: list[dict[str, Any]]  # per layer; NaN where no emotion has a top head there

    def names(self, kind: str) -> list[str]:
        return sorted(f"L{la}.H{h}" for (la, h), k in self.kinds.items() if k == kind)


def rank_heads(res: HeadResult, top_k: int) -> HeadRanking:
    """Top-``top_k`` heads per emotion, classified; marks ``top_k``/``kind`` on each row of ``res``."""
    from .heads import classify_heads, overlap_by_layer, top_heads

    n_layers = max(r["layer"] for r in res.rows) + 1
    tops = top_heads(res, top_k)
    kinds = classify_heads(tops)
    for r in res.rows:
        key = (r["layer"], r["head"])
        r["top_k"] = key in tops[r["emotion"]]
        r["kind"] = kinds.get(key, "") if r["top_k"] else ""
    return HeadRanking(res, tops, kinds, overlap_by_layer(tops, n_layers))


def head_maps(res: HeadResult, by: str = "score") -> dict[str, Any]:
    """Per emotion, the ``[layer, head]`` array of ``by`` (for ``plots.head_scores``)."""
    import numpy as np

    n_layers = max(r["layer"] for r in res.rows) + 1
    maps = {}
    for e in sorted({r["emotion"] for r in res.rows}):
        m = np.zeros((n_layers, res.n_heads))
        for r in res.rows:
            if r["emotion"] == e:
                m[r["layer"], r["head"]] = r[by]
        maps[e] = m
    return maps


def _head_figures(run: RunDir, rk: HeadRanking, by: str = "score") -> None:
    run.figure("heads.png", plots.head_scores(head_maps(rk.result, by),
                                              f"head {by} (target layer {rk.result.target_layer})"))
    run.figure("overlap.png", plots.head_overlap([o["layer"] for o in rk.overlap],
                                                 [o["jaccard_pairwise"] for o in rk.overlap],
                                                 [o["jaccard_all"] for o in rk.overlap]))


@contextlib.contextmanager
def _attribution_run(command: str, model_path: str, out: str, pairs_path: str | None, force: bool,
                     adapter: str | None, dtype: str, target_layer: int | None, metric: str, top_k: int,
                     emotions: Sequence[str] | None, max_pairs: int | None, batch_size: int, seed: int,
                     allow_pickle: bool, device: str, vec_opts: dict[str, Any]
                     ) -> Iterator[tuple[RunDir, Any, Any, Any, SteeringVectors]]:
    """What heads and neurons share: option checks before loading, the run dir, model, pairs, vectors."""
    check_out_dir(out, force)
    check(device, dtype)
    positive(top_k=top_k, limit=max_pairs, batch_size=batch_size)
    finite_options(min_score=vec_opts.get("min_score"))
    _check_vectors(vec_opts.get("vectors"), allow_pickle)
    torch.manual_seed(seed)
    options = {"target_layer": target_layer, "metric": metric, "top_k": top_k, "emotions": emotions,
               "max_pairs": max_pairs, "batch_size": batch_size, "dtype": dtype, "device": device,
               **_vec_options(vec_opts)}
    with RunDir(out, command=command, force=force, options=options, seed=seed,
                inputs=_run_inputs(model_path, pairs_path, adapter, vec_opts)) as run:
        model, tok, proc, pairs = setup(model_path, pairs_path, adapter, dtype, emotions, allow_pickle, device)
        run.extra["ran_on"] = ran_on(model)
        enc = encoder_for(tok, pairs, proc)
        yield run, model, enc, pairs, vectors_for(model, enc, pairs, vec_opts, allow_pickle)


def heads_run(model_path: str, out: str, pairs_path: str | None = None, force: bool = False,
              adapter: str | None = None, dtype: str = "auto", target_layer: int | None = None,
              metric: str = "proj", top_k: int = 10, emotions: Sequence[str] | None = None,
              max_pairs: int | None = None, seed: int = 0, allow_pickle: bool = False,
              device: str = "auto", batch_size: int = 8, **vec_opts: Any) -> HeadRanking:
    """``heads.csv``, ``overlap.csv``, ``heads.png``, ``overlap.png``, ``summary.json``."""
    from ..runs import nonfinite_to_null
    from .heads import head_attribution

    with _attribution_run("circuits heads", model_path, out, pairs_path, force, adapter, dtype, target_layer,
                          metric, top_k, emotions, max_pairs, batch_size, seed, allow_pickle, device,
                          vec_opts) as (run, model, enc, pairs, sv):
        res = head_attribution(model, enc, pairs, sv, target_layer, metric, emotions, max_pairs, batch_size)
        require_finite_out(res.rows, "heads", model_path)  # before ranking: NaN sorts anywhere
        run.options["target_layer"] = res.target_layer
        rk = rank_heads(res, top_k)
        run.csv("heads.csv", res.rows)
        run.csv("overlap.csv", nonfinite_to_null(rk.overlap))  # no top head in a layer: an empty cell
        _head_figures(run, rk)
        run.json("summary.json", {
            "target_layer": res.target_layer, "n_heads": res.n_heads, "top_k": top_k,
            "top_heads": {e: sorted(f"L{la}.H{h}" for la, h in s) for e, s in rk.tops.items()},
            "specific": rk.names("specific"), "general": rk.names("general"), "options": res.options})
    return rk


def neurons_run(model_path: str, out: str, pairs_path: str | None = None, force: bool = False,
                adapter: str | None = None, dtype: str = "auto", target_layer: int | None = None,
                metric: str = "proj", top_k: int = 50, emotions: Sequence[str] | None = None,
                max_pairs: int | None = None, seed: int = 0, allow_pickle: bool = False,
                device: str = "auto", batch_size: int = 8, **vec_opts: Any) -> NeuronResult:
    """``neurons.csv`` (top-K per emotion), ``neurons_by_layer.csv``, ``neurons.png``, ``summary.json``."""
    from .neurons import neuron_attribution

    with _attribution_run("circuits neurons", model_path, out, pairs_path, force, adapter, dtype, target_layer,
                          metric, top_k, emotions, max_pairs, batch_size, seed, allow_pickle, device,
                          vec_opts) as (run, model, enc, pairs, sv):
        res = neuron_attribution(model, enc, pairs, sv, target_layer, metric, top_k, emotions, max_pairs,
                                 batch_size)
        require_finite_out(res.rows, "neurons", model_path)
        require_finite_out(res.per_layer, "neurons", model_path)
        run.options["target_layer"] = res.target_layer
        run.csv("neurons.csv", res.rows)
        run.csv("neurons_by_layer.csv", res.per_layer)
        counts = {}
        for e in sorted({r["emotion"] for r in res.per_layer}):
            rs = sorted((r for r in res.per_layer if r["emotion"] == e), key=lambda r: r["layer"])
            counts[e] = ([r["layer"] for r in rs], [r["n_in_top"] for r in rs])
        run.figure("neurons.png", plots.neuron_layers(counts, top_k, res.target_layer))
        run.json("summary.json", {"target_layer": res.target_layer, "options": res.options})
    return res


# ----------------------------------------------------------------------------- intervene


@dataclass
class InterventionRun:
    """Before/after evaluation under one intervention (``results.json`` is ``to_dict()``)."""

    intervention: str
    tasks: dict[str, dict[str, Any]]  # n, accuracy, hallucination ({before, after, change, ci_*}), primary
    predictions: dict[str, dict[str, list[dict[str, Any]]]]  # task -> before/after rows
    perplexity: dict[str, float] | None = None
    units: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # heads/neurons -> emotion -> units

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"intervention": self.intervention, "tasks": self.tasks}
        if self.perplexity is not None:
            out["perplexity"] = self.perplexity
        if self.units:  # units taken from a CSV: which emotion's top each one is
            out["units"] = self.units
        return out

    def rows(self) -> list[dict[str, Any]]:
        """``results.csv``: one row per task and metric (accuracy, hallucination)."""
        return [{"task": name, "metric": metric, **{k: r[metric][k] for k in
                                                    ("before", "after", "change", "ci_low", "ci_high")},
                 "n": r["n"]}
                for name, r in self.tasks.items() for metric in ("accuracy", "hallucination")]


def intervene_run(model_path: str, out: str, tasks: Sequence[str], force: bool = False,
                  adapter: str | None = None, dtype: str = "auto", vectors: str | None = None,
                  vectors_label: str | None = None, steer: Sequence[str] = (), scale: str = "raw",
                  amplify_heads: str | None = None, beta: float = 2.0, attn_mode: str = "after",
                  split_layer: int | None = None, amplify_neurons: str | None = None,
                  gamma: float = 2.0, top: int = 10, emotions: Sequence[str] | None = None,
                  limit: int | None = None, batch_size: int = 16, n_boot: int = 1000,
                  ppl_texts: str | None = None, pairs_path: str | None = None, seed: int = 0,
                  allow_pickle: bool = False, device: str = "auto") -> InterventionRun:
    """Evaluate before/after; heads/neurons as ``L.I,...`` or a previous run's CSV (top ``top``: of each of
    ``emotions``, or of all emotions' summed scores)."""
    from ..evaluate import load_task, parse_task
    from .hooks import decoder_layers
    from .inputs import load_lm
    from .intervene import Intervention, parse_steer, run_intervention

    check_out_dir(out, force)
    check(device, dtype)
    finite_options(beta=beta, gamma=gamma)
    positive(top_k=top, limit=limit, batch_size=batch_size)
    if emotions:  # one name, or several (each once)
        emotions = list(dict.fromkeys([emotions] if isinstance(emotions, str) else emotions))
    if not (steer or amplify_heads or amplify_neurons):
        raise AffectlensError("nothing to do: give --steer, --amplify-heads and/or --amplify-neurons")
    _check_vectors(vectors, allow_pickle)
    for t in tasks:  # bad task specs fail before the model loads
        load_task(parse_task(t), limit)
    texts = ppl_texts_of(ppl_texts, pairs_path)
    options = {"tasks": list(tasks), "steer": list(steer), "scale": scale, "amplify_heads": amplify_heads,
               "beta": beta, "attn_mode": attn_mode, "split_layer": split_layer,
               "amplify_neurons": amplify_neurons, "gamma": gamma, "top": top, "emotions": emotions,
               "limit": limit, "batch_size": batch_size, "bootstrap": n_boot, "dtype": dtype,
               "device": device}
    inputs = {"model": model_path, **({"vectors": vectors} if vectors else {})}
    with RunDir(out, command="circuits intervene", force=force, inputs=inputs, options=options,
                seed=seed) as run:
        model, tok = load_lm(model_path, adapter, dtype, allow_pickle, device)  # also a VLM's language side
        run.extra["ran_on"] = ran_on(model)
        n_layers = len(decoder_layers(model))
        sv = load_vectors(vectors, n_layers, vectors_label, hidden_size(model), allow_pickle) if vectors else None
        (heads, head_names), (neurons, neuron_names) = (units_of(amplify_heads, "head", top, emotions),
                                                        units_of(amplify_neurons, "neuron", top, emotions))
        iv = Intervention(steer=parse_steer(steer), scale=scale, vectors=sv, heads=heads, beta=beta,
                          attn_mode=attn_mode, split_layer=split_layer, neurons=neurons, gamma=gamma)
        run.options["intervention"] = iv.describe()
        res = run_intervention(model, tok, tasks, iv, limit, batch_size, seed, n_boot, texts)
        require_finite_out(res, "intervene", model_path)
        result = InterventionRun(res["intervention"], res["tasks"],
                                 {name: r.pop("predictions") for name, r in res["tasks"].items()},
                                 res.get("perplexity"),
                                 {k: v for k, v in (("heads", head_names), ("neurons", neuron_names)) if v})
        for name, preds in result.predictions.items():
            for side in ("before", "after"):
                run.jsonl(f"predictions_{slug(name, 'task')}_{side}.jsonl", preds[side])
        rows = result.rows()
        run.csv("results.csv", rows)
        run.json("results.json", result.to_dict())
        ppl = result.perplexity
        run.figure("changes.png", plots.intervention_changes(rows, iv.describe(), ppl["ratio"] if ppl else None))
    return result


__all__ = ["HeadRanking", "InterventionRun", "heads_run", "intervene_run", "layers_run", "neurons_run",
           "head_maps", "rank_heads", "vector_rows", "vectors_run"]
