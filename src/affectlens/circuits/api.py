"""Run directories for ``affectlens circuits …``: load, compute, write CSV/PNG/JSON + manifest.

Each function is what one CLI sub-subcommand does; they take already-parsed
options so they can be called from Python as well.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import AffectlensError
from ..runs import atomic_dir, write_json, write_manifest
from .pairs import Pair, encoder_for, labels_of, load_pairs
from .vectors import SteeringVectors, import_lm_eval, import_steering_vectors_lib


def load_for_pairs(model_path: str, pairs: Sequence[Pair], adapter: str | None = None,
                   dtype: str = "float32", allow_pickle: bool = False) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, processor)``; a vision-language model when the pairs carry images."""
    from ..evaluate.core import load_scoring_model

    if not any(p.image_emotional or p.image_neutral for p in pairs):
        model, tok = load_scoring_model(model_path, adapter=adapter, dtype=dtype, allow_pickle=allow_pickle)
        return model, tok, None
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..models import resolve_model_path, torch_dtype, weight_kwargs

    p = resolve_model_path(model_path)
    kwargs = weight_kwargs(p, allow_pickle)  # the one pickle policy; refuses without the flag
    try:
        model = AutoModelForImageTextToText.from_pretrained(str(p), dtype=torch_dtype(dtype), **kwargs).eval()
        proc = AutoProcessor.from_pretrained(str(p))
    except Exception as e:
        raise AffectlensError(f"cannot load a vision-language model from {p}: {type(e).__name__}: {e}") from None
    return model, proc.tokenizer, proc


def load_vectors(path: str | os.PathLike, num_layers: int, label: str | None = None,
                 hidden: int | None = None) -> SteeringVectors:
    """Our safetensors (dir or file), or a steering-vectors / lm-eval ``.pt`` (needs ``label``).

    ``.pt`` files are read with ``torch.load(weights_only=True)``; every
    vector is checked: shape, layer count, hidden size (when given), finite.
    """
    from .vectors import _torch_load

    p = Path(path)
    if not p.exists():
        raise AffectlensError(f"no steering vectors at {p}")
    if p.is_dir() or p.suffix == ".safetensors":
        sv = SteeringVectors.load(p)
    else:
        if label is None:
            raise AffectlensError(f"{p} holds one unnamed vector; pass --vectors-label EMOTION")
        obj = _torch_load(p)
        if isinstance(obj, dict) and "layer_activations" in obj:
            sv = import_steering_vectors_lib(p, label, num_layers)
        else:
            sv = import_lm_eval(p, label, num_layers)
    if sv.num_layers != num_layers:
        raise AffectlensError(f"vectors at {p} have {sv.num_layers} layers but the model has {num_layers}")
    width = next(iter(sv.vectors.values())).shape[1]
    if hidden is not None and width != hidden:
        raise AffectlensError(f"vectors at {p} have width {width} but the model's hidden size is {hidden}")
    return sv


def _hidden_size(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    h = getattr(cfg, "hidden_size", None)
    return int(h) if isinstance(h, int) else None


def check_layer_spec(spec: str | None, flag: str) -> None:
    """Syntax and order of a layer spec (``0-3,7``), before any model is loaded."""
    if spec is None or str(spec).strip() in ("", "all"):
        return
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if a > b:
                    raise AffectlensError(f"{flag} {spec}: reversed layer range '{part}' "
                                          f"(write {b}-{a})")
            else:
                int(part)
        except ValueError:
            raise AffectlensError(f"{flag} {spec}: bad layer spec '{part}': use e.g. 0-11,20") from None


def select_layers(spec: str | None, num_layers: int, flag: str) -> tuple[int, ...]:
    """Layer indices of ``spec`` (through ``modules.parse_layers``); never an empty selection."""
    from ..modules import parse_layers

    check_layer_spec(spec, flag)
    sel = parse_layers(spec, num_layers)
    if not sel:
        raise AffectlensError(f"{flag} {spec} selects no layers")
    return sel


def _finite_options(**opts: float | None) -> None:
    """Numeric options are finite numbers (argparse's float() accepts 'nan' and 'inf')."""
    for name, v in opts.items():
        if v is not None and not math.isfinite(v):
            raise AffectlensError(f"--{name.replace('_', '-')} must be a finite number, not {v}")


def _positive(**opts: int | None) -> None:
    """Counts and sizes are positive integers (None: the default)."""
    for name, v in opts.items():
        if v is not None and v < 1:
            raise AffectlensError(f"--{name.replace('_', '-')} must be positive, not {v}")


def _require_finite_out(obj: Any, what: str, model_path: str) -> None:
    """Refuse to write a result holding NaN/Inf; name the row (emotion/layer/unit) when it is one."""
    from ..evaluate.metrics import NonFiniteResult, find_non_finite

    hit = find_non_finite(obj)
    if not hit:
        return
    where, value = hit
    if isinstance(obj, list) and where.startswith("["):
        i = int(where[1:where.index("]")])
        row = obj[i]
        if isinstance(row, dict):
            key = where[where.index("]") + 1:].lstrip(".")
            ident = ", ".join(f"{k} {row[k]}" for k in ("task", "metric", "emotion", "layer", "head", "neuron")
                              if k in row)
            where = f"{key} of row {i + 1} ({ident})" if ident else f"{key} of row {i + 1}"
    raise NonFiniteResult(f"circuits {what}: non-finite {where} = {value} from model {model_path}; "
                          "nothing written")


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _setup(model_path: str, pairs_path: str | None, adapter: str | None, dtype: str,
           emotions: Sequence[str] | None, allow_pickle: bool = False) -> tuple[Any, Any, Any, list[Pair]]:
    pairs = load_pairs(pairs_path)
    if emotions:
        unknown = sorted(set(emotions) - set(labels_of(pairs)))
        if unknown:
            raise AffectlensError(f"emotion(s) {', '.join(unknown)} not in the pairs ({', '.join(labels_of(pairs))})")
    model, tok, proc = load_for_pairs(model_path, pairs, adapter, dtype, allow_pickle)
    return model, tok, proc, pairs


def _vectors(model: Any, enc: Any, pairs: list[Pair], opts: dict[str, Any]) -> SteeringVectors:
    from .hooks import decoder_layers
    from .vectors import compute_vectors

    if opts.get("vectors"):
        return load_vectors(opts["vectors"], len(decoder_layers(model)), opts.get("vectors_label"),
                            _hidden_size(model))
    return compute_vectors(model, enc, pairs, min_score=opts.get("min_score", 0.5),
                           position=opts.get("position", "last"), from_token=opts.get("from_token", 0),
                           centring=opts.get("centring", "pair"), denoise=opts.get("denoise"))


def _inputs(model_path: str, pairs_path: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from .pairs import default_pairs_path

    out: dict[str, Any] = {"model": model_path, "pairs": str(pairs_path or default_pairs_path())}
    for k, v in (extra or {}).items():
        if v:
            out[k] = str(v)
    return out


# ----------------------------------------------------------------------------- vectors


def vectors_run(model_path: str, out: str, pairs_path: str | None = None, force: bool = False,
                adapter: str | None = None, dtype: str = "float32", min_score: float = 0.5,
                position: str = "last", from_token: int = 0, centring: str = "pair",
                denoise: float | None = None, export: Sequence[str] = (),
                export_layers: str | None = None, coefficient: float = 1.0,
                seed: int = 0, allow_pickle: bool = False) -> SteeringVectors:
    from .vectors import compute_vectors, export_lm_eval, export_steering_vectors_lib

    formats = [f for f in export if f]
    bad = sorted(set(formats) - {"lm-eval", "steering-vectors"})
    if bad:
        raise AffectlensError(f"unknown export format(s) {', '.join(bad)}; use lm-eval, steering-vectors")
    from ..runs import check_out_dir

    check_out_dir(out, force)
    check_layer_spec(export_layers, "--export-layers")
    _finite_options(coefficient=coefficient, min_score=min_score)
    torch.manual_seed(seed)
    model, tok, proc, pairs = _setup(model_path, pairs_path, adapter, dtype, None, allow_pickle)
    from .hooks import decoder_layers

    layers = list(select_layers(export_layers, len(decoder_layers(model)), "--export-layers"))
    enc = encoder_for(tok, pairs, proc)
    sv = compute_vectors(model, enc, pairs, min_score, position, from_token, centring, denoise)
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
    summary = {"labels": sv.labels, "counts": sv.counts, "totals": sv.totals,
               "num_layers": sv.num_layers, "options": sv.options}
    _require_finite_out(rows, "vectors", model_path)
    _require_finite_out(summary, "vectors", model_path)
    with atomic_dir(out, force) as d:
        sv.save(d / "vectors.safetensors")
        _write_csv(d / "vectors.csv", rows)
        for f in formats:
            sub = d / f.replace("-", "_")
            sub.mkdir()
            for e in sv.labels:
                if f == "lm-eval":
                    export_lm_eval(sv, e, sub / f"{e}.pt", layers, coefficient)
                else:
                    export_steering_vectors_lib(sv, e, sub / f"{e}.pt", layers)
        _plot_vectors(sv, d / "vectors.png")
        write_json(d / "summary.json", summary)
        write_manifest(d, "circuits vectors", _inputs(model_path, pairs_path, {"adapter": adapter}),
                       {"min_score": min_score, "position": position, "from_token": from_token,
                        "centring": centring, "denoise": denoise, "export": formats,
                        "export_layers": layers, "coefficient": coefficient, "dtype": dtype}, seed)
    return sv


def _plot_vectors(sv: SteeringVectors, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for e in sv.labels:
        n = sv.get(e).norm(dim=1)
        if sv.resid_norm:
            n = n / torch.tensor(sv.resid_norm).clamp_min(1e-12)
        ax.plot(range(sv.num_layers), n.tolist(), label=f"{e} (n={sv.counts.get(e, '?')})")
    ax.set_xlabel("layer")
    ax.set_ylabel("‖S_l‖ / mean ‖h_l‖" if sv.resid_norm else "‖S_l‖")
    ax.set_title("Emotion steering vectors by layer")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- layers / heads / neurons


def layers_run(model_path: str, out: str, pairs_path: str | None = None, force: bool = False,
               adapter: str | None = None, dtype: str = "float32", alpha: float = 1.0,
               scale: str = "raw", layers: str | None = None, emotions: Sequence[str] | None = None,
               max_pairs: int | None = None, batch_size: int = 16, seed: int = 0,
               allow_pickle: bool = False, **vec_opts: Any) -> Any:
    from ..runs import check_out_dir
    from .hooks import decoder_layers
    from .layers import layer_profile, plot_profile

    check_out_dir(out, force)
    check_layer_spec(layers, "--layers")
    _finite_options(alpha=alpha, min_score=vec_opts.get("min_score"))
    _positive(max_pairs=max_pairs, batch_size=batch_size)
    torch.manual_seed(seed)
    model, tok, proc, pairs = _setup(model_path, pairs_path, adapter, dtype, emotions, allow_pickle)
    sel = select_layers(layers, len(decoder_layers(model)), "--layers")
    enc = encoder_for(tok, pairs, proc)
    sv = _vectors(model, enc, pairs, vec_opts)
    prof = layer_profile(model, enc, pairs, sv, alpha, scale, sel, emotions, max_pairs, batch_size)
    summary = {"critical_layer": prof.critical, "seconds_per_sweep": prof.seconds_per_sweep,
               "options": prof.options}
    _require_finite_out(prof.rows, "layers", model_path)
    _require_finite_out(summary, "layers", model_path)
    with atomic_dir(out, force) as d:
        _write_csv(d / "layers.csv", prof.rows)
        plot_profile(prof, str(d / "layer_profile.png"))
        write_json(d / "summary.json", summary)
        write_manifest(d, "circuits layers", _inputs(model_path, pairs_path,
                                                     {"adapter": adapter, "vectors": vec_opts.get("vectors")}),
                       {"alpha": alpha, "scale": scale, "layers": list(sel), "emotions": emotions,
                        "max_pairs": max_pairs, "batch_size": batch_size, "dtype": dtype,
                        **{k: v for k, v in vec_opts.items() if v is not None}}, seed)
    return prof


def heads_run(model_path: str, out: str, pairs_path: str | None = None, force: bool = False,
              adapter: str | None = None, dtype: str = "float32", target_layer: int | None = None,
              metric: str = "proj", top_k: int = 10, emotions: Sequence[str] | None = None,
              max_pairs: int | None = None, seed: int = 0, allow_pickle: bool = False,
              **vec_opts: Any) -> Any:
    from ..runs import check_out_dir
    from .heads import classify_heads, head_attribution, overlap_by_layer, plot_heads, top_heads

    check_out_dir(out, force)
    _positive(top_k=top_k, max_pairs=max_pairs)
    _finite_options(min_score=vec_opts.get("min_score"))
    torch.manual_seed(seed)
    model, tok, proc, pairs = _setup(model_path, pairs_path, adapter, dtype, emotions, allow_pickle)
    enc = encoder_for(tok, pairs, proc)
    sv = _vectors(model, enc, pairs, vec_opts)
    res = head_attribution(model, enc, pairs, sv, target_layer, metric, emotions, max_pairs)
    _require_finite_out(res.rows, "heads", model_path)  # before ranking: NaN sorts anywhere
    n_layers = max(r["layer"] for r in res.rows) + 1
    tops = top_heads(res, top_k)
    kinds = classify_heads(tops)
    overlap = overlap_by_layer(tops, n_layers)
    for r in res.rows:
        key = (r["layer"], r["head"])
        r["top_k"] = key in tops[r["emotion"]]
        r["kind"] = kinds.get(key, "") if r["top_k"] else ""
    with atomic_dir(out, force) as d:
        _write_csv(d / "heads.csv", res.rows)
        _write_csv(d / "overlap.csv", overlap)
        plot_heads(res, overlap, str(d / "heads.png"), str(d / "overlap.png"))
        write_json(d / "summary.json", {
            "target_layer": res.target_layer, "n_heads": res.n_heads, "top_k": top_k,
            "top_heads": {e: sorted(f"L{la}.H{h}" for la, h in s) for e, s in tops.items()},
            "specific": sorted(f"L{la}.H{h}" for (la, h), k in kinds.items() if k == "specific"),
            "general": sorted(f"L{la}.H{h}" for (la, h), k in kinds.items() if k == "general"),
            "options": res.options})
        write_manifest(d, "circuits heads", _inputs(model_path, pairs_path,
                                                    {"adapter": adapter, "vectors": vec_opts.get("vectors")}),
                       {"target_layer": res.target_layer, "metric": metric, "top_k": top_k,
                        "emotions": emotions, "max_pairs": max_pairs, "dtype": dtype,
                        **{k: v for k, v in vec_opts.items() if v is not None}}, seed)
    return res, tops, overlap


def neurons_run(model_path: str, out: str, pairs_path: str | None = None, force: bool = False,
                adapter: str | None = None, dtype: str = "float32", target_layer: int | None = None,
                metric: str = "proj", top_k: int = 50, emotions: Sequence[str] | None = None,
                max_pairs: int | None = None, seed: int = 0, allow_pickle: bool = False,
                **vec_opts: Any) -> Any:
    from ..runs import check_out_dir
    from .neurons import neuron_attribution, plot_neurons

    check_out_dir(out, force)
    _positive(top_k=top_k, max_pairs=max_pairs)
    _finite_options(min_score=vec_opts.get("min_score"))
    torch.manual_seed(seed)
    model, tok, proc, pairs = _setup(model_path, pairs_path, adapter, dtype, emotions, allow_pickle)
    enc = encoder_for(tok, pairs, proc)
    sv = _vectors(model, enc, pairs, vec_opts)
    res = neuron_attribution(model, enc, pairs, sv, target_layer, metric, top_k, emotions, max_pairs)
    _require_finite_out(res.rows, "neurons", model_path)
    _require_finite_out(res.per_layer, "neurons", model_path)
    with atomic_dir(out, force) as d:
        _write_csv(d / "neurons.csv", res.rows)
        _write_csv(d / "neurons_by_layer.csv", res.per_layer)
        plot_neurons(res, str(d / "neurons.png"))
        write_json(d / "summary.json", {"target_layer": res.target_layer, "options": res.options})
        write_manifest(d, "circuits neurons", _inputs(model_path, pairs_path,
                                                      {"adapter": adapter, "vectors": vec_opts.get("vectors")}),
                       {"target_layer": res.target_layer, "metric": metric, "top_k": top_k,
                        "emotions": emotions, "max_pairs": max_pairs, "dtype": dtype,
                        **{k: v for k, v in vec_opts.items() if v is not None}}, seed)
    return res


# ----------------------------------------------------------------------------- intervene


def intervene_run(model_path: str, out: str, tasks: Sequence[str], force: bool = False,
                  adapter: str | None = None, dtype: str = "float32", vectors: str | None = None,
                  vectors_label: str | None = None, steer: Sequence[str] = (), scale: str = "raw",
                  amplify_heads: str | None = None, beta: float = 2.0, attn_mode: str = "after",
                  split_layer: int | None = None, amplify_neurons: str | None = None,
                  gamma: float = 2.0, top: int = 10, emotion: str | None = None,
                  limit: int | None = None, batch_size: int = 16, n_boot: int = 1000,
                  ppl_texts: str | None = None, pairs_path: str | None = None, seed: int = 0,
                  allow_pickle: bool = False) -> dict:
    """Evaluate before/after; heads/neurons as ``L.I,...`` or a previous run's CSV (top ``top``)."""
    from ..evaluate.core import load_scoring_model
    from ..runs import check_out_dir
    from .hooks import decoder_layers
    from .intervene import Intervention, parse_steer, parse_units, run_intervention, units_from_csv

    check_out_dir(out, force)
    _finite_options(beta=beta, gamma=gamma)
    _positive(top=top, limit=limit, batch_size=batch_size)
    if not (steer or amplify_heads or amplify_neurons):
        raise AffectlensError("nothing to do: give --steer, --amplify-heads and/or --amplify-neurons")
    from ..evaluate import load_task, parse_task

    for t in tasks:  # bad task specs fail before the model loads
        load_task(parse_task(t), limit)
    if ppl_texts:
        pp = Path(ppl_texts)
        if not pp.is_file():
            raise AffectlensError(f"--ppl-texts {pp} is not a file")
        texts = [t for t in pp.read_bytes().decode("utf-8-sig", errors="replace").split("\n\n") if t.strip()]
        if not texts:
            raise AffectlensError(f"--ppl-texts {pp} holds no text")
    else:
        texts = [p.neutral for p in load_pairs(pairs_path)][:40]
    model, tok = load_scoring_model(model_path, adapter=adapter, dtype=dtype, allow_pickle=allow_pickle)
    n_layers = len(decoder_layers(model))
    sv = load_vectors(vectors, n_layers, vectors_label, _hidden_size(model)) if vectors else None

    def units(spec: str | None, what: str) -> dict[int, list[int]]:
        if not spec:
            return {}
        if spec.endswith(".csv") or Path(spec).is_file():
            return units_from_csv(spec, what, top, emotion)
        return parse_units(spec, what)

    iv = Intervention(steer=parse_steer(steer), scale=scale, vectors=sv,
                      heads=units(amplify_heads, "head"), beta=beta, attn_mode=attn_mode,
                      split_layer=split_layer, neurons=units(amplify_neurons, "neuron"), gamma=gamma)
    res = run_intervention(model, tok, tasks, iv, limit, batch_size, seed, n_boot, texts)
    _require_finite_out(res, "intervene", model_path)
    with atomic_dir(out, force) as d:
        rows = []
        for name, r in res["tasks"].items():
            for metric in ("accuracy", "hallucination"):
                m = r[metric]
                rows.append({"task": name, "metric": metric, "before": m["before"], "after": m["after"],
                             "change": m["change"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
                             "n": r["n"]})
            preds = r.pop("predictions")
            for side in ("before", "after"):
                with open(d / f"predictions_{_safe(name)}_{side}.jsonl", "w") as f:
                    for p in preds[side]:
                        f.write(json.dumps(p, allow_nan=False) + "\n")
        _write_csv(d / "results.csv", rows)
        write_json(d / "results.json", res)
        _plot_changes(rows, res.get("perplexity"), d / "changes.png", iv.describe())
        write_manifest(d, "circuits intervene", {"model": model_path, **({"vectors": vectors} if vectors else {})},
                       {"tasks": list(tasks), "steer": list(steer), "scale": scale,
                        "amplify_heads": amplify_heads, "beta": beta, "attn_mode": attn_mode,
                        "split_layer": split_layer, "amplify_neurons": amplify_neurons, "gamma": gamma,
                        "top": top, "emotion": emotion, "limit": limit, "batch_size": batch_size,
                        "bootstrap": n_boot, "dtype": dtype, "intervention": iv.describe()}, seed)
    return res


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "task"


def _plot_changes(rows: list[dict], ppl: dict | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows)), 3.8))
    xs = range(len(rows))
    ch = [r["change"] for r in rows]
    err = [[r["change"] - r["ci_low"] for r in rows], [r["ci_high"] - r["change"] for r in rows]]
    ax.bar(xs, ch, yerr=err, capsize=4, color=["tab:blue" if r["metric"] == "accuracy" else "tab:red"
                                                for r in rows])
    ax.set_xticks(list(xs), [f"{r['task']}\n{r['metric']}" for r in rows], fontsize=7)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("change (after − before), 95% CI")
    t = title if ppl is None else f"{title}\nperplexity ×{ppl['ratio']:.3f}"
    ax.set_title(t, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
