"""Affective evaluation: task registry, loaders, closed-set scorer, MER-UniBench protocol.

    from affectlens.evaluate import evaluate, evaluate_run
    res = evaluate(model, tokenizer, ["emotion", "meld:test_sent_emo.csv"], mode="closed")
    res.mean, res.tasks["emotion"].primary, res.predictions[0]
    evaluate_run("smollm2", "runs/eval", ["emotion"])   # load, score, write the run dir
    evaluate(model, tokenizer, "emotion", calibration="pmi", num_fewshot=4)  # calibrated, 4-shot
    rescore_run("runs/eval", "contextual", "runs/eval-ctx")  # the saved run re-decided, no model

``score_labels`` is the scorer on its own (any prompts, any labels, any
model with hooks attached); ``perplexity`` is the fluency check.
"""

from ..tasks.loaders import Example, LoadedTask, load_examples, load_task
from ..tasks.spec import (
    TASK_SYNTAX,
    TaskSpec,
    get_task,
    parse_task,
    register_task,
    registered_tasks,
)
from .answers import rescore, score_generative_rows
from .backends import GenerationBackend, HFBackend, VLLMBackend, get_backend
from .calibration import calibrate
from .core import evaluate, weight_fingerprint
from .export import export_task
from .fewshot import Shots, draw_shots
from .generative import Wheel, load_wheel, parse_answer
from .metrics import binary_sentiment_metrics, bootstrap_ci, classification_metrics, hit_rate
from .perplexity import perplexity
from .rescoring import rescore_run
from .results import EvalResult, TaskScore
from .run import evaluate_run, write_run
from .scorer import score_labels

__all__ = [
    "EvalResult",
    "GenerationBackend",
    "HFBackend",
    "Shots",
    "VLLMBackend",
    "calibrate",
    "draw_shots",
    "get_backend",
    "Example",
    "LoadedTask",
    "TASK_SYNTAX",
    "TaskScore",
    "TaskSpec",
    "Wheel",
    "binary_sentiment_metrics",
    "bootstrap_ci",
    "classification_metrics",
    "evaluate",
    "evaluate_run",
    "export_task",
    "get_task",
    "hit_rate",
    "load_examples",
    "load_task",
    "load_wheel",
    "parse_answer",
    "parse_task",
    "perplexity",
    "register_task",
    "registered_tasks",
    "rescore",
    "rescore_run",
    "score_generative_rows",
    "score_labels",
    "weight_fingerprint",
    "write_run",
]
