"""The four variant kinds of a grid; each one validates itself and builds its model.

- ``tune``      LoRA on a module selection (Table 2, Fig. 8); every tune variant
                gets the identical budget (one ``TuneConfig``) and seeds.
- ``reference`` the yardstick: a tuned selection (all-module LoRA, AffectGPT's
                role) or a fixed model (``model: base`` or a path).
- ``transfer``  BASE + the selected modules of a donor (a tuned variant or a
                path), no training (Table 1).
- ``ablate``    a tuned model with the selected (or control) modules destroyed;
                the report puts the drop on affective tasks next to the drop on
                non-affective control tasks (zeroing an MLP module can destroy
                everything, so a necessity claim needs that control).

A kind is a class with its fields (``REQUIRED``/``OPTIONAL``), its own checks
(``parse``: the YAML alone; ``check_refs``: against the other variants;
``validate``: against the base model's weights) and ``build``: the tensors in
which its model differs from the loaded base, and what that cost. The runner
never asks which kind it holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..errors import AffectlensError
from .results import Cost

if TYPE_CHECKING:
    from ..weights import WeightStore


def config_error(where: str, msg: str) -> AffectlensError:
    return AffectlensError(f"{where}: {msg}")


class Bench(Protocol):
    """What a variant needs to build its model (the runner's loaded base and adapters)."""

    base_store: Any

    def adapter(self, v: Variant, seed: int) -> tuple[Path, dict[str, Any]]: ...
    def source(self, ref: str, seed: int) -> Any: ...
    def all_of(self, src: Any) -> dict[str, Any]: ...
    def rel(self, path: Path) -> str: ...


@dataclass
class Checks:
    """What ``validate`` checks a variant against: the base's weights and the other variants."""

    store: WeightStore
    base_label: str
    by_name: dict[str, Variant]
    where: str


@dataclass
class Built:
    """A variant's model as the tensors in which it differs from the loaded base, and its cost."""

    tensors: Mapping[str, Any]
    cost: Cost


@dataclass
class Variant:
    """One row of the grid's table; ``spec`` is its YAML mapping (hashed into its cell key)."""

    KIND: ClassVar[str] = ""
    REQUIRED: ClassVar[frozenset[str]] = frozenset()
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    name: str
    spec: dict[str, Any]
    seeded: bool = False
    hash: str = ""
    _selection: Any = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.KIND

    @property
    def modules(self) -> str | None:
        m = self.spec.get("modules")
        return None if m is None else str(m)

    @property
    def layers(self) -> str | None:
        lay = self.spec.get("layers")
        return None if lay is None else str(lay)

    @property
    def tuned(self) -> bool:
        """Trained by the grid itself (its adapter is a donor/model for others)."""
        return False

    @property
    def ref(self) -> str | None:
        """The variant name or path this variant's model starts from (donor/model), if any."""
        return None

    @property
    def noisy(self) -> bool:
        """Draws random numbers itself (so it is run once per seed)."""
        return False

    @classmethod
    def parse(cls, raw: dict[str, Any], name: str, where: str) -> Variant:
        missing = sorted(cls.REQUIRED - set(raw))
        if missing:
            raise config_error(where, f"variant '{name}' ({cls.KIND}) is missing field '{missing[0]}'")
        extra = sorted(set(raw) - cls.REQUIRED - cls.OPTIONAL)
        if extra:
            raise config_error(where, f"variant '{name}' ({cls.KIND}) has unknown field(s) {', '.join(extra)}")
        v = cls(name, dict(raw))
        if v.modules is not None:
            from ..modules import parse_selection

            try:
                parse_selection(v.modules)
            except AffectlensError as e:
                raise config_error(where, f"variant '{name}': {e}") from None
        v.check_own(where)
        return v

    def check_own(self, where: str) -> None:
        """Kind-specific checks of the YAML mapping alone."""

    def check_refs(self, by_name: dict[str, Variant], where: str) -> None:
        """A donor/model reference names a trained variant, ``base`` or an existing path."""
        for key in ("donor", "model"):
            ref = self.spec.get(key)
            if ref is None or str(ref) == "base":
                continue
            if str(ref) in by_name:
                if not by_name[str(ref)].tuned:
                    raise config_error(where, f"variant '{self.name}': {key} '{ref}' must name a tune/reference "
                                              "variant with modules, or be a path")
            elif not Path(str(ref)).exists():
                raise config_error(where, f"variant '{self.name}': {key} '{ref}' is neither a variant nor an "
                                          "existing path")

    def validate(self, c: Checks) -> None:
        """The selection matches the base's weights (layers in range, modules present)."""
        if self.modules is None:
            return
        self._selection = self.select(c, self)

    @staticmethod
    def select(c: Checks, v: Variant) -> Any:
        from ..selection import select

        try:
            return select(c.store, str(v.modules), v.layers, echo=lambda _: None, label=c.base_label)
        except AffectlensError as e:
            raise config_error(c.where, f"variant '{v.name}': {e}") from None

    def build(self, bench: Bench, seed: int) -> Built:
        raise NotImplementedError


def _quiet(_: str) -> None:
    pass


class TunedMixin:
    """A variant the grid trains: LoRA on unfused projections, built as base + its adapter."""

    def check_unfused(self: Any, c: Checks) -> None:
        from ..modules import FUSED, MODULES

        for key in self._selection.report.matched:
            for parsed in c.store.inventory.modules[key]:
                if parsed.fused:
                    others = [m for m in MODULES if m != key.module and m in FUSED.get(parsed.fused, ())]
                    raise config_error(c.where, f"variant '{self.name}': {parsed.name} is a fused {parsed.fused}: "
                                                f"LoRA on it would also train {', '.join(others)}; targeted "
                                                "tuning of a single module needs unfused projections")

    def build_tuned(self: Any, bench: Bench, seed: int) -> Built:
        from ..models.merged import MergedStore
        from ..params import count_params
        from ..weights import LoraAdapter

        ad, info = bench.adapter(self, seed)
        tensors = bench.all_of(MergedStore(bench.base_store, LoraAdapter(ad)))
        n = info.get("trainable_params")
        if n is None:  # an adapter trained by another tuner: count from the config
            n = count_params(bench.base_store.config, self.modules, int(info.get("options", {}).get("rank", 8)),
                             layers=self.layers).lora_total
        return Built(tensors, Cost(trainable_params=int(n), param_basis="lora",
                                   seconds_per_step=info.get("seconds_per_step"), adapter=bench.rel(ad)))


@dataclass
class TuneVariant(TunedMixin, Variant):
    KIND: ClassVar[str] = "tune"
    REQUIRED: ClassVar[frozenset[str]] = frozenset({"name", "kind", "modules"})
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"layers"})

    @property
    def tuned(self) -> bool:
        return True

    def validate(self, c: Checks) -> None:
        super().validate(c)
        self.check_unfused(c)

    def build(self, bench: Bench, seed: int) -> Built:
        return self.build_tuned(bench, seed)


@dataclass
class ReferenceVariant(TunedMixin, Variant):
    KIND: ClassVar[str] = "reference"
    REQUIRED: ClassVar[frozenset[str]] = frozenset({"name", "kind"})
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"modules", "layers", "model"})

    @property
    def tuned(self) -> bool:
        return "modules" in self.spec

    @property
    def ref(self) -> str | None:
        return None if "model" not in self.spec else str(self.spec["model"])

    def check_own(self, where: str) -> None:
        has_modules, has_model = "modules" in self.spec, "model" in self.spec
        if not has_modules and not has_model:
            raise config_error(where, f"variant '{self.name}' (reference) needs 'modules' (tuned) or 'model' "
                                      "(a fixed model)")
        if has_modules and has_model:
            raise config_error(where, f"variant '{self.name}' (reference) takes 'modules' or 'model', not both")

    def validate(self, c: Checks) -> None:
        super().validate(c)
        if self.tuned:
            self.check_unfused(c)

    def build(self, bench: Bench, seed: int) -> Built:
        if self.tuned:
            return self.build_tuned(bench, seed)
        ref = str(self.ref)
        tensors = {} if ref == "base" else bench.all_of(bench.source(ref, seed))
        return Built(tensors, Cost(trainable_params=0 if ref == "base" else None, param_basis="none"))


@dataclass
class TransferVariant(Variant):
    KIND: ClassVar[str] = "transfer"
    REQUIRED: ClassVar[frozenset[str]] = frozenset({"name", "kind", "donor", "modules"})
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"layers"})

    @property
    def ref(self) -> str | None:
        return str(self.spec["donor"])

    def validate(self, c: Checks) -> None:
        """Also: a transfer from a tuned variant stays inside what that variant trains."""
        from ..modules import parse_selection

        super().validate(c)
        donor = c.by_name.get(str(self.ref))
        if donor is None or not donor.tuned:
            return
        dsel = self.select(c, donor)
        lacking = [m for m in parse_selection(str(self.modules)) if m not in dsel.modules]
        lay = [x for x in self._selection.layers if x not in dsel.layers]
        if lacking or lay:
            what = (f"module(s) {', '.join(lacking)}" if lacking else "") + \
                   (" and " if lacking and lay else "") + (f"layer(s) {lay}" if lay else "")
            raise config_error(c.where, f"variant '{self.name}': donor '{donor.name}' does not train {what}")

    def build(self, bench: Bench, seed: int) -> Built:
        from ..interventions.transfer import transfer_tensors
        from ..models.merged import MergedStore

        donor = bench.source(str(self.ref), seed)
        tensors, sel = transfer_tensors(bench.base_store, donor, str(self.modules), self.layers, echo=_quiet)
        if isinstance(donor, MergedStore):
            n = sum(donor.adapter.store.numel(m.a_name) + donor.adapter.store.numel(m.b_name)
                    for m in donor.adapter.modules.values() if m.path in (donor.only or ()))
            return Built(tensors, Cost(trainable_params=n, param_basis="lora"))
        return Built(tensors, Cost(trainable_params=sel.numel(bench.base_store), param_basis="full"))


@dataclass
class AblateVariant(Variant):
    KIND: ClassVar[str] = "ablate"
    REQUIRED: ClassVar[frozenset[str]] = frozenset({"name", "kind", "model", "modules", "mode"})
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"layers", "control"})

    @property
    def ref(self) -> str | None:
        return str(self.spec["model"])

    @property
    def noisy(self) -> bool:
        return self.spec.get("mode") == "noise"

    def check_own(self, where: str) -> None:
        from ..interventions.ablate import MODES

        if self.spec["mode"] not in MODES:
            raise config_error(where, f"variant '{self.name}': unknown mode '{self.spec['mode']}'; choose from "
                                      f"{', '.join(MODES)}")

    def build(self, bench: Bench, seed: int) -> Built:
        from ..interventions.ablate import ablate_tensors

        src = bench.source(str(self.ref), seed)
        abl, info = ablate_tensors(src, str(self.modules), self.spec["mode"], base=bench.base_store,
                                   layers=self.layers, seed=seed, control=bool(self.spec.get("control")),
                                   echo=_quiet)
        tensors = {} if src is bench.base_store else bench.all_of(src)
        tensors.update(abl)  # the ablated modules over the whole source model
        return Built(tensors, Cost(trainable_params=None, param_basis="ablated", ablated=info["ablated"],
                                   params_ablated=info["params_ablated"], source=self.ref))


KINDS: dict[str, type[Variant]] = {k.KIND: k for k in (TuneVariant, ReferenceVariant, TransferVariant,
                                                        AblateVariant)}

__all__ = ["KINDS", "AblateVariant", "Bench", "Built", "Checks", "ReferenceVariant", "TransferVariant",
           "TuneVariant", "Variant", "config_error"]
