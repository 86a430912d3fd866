"""EfficientMemoryCompressed (T-DMCA) specifics: config errors, the layer kinds' parameters, the convolution against
its written-out form, the exact pattern, no leak of the future through the compressed memory, the blocked paths
against the reference at any length, cached decoding (memory grows only when a group completes), the full-attention
setting for every layer mix, conversion from BERT / GPT-2 / Llama."""

import itertools

import pytest
import torch
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
)

from hf_efficient import (
    EfficientConfig,
    EfficientMemoryCompressedConfig,
    EfficientMemoryCompressedForCausalLM,
    EfficientMemoryCompressedForMaskedLM,
    EfficientMemoryCompressedModel,
    EfficientModel,
)
from hf_efficient.attention.memory_compressed import (
    compress,
    compress_reference,
    compressed_blocked,
    local_blocked,
    memory_compressed_reference,
)
from hf_efficient.conversion import convert
from hf_efficient.core.cache_argument import returned_cache
from hf_efficient.models.memory_compressed import CompressedMemoryCache
from hf_efficient.models.memory_compressed.modeling_memory_compressed import average_pooling_kernel

SMALL = dict(vocab_size=61, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, block_size=4,
             compression_factor=3)


def small_config(**overrides) -> EfficientMemoryCompressedConfig:
    return EfficientMemoryCompressedConfig(**{**SMALL, **overrides})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(attention_layer_types=["local"]), "num_hidden_layers=2"),
        (dict(attention_layer_types=["local", "memory"]), "not a layer kind"),
        (dict(attention_layer_types="global"), "not a layer kind"),
        (dict(block_size=0), "positive integer"),
        (dict(block_size=True), "positive integer"),
        (dict(compression_factor=0), "positive integer"),
        (dict(compression_factor=2.5), "positive integer"),
        (dict(compression_init="xavier"), "compression_init"),
        (dict(identity_compression="yes"), "True or False"),
    ],
)
def test_bad_config_says_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_config(**overrides)


def test_default_layers_alternate_like_the_paper(tmp_path):
    config = EfficientMemoryCompressedConfig(num_hidden_layers=5)
    assert config.attention_layer_types == ["local", "compressed", "local", "compressed", "local"]
    assert (config.block_size, config.compression_factor) == (256, 3)
    assert "layers LMLML" in config.describe_attention() and "stride-3" in config.describe_attention()
    assert small_config(attention_layer_types="compressed").attention_layer_types == ["compressed", "compressed"]
    config.save_pretrained(tmp_path)  # transformers' own validators accept the config (our kinds aren't layer_types)
    loaded = EfficientMemoryCompressedConfig.from_pretrained(tmp_path)
    assert loaded.attention_layer_types == config.attention_layer_types
    assert getattr(loaded, "layer_types", None) is None


def test_knobs_given_to_from_pretrained_are_normalised_and_checked(tmp_path):
    EfficientMemoryCompressedModel(small_config()).save_pretrained(tmp_path)
    model = EfficientMemoryCompressedModel.from_pretrained(tmp_path, block_size=8)
    assert model.layers[0].self_attn.block == 8 and model.layers[1].self_attn.kind == "compressed"
    with pytest.raises(ValueError, match="positive integer"):
        EfficientMemoryCompressedModel.from_pretrained(tmp_path, compression_factor=0)
    with pytest.raises(ValueError, match="entries"):
        EfficientMemoryCompressedModel.from_pretrained(tmp_path, attention_layer_types=["local"])


def test_only_compressed_layers_have_convolutions():
    model = EfficientMemoryCompressedModel(small_config(num_hidden_layers=3, num_key_value_heads=1))
    found = {name: tuple(p.shape) for name, p in model.named_parameters() if "compression" in name}
    channels = 1 * 8  # one key/value head of head_dim 8
    assert found == {f"layers.1.self_attn.{kind}_compression.{part}": shape
                     for kind in ("key", "value")
                     for part, shape in (("weight", (channels, channels, 3)), ("bias", (channels,)))}
    # a fresh model starts as average pooling (the default) or random
    torch.testing.assert_close(model.layers[1].self_attn.key_compression.weight, average_pooling_kernel(8, 3))
    head = EfficientMemoryCompressedForMaskedLM(small_config(compression_init="random"))
    weight = head.model.layers[1].self_attn.value_compression.weight
    assert 0.01 < float(weight.detach().std()) < 0.03 and not torch.equal(weight, average_pooling_kernel(8, 3))


@pytest.mark.parametrize("length", [1, 3, 7, 11])
def test_convolution_equals_its_written_out_form_and_average_pooling(length):
    generator = torch.Generator().manual_seed(length)
    states = torch.randn(2, 2, length, 4, generator=generator)
    weight, bias = torch.randn(8, 8, 3, generator=generator), torch.randn(8, generator=generator)
    keep = torch.ones(2, length, dtype=torch.bool)
    keep[1, length // 2 + 1:] = False
    slots = compress(states, weight, bias, keep, 3)
    assert slots.shape == (2, 2, -(-length // 3), 4)
    torch.testing.assert_close(slots, compress_reference(states, weight, bias, keep, 3), rtol=1e-5, atol=1e-5)
    pooled = compress(states, average_pooling_kernel(8, 3), None, keep, 3)
    zeroed = states * keep[:, None, :, None]
    for slot in range(pooled.shape[2]):  # the mean over the c positions, padding and the missing tail as zeros
        expected = zeroed[:, :, 3 * slot: 3 * slot + 3].sum(2) / 3
        torch.testing.assert_close(pooled[:, :, slot], expected, rtol=1e-6, atol=1e-6)


def attention_weights(causal: bool, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    config = small_config(is_causal=causal, compression_init="random")
    torch.manual_seed(0)
    model = EfficientMemoryCompressedModel(config).eval()
    ids = torch.randint(1, 61, (1, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=keep, output_attentions=True, use_cache=False).attentions


def kept(weights: torch.Tensor, row: int) -> tuple[list[int], list[int]]:
    """(raw keys, slots) a row of an 11-token layer attends to (columns: 11 raw keys, then 4 slots)."""
    seen = (weights[0, 0, row] > 0).nonzero().flatten().tolist()
    return [j for j in seen if j < 11], [j - 11 for j in seen if j >= 11]


def test_weights_show_the_exact_pattern():
    """b = 4, c = 3, 11 tokens: every layer's weights have 11 raw columns then ceil(11/3) = 4 slot columns."""
    local, compressed = attention_weights(causal=True)
    assert local.shape == compressed.shape == (1, 2, 11, 15)
    assert kept(local, 6) == ([4, 5, 6], []) and kept(local, 3) == ([0, 1, 2, 3], [])
    assert kept(compressed, 0) == ([0], [])  # the first group: no complete slot yet, its own raw keys
    assert kept(compressed, 7) == ([6, 7], [0, 1])  # group 2 so far, raw; groups 0 and 1 as slots
    assert kept(compressed, 8) == ([6, 7, 8], [0, 1])
    assert kept(compressed, 9) == ([9], [0, 1, 2])
    local, compressed = attention_weights(causal=False)
    assert kept(local, 6) == ([4, 5, 6, 7], []) and kept(local, 9) == ([8, 9, 10], [])
    assert kept(compressed, 0) == ([], [0, 1, 2, 3]) and kept(compressed, 10) == ([], [0, 1, 2, 3])
    keep = torch.ones(1, 11, dtype=torch.long)
    keep[0, 9:] = 0  # slot 3 holds only padding
    _, compressed = attention_weights(causal=False, keep=keep)
    assert kept(compressed, 4) == ([], [0, 1, 2])
    for weights in (local, compressed):
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))


def compressed_layer(causal: bool, **overrides):
    config = small_config(is_causal=causal, attention_layer_types="compressed", **overrides)
    torch.manual_seed(2)
    model = EfficientMemoryCompressedModel(config).eval()
    return model, model.layers[0].self_attn


def test_compressed_layer_never_sees_the_future():
    """One causal compressed layer (average pooling: the slots carry each token): changing the hidden state at any
    position p changes no output before p -- on the reference, the blocked path (queries in blocks of 6) and cached
    decoding in chunks that cross group boundaries -- and changes every output from p on (its own group through the
    raw keys, later groups through the slot)."""
    _, attention = compressed_layer(causal=True)
    length = 14
    hidden = torch.randn(1, length, 16, generator=torch.Generator().manual_seed(3))

    def outputs(states: torch.Tensor, backend: str) -> torch.Tensor:
        attention.config.attention_backend = "blocked" if backend == "decode" else backend
        if backend != "decode":
            return attention(states)[0]
        cache = CompressedMemoryCache(1)  # a prefix of 2, then chunks of 4: later tokens of a chunk are present
        chunks = [(0, 2), (2, 6), (6, 10), (10, 14)]
        return torch.cat([attention(states[:, a:b], past_key_values=cache)[0] for a, b in chunks], dim=1)

    with torch.no_grad():
        for backend in ("reference", "blocked", "decode"):
            before = outputs(hidden, backend)
            for position in range(length):
                changed = hidden.clone()
                changed[0, position] += 1.0
                after = outputs(changed, backend)
                torch.testing.assert_close(after[:, :position], before[:, :position], rtol=0, atol=0,
                                           msg=f"{backend}: position {position} leaked backwards")
                moved = (after - before)[0, position:].abs().amax(-1)
                assert (moved > 1e-4).all(), f"{backend}: position {position} did not reach {moved.tolist()}"
    attention.config.attention_backend = "auto"


@pytest.mark.parametrize(("kind", "causal", "factor"), list(itertools.product(("local", "compressed"),
                                                                               (False, True), (3, 1))))
def test_blocked_paths_equal_the_reference_at_any_length(kind, causal, factor):
    """Lengths below, at and off multiples of b = 4 and c, one key/value head for two query heads, padding, causal
    queries in several blocks of 6; outputs and input gradients."""
    model, _ = compressed_layer(causal, compression_init="random", num_key_value_heads=1, compression_factor=factor)
    attention = model.layers[0].self_attn
    attention.kind = kind  # the maths only: this layer's convolutions serve as the slots of either kind
    for length in (1, 2, 3, 5, 8, 13):
        generator = torch.Generator().manual_seed(length)
        query = torch.randn(2, 2, length, 8, generator=generator, requires_grad=True)
        key, value = (torch.randn(2, 1, length, 8, generator=generator, requires_grad=True) for _ in range(2))
        keep = torch.ones(2, length, dtype=torch.bool)
        keep[1, length // 2 + 1:] = False
        slot_keys, slot_values = attention.compressed_memory(key, value, keep, compress_reference)
        reference, _ = memory_compressed_reference(attention, query, key, value, slot_keys, slot_values, keep, kind,
                                                   4, factor, causal)
        if kind == "local":
            blocked = local_blocked(attention, query, key, value, keep, 4, causal)
        else:
            fast_keys, fast_values = attention.compressed_memory(key, value, keep)
            blocked = compressed_blocked(attention, query, key, value, fast_keys, fast_values, keep, factor, causal, 4)
        torch.testing.assert_close(blocked[keep], reference[keep], rtol=1e-5, atol=1e-5, msg=f"length {length}")
        gradients = [torch.autograd.grad(out[keep].pow(2).sum(), (query, key, value)) for out in (reference, blocked)]
        for expected, got in zip(*gradients, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=f"length {length} gradient")


@pytest.mark.parametrize("identity", [False, True])
def test_cached_decoding_in_chunks_with_padding_in_the_cache(identity):
    """Prefix of 5, then chunks of 3, 1 and 4 tokens, a right-padded prompt on one row (padding inside the cache; left
    padding is refused in decoding, tests/test_left_padding.py): logits equal the full pass; the cache
    holds < b raw keys per local layer, and floor(seen / c) slots + < c raw keys per compressed layer (a slot
    appears when its group completes, not before)."""
    config = small_config(is_causal=True, num_hidden_layers=3, compression_init="random",
                          identity_compression=identity)
    torch.manual_seed(4)
    model = EfficientMemoryCompressedForCausalLM(config).eval()
    ids = torch.randint(1, 61, (2, 13), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, 2:5] = 0
    factor = 1 if identity else 3
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        step = model(input_ids=ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
        logits, cache = [step.logits], returned_cache(step)
        for start, stop in ((5, 8), (8, 9), (9, 13)):
            step = model(input_ids=ids[:, start:stop], attention_mask=mask[:, :stop], cache=cache,
                         use_cache=True)
            logits.append(step.logits)
            local, compressed = cache.layers[0], cache.layers[1]
            assert local.keys.shape[2] == stop % 4 and local.slot_keys is None
            assert compressed.slot_keys.shape[2] == stop // factor and compressed.keys.shape[2] == stop % factor
    real = mask.bool()
    torch.testing.assert_close(torch.cat(logits, dim=1)[real], full[real], rtol=1e-5, atol=1e-5)


def test_generate_refits_an_empty_dynamic_cache_and_refuses_others():
    config = small_config(is_causal=True)
    model = EfficientMemoryCompressedForCausalLM(config).eval()
    ids = torch.randint(1, 61, (1, 7), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        cache = DynamicCache()
        model(input_ids=ids, cache=cache, use_cache=True)
        assert cache.get_seq_length() == 7
        with pytest.raises(ValueError, match="can't be rolled back"):
            cache.crop(5)
        filled = DynamicCache()
        filled.update(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8), 0)
        with pytest.raises(ValueError, match="empty DynamicCache"):
            model(input_ids=ids, cache=filled, use_cache=True)
        config.attention_backend = "flex"
        with pytest.raises(ValueError, match="attention_backend='auto', 'blocked' or 'reference'"):
            model(input_ids=ids, use_cache=False)


@pytest.mark.parametrize(("layer_types", "causal"), list(itertools.product(
    (["local", "compressed"], "compressed", "local"), (False, True))))
def test_full_attention_overrides_are_exact_for_every_layer_mix(layer_types, causal):
    config = small_config(attention_layer_types=layer_types, is_causal=causal, compression_init="random")
    torch.manual_seed(7)
    sparse = EfficientMemoryCompressedModel(config).eval()
    ids = torch.randint(1, 61, (2, 19), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    full = type(config).from_dict({**config.to_dict(), **config.full_attention_overrides(19)})
    degenerate = EfficientMemoryCompressedModel(full).eval()
    degenerate.load_state_dict(sparse.state_dict())  # strict: the same parameters in both settings
    backbone_fields = set(EfficientConfig.__dataclass_fields__)
    backbone = EfficientModel(EfficientConfig(**{k: v for k, v in config.to_dict().items() if k in backbone_fields}))
    backbone.load_state_dict(sparse.state_dict(), strict=False)
    real = mask.bool()
    with torch.no_grad():
        exact = backbone.eval()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        for backend in ("blocked", "reference"):
            full.attention_backend = backend
            ours = degenerate(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            torch.testing.assert_close(ours[real], exact[real], rtol=1e-5, atol=1e-5, msg=backend)
        sparse_output = sparse(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        assert (sparse_output - exact).abs().max() > 1e-3


def sharpen(weights) -> None:
    """Scale query/key weights so attention is far from uniform (at init it is almost uniform: every pattern and
    every pooled memory would look alike)."""
    with torch.no_grad():
        for weight in weights:
            weight.mul_(20)


def test_converts_from_bert_with_average_pooling_closest_to_the_source(tmp_path):
    source = save_tiny_bert(tmp_path / "bert", head=BertForMaskedLM, seed=1)
    sharpen(weight for layer in source.bert.encoder.layer
            for weight in (layer.attention.self.query.weight, layer.attention.self.key.weight))
    source.save_pretrained(tmp_path / "bert")
    results = {}
    for start in ("average_pooling", "random"):
        results[start] = convert(str(tmp_path / "bert"), "memory_compressed", out=tmp_path / start, max_length=128,
                                 block_size=8, compression_init=start, eval_tokens=0)
    result = results["average_pooling"]
    assert type(result.model) is EfficientMemoryCompressedForMaskedLM
    assert result.new_parameters == [f"model.layers.1.self_attn.{kind}_compression.{part}"
                                     for kind in ("key", "value") for part in ("weight", "bias")]
    assert "average pooling" in result.new_parameters_recipe
    conv = result.model.model.layers[1].self_attn.key_compression
    torch.testing.assert_close(conv.weight, average_pooling_kernel(32, 3), rtol=0, atol=0)
    for fidelity in (result.fidelity, results["random"].fidelity):
        assert fidelity.degenerate_overrides == {"block_size": 64, "identity_compression": True}
        assert fidelity.degenerate_max_abs_diff <= 1e-5
    pooled, random = result.fidelity.as_converted_max_abs_diff, results["random"].fidelity.as_converted_max_abs_diff
    assert 1e-3 < pooled < random, (pooled, random)
    model = AutoModel.from_pretrained(tmp_path / "average_pooling").eval()
    assert type(model) is EfficientMemoryCompressedModel and model.config.block_size == 8
    with torch.no_grad():
        assert model(input_ids=torch.randint(1, 99, (1, 128))).last_hidden_state.shape == (1, 128, 32)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_sources_convert_and_generate(tmp_path, family):
    torch.manual_seed(2)
    if family == "gpt2":
        source = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64))
        sharpen(block.attn.c_attn.weight[:, :64] for block in source.transformer.h)  # the query and key columns
    else:
        source = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                              max_position_embeddings=64))
        sharpen(weight for layer in source.model.layers for weight in (layer.self_attn.q_proj.weight,
                                                                       layer.self_attn.k_proj.weight))
    source.eval().save_pretrained(tmp_path / family)
    result = convert(str(tmp_path / family), "memory_compressed", out=tmp_path / "out", max_length=128,
                     block_size=8, eval_tokens=0)
    assert type(result.model) is EfficientMemoryCompressedForCausalLM and result.model.config.is_causal
    channels = 16 if family == "llama" else 32  # Llama: 2 key/value heads of 8
    assert result.model.model.layers[1].self_attn.value_compression.weight.shape == (channels, channels, 3)
    assert result.fidelity.degenerate_max_abs_diff <= 1e-5
    assert result.fidelity.as_converted_max_abs_diff > 1e-3
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(model) is EfficientMemoryCompressedForCausalLM
    ids = torch.randint(1, 99, (1, 40))
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=5, do_sample=False)
        greedy = ids
        for _ in range(5):
            next_token = model(input_ids=greedy, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            greedy = torch.cat([greedy, next_token], dim=1)
    assert torch.equal(generated, greedy)
