"""EfficientLinformer specifics: the parameters of each sharing mode, the maths, the fixed length, conversion."""

import pytest
import torch
from test_conversion import save_tiny_bert
from transformers import AutoModel, BertForMaskedLM

import hf_efficient
from hf_efficient import (
    EfficientLinformerConfig,
    EfficientLinformerForMaskedLM,
    EfficientLinformerModel,
)
from hf_efficient.attention.low_rank import average_pooling_rows, low_rank_reference
from hf_efficient.conversion import convert

SMALL = dict(vocab_size=61, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
             projected_length=6, projection_init="random")
MODES = ["none", "headwise", "key_value", "layerwise"]


def small_config(**overrides) -> EfficientLinformerConfig:
    return EfficientLinformerConfig(**{**SMALL, **overrides})


def padded_inputs(batch: int = 2, length: int = 23, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 61, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, length - 8:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(is_causal=True), "can't be causal"),
        (dict(projection_sharing="all"), "projection_sharing"),
        (dict(projection_init="orthogonal"), "projection_init"),
        (dict(projected_length=0), "positive integer"),
        (dict(projected_length=41), "exceeds max_position_embeddings=40"),
    ],
)
def test_bad_config_says_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_config(**overrides)


def test_no_causal_lm_head():
    assert "causal_lm" not in hf_efficient.VARIANTS["efficient_linformer"].heads
    assert not EfficientLinformerModel.attention_class.supports_causal
    assert EfficientLinformerModel.attention_class.max_length_fixed


@pytest.mark.parametrize(
    ("sharing", "kv_heads", "expected"),
    [
        ("none", 2, {f"layers.{i}.self_attn.{n}_length_proj.weight": (2, 6, 40) for i in (0, 1) for n in ("key",
                                                                                                       "value")}),
        ("none", 1, {f"layers.{i}.self_attn.{n}_length_proj.weight": (1, 6, 40) for i in (0, 1) for n in ("key",
                                                                                                       "value")}),
        ("headwise", 2, {f"layers.{i}.self_attn.{n}_length_proj.weight": (1, 6, 40) for i in (0, 1)
                         for n in ("key", "value")}),
        ("key_value", 2, {f"layers.{i}.self_attn.key_length_proj.weight": (1, 6, 40) for i in (0, 1)}),
        ("layerwise", 2, {"layers.0.self_attn.key_length_proj.weight": (1, 6, 40)}),
    ],
)
def test_parameters_of_each_sharing_mode(sharing, kv_heads, expected):
    model = EfficientLinformerModel(small_config(projection_sharing=sharing, num_key_value_heads=kv_heads))
    found = {name: tuple(p.shape) for name, p in model.named_parameters() if "length_proj" in name}
    assert found == expected
    assert {k for k in model.state_dict() if "length_proj" in k} == set(expected), "each parameter saved once"


@pytest.mark.parametrize(("sharing", "kv_heads"), [(mode, 2) for mode in MODES] + [("none", 1), ("headwise", 1)])
def test_fast_path_equals_reference_with_gradients(sharing, kv_heads):
    """Outputs and every parameter's gradient, fp32, random projections, a padded row; also grouped-query heads."""
    config = small_config(projection_sharing=sharing, num_key_value_heads=kv_heads)
    torch.manual_seed(0)
    model = EfficientLinformerForMaskedLM(config).train()
    inputs = padded_inputs()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    results = {}
    for backend in ("reference", "blocked"):
        config.attention_backend = backend
        model.zero_grad()
        output = model(**inputs, labels=labels, return_logits=True)
        output.loss.backward()
        results[backend] = output.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                  if p.grad is not None}
    real = inputs["attention_mask"].bool()
    (fast, fast_grads), (reference, reference_grads) = results["blocked"], results["reference"]
    torch.testing.assert_close(fast[real], reference[real], rtol=1e-5, atol=1e-5)
    for name, grad in reference_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(grad.abs().sum() > 0 for name, grad in fast_grads.items() if "length_proj" in name)


def test_attention_is_softmax_over_projected_keys():
    """The paper's formula by hand, with the first L of n columns: softmax(Q (E K)^T / sqrt(d)) (F V)."""
    generator = torch.Generator().manual_seed(3)
    query, key, value = (torch.randn(1, 2, 9, 4, generator=generator) for _ in range(3))
    key_projection, value_projection = (torch.randn(2, 5, 12, generator=generator) for _ in range(2))
    out, weights = low_rank_reference(query, key, value, key_projection, value_projection, None, 0.5)
    for head in range(2):
        projected_keys = key_projection[head, :, :9] @ key[0, head]  # (k, d)
        projected_values = value_projection[head, :, :9] @ value[0, head]
        expected = torch.softmax(query[0, head] @ projected_keys.T * 0.5, -1) @ projected_values
        torch.testing.assert_close(out[0, :, head], expected, rtol=1e-5, atol=1e-6)
    assert weights.shape == (1, 2, 9, 5)


@pytest.mark.parametrize("sharing", MODES)
def test_padding_and_unused_columns_change_nothing(sharing):
    """A padded row equals the row alone; the columns of E/F beyond the input length are never read."""
    model = EfficientLinformerModel(small_config(projection_sharing=sharing)).eval()
    inputs = padded_inputs()
    with torch.no_grad():
        padded = model(**inputs).last_hidden_state[1, :15]
        alone = model(input_ids=inputs["input_ids"][1:, :15]).last_hidden_state[0]
        for name, parameter in model.named_parameters():
            if "length_proj" in name:
                parameter[:, :, 15:] = torch.randn_like(parameter[:, :, 15:])
        changed_tail = model(input_ids=inputs["input_ids"][1:, :15]).last_hidden_state[0]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(changed_tail, alone, rtol=0, atol=0)


def test_sharing_modes_are_the_same_maths_with_tied_values():
    """Copying weights down the chain none <- headwise <- key_value <- layerwise gives identical outputs: each mode
    is the previous one with its projections set equal, so the one layerwise parameter really serves every layer."""
    inputs = padded_inputs()
    torch.manual_seed(1)
    layerwise = EfficientLinformerModel(small_config(projection_sharing="layerwise")).eval()
    shared = layerwise.layers[0].self_attn.key_length_proj.weight
    outputs = {}
    for sharing in MODES:
        model = EfficientLinformerModel(small_config(projection_sharing=sharing)).eval()
        state = {k: v for k, v in layerwise.state_dict().items() if "length_proj" not in k}
        for name, parameter in model.named_parameters():
            if "length_proj" in name:
                state[name] = shared.expand_as(parameter).clone()
        model.load_state_dict(state)
        with torch.no_grad():
            outputs[sharing] = model(**inputs).last_hidden_state
    for sharing in MODES[:-1]:
        torch.testing.assert_close(outputs[sharing], outputs["layerwise"], rtol=1e-6, atol=1e-6)


def test_layerwise_projection_round_trips_and_is_needed_by_later_layers(tmp_path):
    model = EfficientLinformerModel(small_config(projection_sharing="layerwise")).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    inputs = padded_inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).last_hidden_state, model(**inputs).last_hidden_state,
                                   rtol=0, atol=0)
    hidden = torch.randn(1, 5, 16)
    with pytest.raises(ValueError, match="layer 0 first"):
        model.layers[1].self_attn(hidden)
    model.layers[0].self_attn(hidden)  # the owner runs on its own


def test_identity_projection_is_exact_attention_on_both_paths():
    config = small_config(identity_projection=True)
    model = EfficientLinformerModel(config).eval()
    backbone = hf_efficient.EfficientModel(hf_efficient.EfficientConfig(
        **{k: v for k, v in config.to_dict().items() if k in hf_efficient.EfficientConfig.__dataclass_fields__}))
    backbone.load_state_dict(model.state_dict(), strict=False)
    inputs = padded_inputs()
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        exact = backbone.eval()(**inputs).last_hidden_state
        for backend in ("blocked", "reference"):
            config.attention_backend = backend
            torch.testing.assert_close(model(**inputs).last_hidden_state[real], exact[real], rtol=1e-5, atol=1e-5)


def test_output_attentions_are_weights_over_the_k_rows():
    model = EfficientLinformerModel(small_config()).eval()
    inputs = padded_inputs()
    with torch.no_grad():
        output = model(**inputs, output_attentions=True)
        plain = model(**inputs).last_hidden_state
    weights = output.attentions[0]
    assert weights.shape == (2, 2, 23, 6)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(weights.sum(-1)[real[:, None].expand(-1, 2, -1)], torch.ones(2 * int(real.sum())))
    torch.testing.assert_close(output.last_hidden_state[real], plain[real], rtol=1e-5, atol=1e-5)


def test_too_long_input_and_flex_backend_raise():
    config = small_config(position_embedding_type="none")  # no position table: the attention's own check speaks
    model = EfficientLinformerModel(config).eval()
    with pytest.raises(ValueError, match="fixed maximum length.*max_position_embeddings=40"):
        model(input_ids=torch.randint(1, 61, (1, 41)))
    model(input_ids=torch.randint(1, 61, (1, 40)))
    config.attention_backend = "flex"
    with pytest.raises(ValueError, match="plain matmuls"):
        model(input_ids=torch.randint(1, 61, (1, 8)))


def test_average_pooling_rows():
    rows = average_pooling_rows(3, 8)  # segments [0, 2), [2, 5), [5, 8)
    expected = torch.tensor([[1 / 2] * 2 + [0] * 6, [0] * 2 + [1 / 3] * 3 + [0] * 3, [0] * 5 + [1 / 3] * 3])
    torch.testing.assert_close(rows, expected)
    torch.testing.assert_close(average_pooling_rows(5, 5), torch.eye(5))
    model = EfficientLinformerModel(small_config(projection_init="average_pooling", projection_sharing="none"))
    torch.testing.assert_close(model.layers[1].self_attn.value_length_proj.weight[1], average_pooling_rows(6, 40))


@pytest.mark.parametrize("sharing", ["headwise", "layerwise"])
def test_conversion_initialises_projections_and_reloads(tmp_path, sharing):
    save_tiny_bert(tmp_path / "bert", head=BertForMaskedLM, seed=1)
    result = convert(str(tmp_path / "bert"), "linformer", out=tmp_path / "out", max_length=64, projected_length=16,
                     projection_sharing=sharing)
    expected = (["model.layers.0.self_attn.key_length_proj.weight"] if sharing == "layerwise" else
                [f"model.layers.{i}.self_attn.{n}_length_proj.weight" for i in (0, 1) for n in ("key", "value")])
    assert result.new_parameters == expected
    assert "average pooling" in hf_efficient.VARIANTS["efficient_linformer"].new_parameters.__doc__
    assert result.fidelity.degenerate_overrides == {"identity_projection": True}
    assert result.fidelity.degenerate_max_abs_diff <= 1e-5
    assert result.fidelity.as_converted_max_abs_diff > 1e-6, "k = 16 < n = 64 really compresses"
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert type(model) is EfficientLinformerModel
    torch.testing.assert_close(model.layers[0].self_attn.key_length_proj.weight[0], average_pooling_rows(16, 64))
    with torch.no_grad():
        assert model(input_ids=torch.randint(1, 99, (2, 64))).last_hidden_state.shape == (2, 64, 32)


def test_pooling_start_is_closer_to_the_source_than_random(tmp_path):
    """As converted (n = 64, the check text fills it): average pooling is exact at k = n and closer than the
    paper's random start at k < n."""
    save_tiny_bert(tmp_path / "bert", seed=2)
    fidelity = {
        (k, init): convert(str(tmp_path / "bert"), "linformer", max_length=64, projected_length=k,
                           projection_init=init).fidelity.as_converted_max_abs_diff
        for k in (64, 16) for init in ("average_pooling", "random")
    }
    assert fidelity[64, "average_pooling"] <= 1e-5, "k = n: pooling is the identity, the source exactly"
    assert fidelity[16, "average_pooling"] * 10 < fidelity[16, "random"]
    assert fidelity[64, "random"] > 1e-3
