"""The embedded demo: where does an emotion adapter change SmolLM2, compared with a control?

Paper Fig. 5 in miniature: the same base (SmolLM2-135M-Instruct) is tuned
twice with an all-module "AffectGPT-style" LoRA under an identical budget -
once on the bundled emotion corpus, once on the bundled arithmetic control
task - and ``locate`` measures which module each adapter changed most.

The budget is a :class:`~affectlens.tuneconfig.TuneConfig` (``BUDGET``): the
library defaults with three documented changes for a short synthetic corpus
on CPU -- 120 steps at lr 2e-3 (the default 5e-4 needs far more steps to
separate the two adapters), no dropout (one seed, a clean contrast) and 128
tokens (every bundled example is far shorter).

The run dir is one ``RunDir``: ``demo.json`` at its root and locate's full
run (tables, figures, its own manifest) in ``locate/``, all renamed into
place together.

Trained adapters are cached under ``<cache>/demo/<key>/`` where the key hashes
the options, the base checkpoint's fingerprint and the training data, so a
second run only re-runs ``locate``. Timing (see ``EXPECTED_TIME``): about 7
minutes the first time on 2 idle CPU cores, a few seconds when cached.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runs import fingerprint_path, sha256_file
from ..tasks.corpus import bundled_path
from ..tuneconfig import TuneConfig

# Same budget for both adapters (all-module LoRA ~1.5 s/step, batch 8 x ~50 tokens).
EXPECTED_TIME = "about 7 min the first time on 2 idle CPU cores, a few seconds when cached"
STEP_S = 1.5  # one all-module LoRA step on 2 idle CPU cores: each stage's announced estimate
BUDGET = TuneConfig(modules="all", steps=120, lr=2e-3, dropout=0.0, max_length=128)
TASKS = {"emotion": "emotion_train", "control": "control_train"}


@dataclass
class DemoResult:
    out: Path
    adapters: dict[str, Path]
    cached: bool
    locate: Any
    summary: dict[str, Any]

    def paragraph(self) -> str:
        """The answer in one plain paragraph: size-fair locus, emotion vs control, margins, what it shows."""
        from .explain import demo_paragraph

        models = self.locate.summary["models"]
        return demo_paragraph({label: models[label]["ranking"] for label in TASKS})

    def lines(self) -> list[str]:
        """Where each adapter changed the model most, per metric."""
        out = []
        for label, info in self.locate.summary["models"].items():
            loc = info["locus"]
            out.append(f"{label:<8} changed most: relative (Eq. 2) -> {loc['relative']}, "
                       f"absolute l2 (Eq. 1) -> {loc['l2']}, rms -> {loc['rms']}")
        return out


def cache_key(base_dir: Path, options: dict[str, Any]) -> str:
    """Hash of what determines the adapters: options, base checkpoint, data, package version."""
    from .. import __version__

    base_fp = fingerprint_path(base_dir)
    base_fp.pop("path", None)
    blob = json.dumps({
        "options": options, "base": base_fp, "version": __version__,
        "data": {k: sha256_file(bundled_path(v)) for k, v in TASKS.items()},
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cached(path: Path) -> bool:
    """A complete cached adapter whose recorded training was finite (else it is trained again)."""
    if not ((path / "adapter_config.json").is_file() and (path / "affectlens_tune.json").is_file()):
        return False
    try:
        curve = json.loads((path / "affectlens_tune.json").read_text())["loss_curve"]
        return bool(curve) and all(isinstance(x, int | float) and math.isfinite(x) for x in curve)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def run_demo(out: str | os.PathLike | None = None, force: bool = False, retrain: bool = False,
             steps: int | None = None, verbose: bool = True, budget: TuneConfig | None = None) -> DemoResult:
    """Train (or reuse) the emotion and control adapters, then ``locate`` both against the base.

    ``budget`` defaults to ``BUDGET``; ``steps`` replaces its steps (the CLI's ``--steps``).
    """
    from ..runs import RunDir

    say = print if verbose else (lambda *a, **k: None)
    say(f"demo: {EXPECTED_TIME}")
    config = budget or BUDGET
    if steps is not None:
        config = config.replace(steps=int(steps))
    out = Path(out) if out is not None else Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    with RunDir(out, command="demo", force=force, options={"budget": config.to_dict(), "retrain": retrain},
                seed=config.seed) as run:  # claimed: nobody else writes here while we train and locate
        result = _run_demo(run, config, retrain, say, verbose)
    result.out = out
    result.locate.out = out / "locate"
    return result


def _train(config: TuneConfig, retrain: bool, say: Any, verbose: bool) -> tuple[Path, str, dict[str, Path], bool]:
    """The two adapters, trained now or found in the cache: (base dir, cache key, adapters, cached)."""
    from ..models.loading import load_model
    from ..models.resolve import DEFAULT_MODEL, cache_dir, default_model_dir
    from ..progress import step
    from ..tune.run import tune

    base_dir = default_model_dir()
    options = config.to_dict()
    key = cache_key(base_dir, options)
    root = cache_dir() / "demo" / key
    adapters = {label: root / label for label in TASKS}
    cached = not retrain and all(_cached(p) for p in adapters.values())
    if cached:
        say(f"using cached adapters in {root}")
        return base_dir, key, adapters, cached
    say(f"training two all-module LoRA adapters on {base_dir} with the same budget: "
        + ", ".join(f"{k}={v}" for k, v in options.items()))
    model, tok = load_model(base_dir)
    for label, data in TASKS.items():
        if not retrain and _cached(adapters[label]):
            say(f"[{label}] cached in {adapters[label]}")
            continue
        say(f"[{label}] tuning on bundled {data}")
        with step(f"demo: tuning the {label} adapter ({config.steps} steps)", config.steps * STEP_S, enabled=verbose):
            res = tune(model, data, config=config, out=adapters[label], force=True, tokenizer=tok,
                       base_path=DEFAULT_MODEL, verbose=verbose)
        model = res.model.unload()  # the untouched base again, for the next adapter
    return base_dir, key, adapters, cached


def _run_demo(run: Any, config: TuneConfig, retrain: bool, say: Any, verbose: bool) -> DemoResult:
    from ..locate.weight_change import locate

    t0 = time.perf_counter()
    base_dir, key, adapters, cached = _train(config, retrain, say, verbose)
    tuned_s = time.perf_counter() - t0
    say("measuring module-wise weight change (locate) ...")
    # locate writes its own complete run (with its manifest) inside ours, so both appear together.
    loc = locate(base_dir, [adapters[k] for k in TASKS], labels=list(TASKS), out=run.path / "locate")
    training = {}
    for label, path in adapters.items():
        info = json.loads((path / "affectlens_tune.json").read_text())
        curve = info["loss_curve"]
        training[label] = {"adapter": str(path), "loss_first": curve[0],
                           "loss_last10": sum(curve[-10:]) / len(curve[-10:]),
                           "seconds": info["seconds"], "trainable_params": info["trainable_params"]}
    summary = {"base": str(base_dir), "cache_key": key, "cached": cached, "options": config.to_dict(),
               "training": training,
               "locus": {k: v["locus"] for k, v in loc.summary["models"].items()},
               "seconds": {"train_or_load": tuned_s, "total": time.perf_counter() - t0}}
    run.json("demo.json", summary)
    run.inputs.update({"base": str(base_dir), **{f"adapter:{k}": str(p) for k, p in adapters.items()}})
    return DemoResult(run.final, adapters, cached, loc, summary)
