"""The chunk-parallel causal form shared by linear attention and causal FAVOR+ (attention/causal_prefix.py): the
rescaled scan against its float64 definition, causal FAVOR+ against the explicit (N x N) formula with large logits
(outputs and gradients, fp32), and stability where one global reference would fail."""

import pytest
import torch

from hf_efficient.attention.causal_prefix import FLOOR, causal_prefix_attention, rescaled_cumsum
from hf_efficient.attention.favor import draw_random_features, favor_causal_chunked, favor_reference, softmax_features


@pytest.mark.parametrize("count", [1, 5, 64, 65, 200, 4200])
def test_rescaled_cumsum_is_its_definition(count):
    """prefix_t = sum_{m<=t} exp(s_m - p_t) x_m, p_t = max_{m<=t} s_m, in float64, for one group, several groups and
    groups of groups (4200 > 64^2); log scales spread over 1000 (far past exp's float32 range) and empty terms."""
    generator = torch.Generator().manual_seed(count)
    values = torch.randn(2, count, 3, generator=generator)
    scales = (torch.rand(2, count, generator=generator) - 0.5) * 1000
    scales[:, ::7] = FLOOR  # empty terms (padding): their values are zero
    values[:, ::7] = 0
    prefix, reference = rescaled_cumsum(values, scales)
    values, scales = values.double(), scales.double()
    running = scales.cummax(-1).values
    literal = torch.stack([(torch.exp(scales[:, : t + 1] - running[:, t : t + 1])[..., None] * values[:, : t + 1])
                           .sum(1) for t in range(count)], dim=1)
    torch.testing.assert_close(reference, running.float(), rtol=0, atol=0)
    torch.testing.assert_close(prefix.double(), literal, rtol=1e-5, atol=1e-5)


def favor_inputs(scale, batch=3, kv_heads=2, groups=2, length=37, dim=8, features=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, kv_heads, groups, length, dim, generator=generator) * scale
    key = torch.randn(batch, kv_heads, 1, length, dim, generator=generator) * scale
    value = torch.randn(batch, kv_heads, 1, length, dim, generator=generator)
    return query, key, value, draw_random_features(features, dim, generator)


def padding(batch, length):
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[-1, length - 9:] = False  # right padding
    keep[1, :5] = False  # left padding
    return keep


@pytest.mark.parametrize("scale", [0.5, 4.5])
@pytest.mark.parametrize("chunk_size", [1, 4, 16, 64])
@pytest.mark.parametrize("padded", [False, True])
def test_causal_favor_equals_the_explicit_formula_outputs_and_gradients(scale, chunk_size, padded):
    """Chunk-parallel causal FAVOR+ = the explicit masked (N x N) kernel matrix, row-normalised, from the raw q, k, v
    through the features (GQA, padding on both sides, fp32): outputs to 1e-5 and the gradients of q, k and v.
    At scale 4.5 the attention logits q.k / sqrt(d) reach 50 and more."""
    query, key, value, projection = favor_inputs(scale)
    dim = query.shape[-1]
    assert (query[:, :, :1] @ key.transpose(-1, -2) * dim**-0.5).abs().max() > 50 or scale < 1
    keep = padding(3, query.shape[-2]) if padded else None
    real = 1.0 if keep is None else keep[:, None, None, :, None]
    results = []
    for path in ("reference", "chunked"):
        inputs = [x.clone().requires_grad_(True) for x in (query, key, value)]
        query_features, _ = softmax_features(inputs[0], projection, dim**-0.25)
        key_features, log_scale = softmax_features(inputs[1], projection, dim**-0.25)
        if path == "reference":
            out, _ = favor_reference(query_features, key_features, log_scale, inputs[2], keep, causal=True)
        else:
            out, _ = favor_causal_chunked(query_features, key_features, log_scale, inputs[2], keep, chunk_size)
        out = out * real  # padding queries' rows are zeroed by the layer
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
        grads = torch.autograd.grad((out * weights).sum(), inputs)
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
        results.append((out.detach(), grads))
    (reference, reference_grads), (chunked, chunked_grads) = results
    torch.testing.assert_close(chunked, reference, rtol=1e-5, atol=1e-5)
    for name, fast, slow in zip("qkv", chunked_grads, reference_grads, strict=True):
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5 * slow.abs().max().item(), msg=name)


def test_causal_favor_stays_exact_across_a_log_scale_gap_no_global_reference_survives():
    """Keys 0..39 with log scales near -500 and later keys near +50: with one reference for the whole sequence the
    early queries' sums underflow to 0 / 0. Here every prefix is relative to its own running max, so the early
    outputs equal those of the first 40 tokens alone, and the whole equals the explicit formula."""
    generator = torch.Generator().manual_seed(5)
    batch, kv_heads, groups, length, features, dim = 2, 2, 2, 96, 16, 8
    query_features = torch.rand(batch, kv_heads, groups, length, features, generator=generator) + 1e-3
    key_features = torch.rand(batch, kv_heads, 1, length, features, generator=generator) + 1e-3
    value = torch.randn(batch, kv_heads, 1, length, dim, generator=generator)
    log_scale = torch.randn(batch, kv_heads, 1, length, generator=generator) * 3
    log_scale[..., :40] -= 500
    log_scale[..., 40:] += 50
    whole, _ = favor_causal_chunked(query_features, key_features, log_scale, value, None, 16)
    first, _ = favor_causal_chunked(query_features[..., :40, :], key_features[..., :40, :], log_scale[..., :40],
                                    value[..., :40, :], None, 16)
    reference, _ = favor_reference(query_features, key_features, log_scale, value, None, causal=True)
    assert torch.isfinite(whole).all()
    torch.testing.assert_close(whole[..., :40, :], first, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_scales", [False, True])
def test_state_after_a_prefix_continues_like_one_pass(with_scales):
    """Prefill in one call, then pieces of 1, 3 and 20 tokens from the returned state (the decoding cache): the
    same outputs and final state as one pass (the linear-attention form without log scales, FAVOR+'s with)."""
    generator = torch.Generator().manual_seed(6)
    batch, kv_heads, groups, length, features, dim = 2, 2, 3, 50, 12, 8
    query_features = torch.rand(batch, kv_heads, groups, length, features, generator=generator)
    key_features = torch.rand(batch, kv_heads, length, features, generator=generator)
    value = torch.randn(batch, kv_heads, length, dim, generator=generator)
    log_scale = torch.randn(batch, kv_heads, length, generator=generator) * 20 if with_scales else None

    def ratio(numerator, denominator):
        return numerator / denominator[..., None]

    numerator, denominator, whole_state = causal_prefix_attention(query_features, key_features, value, 8, log_scale)
    pieces, state = [], None
    for start, stop in [(0, 26), (26, 27), (27, 30), (30, 50)]:
        scales = None if log_scale is None else log_scale[..., start:stop]
        out_numerator, out_denominator, state = causal_prefix_attention(
            query_features[..., start:stop, :], key_features[..., start:stop, :], value[..., start:stop, :], 8,
            scales, state)
        pieces.append(ratio(out_numerator, out_denominator))
    torch.testing.assert_close(torch.cat(pieces, dim=-2), ratio(numerator, denominator), rtol=1e-5, atol=1e-5)
    sums, reference = state
    if with_scales:  # the same state up to its reference
        sums = sums * torch.exp(reference - whole_state[1])[..., None, None]
    torch.testing.assert_close(sums, whole_state[0], rtol=1e-5, atol=1e-5)
