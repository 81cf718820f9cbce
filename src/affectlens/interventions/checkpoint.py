"""Writing the new weights: HF model dirs and PEFT adapter dirs, one tensor at a time.

A transferred or ablated model differs from its source in a few tensors; the
rest are copied byte for byte (no decode, no encode) when the source is
safetensors, so writing a 7B model costs little more than a file copy and
peak memory stays at one tensor. Every decoded tensor is checked to be finite
on its way out: a NaN is never written as a result.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AffectlensError
from ..selection import Selection
from ..weights.base import WeightStore
from ..weights.finite import check_finite, tensor_file
from ..weights.writer import ShardedWriter, parse_size

if TYPE_CHECKING:  # annotations only: the raw-copy transfer writes checkpoints without torch
    import torch

    from ..weights.lora import LoraAdapter

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Our own records and adapter configs describe the source, not the new model: never copied.
NOT_SIDECARS = ("manifest.json", "compose.json", "adapter_config.json")

NewTensor = Callable[[str], "torch.Tensor | None"]


@dataclass
class ComposeResult:
    """Where the new weights of a transfer or an ablation went and what changed.

    ``record()`` is the run's ``compose.json`` and ``line()`` what the command
    prints, so both say the same thing.
    """

    out: Path
    selection: Selection
    info: dict[str, Any]
    kind: str = "transfer"  # or "ablate"

    def record(self) -> dict[str, Any]:
        """``compose.json``: the kind, the info and the selection's match table."""
        return {"kind": self.kind, **self.info, "table": self.selection.table()}

    def line(self) -> str:
        """One line for the terminal."""
        i = self.info
        if self.kind == "ablate":
            return (f"ablated {','.join(i['ablated'])} ({i['mode']}, {i['params_ablated']:,} "
                    f"parameters) -> {self.out}")
        return (f"transferred {len(i['tensors'])} tensor(s), {i['params_transferred']:,} "
                f"parameters ({i['donor_kind']} donor) -> {self.out}")


def raw_location(store: WeightStore, name: str) -> tuple[Path, int, int] | None:
    """(file, byte offset, nbytes) of a safetensors tensor, to copy its bytes untouched; else None."""
    loc = getattr(store, "location", None)
    return loc(name) if callable(loc) else None


class RawFrom(WeightStore):
    """BASE's names, but whole selected tensors come byte-for-byte from DONOR.

    Lets ``write_checkpoint`` copy a full donor's tensors raw, exactly as the
    donor stored them (dtype included), instead of decoding and re-encoding.
    """

    def __init__(self, base: WeightStore, donor: WeightStore, from_donor: set[str]) -> None:
        self.base, self.donor, self.from_donor, self.path = base, donor, from_donor, base.path

    def _src(self, name: str) -> WeightStore:
        return self.donor if name in self.from_donor else self.base

    def names(self) -> list[str]:
        return self.base.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self._src(name).shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self._src(name).dtype(name)

    def get(self, name: str) -> torch.Tensor:
        return self._src(name).get(name)

    def location(self, name: str) -> tuple[Path, int, int] | None:
        return raw_location(self._src(name), name)


def new_or_raw(new: NewTensor, raw: set[str]) -> NewTensor:
    """Whole-tensor donor copies go through the raw path (``None``), partial ones through ``new``."""
    return lambda name: None if name in raw else new(name)


def write_checkpoint(base: WeightStore, new: Mapping[str, torch.Tensor] | NewTensor,
                     out_dir: Path, max_shard_size: str | int = "5GB", desc: str = "writing",
                     label: str | os.PathLike | None = None,
                     check_raw: Callable[[str], None] | None = None) -> list[Path]:
    """Write BASE with some tensors replaced, streaming one tensor at a time.

    ``new`` maps names to tensors, or is a function giving a name's tensor
    (``None``: keep BASE's bytes, copied without decoding when possible).
    Every decoded tensor written is checked to be finite (raw byte copies are
    the caller's to check, see ``check_store_finite``); ``label`` names the
    output in that message. ``check_raw(name)``, when given, is the caller's
    check of each tensor: it runs on a second thread while the bytes are
    copied in-kernel (both release the GIL), and the files are only closed
    once every check has passed; a failed check aborts the write.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..runs import progress

    getter = new.get if isinstance(new, Mapping) else new
    names = base.names()
    plan = [(n, base.shape(n), base.dtype(n)) for n in names]
    writer = ShardedWriter(out_dir, parse_size(max_shard_size), plan=plan)
    checker = ThreadPoolExecutor(1, thread_name_prefix="affectlens-check") if check_raw is not None else None
    try:
        checks = [checker.submit(check_raw, n) for n in names] if checker is not None and check_raw else []
        for name in progress(names, desc, total=len(names), unit="tensor"):
            t = getter(name)
            if t is None:
                loc = raw_location(base, name)
                if loc is not None:
                    writer.add_raw(name, base.dtype(name), base.shape(name), *loc)
                    continue
                t = base.get(name)
            check_finite(t, f"tensor {name} written to {label or out_dir}")
            writer.add(name, t)
        for c in checks:
            c.result()
    except BaseException:
        writer.abort()
        raise
    finally:
        if checker is not None:
            checker.shutdown(wait=True, cancel_futures=True)
    return writer.close()


def copy_sidecars(src: Path, dst: Path) -> list[str]:
    """Config, generation config and tokenizer files of a model dir (everything but weights)."""
    d = src if src.is_dir() else src.parent
    copied = []
    for f in sorted(d.iterdir()):
        if not f.is_file() or f.suffix in WEIGHT_SUFFIXES or f.name in WEIGHT_INDEXES:
            continue
        if f.name in NOT_SIDECARS:
            continue
        shutil.copy2(f, dst / f.name)
        copied.append(f.name)
    return copied


def hf_model_dir(spec: Any) -> Path:
    """The checkpoint an output is built from; it needs a config.json so the output loads as an HF model."""
    from ..models.resolve import resolve_model_path

    p = resolve_model_path(spec)
    d = p if p.is_dir() else p.parent
    if not (d / "config.json").is_file():
        raise AffectlensError(
            f"base {p} has no config.json beside it: the output would not load as an HF model "
            "(convert it to an HF dir first)")
    return p


def write_adapter(adapter: LoraAdapter, keep: Sequence[str], out: Path, base_path: Path) -> None:
    """A PEFT adapter dir with only the kept modules' LoRA tensors and a matching target_modules.

    ``target_modules`` stays a list of short names when those name exactly the
    kept modules, so PEFT reads it as usual; otherwise it becomes a regex of
    the kept paths.
    """
    cfg = dict(adapter.config)
    leafs = sorted({p.rsplit(".", 1)[-1] for p in keep})
    all_layers = {m.key.layer for m in adapter.modules.values() if m.parsed.key is not None}
    kept_layers = {adapter.modules[p].key.layer for p in keep}
    if kept_layers == all_layers and all(
        adapter.modules[p].path.rsplit(".", 1)[-1] in leafs for p in keep
    ) and len(keep) == sum(1 for m in adapter.modules.values() if m.path.rsplit(".", 1)[-1] in leafs):
        cfg["target_modules"] = leafs
    else:
        cfg["target_modules"] = "|".join(re.escape(p) for p in keep)
    cfg["modules_to_save"] = None
    cfg["layers_to_transform"] = None
    cfg["layers_pattern"] = None
    from ..models.adapters import base_reference

    # By name or relative path, so the adapter moves with its base (to another folder, a cluster).
    cfg["base_model_name_or_path"] = base_reference(base_path, out)
    with open(out / "adapter_config.json", "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    writer = ShardedWriter(out, max_shard_bytes=2**62, prefix="adapter_model")
    keepset = set(keep)
    try:
        for mpath, m in adapter.modules.items():
            if mpath not in keepset:
                continue
            for name in (m.a_name, m.b_name, m.magnitude_name):
                if name is not None:
                    t = adapter.store.get(name)
                    check_finite(t, f"tensor {name} of {tensor_file(adapter.store, name)}")
                    writer.add(name, t)
    except BaseException:
        writer.abort()
        raise
    writer.close()


__all__ = [
    "ComposeResult",
    "RawFrom",
    "copy_sidecars",
    "hf_model_dir",
    "new_or_raw",
    "raw_location",
    "write_adapter",
    "write_checkpoint",
]
