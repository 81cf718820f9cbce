"""The module taxonomy: canonical names for every projection of every layer.

Real checkpoints spell the same projection many ways (HF Llama/Qwen/Mistral/
Gemma, VLM wrappers, PEFT adapters, GGUF, Phi-3's fused tensors, MoE experts).
Everything downstream speaks only ``ModuleKey``; this file is the one place
that knows the spellings. Tensors that match nothing are classified and
reported, never dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .errors import AffectlensError

ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN_MODULES = ("gate_proj", "up_proj", "down_proj")
MODULES = ATTN_MODULES + FFN_MODULES
GROUPS: dict[str, tuple[str, ...]] = {
    "attn": ATTN_MODULES,
    "ffn": FFN_MODULES,
    "mlp": FFN_MODULES,
    "all": MODULES,
}

# Aliases seen in real checkpoints -> canonical module.
_ALIASES = {
    "q_proj": "q_proj",
    "k_proj": "k_proj",
    "v_proj": "v_proj",
    "o_proj": "o_proj",
    "out_proj": "o_proj",
    "dense": "o_proj",
    "gate_proj": "gate_proj",
    "up_proj": "up_proj",
    "down_proj": "down_proj",
    "w1": "gate_proj",  # Mixtral experts
    "w3": "up_proj",
    "w2": "down_proj",
    # GGUF
    "attn_q": "q_proj",
    "attn_k": "k_proj",
    "attn_v": "v_proj",
    "attn_output": "o_proj",
    "ffn_gate": "gate_proj",
    "ffn_up": "up_proj",
    "ffn_down": "down_proj",
}
FUSED = {"gate_up_proj": ("gate_proj", "up_proj"), "qkv_proj": ("q_proj", "k_proj", "v_proj")}

_PEFT_PREFIX = "base_model.model."
_LORA_RE = re.compile(
    r"^(?P<path>.+?)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.(?P<adapter>[A-Za-z0-9_\-]+))?(?:\.weight)?$"
)
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|blk|h|blocks)\.(?P<layer>\d+)\.(?P<rest>.+)$")
_EXPERT_RE = re.compile(r"(?:^|\.)experts\.(?P<expert>\d+)\.(?P<rest>.+)$")
_VISION_RE = re.compile(r"(?:^|\.)(visual|vision_tower|vision_model|vision_encoder|image_encoder|vpm)\.")
_PROJECTOR_RE = re.compile(
    r"(?:^|\.)(multi_modal_projector|mm_projector|visual\.merger|visual\.deepstack_merger_list|connector|resampler|mlp1)\."
)


@dataclass(frozen=True, order=True)
class ModuleKey:
    """One projection of one layer: what every analysis is indexed by."""

    layer: int
    module: str
    param: str = "weight"
    expert: int | None = None

    def __str__(self) -> str:
        e = f".expert{self.expert}" if self.expert is not None else ""
        return f"L{self.layer}.{self.module}{e}.{self.param}"


@dataclass(frozen=True)
class ParsedName:
    """What a raw tensor name means.

    ``scope`` is one of ``module`` (a layer projection, ``key`` set), ``embed``,
    ``norm``, ``lm_head``, ``router``, ``vision``, ``projector``, ``other`` and
    ``unknown``. ``fused`` names the fused tensor (``gate_up_proj``/``qkv_proj``)
    whose rows must be split before use; ``key.module`` is then the fused name.
    ``lora`` is ``A``/``B``/``magnitude`` for PEFT adapter tensors.
    """

    name: str
    scope: str
    key: ModuleKey | None = None
    fused: str | None = None
    lora: str | None = None
    stripped: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def strip_peft(name: str) -> str:
    return name[len(_PEFT_PREFIX) :] if name.startswith(_PEFT_PREFIX) else name


def parse_name(name: str) -> ParsedName:
    """Classify a raw tensor name (HF, PEFT, GGUF, VLM, fused, MoE)."""
    raw = name
    lora = None
    body = strip_peft(name)
    m = _LORA_RE.match(body)
    if m:
        lora = {"lora_A": "A", "lora_B": "B", "lora_magnitude_vector": "magnitude",
                "lora_embedding_A": "A", "lora_embedding_B": "B"}[m["kind"]]
        body = m["path"] + ".weight"
    # PEFT's modules_to_save wrapper, when present in a raw state dict.
    body = re.sub(r"\.modules_to_save\.[A-Za-z0-9_\-]+\.", ".", body)
    body = body.replace(".original_module.", ".").replace(".base_layer.", ".")

    if _PROJECTOR_RE.search(body):
        return ParsedName(raw, "projector", lora=lora, stripped=body)
    if _VISION_RE.search(body):
        return ParsedName(raw, "vision", lora=lora, stripped=body)

    lm = _LAYER_RE.search(body)
    if lm is None:
        tail = body.rsplit(".", 2)
        low = body.lower()
        if "embed" in low or "wte" in low or "token_embd" in low:
            scope = "embed"
        elif "lm_head" in low or low.startswith("output.") or low == "output.weight":
            scope = "lm_head"
        elif "norm" in low or "ln_f" in low:
            scope = "norm"
        else:
            scope = "unknown"
        return ParsedName(raw, scope, lora=lora, stripped=body, extra={"leaf": tail[-1]})

    layer = int(lm["layer"])
    rest = lm["rest"]
    expert = None
    em = _EXPERT_RE.search(rest)
    if em:
        expert = int(em["expert"])
        rest = em["rest"]
    parts = rest.split(".")
    param = parts[-1] if parts[-1] in ("weight", "bias") else "weight"
    leafs = [p for p in parts if p not in ("weight", "bias")]
    if not leafs:
        return ParsedName(raw, "unknown", lora=lora, stripped=body)
    leaf = leafs[-1]
    container = leafs[-2] if len(leafs) > 1 else ""
    if leaf in FUSED:
        return ParsedName(raw, "module", ModuleKey(layer, leaf, param, expert), fused=leaf,
                          lora=lora, stripped=body)
    # A MoE router is called "gate" (Mixtral, Qwen-MoE): never a gate_proj.
    if leaf in ("gate", "router", "shared_expert_gate") and container in (
        "block_sparse_moe", "mlp", "moe", "feed_forward", ""
    ):
        return ParsedName(raw, "router", lora=lora, stripped=body, extra={"layer": layer})
    if leaf in ("w1", "w2", "w3") and expert is None:
        return ParsedName(raw, "unknown", lora=lora, stripped=body)
    if leaf == "dense" and container not in ("self_attn", "attention", "attn"):
        return ParsedName(raw, "unknown", lora=lora, stripped=body)
    module = _ALIASES.get(leaf)
    if module is None:
        scope = "norm" if "norm" in leaf else "other"
        return ParsedName(raw, scope, lora=lora, stripped=body, extra={"layer": layer})
    if "shared_expert" in leafs:
        expert = -1  # Qwen-MoE's always-on shared expert
    return ParsedName(raw, "module", ModuleKey(layer, module, param, expert), lora=lora,
                      stripped=body)


def split_rows(fused: str, rows: int, config: dict | None = None) -> dict[str, tuple[int, int]]:
    """Row ranges of each canonical module inside a fused tensor.

    ``gate_up_proj`` is [gate; up] halves (Phi-3). ``qkv_proj`` is [q; k; v]
    sized by head counts, so GQA models need ``config``.
    """
    if fused == "gate_up_proj":
        if rows % 2:
            raise AffectlensError(f"fused gate_up_proj has an odd row count {rows}")
        h = rows // 2
        return {"gate_proj": (0, h), "up_proj": (h, rows)}
    if fused == "qkv_proj":
        cfg = config or {}
        n_heads = cfg.get("num_attention_heads")
        n_kv = cfg.get("num_key_value_heads", n_heads)
        hidden = cfg.get("hidden_size")
        if not n_heads or not hidden:
            if rows % 3:
                raise AffectlensError("qkv_proj needs num_attention_heads/hidden_size in config.json to split")
            t = rows // 3
            return {"q_proj": (0, t), "k_proj": (t, 2 * t), "v_proj": (2 * t, rows)}
        head_dim = cfg.get("head_dim") or hidden // n_heads
        q, kv = n_heads * head_dim, n_kv * head_dim
        if q + 2 * kv != rows:
            raise AffectlensError(
                f"qkv_proj has {rows} rows but config implies {q}+{kv}+{kv}={q + 2 * kv}"
            )
        return {"q_proj": (0, q), "k_proj": (q, q + kv), "v_proj": (q + kv, rows)}
    raise AffectlensError(f"not a fused tensor: {fused}")


def parse_selection(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Turn ``"attn,gate_proj"`` into canonical module names; unknown names are an error."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if item in GROUPS:
            mods = GROUPS[item]
        elif item in MODULES:
            mods = (item,)
        elif item in _ALIASES:
            mods = (_ALIASES[item],)
        else:
            valid = ", ".join(list(GROUPS) + list(MODULES))
            raise AffectlensError(f"unknown module '{item}'; choose from: {valid}")
        out.extend(m for m in mods if m not in out)
    if not out:
        raise AffectlensError("empty module selection")
    return tuple(m for m in MODULES if m in out)


def parse_layers(spec: str | None, num_layers: int) -> tuple[int, ...]:
    """``"0-11,20"`` -> layer indices; out-of-range layers are an error."""
    if spec is None or str(spec).strip() in ("", "all"):
        return tuple(range(num_layers))
    layers: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
            else:
                a = b = int(part)
        except ValueError:
            raise AffectlensError(f"bad layer spec '{part}': use e.g. 0-11,20") from None
        if b < a:
            raise AffectlensError(f"reversed layer range '{part}': write it low-high, e.g. {b}-{a}")
        layers.update(range(a, b + 1))
    bad = sorted(x for x in layers if x < 0 or x >= num_layers)
    if bad:
        raise AffectlensError(f"layer(s) {bad} out of range: the model has {num_layers} layers (0-{num_layers - 1})")
    return tuple(sorted(layers))


@dataclass
class Inventory:
    """All tensors of a checkpoint, classified: what matched, and what did not."""

    modules: dict[ModuleKey, list[ParsedName]] = field(default_factory=dict)
    others: dict[str, list[str]] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted({k.layer for k in self.modules})

    @property
    def module_names(self) -> list[str]:
        present = {k.module for k in self.modules}
        return [m for m in MODULES if m in present] + sorted(present - set(MODULES))

    def summary(self) -> dict[str, int]:
        return {"module_tensors": sum(len(v) for v in self.modules.values()),
                **{scope: len(v) for scope, v in sorted(self.others.items())}}


def inventory(names: Iterable[str]) -> Inventory:
    """Classify every name; fused tensors are listed under each module they hold."""
    inv = Inventory()
    for name in names:
        p = parse_name(name)
        if p.scope != "module" or p.key is None:
            inv.others.setdefault(p.scope, []).append(name)
            continue
        if p.fused:
            for mod in FUSED[p.fused]:
                k = ModuleKey(p.key.layer, mod, p.key.param, p.key.expert)
                inv.modules.setdefault(k, []).append(p)
        else:
            inv.modules.setdefault(p.key, []).append(p)
    return inv


@dataclass
class MatchReport:
    """Which (layer, module) cells a selection hit, and which it asked for but missed."""

    selected: tuple[str, ...]
    layers: tuple[int, ...]
    matched: list[ModuleKey]
    missing: list[tuple[int, str]]

    def table(self) -> str:
        lines = [f"{'module':<10} {'matched layers':<20} missing"]
        for mod in self.selected:
            hit = sorted({k.layer for k in self.matched if k.module == mod})
            miss = sorted(layer for layer, m in self.missing if m == mod)
            lines.append(f"{mod:<10} {_ranges(hit):<20} {_ranges(miss) or '-'}")
        return "\n".join(lines)


def match(inv: Inventory, modules: Sequence[str], layers: Sequence[int] | None = None,
          param: str | None = "weight") -> MatchReport:
    """Match a selection against a checkpoint; refuse an empty or partial match."""
    want_layers = tuple(layers) if layers is not None else tuple(inv.layers)
    matched = [k for k in sorted(inv.modules) if k.module in modules and k.layer in want_layers
               and (param is None or k.param == param)]
    have = {(k.layer, k.module) for k in matched}
    missing = [(lay, m) for m in modules for lay in want_layers if (lay, m) not in have]
    report = MatchReport(tuple(modules), want_layers, matched, missing)
    if not matched:
        raise AffectlensError(
            f"selection {','.join(modules)} matched no tensor; the checkpoint has modules "
            f"{','.join(inv.module_names) or 'none'} in layers {_ranges(inv.layers) or 'none'}"
        )
    if missing:
        ex = ", ".join(f"L{la}.{m}" for la, m in missing[:6])
        raise AffectlensError(
            f"selection partly unmatched: {len(missing)} of {len(missing) + len(have)} "
            f"(layer, module) cells missing, e.g. {ex}"
        )
    return report


def _ranges(xs: Sequence[int]) -> str:
    xs = sorted(xs)
    out: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(out)


def format_ranges(xs: Sequence[int]) -> str:
    """``[0,1,2,5]`` -> ``"0-2,5"`` for compact printing."""
    return _ranges(xs)
