"""Tasks: what a model is trained and scored on, read the same way by tune, evaluate, grid and study.

- ``spec``      the one task spec (``TaskSpec``), the registry and the task syntax
- ``tables``    JSONL/CSV/TSV readers with bounded fields and the bad-row policy
- ``splits``    split names and sibling files (``train``/``dev``/``test``)
- ``labelmaps`` mapping a data set's labels onto the task's
- ``loaders``   a spec to examples (``load_task``)
- ``corpus``    the bundled emotion corpus, control task and contrast pairs (and their writer)
- ``prompts``   the prompt renderer shared by training and scoring
- ``pairs``     contrast-pair files (the circuits format)
- ``trained``   which split trains and which scores; the record of trained rows that keeps them apart

May import the ground floor only (``errors``, ``vocab``, ``runs``).
"""
