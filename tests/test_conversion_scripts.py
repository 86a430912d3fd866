"""conversion_scripts/: one thin script per source family and target; each names a real family and a registered
variant, and refuses a source of another family."""

import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from hf_efficient.auto import VARIANTS
from hf_efficient.conversion import FAMILIES

SCRIPTS = sorted((Path(__file__).parents[1] / "conversion_scripts").glob("convert_*_to_*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_names_a_family_and_a_registered_target(script):
    family, target = re.fullmatch(r"convert_(\w+?)_to_(\w+)\.py", script.name).groups()
    text = script.read_text()
    assert family in FAMILIES and f"efficient_{target}" in VARIANTS
    assert f'"--to", "{target}", "--expect-family", "{family}"' in text
    assert text.startswith("#!/usr/bin/env python\n\"\"\"Convert a")


def test_script_refuses_a_source_of_another_family(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(tmp_path / "bert")
    script = Path(__file__).parents[1] / "conversion_scripts" / "convert_roberta_to_longformer.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--from", str(tmp_path / "bert"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 2
    assert "is a bert model; this script converts ['roberta']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
