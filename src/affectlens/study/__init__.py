"""The study: both papers' protocols as resumable stages, and a report whose verdicts follow from the numbers.

    from affectlens.study import run_study
    study = run_study("examples/study.yaml", "runs/study", profile="quick")
    study["claims"][0]["verdict"]

- ``config``   the study YAML (+ quick/default profiles) as a ``StudyConfig``
- ``cache``    per-stage result files keyed by input fingerprints (resume)
- ``stages_*`` adapters/locate, the grid-scored stages, circuits
- ``stats``    value, 95 % CI and n for every claim's evidence
- ``assemble`` study.json, figures, the report (``report``/``verdicts``)
"""

from __future__ import annotations

from typing import Any

from .config import PROFILES, STAGES, StudyConfig, load_study_config


def run_study(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`affectlens.study.runner.run_study` (imported lazily: the CLI parser stays light)."""
    from .runner import run_study as run

    return run(*args, **kwargs)


__all__ = ["PROFILES", "STAGES", "StudyConfig", "load_study_config", "run_study"]
