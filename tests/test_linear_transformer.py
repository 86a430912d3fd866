"""EfficientLinearTransformer specifics: the maths against explicit forms, the fixed-size decoding state, numerics,
config errors and conversion from BERT / GPT-2 / Llama."""

import pytest
import torch
from backend_agreement import assert_fast_path_within_rounding, lm_logits_and_gradients
from test_conversion import save_tiny_bert
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertForMaskedLM,
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    StaticCache,
)
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

import hf_efficient
from hf_efficient import (
    EfficientLinearTransformerConfig,
    EfficientLinearTransformerForCausalLM,
    EfficientLinearTransformerModel,
)
from hf_efficient.attention.linear import (
    elu_feature_map,
    linear_attention_bidirectional,
    linear_attention_causal_chunked,
    linear_attention_reference,
)
from hf_efficient.conversion import convert
from hf_efficient.core.attention import repeat_kv
from hf_efficient.core.cache_argument import returned_cache
from hf_efficient.models.linear_transformer import LinearAttentionCache, LinearAttentionStateLayer

SMALL = dict(vocab_size=61, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=32, max_position_embeddings=128, hidden_dropout_prob=0.0, pad_token_id=0)
LLAMA = dict(norm_type="rmsnorm", norm_position="pre", position_embedding_type="rotary", mlp_type="gated",
             hidden_act="silu", embedding_norm=False, type_vocab_size=0, is_causal=True, use_pooler=False,
             attention_bias=False, mlp_bias=False, lm_head_bias=False, masked_lm_transform=False)


def random_features(batch=2, heads=4, kv_heads=2, length=29, dim=8, seed=0):
    """phi(q) (batch, heads, N, d), phi(k), v (batch, kv_heads, N, d) from random (not zero) projections."""
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, heads, length, dim, generator=generator)
    key, value = (torch.randn(batch, kv_heads, length, dim, generator=generator) for _ in range(2))
    return elu_feature_map(query), elu_feature_map(key), value


def padding(batch, length):
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[-1, length - 6:] = False  # right padding
    keep[0, :3] = False  # left padding
    return keep


def naive_causal(query_features, key_features, value, keep, eps):
    """The paper's per-token form: out_i = sum_{j<=i} phi(q_i).phi(k_j) v_j / (sum_{j<=i} phi(q_i).phi(k_j) + eps)."""
    outputs = []
    for i in range(query_features.shape[2]):
        similarity = (query_features[:, :, i : i + 1] * key_features[:, :, : i + 1]).sum(-1)  # (batch, heads, i+1)
        similarity = similarity * keep[:, None, : i + 1]
        outputs.append((similarity[..., None] * value[:, :, : i + 1]).sum(2) / (similarity.sum(-1, keepdim=True) + eps))
    return torch.stack(outputs, dim=1)  # (batch, N, heads, d)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 29, 64])
def test_chunked_causal_equals_the_explicit_masked_form(chunk_size):
    query_features, key_features, value = random_features()
    keep = padding(2, 29)
    groups = 2
    reference, weights = linear_attention_reference(query_features, repeat_kv(key_features, groups),
                                                    repeat_kv(value, groups), keep, True, 1e-6)
    chunked, _ = linear_attention_causal_chunked(query_features, key_features * keep[:, None, :, None], value, 1e-6,
                                                 chunk_size)
    real = keep
    torch.testing.assert_close(chunked[real], reference[real], rtol=1e-5, atol=1e-5)
    loop = naive_causal(query_features, repeat_kv(key_features, groups), repeat_kv(value, groups), keep, 1e-6)
    torch.testing.assert_close(reference[real], loop[real], rtol=1e-5, atol=1e-5)
    assert torch.equal(weights.triu(1), torch.zeros_like(weights)), "no weight on later keys"
    assert not weights[-1, :, :, -6:].any(), "no weight on padding keys"


def test_bidirectional_equals_the_explicit_form():
    query_features, key_features, value = random_features(seed=1)
    keep = padding(2, 29)
    reference, weights = linear_attention_reference(query_features, repeat_kv(key_features, 2), repeat_kv(value, 2),
                                                    keep, False, 1e-6)
    fast = linear_attention_bidirectional(query_features, key_features * keep[:, None, :, None], value, 1e-6)
    torch.testing.assert_close(fast[keep], reference[keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights[0, :, 5].sum(-1), torch.ones(4), rtol=1e-5, atol=1e-5)


def test_state_carried_across_calls_equals_one_pass():
    """Prefill then one-token steps (the recurrent form) give the single pass, and the final states agree."""
    query_features, key_features, value = random_features(length=21, seed=2)
    whole, whole_state = linear_attention_causal_chunked(query_features, key_features, value, 1e-6, 4)
    pieces, state = [], None
    for start, stop in [(0, 9), *[(i, i + 1) for i in range(9, 21)]]:
        out, state = linear_attention_causal_chunked(query_features[:, :, start:stop], key_features[:, :, start:stop],
                                                     value[:, :, start:stop], 1e-6, 4, state)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-5, atol=1e-5)
    for carried, single in zip(state, whole_state, strict=True):
        torch.testing.assert_close(carried, single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_model_paths_agree_on_any_length(causal):
    torch.manual_seed(3)
    config = EfficientLinearTransformerConfig(**SMALL, is_causal=causal, causal_chunk_size=5)
    model = EfficientLinearTransformerModel(config).eval()
    for length in (1, 2, 5, 11):
        ids = torch.randint(1, 61, (2, length))
        outputs = {}
        for backend in ("reference", "blocked"):
            config.attention_backend = backend
            with torch.no_grad():
                outputs[backend] = model(input_ids=ids, use_cache=False).last_hidden_state
        torch.testing.assert_close(outputs["blocked"], outputs["reference"], rtol=1e-5, atol=1e-5)


def test_small_denominator_stays_finite():
    """Queries far negative make phi(q) ~ e^-60: phi(q)^T z underflows towards 0 and eps keeps the output finite."""
    query_features, key_features, value = random_features(length=12, seed=4)
    query_features = elu_feature_map(torch.full_like(query_features, -60.0))
    for out in (linear_attention_bidirectional(query_features, key_features, value, 1e-6),
                linear_attention_causal_chunked(query_features, key_features, value, 1e-6, 5)[0]):
        assert torch.isfinite(out).all()
    empty_keys = torch.zeros_like(key_features)  # a row whose every key is padding: 0 / eps = 0, never NaN
    assert torch.equal(linear_attention_bidirectional(query_features, empty_keys, value, 1e-6),
                       torch.zeros(2, 12, 4, 8))


def test_bf16_inputs_accumulate_in_float32():
    query, key, value = (torch.randn(1, 2, 300, 8, generator=torch.Generator().manual_seed(s)) for s in range(3))
    exact, (state, normaliser) = linear_attention_causal_chunked(elu_feature_map(query), elu_feature_map(key), value,
                                                                 1e-6, 16)
    low, (low_state, _) = linear_attention_causal_chunked(elu_feature_map(query.bfloat16()),
                                                          elu_feature_map(key.bfloat16()), value.bfloat16(), 1e-6, 16)
    assert low.dtype == low_state.dtype == torch.float32, "states and sums stay float32"
    assert (low - exact).abs().max() < 5e-2  # only the inputs' bf16 rounding remains
    torch.testing.assert_close(low_state, state, rtol=2e-2, atol=5e-1)


def test_model_runs_in_bf16():
    config = EfficientLinearTransformerConfig(**SMALL, **LLAMA)
    model = EfficientLinearTransformerForCausalLM(config).eval().to(torch.bfloat16)
    with torch.no_grad():
        logits = model(input_ids=torch.randint(1, 61, (2, 30)), use_cache=False).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_decoding_state_has_constant_size(style):
    overrides = LLAMA if style == "llama" else dict(is_causal=True, norm_position="pre", use_pooler=False)
    model = EfficientLinearTransformerForCausalLM(EfficientLinearTransformerConfig(**SMALL, **overrides)).eval()
    ids = torch.randint(1, 61, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cache = returned_cache(model(input_ids=ids[:, :3]))
        assert isinstance(cache, LinearAttentionCache) and len(cache.layers) == 2
        sizes = [[(tuple(layer.state.shape), tuple(layer.normaliser.shape)) for layer in cache.layers]]
        for position in range(3, 16):
            cache = returned_cache(model(input_ids=ids[:, position : position + 1], cache=cache))
            sizes.append([(tuple(layer.state.shape), tuple(layer.normaliser.shape)) for layer in cache.layers])
            assert cache.get_seq_length() == position + 1
    head_dim = 16 // 4
    assert all(size == [((2, 2, head_dim, head_dim), (2, 2, head_dim))] * 2 for size in sizes), "S and z only"
    assert all(layer.keys is None and layer.values is None for layer in cache.layers), "no keys/values kept"


def test_cached_decoding_honours_padding():
    """A left- and right-padded batch: prefill + one-token steps give the full pass at every real position."""
    model = EfficientLinearTransformerForCausalLM(EfficientLinearTransformerConfig(**SMALL, **LLAMA)).eval()
    ids = torch.randint(1, 61, (2, 15), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[1, 12:] = 0
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        step = model(input_ids=ids[:, :6], attention_mask=mask[:, :6])
        logits, cache = [step.logits], returned_cache(step)
        for position in range(6, 15):
            step = model(input_ids=ids[:, position : position + 1], attention_mask=mask[:, : position + 1],
                         cache=cache)
            logits.append(step.logits)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(logits, dim=1)[real], full[real], rtol=1e-5, atol=1e-5)


def test_generate_refits_a_fresh_dynamic_cache_and_beam_search_works():
    model = EfficientLinearTransformerForCausalLM(EfficientLinearTransformerConfig(**SMALL, **LLAMA)).eval()
    prompt = torch.randint(1, 61, (2, 6), generator=torch.Generator().manual_seed(7))
    cache = DynamicCache()  # kept by the caller and passed again: refitted in place, so it keeps the state
    with torch.no_grad():
        first = model(input_ids=prompt, cache=cache).logits[:, -1]
        assert all(isinstance(layer, LinearAttentionStateLayer) for layer in cache.layers)
        second = model(input_ids=first.argmax(-1, keepdim=True), cache=cache).logits[:, -1]
        full = model(input_ids=torch.cat([prompt, first.argmax(-1, keepdim=True)], 1), use_cache=False).logits
        torch.testing.assert_close(second, full[:, -1], rtol=1e-5, atol=1e-5)
        beams = [model.generate(prompt, max_new_tokens=6, num_beams=3, do_sample=False, use_cache=use_cache)
                 for use_cache in (True, False)]
    assert torch.equal(beams[0], beams[1]), "beam search reorders the states like keys/values"


def test_unusable_caches_and_requests_raise():
    config = EfficientLinearTransformerConfig(**SMALL, **LLAMA)
    model = EfficientLinearTransformerForCausalLM(config).eval()
    ids = torch.randint(1, 61, (1, 8))
    filled = DynamicCache()
    filled.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), 0)
    for cache in (filled, StaticCache(config=config, max_cache_len=16)):
        with pytest.raises(ValueError, match="fixed-size state"):
            model(input_ids=ids, cache=cache)
    cache = returned_cache(model(input_ids=ids))
    with pytest.raises(ValueError, match="output_attentions=False"):
        model(input_ids=ids[:, :1], cache=cache, output_attentions=True)
    with pytest.raises(ValueError, match="rolled back"):
        cache.crop(-1)
    config.attention_backend = "flex"
    with pytest.raises(ValueError, match="not available for linear attention"):
        model(input_ids=ids, use_cache=False)


def test_output_attentions_are_the_normalised_kernel():
    model = EfficientLinearTransformerModel(EfficientLinearTransformerConfig(**SMALL, is_causal=True)).eval()
    ids = torch.randint(1, 61, (1, 9))
    with torch.no_grad():
        weights = model(input_ids=ids, output_attentions=True, use_cache=False).attentions[0]
    seen = torch.ones(9, 9, dtype=torch.bool).tril()
    assert weights.shape == (1, 4, 9, 9) and (weights[..., ~seen] == 0).all() and (weights[..., seen] > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 9), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(linear_attention_eps=0.0), "small positive"),
        (dict(linear_attention_eps=-1e-6), "small positive"),
        (dict(linear_attention_eps="tiny"), "small positive"),
        (dict(causal_chunk_size=0), "positive integer"),
        (dict(causal_chunk_size=2.5), "positive integer"),
        (dict(attention_backend="fla"), "bidirectional"),
    ],
)
def test_bad_config_says_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        EfficientLinearTransformerConfig(**{**SMALL, **overrides})


def test_no_full_attention_setting_and_attention_dropout_is_announced():
    with pytest.raises(NotImplementedError, match="softmax"):
        EfficientLinearTransformerConfig.full_attention_overrides(37)
    logger = logging.get_logger("hf_efficient.models.linear_transformer.configuration_linear_transformer")
    with CaptureLogger(logger) as captured:  # a value no other test uses: the warning is once per message
        EfficientLinearTransformerConfig(**SMALL, attention_probs_dropout_prob=0.0123)
    assert "no attention dropout" in captured.out
    assert EfficientLinearTransformerConfig().attention_probs_dropout_prob == 0.0


def test_bert_converts_and_reports_the_as_converted_difference(tmp_path):
    source = save_tiny_bert(tmp_path / "bert", head=BertForMaskedLM, seed=1)
    with torch.no_grad():  # sharper scores than at init (where both kernels average almost uniformly)
        for layer in source.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(20)
            layer.attention.self.key.weight.mul_(20)
    source.save_pretrained(tmp_path / "bert")
    result = convert(str(tmp_path / "bert"), "linear_transformer", out=tmp_path / "out", max_length=256)
    assert type(result.model) is hf_efficient.EfficientLinearTransformerForMaskedLM and result.new_parameters == []
    fidelity = result.fidelity
    assert fidelity.degenerate_overrides is None and fidelity.degenerate_max_abs_diff is None
    assert 1e-3 < fidelity.as_converted_max_abs_diff < float("inf"), "a different kernel: not the source's function"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "never equals softmax attention" in card and f"{fidelity.as_converted_max_abs_diff:.2e}" in card
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert type(model) is EfficientLinearTransformerModel
    ids = torch.randint(1, 99, (2, 200))
    with torch.no_grad():
        assert model(input_ids=ids).last_hidden_state.shape == (2, 200, 32)
    # same weights as the source: only the attention kernel differs
    torch.testing.assert_close(result.model.model.layers[0].self_attn.q_proj.weight,
                               source.bert.encoder.layer[0].attention.self.query.weight)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_sources_convert_and_generate(tmp_path, family):
    torch.manual_seed(2)
    if family == "gpt2":
        source = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    else:
        source = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                              max_position_embeddings=64))
    source.eval().save_pretrained(tmp_path / family)
    result = convert(str(tmp_path / family), "linear_transformer", out=tmp_path / "out", max_length=128)
    assert type(result.model) is EfficientLinearTransformerForCausalLM and result.model.config.is_causal
    assert result.fidelity.degenerate_max_abs_diff is None
    assert 1e-3 < result.fidelity.as_converted_max_abs_diff < float("inf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(model) is EfficientLinearTransformerForCausalLM
    ids = torch.randint(1, 99, (1, 40))
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=5, do_sample=False)
        greedy = ids
        for _ in range(5):
            next_token = model(input_ids=greedy, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            greedy = torch.cat([greedy, next_token], dim=1)
    assert torch.equal(generated, greedy)


def test_causal_model_blocked_equals_reference_outputs_and_gradients():
    """The chunk-parallel causal path of a Llama-style model (rotary, grouped KV heads, left and right padding,
    lengths off the chunk size) = the explicit (N x N) form: outputs and every parameter's gradient, fp32."""
    config = EfficientLinearTransformerConfig(**SMALL, **LLAMA, causal_chunk_size=4)
    torch.manual_seed(7)
    model = EfficientLinearTransformerForCausalLM(config)
    ids = torch.randint(1, 61, (2, 23), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids)
    mask[0, :3], mask[1, 17:] = 0, 0
    results = {backend: lm_logits_and_gradients(model, backend, ids, mask) for backend in ("reference", "blocked")}
    real = mask.bool()
    torch.testing.assert_close(results["blocked"][0][real], results["reference"][0][real], rtol=1e-5, atol=1e-5)
    assert len(results["reference"][1]) == len(list(model.parameters()))
    for name, grad in results["reference"][1].items():
        torch.testing.assert_close(results["blocked"][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", ["compiled", "fla"])
def test_gpu_backends_refuse_cpu_inputs_and_other_variants_refuse_fla(backend):
    model = EfficientLinearTransformerModel(EfficientLinearTransformerConfig(**SMALL, **LLAMA,
                                                                             attention_backend=backend))
    with pytest.raises(ValueError, match="CUDA only"):
        model(input_ids=torch.randint(1, 61, (1, 9)), use_cache=False)
    with pytest.raises(ValueError, match="fla"):
        hf_efficient.EfficientSparseTransformerConfig(attention_backend="fla")


def llama_scale_model():
    """MiniLM-like head dim 32 with grouped KV heads, 700 tokens (partial chunks), a padded batch, on CUDA."""
    config = EfficientLinearTransformerConfig(**{**SMALL, **LLAMA, "hidden_size": 128, "num_attention_heads": 4,
                                                 "max_position_embeddings": 1024})
    torch.manual_seed(0)
    model = EfficientLinearTransformerModel(config).cuda().train()
    ids = torch.randint(1, 61, (2, 700), device="cuda")
    mask = torch.ones(2, 700, dtype=torch.long, device="cuda")
    mask[1, 650:] = 0
    return model, {"input_ids": ids, "attention_mask": mask, "use_cache": False}, mask.bool()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
def test_compiled_path_equals_blocked_at_model_scale():
    torch.backends.cuda.matmul.allow_tf32 = False
    model, inputs, real = llama_scale_model()
    assert_fast_path_within_rounding(model, "compiled", inputs, real)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
def test_fla_path_equals_blocked_outputs_and_gradients():
    """flash-linear-attention's kernel computes the numerator with TF32 products (its float32 mode), so the
    output and every gradient are compared by relative norm: within 5e-3 of the blocked path (TF32 rounding is
    ~1e-3; a wrong normaliser, mask or state is off by far more)."""
    pytest.importorskip("fla.ops.linear_attn", reason="flash-linear-attention (fla-core) is not installed")
    torch.backends.cuda.matmul.allow_tf32 = False
    model, inputs, real = llama_scale_model()
    results = {}
    for backend in ("blocked", "fla"):
        model.config.attention_backend = backend
        model.zero_grad()
        hidden = model(**inputs).last_hidden_state[real]
        (hidden**2).mean().backward()
        results[backend] = {"output": hidden.detach()} | {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, expected in results["blocked"].items():
        error = ((results["fla"][name] - expected).norm() / expected.norm()).item()
        assert error < 5e-3, f"{name}: relative error {error:.2e}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
def test_compiled_path_generates_like_the_blocked_path():
    backend = "compiled"
    config = EfficientLinearTransformerConfig(**{**SMALL, **LLAMA, "hidden_size": 64})
    torch.manual_seed(0)
    model = EfficientLinearTransformerForCausalLM(config).cuda().eval()
    ids = torch.randint(1, 61, (2, 30), device="cuda")
    generated = {}
    for name in ("blocked", backend):
        config.attention_backend = name
        generated[name] = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(generated[backend], generated["blocked"])
