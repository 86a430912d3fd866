"""EfficientLongformer specifics: config validation, the exact pattern, any length, the flex block mask on CPU."""

import warnings

import pytest
import torch

from hf_efficient import EfficientLongformerConfig, EfficientLongformerForCausalLM, EfficientLongformerModel
from hf_efficient.attention.sliding_window import (
    band_keep,
    flex_block_mask,
    sliding_window_flex,
    sliding_window_reference,
)

SMALL = dict(vocab_size=61, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(attention_window=5), "positive even"),
        (dict(attention_window=0), "positive even"),
        (dict(attention_window=-4), "positive even"),
        (dict(attention_window=[4, 4, 4]), "one value per layer"),
        (dict(attention_dilation=0), "positive integer"),
    ],
)
def test_bad_config_says_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        EfficientLongformerConfig(**{**SMALL, "num_hidden_layers": 2, **overrides})


def test_weights_show_the_exact_pattern():
    """Window 4 (2 each side), dilation 2, a global token at 5: every row's kept keys, listed by hand."""
    config = EfficientLongformerConfig(**SMALL, attention_window=4, attention_dilation=2)
    model = EfficientLongformerModel(config).eval()
    ids = torch.randint(1, 61, (1, 12), generator=torch.Generator().manual_seed(0))
    is_global = torch.zeros_like(ids)
    is_global[0, 5] = 1
    with torch.no_grad():
        weights = model(input_ids=ids, global_attention_mask=is_global, output_attentions=True).attentions[0]
    seen = weights[0, 0] > 0
    assert seen[0].nonzero().flatten().tolist() == [0, 2, 4, 5]
    assert seen[9].nonzero().flatten().tolist() == [5, 7, 9, 11]
    assert seen[5].all(), "a global token attends everywhere"
    assert seen[:, 5].all(), "every token attends to a global token"
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))


@pytest.mark.parametrize("length", [1, 2, 3, 5, 7, 8, 9, 23])
@pytest.mark.parametrize("causal", [False, True])
def test_any_length_matches_the_reference(length, causal):
    config = EfficientLongformerConfig(**SMALL, attention_window=6, attention_dilation=1, is_causal=causal)
    torch.manual_seed(length)
    model = EfficientLongformerModel(config).eval()
    ids = torch.randint(1, 61, (2, length))
    outputs = {}
    for backend in ("reference", "blocked"):
        config.attention_backend = backend
        with torch.no_grad():
            outputs[backend] = model(input_ids=ids, use_cache=False).last_hidden_state
    torch.testing.assert_close(outputs["blocked"], outputs["reference"], rtol=1e-5, atol=1e-5)


def test_causal_global_token_does_not_see_the_future():
    config = EfficientLongformerConfig(**SMALL, attention_window=4, is_causal=True)
    model = EfficientLongformerModel(config).eval()
    ids = torch.randint(1, 61, (1, 20), generator=torch.Generator().manual_seed(1))
    is_global = torch.zeros_like(ids)
    is_global[0, 3] = 1
    changed = ids.clone()
    changed[0, 12] = changed[0, 12] % 60 + 1
    with torch.no_grad():
        before = model(input_ids=ids, global_attention_mask=is_global).last_hidden_state
        after = model(input_ids=changed, global_attention_mask=is_global).last_hidden_state
    torch.testing.assert_close(after[:, :12], before[:, :12], rtol=0, atol=1e-6)


def test_global_tokens_with_a_cache_raise():
    config = EfficientLongformerConfig(**SMALL, attention_window=4, is_causal=True)
    model = EfficientLongformerForCausalLM(config).eval()
    ids = torch.randint(1, 61, (1, 10))
    with pytest.raises(ValueError, match="use_cache=False"):
        model(input_ids=ids, global_attention_mask=torch.ones_like(ids), use_cache=True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dilation", [1, 3])
def test_flex_block_mask_matches_the_reference_on_cpu(causal, dilation):
    """FlexAttention runs forward on CPU (unfused): the block mask encodes exactly the reference pattern."""
    generator = torch.Generator().manual_seed(dilation)
    batch, heads, length, dim, one_sided = 2, 2, 45, 8, 3
    query, key, value = (torch.randn(batch, heads, length, dim, generator=generator) for _ in range(3))
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[1, 30:] = False
    is_global = torch.zeros(batch, length, dtype=torch.bool)
    is_global[0, [0, 20]] = True
    block_mask = flex_block_mask(length, one_sided, dilation, causal, keep, is_global, query.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flex = sliding_window_flex(query, key, value, block_mask, dim**-0.5, compiled=False)
    # flex computes the local rows (global rows are computed apart, with the global projections)
    reference, _ = sliding_window_reference(query, key, value, query, key, value, keep, is_global, one_sided,
                                            dilation, causal, dim**-0.5)
    local_rows = keep & ~is_global
    torch.testing.assert_close(flex[local_rows], reference[local_rows], rtol=1e-5, atol=1e-5)


def test_band_keep_dilated_causal():
    positions = torch.arange(10)
    keep = band_keep(positions, positions, one_sided=2, dilation=3, causal=True)
    assert keep[9].nonzero().flatten().tolist() == [3, 6, 9]
    assert keep[1].nonzero().flatten().tolist() == [1]


def test_global_first_token_equals_an_explicit_mask():
    config = EfficientLongformerConfig(**SMALL, attention_window=4)
    model = EfficientLongformerModel(config).eval()
    ids = torch.randint(1, 61, (2, 15), generator=torch.Generator().manual_seed(2))
    first = torch.zeros_like(ids)
    first[:, 0] = 1
    with torch.no_grad():
        explicit = model(input_ids=ids, global_attention_mask=first).last_hidden_state
        local_only = model(input_ids=ids).last_hidden_state
        config.global_first_token = True
        implied = model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(implied, explicit, rtol=0, atol=0)
    assert (implied - local_only).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["blocked", "reference"])
def test_global_marks_on_padding_are_dropped(backend):
    """Only padding marked global: the same as no global tokens (not a crash on zero global slots)."""
    config = EfficientLongformerConfig(**SMALL, attention_window=4, attention_backend=backend)
    model = EfficientLongformerModel(config).eval()
    ids = torch.randint(1, 61, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    on_padding = torch.zeros_like(ids)
    on_padding[1, 10] = 1
    with torch.no_grad():
        marked = model(input_ids=ids, attention_mask=mask, global_attention_mask=on_padding).last_hidden_state
        plain = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(marked[mask.bool()], plain[mask.bool()], rtol=0, atol=0)


def test_window_wider_than_the_input_stays_small():
    """A window far beyond the input (the degenerate check uses 2x the source length) is clamped to the input."""
    config = EfficientLongformerConfig(**SMALL, attention_window=1 << 20, attention_backend="blocked")
    model = EfficientLongformerModel(config).eval()
    ids = torch.randint(1, 61, (1, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        blocked = model(input_ids=ids).last_hidden_state
        config.attention_backend = "reference"
        reference = model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(blocked, reference, rtol=1e-5, atol=1e-5)


def test_knobs_given_to_from_pretrained_are_normalised_and_checked(tmp_path):
    EfficientLongformerModel(EfficientLongformerConfig(**SMALL, attention_window=4)).save_pretrained(tmp_path)
    model = EfficientLongformerModel.from_pretrained(tmp_path, attention_window=8)
    assert model.config.attention_window == [8] and model.layers[0].self_attn.one_sided == 4
    with pytest.raises(ValueError, match="positive even"):
        EfficientLongformerModel.from_pretrained(tmp_path, attention_window=5)
