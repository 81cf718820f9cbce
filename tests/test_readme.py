"""The README's Python API snippet runs as written and recovers a planted change."""

from __future__ import annotations

import re

import torch

from conftest import ROOT
from tiny import save_tiny


def _snippets(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_python_snippet_runs(tmp_path, monkeypatch, capsys):
    from peft import LoraConfig, get_peft_model

    base = save_tiny(tmp_path / "base_dir", "llama", seed=0)
    tuned = save_tiny(tmp_path / "tuned_dir", "llama", seed=0)
    with torch.no_grad():  # plant: only gate_proj changes, by a lot
        for layer in tuned.model.layers:
            layer.mlp.gate_proj.weight.add_(0.5)
    tuned.save_pretrained(tmp_path / "tuned_dir")
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["gate_proj"]))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.fill_(0.1)
    lora.save_pretrained(tmp_path / "adapter_dir")

    (snippet,) = [s for s in _snippets("python") if "locate(" in s]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    res = scope["res"]
    assert (tmp_path / "runs" / "loc" / "manifest.json").is_file()
    assert res.summary["models"]["sft"]["locus"]["l2"] == "gate_proj"
    assert res.summary["models"]["lora"]["locus"]["l2"] == "gate_proj"
    assert "gate_proj" in capsys.readouterr().out
