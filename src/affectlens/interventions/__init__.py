"""Interventions on weights: module transfer (sufficiency) and ablation (necessity), and the checkpoint they write.

- ``transfer``      BASE with only the selected modules taken from a full or LoRA donor
- ``transfer_fast`` the byte-copy path when donor and base share a format and dtype
- ``ablate``        reset, zero, mean or noise the selected (or an equal-size control) modules
- ``checkpoint``    writing the edited model (safetensors, shards, config, tokenizer)

May import ``models``, ``selection`` and the ground floor; nothing of the other stages.
"""
