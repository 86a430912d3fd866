"""The shared backbone, run with exact full attention, reproduces random BERT, GPT-2 and Llama models (fp32)."""

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from hf_efficient.conversion.convert import load_exactly
from hf_efficient.conversion.families import FAMILIES
from hf_efficient.core import EfficientConfig, EfficientForCausalLM, EfficientForMaskedLM, EfficientModel

TOLERANCE = 1e-5
IMPLEMENTATIONS = ["eager", "sdpa"]


def backbone_twin(source, family: str, model_class, implementation: str):
    """Our backbone (FullAttention) carrying the source's weights."""
    fields = FAMILIES[family].backbone_fields(source.config)
    weights = FAMILIES[family].map_weights(dict(source.state_dict()), source.config)
    fields["use_pooler"] = "model.pooler.dense.weight" in weights
    model = model_class(EfficientConfig(**fields, attn_implementation=implementation))
    if model_class is EfficientModel:
        weights = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    assert load_exactly(model, weights) == []
    return model.eval()


def random_ids(vocab: int, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, mask: torch.Tensor | None = None):
    if mask is not None:
        ours, theirs = ours[mask.bool()], theirs[mask.bool()]
    difference = (ours - theirs).abs().max().item()
    assert difference <= TOLERANCE, f"max abs diff {difference:.2e}"


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_reproduces_bert_with_padding_and_token_types(implementation):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, attn_implementation=implementation)
    source = BertModel(config).eval()
    ours = backbone_twin(source, "bert", EfficientModel, implementation)
    ids = random_ids(99, 3, 40)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    mask[2, 11:] = 0
    types = torch.zeros_like(ids)
    types[:, 20:] = 1
    with torch.no_grad():
        expected = source(input_ids=ids, attention_mask=mask, token_type_ids=types)
        actual = ours(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert_close(actual.last_hidden_state, expected.last_hidden_state, mask)
    assert_close(actual.pooler_output, expected.pooler_output)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_reproduces_bert_masked_lm(implementation):
    torch.manual_seed(1)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, attn_implementation=implementation)
    source = BertForMaskedLM(config).eval()
    ours = backbone_twin(source, "bert", EfficientForMaskedLM, implementation)
    ids = random_ids(99, 2, 33)
    labels = ids.clone()
    with torch.no_grad():
        expected, actual = source(input_ids=ids, labels=labels), ours(input_ids=ids, labels=labels)
    assert_close(actual.logits, expected.logits)
    assert abs(actual.loss.item() - expected.loss.item()) <= TOLERANCE


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_reproduces_gpt2_logits_and_generation(implementation):
    torch.manual_seed(2)
    config = GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        attn_implementation=implementation)
    source = GPT2LMHeadModel(config).eval()
    ours = backbone_twin(source, "gpt2", EfficientForCausalLM, implementation)
    ids = random_ids(99, 2, 30)
    with torch.no_grad():
        assert_close(ours(input_ids=ids).logits, source(input_ids=ids).logits)
        expected = source.generate(ids[:, :6], max_new_tokens=10, do_sample=False, pad_token_id=0)
        actual = ours.generate(ids[:, :6], max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("rope", [None, {"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0}])
def test_reproduces_llama_with_grouped_kv_heads(implementation, rope):
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         rope_parameters=rope, attn_implementation=implementation, tie_word_embeddings=False)
    source = LlamaForCausalLM(config).eval()
    ours = backbone_twin(source, "llama", EfficientForCausalLM, implementation)
    ids = random_ids(99, 2, 30)
    mask = torch.ones_like(ids)
    mask[1, 24:] = 0
    with torch.no_grad():
        assert_close(ours(input_ids=ids, attention_mask=mask).logits,
                     source(input_ids=ids, attention_mask=mask).logits, mask)
        expected = source.generate(ids[:, :6], max_new_tokens=10, do_sample=False, pad_token_id=0)
        actual = ours.generate(ids[:, :6], max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(actual, expected)


def test_full_attention_backbone_refuses_global_tokens():
    model = EfficientModel(EfficientConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=32)).eval()
    ids = random_ids(50, 1, 8)
    with pytest.raises(ValueError, match="no global tokens"):
        model(input_ids=ids, global_attention_mask=torch.ones_like(ids))


def test_config_errors_say_what_to_change():
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        EfficientConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="norm_type"):
        EfficientConfig(norm_type="batchnorm")
    with pytest.raises(ValueError, match="num_key_value_heads"):
        EfficientConfig(num_attention_heads=12, num_key_value_heads=5)
    with pytest.raises(ValueError, match="rope_type"):
        EfficientModel(EfficientConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, position_embedding_type="rotary",
                                       rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}))
