"""The README's Python API snippet runs as written (its one placeholder, ``BASE``, set to a tiny model)
and finds the module a brute-force reading of the adapters it trains names."""

from __future__ import annotations

import json
import re

import torch
from safetensors.torch import load_file

from conftest import ROOT, TINYSTORIES

PLACEHOLDER = 'BASE = "smollm2"'


def _snippets(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _locus_by_hand(adapter_dir) -> str:
    """The module whose LoRA change ‖(α/r)·B·A‖_F is largest on average over layers (Eq. 1, float64)."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert not cfg.get("use_rslora") and not cfg.get("alpha_pattern") and not cfg.get("rank_pattern")
    scale = cfg["lora_alpha"] / cfg["r"]
    sd = load_file(adapter_dir / "adapter_model.safetensors")
    norms: dict[str, list[float]] = {}
    for name, a in sd.items():
        if ".lora_A." in name:
            b = sd[name.replace(".lora_A.", ".lora_B.")]
            module = name.split(".lora_A.")[0].rsplit(".", 1)[-1]
            norms.setdefault(module, []).append(float(torch.linalg.matrix_norm(scale * b.double() @ a.double())))
    return max(norms, key=lambda m: sum(norms[m]) / len(norms[m]))


def test_readme_python_snippet_runs(tmp_path, monkeypatch, capsys):
    (snippet,) = [s for s in _snippets("python") if "locate(" in s]
    assert snippet.count(PLACEHOLDER) == 1, "the README snippet's BASE line changed: update PLACEHOLDER"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet.replace(PLACEHOLDER, f"BASE = {str(TINYSTORIES)!r}"), "README.md", "exec"), scope)
    res = scope["res"]
    assert (tmp_path / "runs" / "api-locate" / "manifest.json").is_file()
    out = capsys.readouterr().out
    for label in ("emotion", "control"):
        adapter = tmp_path / "runs" / f"api-{label}"
        locus = _locus_by_hand(adapter)
        assert res.summary["models"][label]["locus"]["l2"] == locus, label
        assert f"== {label} " in out
    assert str(res.summary["models"]["emotion"]["locus"]) in out
    # running it again (same outputs) works too: the snippet replaces its own runs
    exec(compile(snippet.replace(PLACEHOLDER, f"BASE = {str(TINYSTORIES)!r}"), "README.md", "exec"), {})
