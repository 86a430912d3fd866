"""conversion_scripts/: one thin script per source family and target; each names a real family and a registered
variant, refuses a source of another family, and converts a tiny source of its own."""

import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
from testers import TESTERS
from tiny_sources import one_thread, save_tiny_source  # noqa: F401 (a fixture)
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


# knobs a 128-position model needs where the paper's default doesn't fit it (Linformer's k = 256 > n = 128)
TINY_KNOBS = {"linformer": ["--set", "projected_length=16"]}


def run_script(script: Path, argv: list[str], monkeypatch) -> int:
    """The script as `python script ARGS` would run it, in this process (a subprocess costs seconds of imports)."""
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    return exit_info.value.code


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_converts_a_tiny_source_of_its_family(script, tmp_path, monkeypatch, capsys):
    """Each script, on a tiny random source of its family: a checkpoint of its target, and the fidelity figure of the
    full-attention setting printed (exact: <= 1e-5; Performer's estimate: the tester's tolerance; none: said so)."""
    family, target = re.fullmatch(r"convert_(\w+?)_to_(\w+)\.py", script.name).groups()
    save_tiny_source(family, tmp_path / "source")
    out = tmp_path / "out"
    code = run_script(script, ["--from", str(tmp_path / "source"), "--max-length", "128", "--out", str(out),
                               "--eval-tokens", "0", *TINY_KNOBS.get(target, [])], monkeypatch)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert json.loads((out / "config.json").read_text())["model_type"] == f"efficient_{target}"
    assert {"model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    tolerance = TESTERS[f"efficient_{target}"].degenerate_tolerance
    if tolerance is None:
        assert "full-attention setting: none" in printed
    else:
        figure = float(printed.split("full-attention setting")[1].split("max abs diff ")[1].split()[0])
        assert figure <= tolerance, printed


@pytest.mark.usefixtures("one_thread")
def test_synthesizer_script_with_the_dot_product_starts_at_its_source(tmp_path, monkeypatch, capsys):
    """What the script's docstring promises: synthesizer_type=dense+vanilla starts as the source, as converted."""
    save_tiny_source("bert", tmp_path / "source")
    script = Path(__file__).parents[1] / "conversion_scripts" / "convert_bert_to_synthesizer.py"
    assert run_script(script, ["--from", str(tmp_path / "source"), "--max-length", "128", "--out",
                               str(tmp_path / "out"), "--eval-tokens", "0", "--set", "synthesizer_type=dense+vanilla"],
                      monkeypatch) == 0
    printed = capsys.readouterr().out
    assert float(printed.split("as converted: max abs diff ")[1].split()[0]) <= 1e-5, printed
