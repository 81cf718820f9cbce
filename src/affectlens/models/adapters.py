"""Portable adapters: the base recorded by name or relative path, and checked by content.

An adapter dir that names its base by an absolute path does not move to a
cluster. ``tune`` records the embedded model by its name (``smollm2``) and any
other base by its path relative to the adapter dir, so base and adapter move
together, plus the base's content fingerprint (``affectlens_tune.json``,
``base_fingerprint``). Loading an adapter dir as a model resolves the base back
and refuses a base whose content differs -- another model stored under the same
name or path -- because the adapter would run, silently, as a different model.

One rule for what an adapter must target (:func:`check_adapter_targets`):
evaluate's load (PEFT) refuses an adapter whose ``target_modules`` match no
module of the base, or that lacks tensors for a module they match; locate,
which never builds the model, asks the same question with PEFT's own matcher.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from . import resolve as models

BASE_INFO = "affectlens_tune.json"  # where tune records the base's fingerprint (key "base_fingerprint")
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path")


def base_fingerprint(path: str | os.PathLike) -> str:
    """A content fingerprint of a base model: its config (minus keys a re-save changes) and the
    size and first MiB (header + leading tensors) of every weight file.

    Cheap for any model size, stable across machines and transformers versions, and different
    for another model stored under the same name or path.
    """
    import hashlib

    from ..runs import sha256_file

    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file())
    for f in files:
        if f.name == "config.json":
            cfg = {k: v for k, v in models.read_json_object(f).items() if k not in _VOLATILE_CONFIG_KEYS}
            h.update(b"config\0" + json.dumps(cfg, sort_keys=True).encode())
        elif f.suffix in (".safetensors", ".gguf", ".bin", ".pt"):
            h.update(f"{f.name}\0{f.stat().st_size}\0{sha256_file(f, 1 << 20)}\0".encode())
    return h.hexdigest()[:16]


def base_reference(spec: str | os.PathLike, adapter_dir: str | os.PathLike) -> str:
    """What an adapter at ``adapter_dir`` records as its base: the embedded model's name
    (``smollm2``), else the base's path relative to the adapter dir, so base and adapter move
    together (to another folder or a cluster). Absolute only when no relative path exists."""
    if str(spec) in (models.DEFAULT_MODEL, "default"):
        return models.DEFAULT_MODEL
    base = Path(spec).resolve()
    try:
        return Path(os.path.relpath(base, Path(adapter_dir).resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return str(base)


def resolve_adapter_base(adapter: str | os.PathLike) -> Path:
    """The base model dir of an adapter dir, found from what it records.

    ``smollm2`` is the embedded model; a relative path is taken from the adapter dir
    (then, for adapters of other tools, from the working directory); an absolute path
    as is. When tune recorded the base's fingerprint, a base whose content differs
    (another model under the same name or path) is an error: an adapter applied to the
    wrong base runs, silently, as a different model.
    """
    ref = models.adapter_base(adapter)
    if ref in (models.DEFAULT_MODEL, "default"):
        base = models.default_model_dir()
    else:
        beside = Path(adapter) / ref
        base = beside if not Path(ref).is_absolute() and beside.exists() else Path(ref)
        if not base.exists():
            raise AffectlensError(f"adapter {adapter} names base {ref}, which does not exist "
                                  f"(looked beside the adapter and in the working directory); "
                                  "pass the base and --adapter")
    want = _recorded_fingerprint(Path(adapter))
    if want is not None:
        got = base_fingerprint(base)
        if got != want:
            raise AffectlensError(f"adapter {adapter} was trained on a base with fingerprint {want}, but {base} "
                                  f"has {got} (another model under that name or path); pass the right base")
    return base


def check_adapter_targets(config: Mapping[str, Any], base_tensors: Iterable[str], adapted: Collection[str],
                          what: str, base: str | os.PathLike) -> None:
    """Refuse an adapter that fits no module of its base, or lacks tensors for a module it targets.

    ``config`` is the adapter_config.json, ``base_tensors`` the base's tensor names and ``adapted``
    the module paths the adapter holds LoRA tensors for. The modules are matched as PEFT matches
    them when evaluate loads the adapter (``check_target_module_exists``: names, regex,
    ``layers_to_transform``, ``exclude_modules``, ``modules_to_save``), so both commands take and
    refuse the same adapters. ``all-linear`` (expanded by PEFT against live modules) is not checked.
    """
    from types import SimpleNamespace

    from peft.tuners.tuners_utils import check_target_module_exists

    targets = config.get("target_modules")
    if targets is None or (isinstance(targets, str) and targets.lower() == "all-linear"):
        return
    peft_cfg = SimpleNamespace(**{k: config.get(k) for k in (
        "exclude_modules", "modules_to_save", "target_parameters", "layers_to_transform", "layers_pattern")},
        target_modules=targets if isinstance(targets, str) else list(targets))
    modules = sorted({n.removesuffix(".weight") for n in base_tensors if n.endswith(".weight")})
    hit = [m for m in modules if check_target_module_exists(peft_cfg, m)]
    if not hit:
        shown = targets if isinstance(targets, str) else ", ".join(map(str, targets))
        raise AffectlensError(f"{what} targets modules {shown}, which match no module of base {base}: "
                              "an adapter for another base?")
    missing = [m for m in hit if m not in adapted]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise AffectlensError(f"{what} lacks tensors for modules its config targets: "
                              f"{', '.join(missing[:3])}{more}")


def _recorded_fingerprint(adapter: Path) -> str | None:
    info = adapter / BASE_INFO
    if not info.is_file():
        return None
    try:
        fp = json.loads(info.read_text(encoding="utf-8")).get("base_fingerprint")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return fp if isinstance(fp, str) else None


__all__ = ["BASE_INFO", "base_fingerprint", "base_reference", "check_adapter_targets", "resolve_adapter_base"]
