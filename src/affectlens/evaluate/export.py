"""Export a task to lm-evaluation-harness (YAML + JSONL), for the same task on a GPU cluster.

The prompts are rendered here, with the same code the closed-set scorer
uses, and stored in the JSONL, so lm-eval sees exactly our prompt strings
and label continuations (``multiple_choice``: argmax of the summed label
log-likelihood, i.e. our prediction). Run it with, e.g.::

    cd DIR && lm_eval --model vllm --model_args pretrained=MODEL --include_path . --tasks affectlens_emotion

The YAML names its data file relative to itself (the JSONL lies beside it),
so the directory can be copied to a cluster as it is. lm-eval hands that
name to ``datasets``, which reads it from the working directory: run
``lm_eval`` from the exported directory, as above.

Do not pass ``--apply_chat_template`` when the export was rendered with a
chat tokenizer (``--model``): the template is already in the prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import AffectlensError
from ..runs import RunDir, slug
from ..tasks.loaders import load_task
from ..tasks.prompts import target_delimiter
from ..tasks.spec import TaskSpec, parse_task
from .core import closed_prompt


def export_task(task: str | TaskSpec, out: str | Path, tokenizer: Any = None, limit: int | None = None,
                force: bool = False, model_name: str | None = None) -> dict[str, Any]:
    """Write ``affectlens_<task>.yaml`` and ``affectlens_<task>.jsonl`` into the directory ``out``."""
    spec = parse_task(task)
    if spec.kind == "perplexity":
        raise AffectlensError("perplexity tasks are not exported; use lm-eval's own wikitext-style tasks")
    loaded = load_task(spec, limit)
    labels = list(loaded.labels)
    prompts = [closed_prompt(tokenizer, spec, labels, e.text) for e in loaded.examples]
    delims = {target_delimiter(tokenizer, p) for p in prompts}
    if len(delims) != 1:
        raise AffectlensError("prompts of one task end differently; cannot pick one target_delimiter")
    name = "affectlens_" + slug(spec.name, "task").replace(".", "_").replace("-", "_").lower()
    inputs = {"task_path": spec.path} if spec.path and Path(spec.path).exists() else {}
    options = {"task": spec.name, "to": "lm-eval", "limit": limit, "model": model_name}
    with RunDir(out, command="export-task", force=force, inputs=inputs, options=options) as run:
        run.jsonl(f"{name}.jsonl", ({"text": e.text, "prompt": p, "label": e.label, "gold": labels.index(e.gold)}
                                    for e, p in zip(loaded.examples, prompts, strict=True)))
        doc = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": f"{name}.jsonl"}},  # beside the YAML: portable
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "prompt",
            "doc_to_target": "gold",
            "doc_to_choice": labels,
            "target_delimiter": delims.pop(),
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0, "affectlens_task": spec.name,
                         "rendered_with": model_name or "plain prompts (no chat template)"},
        }
        run.text(f"{name}.yaml", yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    final = Path(out)
    return {"yaml": final / f"{name}.yaml", "data": final / f"{name}.jsonl", "task": name}


__all__ = ["export_task"]
