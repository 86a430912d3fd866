"""Conversion of tiny random BERT / GPT-2 / Llama checkpoints (saved locally) into EfficientLongformer."""

import json
import string

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    BertTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5Model,
)

import hf_efficient
from hf_efficient.cli import main
from hf_efficient.conversion import ConversionError, convert, extend_positions

TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase,
          *[f"##{c}" for c in string.ascii_lowercase], *".,;:-'!?", "the", "of", "and", "to"]


def save_tiny_bert(folder, head=BertModel, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    tokens = TOKENS + [f"word{i}" for i in range(99 - len(TOKENS))]
    (folder / "vocab.txt").write_text("\n".join(tokens))
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    model = head(config).eval()
    model.save_pretrained(folder)
    return model


def test_cli_converts_bert_into_a_long_model(tmp_path, capsys):
    source = save_tiny_bert(tmp_path / "bert")
    out = tmp_path / "long"
    code = main(["convert", "--from", str(tmp_path / "bert"), "--to", "longformer", "--max-length", "512",
                 "--attention-window", "16", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "full-attention setting" in printed and "max abs diff" in printed
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert AutoTokenizer.from_pretrained(out).model_max_length == 512
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "efficient_longformer" and config["attention_window"] == [16, 16]
    card = (out / "README.md").read_text()
    figure = float(printed.split("max abs diff ")[1].split()[0])
    assert figure <= 1e-5 and f"{figure:.2e}" in card
    assert "New parameters: 12 tensors. Conversion: global q/k/v start as copies of the local q/k/v" in card

    model = AutoModel.from_pretrained(out).eval()
    assert type(model) is hf_efficient.EfficientLongformerModel
    weights = load_file(out / "model.safetensors")
    table = weights["embeddings.embed_positions.weight"]
    torch.testing.assert_close(table[:64], source.embeddings.position_embeddings.weight)
    torch.testing.assert_close(table[64:128], table[:64])  # the Longformer recipe: copied end to end
    ids = torch.randint(1, 99, (1, 512))
    with torch.no_grad():
        assert model(input_ids=ids).last_hidden_state.shape == (1, 512, 32)
    with pytest.raises(ValueError, match="max_position_embeddings=512"):
        model(input_ids=torch.randint(1, 99, (1, 513)))


def test_converted_masked_lm_reproduces_its_source(tmp_path):
    source = save_tiny_bert(tmp_path / "bert", head=BertForMaskedLM, seed=1)
    result = convert(str(tmp_path / "bert"), "longformer", out=None, max_length=256, attention_window=8)
    assert type(result.model) is hf_efficient.EfficientLongformerForMaskedLM
    assert result.fidelity.compared == "logits" and result.fidelity.degenerate_max_abs_diff <= 1e-5
    assert result.fidelity.as_converted_max_abs_diff > 1e-3, "window 8 on the check text is really sparse"
    ids = torch.randint(1, 99, (2, 20))
    degenerate = hf_efficient.EfficientLongformerForMaskedLM(
        type(result.model.config).from_dict({**result.model.config.to_dict(), "attention_window": 64})
    ).eval()
    degenerate.load_state_dict(result.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(degenerate(input_ids=ids).logits, source(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)


def test_a_head_the_source_lacks_is_checked_on_the_backbone(tmp_path):
    """A bare encoder converted with a classification head: the classifier is new (random), so the check compares
    the backbones' last hidden states (it compared the classifier's logits to the hidden states and crashed)."""
    save_tiny_bert(tmp_path / "bert", seed=4)
    result = convert(str(tmp_path / "bert"), "longformer", out=None, max_length=256, attention_window=8,
                     head="sequence_classification")
    assert type(result.model) is hf_efficient.EfficientLongformerForSequenceClassification
    assert result.new_head_parameters and all(k.startswith("classifier") for k in result.new_head_parameters)
    assert result.fidelity.compared == "last_hidden_state" and result.fidelity.degenerate_max_abs_diff <= 1e-5
    assert result.fidelity.as_converted_max_abs_diff > 1e-3, "window 8 on the check text is really sparse"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_sources_convert_to_causal_longformer(tmp_path, family):
    torch.manual_seed(2)
    if family == "gpt2":
        source = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    else:
        source = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                              max_position_embeddings=64))
    source.eval().save_pretrained(tmp_path / family)
    result = convert(str(tmp_path / family), "longformer", out=tmp_path / "out", max_length=128, attention_window=8)
    assert type(result.model) is hf_efficient.EfficientLongformerForCausalLM and result.model.config.is_causal
    assert result.fidelity.degenerate_max_abs_diff <= 1e-5
    ids = torch.randint(1, 99, (1, 40))
    with torch.no_grad():
        generated = result.model.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 45)


def test_unknown_architecture_names_the_supported_ones(tmp_path):
    T5Model(T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(ConversionError, match=r"Supported source architectures: \['bert', 'distilbert', 'electra'"):
        convert(str(tmp_path), "longformer", out=None)
    assert main(["convert", "--from", str(tmp_path), "--out", str(tmp_path / "x")]) == 2


def test_unknown_target_and_bad_window_are_refused(tmp_path):
    save_tiny_bert(tmp_path / "bert")
    with pytest.raises(ConversionError, match="Unknown target"):
        convert(str(tmp_path / "bert"), "bigbirdd", out=None)
    with pytest.raises(ConversionError, match="positive even"):
        convert(str(tmp_path / "bert"), "longformer", out=None, attention_window=7)


def test_existing_output_is_not_overwritten_without_asking(tmp_path, capsys):
    save_tiny_bert(tmp_path / "bert")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ConversionError, match="--overwrite"):
        convert(str(tmp_path / "bert"), "longformer", out=out, max_length=128)
    assert main(["convert", "--from", str(tmp_path / "bert"), "--out", str(out), "--max-length", "128"]) == 2
    assert "exists and is not empty: pass --overwrite to replace it" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "user data"
    # a conversion that fails after the checks, even with --overwrite, leaves the folder as it was
    with pytest.raises(ValueError, match="positive even"):
        convert(str(tmp_path / "bert"), "longformer", out=out, max_length=128, overwrite=True, attention_window=7)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(ConversionError, match="is the source folder"):
        convert(str(tmp_path / "bert"), "longformer", out=tmp_path / "bert", max_length=128, overwrite=True)
    assert (tmp_path / "bert" / "config.json").exists()
    missing = tmp_path / "never-made"
    with pytest.raises(ValueError, match="positive even"):
        convert(str(tmp_path / "bert"), "longformer", out=missing, max_length=128, attention_window=7)
    assert not missing.exists()
    convert(str(tmp_path / "bert"), "longformer", out=out, max_length=128, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_source_without_tokenizer_still_converts(tmp_path, caplog):
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "bert")
    result = convert(str(tmp_path / "bert"), "longformer", out=tmp_path / "out", max_length=128)
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= written
    assert not written & {"tokenizer.json", "tokenizer_config.json", "vocab.txt"}
    assert "has no tokenizer files: converting weights and config only." in caplog.text
    assert result.fidelity.degenerate_max_abs_diff <= 1e-5


def test_position_extension_methods():
    table = torch.randn(8, 4)
    copied = extend_positions(table, 20, "copy")
    assert torch.equal(copied[:8], table) and torch.equal(copied[8:16], table) and torch.equal(copied[16:], table[:4])
    stretched = extend_positions(table, 22, "interpolate")
    assert stretched.shape == (22, 4)
    torch.testing.assert_close(stretched[0], table[0])
    torch.testing.assert_close(stretched[-1], table[-1])
    with pytest.raises(ValueError, match="copy"):
        extend_positions(table, 20, "nearest")


@pytest.mark.parametrize("head", ["masked_lm", "causal_lm"])
def test_language_model_loss_matches_the_source_in_the_full_attention_setting(tmp_path, head):
    """Held-out loss: with a window covering every window of text and the source's own length, the converted model's
    loss equals the source's; with a small window it is measured (and differs)."""
    save_tiny_bert(tmp_path / "src", head=BertForMaskedLM, seed=3)  # writes the tokenizer too
    if head == "causal_lm":
        torch.manual_seed(3)
        GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                   pad_token_id=0)).save_pretrained(tmp_path / "src")
    wide = convert(str(tmp_path / "src"), "longformer", out=None, max_length=64, attention_window=128,
                   eval_tokens=600)
    lm = wide.fidelity.language_model
    assert lm.metric == ("masked-LM loss" if head == "masked_lm" else "causal-LM loss")
    assert lm.tokens == 600 and lm.source_context == lm.converted_context == 64
    assert abs(lm.converted_loss - lm.source_loss) <= 1e-5 * lm.source_loss
    assert wide.fidelity.tokens == 64  # check_tokens (512) capped at the source's length
    short = convert(str(tmp_path / "src"), "longformer", max_length=64, check_tokens=20, eval_tokens=0)
    assert short.fidelity.tokens == 20
    narrow = convert(str(tmp_path / "src"), "longformer", out=None, max_length=256, attention_window=4,
                     eval_tokens=600).fidelity.language_model
    assert narrow.converted_context == 256 and narrow.source_loss == pytest.approx(lm.source_loss)
    assert narrow.converted_loss != pytest.approx(lm.source_loss, rel=1e-4)


def save_tiny_llama(folder, seed=4):
    torch.manual_seed(seed)
    source = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                                          initializer_range=0.05)).eval()
    source.save_pretrained(folder)
    return source


@pytest.mark.parametrize(("scaling", "rope_parameters"), [
    (None, {"rope_type": "default"}),
    ("linear:4", {"rope_type": "linear", "factor": 4.0}),
    ("linear", {"rope_type": "linear", "factor": 4.0}),  # the factor defaults to 256 / 64
    ("yarn:3", {"rope_type": "yarn", "factor": 3.0, "original_max_position_embeddings": 64}),
])
def test_rope_scaling_equals_transformers_llama_with_the_same_rope_parameters(tmp_path, scaling, rope_parameters):
    """Rotary positions are kept by default (the converted model is its source, also past the source's 64 positions);
    with a scaling, it is a transformers LlamaForCausalLM configured with the same rope_parameters (fp32, 1e-5)."""
    source = save_tiny_llama(tmp_path / "llama")
    result = convert(str(tmp_path / "llama"), "longformer", out=None, max_length=256, rope_scaling=scaling,
                     attention_window=512, check=False)
    config = result.model.config
    assert config.max_position_embeddings == 256  # recorded; rotary positions have no table to bound the input
    expected_parameters = {"rope_theta": 10000.0, **rope_parameters}
    assert config.rope_parameters == expected_parameters
    reference = LlamaForCausalLM(LlamaConfig(**{**source.config.to_dict(), "max_position_embeddings": 256,
                                                "rope_parameters": expected_parameters})).eval()
    reference.load_state_dict(source.state_dict())
    ids = torch.randint(1, 99, (2, 200), generator=torch.Generator().manual_seed(0))  # past the source's 64
    with torch.no_grad():
        ours, theirs = result.model(input_ids=ids, use_cache=False).logits, reference(input_ids=ids).logits
        unscaled = source(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    if scaling is not None:
        assert (ours - unscaled).abs().max() > 1e-2, "the scaling really moves the positions"


def test_rope_scaling_on_the_command_line_is_saved_and_reloads(tmp_path, capsys):
    save_tiny_llama(tmp_path / "llama")
    out = tmp_path / "long"
    assert main(["convert", "--from", str(tmp_path / "llama"), "--to", "sparse_transformer", "--max-length", "256",
                 "--rope-scaling", "linear:4", "--out", str(out), "--eval-tokens", "0"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["max_position_embeddings"] == 256
    assert saved["rope_parameters"] == {"rope_theta": 10000.0, "rope_type": "linear", "factor": 4.0}
    assert "rotary, scaled by transformers' `rope_parameters`" in (out / "README.md").read_text()
    reloaded = hf_efficient.EfficientSparseTransformerForCausalLM.from_pretrained(out)
    assert reloaded.model.rotary.inv_freq[1].item() == pytest.approx(10000.0 ** (-2 / 8) / 4)


@pytest.mark.parametrize(("source", "scaling", "message"), [
    ("bert", "linear:2", r"this source has absolute positions; a learned table is extended by position_init"),
    ("llama", "dynamic:2", r"'dynamic' is not supported \(it recomputes the frequencies for each input length"),
    ("llama", "ntk:2", r"'ntk' is not supported; use one of \('linear', 'yarn'\)"),
    ("llama", "linear:0.5", r"the factor must be a number >= 1"),
    ("llama", "linear:x", r"factor 'x' is not a number"),
])
def test_rope_scaling_refusals_say_what_works(tmp_path, source, scaling, message):
    if source == "bert":
        save_tiny_bert(tmp_path / source)
    else:
        save_tiny_llama(tmp_path / source)
    with pytest.raises(ConversionError, match=message):
        convert(str(tmp_path / source), "longformer", out=None, max_length=128, rope_scaling=scaling)


def test_rope_scaling_needs_a_longer_context_or_a_factor(tmp_path):
    save_tiny_llama(tmp_path / "llama")
    with pytest.raises(ConversionError, match=r"max_length=64 is not above the source's 64; .* \(yarn:FACTOR\)"):
        convert(str(tmp_path / "llama"), "longformer", out=None, max_length=64, rope_scaling="yarn")
