"""EfficientPerformer specifics: the random features, the FAVOR+ estimate, the chunked causal form against the
explicit masked form, the constant-size decoding state, redrawing and save/load of the features, conversion."""

import math
import string

import pytest
import torch
from backend_agreement import assert_fast_path_within_rounding
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoModel,
    BertConfig,
    BertModel,
    BertTokenizerFast,
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

import hf_efficient
from hf_efficient import (
    EfficientPerformerConfig,
    EfficientPerformerForCausalLM,
    EfficientPerformerForMaskedLM,
    EfficientPerformerModel,
)
from hf_efficient.attention.favor import (
    SOFTMAX_EPSILON,
    draw_random_features,
    exact_softmax_reference,
    favor_bidirectional,
    favor_causal_chunked,
    favor_reference,
    relu_features,
    softmax_features,
)
from hf_efficient.conversion import convert
from hf_efficient.core.cache_argument import returned_cache
from hf_efficient.models.performer import FavorCache, FavorStateLayer, redraw_features

SMALL = dict(vocab_size=61, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
             initializer_range=0.05, nb_features=16, chunk_size=4)
DECODER = dict(norm_position="pre", embedding_norm=False, type_vocab_size=0, is_causal=True, use_pooler=False)
LLAMA = dict(DECODER, norm_type="rmsnorm", position_embedding_type="rotary", mlp_type="gated", hidden_act="silu",
             num_attention_heads=4, num_key_value_heads=2, attention_bias=False, mlp_bias=False)


def grouped_inputs(batch=2, kv_heads=2, groups=2, length=23, dim=8, features=32, scale=1.0, seed=0, kernel="softmax"):
    """Random q/k/v through random features, in the grouped layout the FAVOR+ functions take."""
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, kv_heads, groups, length, dim, generator=generator) * scale
    key = torch.randn(batch, kv_heads, 1, length, dim, generator=generator) * scale
    value = torch.randn(batch, kv_heads, 1, length, dim, generator=generator)
    projection = draw_random_features(features, dim, generator)
    if kernel == "relu":
        query_features, _ = relu_features(query, projection)
        key_features, log_scale = relu_features(key, projection)
    else:
        query_features, _ = softmax_features(query, projection, dim**-0.25)
        key_features, log_scale = softmax_features(key, projection, dim**-0.25)
    return query_features, key_features, log_scale, value


def padding_mask(batch: int, length: int) -> torch.Tensor:
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[-1, length // 2:] = False  # right padding
    if batch > 2:
        keep[1, :3] = False  # left padding
    return keep


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(kernel="gaussian"), "kernel"),
        (dict(feature_norms="unit"), "feature_norms"),
        (dict(nb_features=0), "positive integer"),
        (dict(nb_features=2.5), "positive integer"),
        (dict(chunk_size=0), "positive integer"),
        (dict(feature_seed=-1), "non-negative"),
        (dict(attention_backend="flex"), "no FlexAttention"),
        (dict(attention_backend="sparse"), "attention_backend"),
    ],
)
def test_bad_config_says_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        EfficientPerformerConfig(**{**SMALL, **overrides})


@pytest.mark.parametrize(("head_dim", "expected"), [(64, 266), (32, 110), (8, 16), (1, 1)])
def test_default_nb_features_is_d_log_d(head_dim, expected):
    config = EfficientPerformerConfig(hidden_size=head_dim * 2, num_attention_heads=2, nb_features=None)
    assert config.nb_features == expected


def test_random_features_orthogonal_blocks_and_row_norms():
    dim, features = 8, 20  # two full orthogonal blocks and a partial third
    chi = draw_random_features(features, dim, torch.Generator().manual_seed(0))
    assert chi.shape == (features, dim) and chi.dtype == torch.float32
    for block in (chi[:8], chi[8:16], chi[16:]):
        directions = block / block.norm(dim=1, keepdim=True)
        gram = directions @ directions.T
        torch.testing.assert_close(gram, torch.eye(len(block)), atol=1e-5, rtol=0)
    assert chi.norm(dim=1).std() > 0.1, "chi row norms vary like Gaussian rows'"
    regularized = draw_random_features(features, dim, torch.Generator().manual_seed(0), norms="regularized")
    torch.testing.assert_close(regularized.norm(dim=1), torch.full((features,), math.sqrt(dim)))
    iid = draw_random_features(features, dim, torch.Generator().manual_seed(0), orthogonal=False)
    assert (iid[:8] @ iid[:8].T - torch.diag((iid[:8] ** 2).sum(1))).abs().max() > 0.1
    again = draw_random_features(features, dim, torch.Generator().manual_seed(0))
    assert torch.equal(again, chi), "the draw is a function of the seed"


def test_chi_norms_match_gaussian_rows():
    """Rows of the orthogonal blocks have the length distribution of Gaussian rows: E|w|^2 = d."""
    dim = 16
    rows = draw_random_features(16 * 400, dim, torch.Generator().manual_seed(1))
    assert abs(rows.pow(2).sum(1).mean().item() - dim) < 0.3


def test_softmax_features_are_an_unbiased_positive_estimate():
    """Averaged over independent draws, phi(q).phi(k) -> exp(q.k / sqrt(d)) (within 4 standard errors: the
    estimator is heavy-tailed at large |q + k|); every feature is positive."""
    dim = 8
    generator = torch.Generator().manual_seed(2)
    query, key = torch.randn(4, dim, generator=generator) * 0.7, torch.randn(4, dim, generator=generator) * 0.7
    exact = torch.exp(query @ key.T * dim**-0.5)
    estimates = []
    for _ in range(400):
        projection = draw_random_features(64, dim, generator)
        (query_features, query_scale), (key_features, key_scale) = (
            softmax_features(x, projection, dim**-0.25) for x in (query, key)
        )
        assert (query_features > 0).all() and (key_features > 0).all()
        phi_query = query_features * query_scale.exp()[:, None]
        phi_key = key_features * key_scale.exp()[:, None]
        estimates.append(phi_query @ phi_key.T)
    estimates = torch.stack(estimates)
    standard_error = estimates.std(0) / math.sqrt(len(estimates))
    assert ((estimates.mean(0) - exact).abs() / standard_error).max() < 4
    assert ((estimates.mean(0) - exact) / exact).abs().median() < 0.02


def test_stabilised_features_equal_the_literal_formula():
    """exp(c) u = (exp(W x - |x|^2/2) + eps exp(c)) / sqrt(m): the paper's phi plus the per-token eps; and inputs
    whose literal exp would overflow float32 still give finite features."""
    dim, features = 8, 24
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, dim, generator=generator)
    projection = draw_random_features(features, dim, generator)
    u, log_scale = softmax_features(x, projection, dim**-0.25)
    scaled = x.double() * dim**-0.25
    exponent = scaled @ projection.double().T - scaled.pow(2).sum(-1, keepdim=True) / 2
    literal = (exponent.exp() + SOFTMAX_EPSILON * log_scale.double().exp()[:, None]) / math.sqrt(features)
    torch.testing.assert_close((u.double() * log_scale.double().exp()[:, None]), literal, rtol=1e-5, atol=0)
    huge = x * 200  # exp(W x) ~ exp(2000): the literal form overflows
    u, log_scale = softmax_features(huge, projection, dim**-0.25)
    assert torch.isfinite(u).all() and torch.isfinite(log_scale).all() and u.max() <= (1 + 1e-6) / math.sqrt(24)


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64])
def test_chunked_causal_equals_the_explicit_masked_form(chunk_size, padded, kernel):
    """Chunked prefix sums = explicit masked phi(Q) phi(K)^T, row-normalised (GQA groups, random inputs, fp32)."""
    query_features, key_features, log_scale, value = grouped_inputs(batch=3, kernel=kernel, scale=1.5)
    keep = padding_mask(3, value.shape[-2]) if padded else None
    reference, _ = favor_reference(query_features, key_features, log_scale, value, keep, causal=True)
    chunked, _ = favor_causal_chunked(query_features, key_features, log_scale, value, keep, chunk_size)
    real = 1 if keep is None else keep[:, None, None, :, None]  # padded queries' rows are zeroed by the layer
    torch.testing.assert_close(chunked * real, reference * real, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padded", [False, True])
def test_bidirectional_equals_the_explicit_form(padded):
    query_features, key_features, log_scale, value = grouped_inputs(batch=3, scale=1.5)
    keep = padding_mask(3, value.shape[-2]) if padded else None
    reference, weights = favor_reference(query_features, key_features, log_scale, value, keep, causal=False)
    fast = favor_bidirectional(query_features, key_features, log_scale, value, keep)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
    if padded:
        assert (weights[2, ..., value.shape[-2] // 2:] == 0).all(), "padded keys get no weight"


def test_chunked_causal_equals_the_papers_prefix_sums():
    """The paper's Algorithm 1 literally (float64, no stabilisation, S_i = sum_{j<=i} phi(k_j) v_j^T kept for every
    position) against the chunked form, with its gradients."""
    query_features, key_features, log_scale, value = grouped_inputs(scale=0.8)
    query_features.requires_grad_(True)
    phi_key = key_features.double() * log_scale.double().exp()[..., None]
    prefix = torch.cumsum(phi_key[..., :, None] * value.double()[..., None, :], dim=-3)  # (B,Hkv,1,N,m,d)
    numerator = (query_features.double()[..., None, :] @ prefix).squeeze(-2)
    denominator = (query_features.double() * torch.cumsum(phi_key, dim=-2)).sum(-1, keepdim=True)
    literal = numerator / denominator
    chunked, _ = favor_causal_chunked(query_features, key_features, log_scale, value, None, 5)
    torch.testing.assert_close(chunked.double(), literal, rtol=1e-5, atol=1e-6)
    (grad_literal,) = torch.autograd.grad(literal.pow(2).sum(), query_features)
    (grad_chunked,) = torch.autograd.grad(chunked.pow(2).sum(), query_features)
    torch.testing.assert_close(grad_chunked, grad_literal.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_more_features_approach_exact_softmax(causal):
    """FAVOR+ estimates softmax attention: the error to the exact softmax falls as the features grow."""
    dim, length = 8, 19
    generator = torch.Generator().manual_seed(4)
    query, key, value = (torch.randn(1, 2, length, dim, generator=generator) * 0.6 for _ in range(3))
    exact = exact_softmax_reference(query, key, value, None, causal, dim**-0.5)
    errors = []
    for features in (16, 256, 16384):
        projection = draw_random_features(features, dim, torch.Generator().manual_seed(5))
        query_features, _ = softmax_features(query[:, :, None], projection, dim**-0.25)
        key_features, log_scale = softmax_features(key[:, :, None], projection, dim**-0.25)
        if causal:
            out, _ = favor_causal_chunked(query_features, key_features, log_scale, value[:, :, None], None, 4)
        else:
            out = favor_bidirectional(query_features, key_features, log_scale, value[:, :, None], None)
        errors.append((out[:, :, 0] - exact).abs().max().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < min(0.05, errors[0] / 5), errors


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_model_chunked_path_equals_reference_any_chunk(style, chunk_size):
    """Rotary + GQA (llama) and learned positions (gpt2), padded batch: blocked = reference, any chunk size."""
    config = EfficientPerformerConfig(**{**SMALL, **(LLAMA if style == "llama" else DECODER), "chunk_size": chunk_size})
    torch.manual_seed(chunk_size)
    model = EfficientPerformerModel(config).eval()
    ids = torch.randint(1, 61, (3, 17))
    mask = padding_mask(3, 17).long()
    outputs = {}
    for backend in ("reference", "blocked"):
        config.attention_backend = backend
        with torch.no_grad():
            outputs[backend] = model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(outputs["blocked"][real], outputs["reference"][real], rtol=1e-5, atol=1e-5)


def test_relu_kernel_is_another_kernel():
    config = EfficientPerformerConfig(**SMALL)
    torch.manual_seed(0)
    model = EfficientPerformerModel(config).eval()
    ids = torch.randint(1, 61, (2, 12))
    with torch.no_grad():
        softmax = model(input_ids=ids).last_hidden_state
        config.kernel = "relu"
        relu = model(input_ids=ids).last_hidden_state
        weights = model(input_ids=ids, output_attentions=True).attentions[0]
    assert torch.isfinite(relu).all() and (relu - softmax).abs().max() > 1e-3
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))


def test_output_attentions_gives_the_implied_weights():
    config = EfficientPerformerConfig(**SMALL, **DECODER)
    model = EfficientPerformerForCausalLM(config).eval()
    ids = torch.randint(1, 61, (2, 10))
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, use_cache=True)
        weights = out.attentions[0]
        assert weights.shape == (2, 2, 10, 10) and (weights.triu(1) == 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
        # the reference path also leaves the state to continue from
        step = model(input_ids=ids[:, -1:], cache=returned_cache(out))
        full = model(input_ids=torch.cat([ids, ids[:, -1:]], 1), use_cache=False).logits[:, -1]
        torch.testing.assert_close(step.logits[:, 0], full, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="use_cache=False"):
            model(input_ids=ids[:, -1:], cache=returned_cache(step), output_attentions=True)


def decoder(style: str = "gpt2", **overrides) -> EfficientPerformerForCausalLM:
    config = EfficientPerformerConfig(**{**SMALL, **(LLAMA if style == "llama" else DECODER), **overrides})
    torch.manual_seed(0)
    return EfficientPerformerForCausalLM(config).eval()


def cache_numel(cache: FavorCache) -> int:
    return sum(t.numel() for layer in cache.layers for t in layer.state.tensors())


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_decoding_state_has_constant_size(style):
    """The cache holds (S, z, r) per layer and KV head: B * Hkv * (m d + m + 1) numbers, whatever the length."""
    model = decoder(style)
    config = model.config
    ids = torch.randint(1, 61, (2, 40))
    with torch.no_grad():
        out = model(input_ids=ids[:, :3], use_cache=True)
        cache = returned_cache(out)
        assert isinstance(cache, FavorCache) and cache.get_seq_length() == 3
        expected = config.num_hidden_layers * 2 * config.num_key_value_heads * (
            config.nb_features * config.head_dim + config.nb_features + 1)
        sizes = {cache_numel(cache)}
        for position in range(3, 40):
            cache = returned_cache(model(input_ids=ids[:, position:position + 1], cache=cache))
            sizes.add(cache_numel(cache))
        assert sizes == {expected} and cache.get_seq_length() == 40


def test_decoding_cost_does_not_grow_with_the_context():
    """The FLOPs of one new token are the same after 4 or after 60 tokens of context (no keys are revisited)."""
    model = decoder("llama")
    ids = torch.randint(1, 61, (1, 61))
    flops = []
    with torch.no_grad():
        for context in (4, 60):
            cache = returned_cache(model(input_ids=ids[:, :context], use_cache=True))
            with FlopCounterMode(display=False) as counter:
                model(input_ids=ids[:, context:context + 1], cache=cache)
            flops.append(counter.get_total_flops())
    assert flops[0] == flops[1] > 0


def test_chunked_causal_cost_is_linear_in_length():
    """4x the tokens cost at most 4x the FLOPs (an N^2 term would give 16x): the chunks' prefix sum is a scan of
    fixed-size groups, linear in the number of chunks once there are more than a group of them."""
    flops = []
    for length in (1024, 4096):
        query_features, key_features, log_scale, value = grouped_inputs(batch=1, length=length, features=16)
        with FlopCounterMode(display=False) as counter:
            favor_causal_chunked(query_features, key_features, log_scale, value, None, 8)
        flops.append(counter.get_total_flops())
    assert 0 < flops[1] <= 4 * flops[0]


def test_padded_batch_decodes_like_the_full_pass():
    """Left padding in the batch, prefill then steps with the growing attention mask = full passes."""
    model = decoder("llama")
    ids = torch.randint(1, 61, (3, 16))
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :7] = 0
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        cache = returned_cache(model(input_ids=ids[:, :9], attention_mask=mask[:, :9], use_cache=True))
        for position in range(9, 16):
            step = model(input_ids=ids[:, position:position + 1], attention_mask=mask[:, :position + 1],
                         cache=cache)
            cache = returned_cache(step)
            torch.testing.assert_close(step.logits[:, 0], full[:, position], rtol=1e-5, atol=1e-5)


def test_generate_refits_an_empty_dynamic_cache_and_refuses_a_filled_one():
    """generate() passes an empty DynamicCache: it is refitted in place with FAVOR+ state layers, so a caller who
    keeps passing the same object continues from the state too."""
    model = decoder("gpt2")
    ids = torch.randint(1, 61, (1, 8))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits[:, -1]
        kept = DynamicCache()
        model(input_ids=ids[:, :5], cache=kept)
        assert all(isinstance(layer, FavorStateLayer) for layer in kept.layers) and kept.get_seq_length() == 5
        model(input_ids=ids[:, 5:7], cache=kept)
        torch.testing.assert_close(model(input_ids=ids[:, 7:], cache=kept).logits[:, 0], full,
                                   rtol=1e-5, atol=1e-5)
        generated = model.generate(ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
        assert all(isinstance(layer, FavorStateLayer) for layer in returned_cache(generated).layers)
        assert returned_cache(generated).get_seq_length() == 11
        filled = DynamicCache()
        filled.update(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8), 0)
        with pytest.raises(ValueError, match="FavorCache"):
            model(input_ids=ids, cache=filled)


def test_forward_never_redraws_and_redraw_is_explicit(tmp_path):
    model = EfficientPerformerForMaskedLM(EfficientPerformerConfig(**SMALL)).eval()
    ids = torch.randint(1, 61, (2, 12))
    with torch.no_grad():
        first, second = model(input_ids=ids).logits, model(input_ids=ids).logits
        assert torch.equal(first, second)
        layers = [layer.self_attn for layer in model.model.layers]
        assert not torch.equal(layers[0].random_features, layers[1].random_features), "each layer its own draw"
        before = layers[0].random_features.clone()
        redraw_features(model, seed=7)
        assert not torch.equal(layers[0].random_features, before)
        redrawn = model(input_ids=ids).logits
        assert (redrawn - first).abs().max() > 1e-4
        model.model.redraw_features(seed=7)  # the model-level method: the same seed gives the same draw
        torch.testing.assert_close(model(input_ids=ids).logits, redrawn, rtol=0, atol=0)
        model.save_pretrained(tmp_path)
        loaded = AutoModel.from_pretrained(tmp_path).eval()  # the saved (redrawn) features, not the config's seed
        assert torch.equal(loaded.layers[0].self_attn.random_features, layers[0].random_features)
        torch.testing.assert_close(loaded(input_ids=ids).last_hidden_state,
                                   model.model(input_ids=ids).last_hidden_state, rtol=0, atol=0)
        layers[0].redraw_features()  # no seed: from torch's RNG
        assert not torch.equal(layers[0].random_features, loaded.layers[0].self_attn.random_features)


def test_features_depend_on_feature_seed():
    a = EfficientPerformerModel(EfficientPerformerConfig(**SMALL, feature_seed=0))
    b = EfficientPerformerModel(EfficientPerformerConfig(**SMALL, feature_seed=0))
    c = EfficientPerformerModel(EfficientPerformerConfig(**SMALL, feature_seed=1))
    features = [m.layers[0].self_attn.random_features for m in (a, b, c)]
    assert torch.equal(features[0], features[1]) and not torch.equal(features[0], features[2])


def test_a_state_dict_with_other_nb_features_keeps_this_models_draw():
    """The full-attention twin (8192 features) loads a model's state dict: weights load, features stay its own."""
    model = EfficientPerformerModel(EfficientPerformerConfig(**SMALL))
    twin = EfficientPerformerModel(EfficientPerformerConfig(**{**SMALL, "nb_features": 64}))
    own = twin.layers[0].self_attn.random_features.clone()
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin.layers[0].self_attn.random_features, own) and own.shape == (64, 8)
    assert torch.equal(twin.layers[0].self_attn.q_proj.weight, model.layers[0].self_attn.q_proj.weight)


# ---------------------------------------------------------------- conversion
TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase,
          *[f"##{c}" for c in string.ascii_lowercase], *".,;:-'!?", "the", "of", "and", "to"]


def test_bert_converts_to_a_performer(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(TOKENS + [f"word{i}" for i in range(99 - len(TOKENS))]))
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).eval().save_pretrained(folder)
    result = convert(str(folder), "performer", out=tmp_path / "out", max_length=128, nb_features=16)
    assert type(result.model) is hf_efficient.EfficientPerformerModel and result.new_parameters == []
    fidelity = result.fidelity  # measured: 1.4e-5 with 8192 features, 6.0e-4 as converted (16), 64 tokens of text
    assert fidelity.degenerate_overrides == {"nb_features": 8192, "kernel": "softmax"}
    assert fidelity.degenerate_max_abs_diff <= 1e-4
    assert fidelity.as_converted_max_abs_diff > 10 * fidelity.degenerate_max_abs_diff
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert type(model) is hf_efficient.EfficientPerformerModel and model.config.max_position_embeddings == 128
    ids = torch.randint(1, 99, (1, 128))
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(hidden, result.model(input_ids=ids).last_hidden_state, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_sources_convert_to_a_causal_performer(tmp_path, family):
    torch.manual_seed(2)
    if family == "gpt2":
        source = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    else:
        source = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                              max_position_embeddings=64))
    source.eval().save_pretrained(tmp_path / family)
    result = convert(str(tmp_path / family), "performer", out=tmp_path / "out", max_length=128, nb_features=16)
    model = result.model
    assert type(model) is hf_efficient.EfficientPerformerForCausalLM and model.config.is_causal
    # measured: gpt2 1.3e-4 (as converted, 16 features: 2.9e-3), llama 5.3e-4 (9.6e-3); logits, 64 random ids
    fidelity = result.fidelity
    assert fidelity.degenerate_max_abs_diff <= 2e-3
    assert fidelity.as_converted_max_abs_diff > 5 * fidelity.degenerate_max_abs_diff
    loaded = AutoModel.from_pretrained(tmp_path / "out")
    assert type(loaded) is hf_efficient.EfficientPerformerModel
    ids = torch.randint(1, 99, (1, 40))
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=5, do_sample=False)
        greedy = ids
        for _ in range(5):
            next_token = model(input_ids=greedy, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            greedy = torch.cat([greedy, next_token], dim=1)
    assert torch.equal(generated, greedy)


def test_compiled_backend_refuses_a_cpu_input():
    model = EfficientPerformerModel(EfficientPerformerConfig(**SMALL, attention_backend="compiled"))
    with pytest.raises(ValueError, match="CUDA only"):
        model(input_ids=torch.randint(1, 61, (1, 9)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
@pytest.mark.parametrize("style", ["bert", "llama"])
def test_compiled_path_equals_blocked_at_model_scale(style):
    """MiniLM-like head_dim 32 with d ln d features, 700 tokens (partial causal chunks), a padded batch, fp32:
    the torch.compile path equals the eager blocked path (outputs to 1e-5; outputs and every gradient as close as
    fp32 rounding lets the naive reference come, see tests/backend_agreement.py)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    overrides = dict(hidden_size=128, num_attention_heads=4, nb_features=None, chunk_size=128,
                     max_position_embeddings=1024, vocab_size=61)
    config = EfficientPerformerConfig(**{**SMALL, **(LLAMA if style == "llama" else {}), **overrides})
    torch.manual_seed(0)
    model = EfficientPerformerModel(config).cuda().train()
    ids = torch.randint(1, 61, (2, 700), device="cuda")
    mask = torch.ones(2, 700, dtype=torch.long, device="cuda")
    mask[1, 650:] = 0
    inputs, real = {"input_ids": ids, "attention_mask": mask, "use_cache": False}, mask.bool()
    assert_fast_path_within_rounding(model, "compiled", inputs, real)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
def test_compiled_path_generates_like_the_blocked_path():
    config = EfficientPerformerConfig(**{**SMALL, **LLAMA, "hidden_size": 64, "nb_features": None})
    torch.manual_seed(0)
    model = EfficientPerformerForCausalLM(config).cuda().eval()
    ids = torch.randint(1, 61, (2, 30), device="cuda")
    generated = {}
    for backend in ("blocked", "compiled"):
        config.attention_backend = backend
        generated[backend] = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(generated["compiled"], generated["blocked"])
