"""Emotional circuits (Zhang et al., ICML 2026): steering vectors, layer/head/neuron attribution, interventions.

    from affectlens.circuits import load_pairs, encoder_for, compute_vectors, layer_profile
    pairs = load_pairs()                       # bundled contrast pairs
    enc = encoder_for(tokenizer, pairs)        # prompts = the evaluation harness's
    sv = compute_vectors(model, enc, pairs)    # S_l^e, [num_layers, hidden] per emotion
    prof = layer_profile(model, enc, pairs, sv)
    layers_run("smollm2", "runs/layers")       # the same as `affectlens circuits layers`: a run dir
    with intervened(model, enc.layout, Intervention(heads={12: [3]}, beta=2.0)):
        ...                                    # any forward / evaluate() runs the edited model

All hooks live in the module ``circuits.hooks`` and are removed on exit, also on error.
"""

from ..evaluate.metrics import bootstrap_ci
from .api import (
    HeadRanking,
    InterventionRun,
    heads_run,
    intervene_run,
    layers_run,
    neurons_run,
    vectors_run,
)
from .hallucination import is_hallucination, paired_diff_ci
from .heads import (
    HeadResult,
    classify_heads,
    exact_patch,
    head_attribution,
    make_metric,
    overlap_by_layer,
    top_heads,
)
from .hooks import (
    Layout,
    amplify_attention,
    capture,
    decoder_layers,
    head_outputs,
    layout_for,
)
from .intervene import (
    Intervention,
    guarded_perplexity,
    intervened,
    parse_steer,
    parse_units,
    run_intervention,
    run_interventions,
)
from .layers import LayerProfile, layer_profile
from .neurons import NeuronResult, neuron_attribution
from .pairs import Encoder, Pair, encoder_for, load_pairs
from .vectors import (
    SteeringVectors,
    compute_vectors,
    export_lm_eval,
    export_steering_vectors_lib,
    import_lm_eval,
    import_steering_vectors_lib,
)

__all__ = [
    "Encoder", "HeadRanking", "HeadResult", "InterventionRun", "Intervention", "LayerProfile", "Layout",
    "NeuronResult", "Pair", "SteeringVectors", "amplify_attention", "bootstrap_ci", "capture",
    "classify_heads", "compute_vectors", "decoder_layers", "encoder_for", "exact_patch", "export_lm_eval",
    "export_steering_vectors_lib", "guarded_perplexity", "head_attribution", "head_outputs", "heads_run",
    "import_lm_eval", "import_steering_vectors_lib", "intervene_run", "intervened", "is_hallucination",
    "layer_profile", "layers_run", "layout_for", "load_pairs", "make_metric", "neuron_attribution",
    "neurons_run", "overlap_by_layer", "paired_diff_ci", "parse_steer", "parse_units", "run_intervention",
    "run_interventions", "top_heads", "vectors_run"
]
