"""EfficientSparseTransformer specifics: the exact patterns against the paper's sets, every pattern x combination of
the blocked path against the reference (outputs and gradients), the flex block mask on CPU, the full-attention
setting for every combination, cached decoding, config errors, conversion from BERT / GPT-2 / Llama."""

import itertools
import warnings

import pytest
import torch
from backend_agreement import assert_fast_path_within_rounding, lm_logits_and_gradients
from test_conversion import save_tiny_bert
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from hf_efficient import (
    EfficientConfig,
    EfficientModel,
    EfficientSparseTransformerConfig,
    EfficientSparseTransformerForCausalLM,
    EfficientSparseTransformerForMaskedLM,
    EfficientSparseTransformerModel,
)
from hf_efficient.attention.factorized import (
    factorized_blocked,
    factorized_flex,
    factorized_reference,
    fixed_compact,
    flex_block_mask,
    head_factors,
    pattern_keep,
    strided_grid,
)
from hf_efficient.conversion import convert
from hf_efficient.core.cache_argument import returned_cache
from hf_efficient.models.sparse_transformer import VARIANT

SMALL = dict(vocab_size=61, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
             max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
LLAMA = dict(norm_type="rmsnorm", norm_position="pre", position_embedding_type="rotary", mlp_type="gated",
             hidden_act="silu", embedding_norm=False, type_vocab_size=0, is_causal=True, use_pooler=False,
             attention_bias=False, mlp_bias=False, lm_head_bias=False, masked_lm_transform=False,
             num_key_value_heads=2)
GRID = list(itertools.product(["strided", "fixed"], ["alternate", "merged", "heads"], [False, True]))


def paper_sets(i: int, length: int, pattern: str, stride: int, c: int, causal: bool) -> tuple[set, set]:
    """A1 and A2 of query i, written out from the definitions (bidirectional: the symmetric extension)."""
    keys = range(i + 1) if causal else range(length)
    if pattern == "strided":
        first = {j for j in keys if abs(i - j) < stride}
        second = {j for j in keys if (i - j) % stride == 0}
    else:
        first = {j for j in keys if j // stride == i // stride}
        second = {j for j in keys if j % stride >= stride - c}
    return first, second


@pytest.mark.parametrize("pattern", ["strided", "fixed"])
@pytest.mark.parametrize("causal", [False, True])
def test_pattern_is_the_papers_sets(pattern, causal):
    length, stride, c = 23, 5, 2
    for factor in ("A1", "A2", "both"):
        keep = pattern_keep(length, pattern, factor, stride, c, causal)
        for i in range(length):
            first, second = paper_sets(i, length, pattern, stride, c, causal)
            expected = {"A1": first, "A2": second, "both": first | second}[factor] | {i}  # j = i always kept
            assert set(keep[i].nonzero().flatten().tolist()) == expected, (factor, i)


def test_head_factors_follow_the_combination():
    assert head_factors("alternate", 0, 4) == ("A1",) * 4 and head_factors("alternate", 3, 4) == ("A2",) * 4
    assert head_factors("merged", 1, 2) == ("both", "both")
    assert head_factors("heads", 0, 4) == ("A1", "A1", "A2", "A2")
    assert head_factors("heads", 0, 3) == ("A1", "A1", "A2")


def attentions(config, length=16):
    model = EfficientSparseTransformerModel(config).eval()
    ids = torch.randint(1, 61, (1, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        weights = model(input_ids=ids, output_attentions=True, use_cache=False).attentions
    for layer in weights:
        torch.testing.assert_close(layer.sum(-1), torch.ones_like(layer.sum(-1)))
    return [layer[0] > 0 for layer in weights]  # (heads, N, N) per layer


def keys_of(seen: torch.Tensor, row: int) -> list[int]:
    return seen[row].nonzero().flatten().tolist()


def test_weights_show_the_exact_strided_pattern():
    """Causal strided, l = 4, row 10: A1 = the previous 4 positions {7..10}, A2 = every 4th back {2, 6, 10}."""
    merged = attentions(EfficientSparseTransformerConfig(**SMALL, pattern="strided", local_size=4, is_causal=True))
    assert keys_of(merged[0][0], 10) == [2, 6, 7, 8, 9, 10]
    heads = attentions(EfficientSparseTransformerConfig(**SMALL, pattern="strided", local_size=4, is_causal=True,
                                                        combination="heads"))
    assert keys_of(heads[0][0], 10) == keys_of(heads[0][1], 10) == [7, 8, 9, 10]
    assert keys_of(heads[0][2], 10) == keys_of(heads[0][3], 10) == [2, 6, 10]
    alternate = attentions(EfficientSparseTransformerConfig(**SMALL, pattern="strided", local_size=4,
                                                            combination="alternate"))  # bidirectional
    assert keys_of(alternate[0][1], 10) == [7, 8, 9, 10, 11, 12, 13]
    assert keys_of(alternate[1][1], 10) == [2, 6, 10, 14]


def test_weights_show_the_exact_fixed_pattern():
    """Fixed, l = 4, c = 1 (summary columns 3, 7, 11, 15), row 9 (block 8..11)."""
    merged = attentions(EfficientSparseTransformerConfig(**SMALL, local_size=4, num_summary=1, is_causal=True))
    assert keys_of(merged[1][3], 9) == [3, 7, 8, 9]
    bidirectional = attentions(EfficientSparseTransformerConfig(**SMALL, local_size=4, num_summary=1))
    assert keys_of(bidirectional[0][0], 9) == [3, 7, 8, 9, 10, 11, 15]
    heads = attentions(EfficientSparseTransformerConfig(**SMALL, local_size=4, num_summary=1, combination="heads"))
    assert keys_of(heads[0][0], 9) == [8, 9, 10, 11]
    assert keys_of(heads[0][3], 9) == [3, 7, 9, 11, 15], "A2: the summary columns, plus the own key"


def grid_config(pattern, combination, causal, **overrides):
    style = LLAMA if causal else {}
    return EfficientSparseTransformerConfig(**{**SMALL, **style, "pattern": pattern, "combination": combination,
                                               "local_size": 5, "num_summary": 2, **overrides})


@pytest.mark.parametrize(("pattern", "combination", "causal"), GRID)
def test_blocked_equals_reference_outputs_and_gradients(pattern, combination, causal):
    config = grid_config(pattern, combination, causal)
    torch.manual_seed(1)
    model = (EfficientSparseTransformerForCausalLM if causal else EfficientSparseTransformerForMaskedLM)(config)
    ids = torch.randint(1, 61, (2, 23), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    results = {backend: lm_logits_and_gradients(model, backend, ids, mask) for backend in ("reference", "blocked")}
    real = mask.bool()
    torch.testing.assert_close(results["blocked"][0][real], results["reference"][0][real], rtol=1e-5, atol=1e-5)
    for name, grad in results["reference"][1].items():
        torch.testing.assert_close(results["blocked"][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("length", [1, 2, 4, 5, 6, 11, 26])
@pytest.mark.parametrize(("pattern", "combination"), [("strided", "merged"), ("strided", "heads"),
                                                      ("fixed", "merged")])
def test_any_length_and_one_kv_head(length, pattern, combination):
    """Lengths below, at and off multiples of l = 5 (a block wider than the input is the input), multi-query
    heads (the "heads" split falls inside a key/value group) and l = 1 (every class a single block)."""
    generator = torch.Generator().manual_seed(length)
    query = torch.randn(2, 4, length, 8, generator=generator)
    key, value = (torch.randn(2, 1, length, 8, generator=generator) for _ in range(2))
    keep = torch.ones(2, length, dtype=torch.bool)
    keep[1, length // 2 + 1:] = False
    for causal, local_size in itertools.product((False, True), (5, 1)):
        config = grid_config(pattern, combination, causal, num_key_value_heads=1, hidden_size=32, local_size=local_size,
                             num_summary=1)
        attention = EfficientSparseTransformerModel(config).layers[0].self_attn
        arguments = (attention.factors, *attention.settings)
        reference, _ = factorized_reference(attention, query, key, value, keep, *arguments)
        blocked = factorized_blocked(attention, query, key, value, keep, *arguments) * keep[:, :, None, None]
        torch.testing.assert_close(blocked, reference, rtol=1e-5, atol=1e-5, msg=f"{causal} l={local_size}")


@pytest.mark.parametrize(("pattern", "combination", "causal"), GRID)
def test_flex_block_mask_matches_the_reference_on_cpu(pattern, combination, causal):
    """FlexAttention runs forward on CPU (unfused): the block mask encodes exactly the reference pattern."""
    generator = torch.Generator().manual_seed(3)
    batch, heads, length, dim = 2, 4, 45, 8
    query = torch.randn(batch, heads, length, dim, generator=generator)
    key, value = (torch.randn(batch, 2, length, dim, generator=generator) for _ in range(2))
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[1, 30:] = False
    config = grid_config(pattern, combination, causal, hidden_size=32, num_key_value_heads=2)
    attention = EfficientSparseTransformerModel(config).layers[1].self_attn  # layer 1: A2 when alternating
    block_mask = flex_block_mask(length, attention.factors, *attention.settings, keep, query.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flex = factorized_flex(query, key, value, block_mask, dim**-0.5, compiled=False)
    reference, _ = factorized_reference(attention, query, key, value, keep, attention.factors, *attention.settings)
    torch.testing.assert_close(flex[keep], reference[keep], rtol=1e-5, atol=1e-5)


STRIDED_GRID = list(itertools.product(["alternate", "merged", "heads"], [False, True]))


def gpu_form(attention, query, key, value, keep, compiled=True):
    """The CUDA path of the layer's pattern: `strided_grid` or `fixed_compact`."""
    config = attention.config
    if config.pattern == "strided":
        return strided_grid(attention, query, key, value, keep, attention.factors, config.local_size,
                            config.is_causal, compiled=compiled)
    return fixed_compact(attention, query, key, value, keep, attention.factors, config.local_size, config.num_summary,
                         config.is_causal, compiled=compiled)


@pytest.mark.parametrize("length", [3, 45, 50])
@pytest.mark.parametrize(("pattern", "combination", "causal"), GRID)
def test_gpu_forms_equal_the_reference_on_cpu(pattern, combination, causal, length):
    """The GPU forms (strided: A1 band + A2 along the grid's columns; fixed: own block + compact summary columns;
    merged by log-sum-exp) run with eager FlexAttention on CPU (forward only) = the dense masked reference: padded
    batch, grouped KV heads (the "heads" split inside a group), lengths below l = 5, a multiple of it and not,
    every layer kind of the combination."""
    generator = torch.Generator().manual_seed(length)
    batch, heads, dim = 2, 4, 8
    query = torch.randn(batch, heads, length, dim, generator=generator)
    key, value = (torch.randn(batch, 2, length, dim, generator=generator) for _ in range(2))
    config = grid_config(pattern, combination, causal, hidden_size=32, num_key_value_heads=2)
    model = EfficientSparseTransformerModel(config)
    padded = torch.ones(batch, length, dtype=torch.bool)
    padded[1, 2 * length // 3:] = False
    for keep in (None, padded):
        for layer in (0, 1):  # A1 then A2 when alternating
            attention = model.layers[layer].self_attn
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fast = gpu_form(attention, query, key, value, keep, compiled=False)
            reference, _ = factorized_reference(attention, query, key, value, keep, attention.factors,
                                                *attention.settings)
            real = torch.ones(batch, length, dtype=torch.bool) if keep is None else keep
            torch.testing.assert_close(fast[real], reference[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_strided_grid_columns_alone_equal_the_reference_outputs_and_gradients(causal):
    """A2 alone on the grid is plain SDPA over the residue classes (forward and backward on any device): outputs and
    gradients equal the dense reference's, with and without padding (l = 5, N = 45 and 47)."""
    config = grid_config("strided", "alternate", causal, hidden_size=32, num_key_value_heads=2)
    attention = EfficientSparseTransformerModel(config).layers[1].self_attn
    assert attention.factors == ("A2",) * 4
    for length, padded in ((45, False), (47, True)):
        generator = torch.Generator().manual_seed(length)
        inputs = [torch.randn(2, h, length, 8, generator=generator) for h in (4, 2, 2)]
        keep = torch.ones(2, length, dtype=torch.bool)
        keep[1, 33:] = not padded
        weights = torch.randn(2, length, 4, 8, generator=generator)
        results = []
        for path in (strided_grid, factorized_reference):
            leaves = [x.clone().requires_grad_(True) for x in inputs]
            if path is strided_grid:
                out = strided_grid(attention, *leaves, keep, attention.factors, 5, causal) * keep[:, :, None, None]
            else:
                out = factorized_reference(attention, *leaves, keep, attention.factors, *attention.settings)[0]
            results.append((out, torch.autograd.grad((out * weights).sum(), leaves)))
        torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
        for fast, slow in zip(results[0][1], results[1][1], strict=True):
            torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
@pytest.mark.parametrize(("pattern", "combination", "causal"), GRID)
def test_gpu_forms_equal_blocked_at_model_scale(pattern, combination, causal):
    """The CUDA path (compiled FlexAttention: strided on the grid, fixed with compact summary columns) against the
    blocked path: head dim 32, l = 32, c = 8, 1000 tokens (a partial last block), a padded batch, fp32, outputs and
    every gradient."""
    torch.backends.cuda.matmul.allow_tf32 = False
    style = LLAMA if causal else {}
    config = EfficientSparseTransformerConfig(**{**SMALL, **style, "pattern": pattern, "combination": combination,
                                                 "local_size": 32, "num_summary": 8, "hidden_size": 128,
                                                 "max_position_embeddings": 1024})
    torch.manual_seed(0)
    model = EfficientSparseTransformerModel(config).cuda().train()
    ids = torch.randint(1, 61, (2, 1000), device="cuda")
    mask = torch.ones(2, 1000, dtype=torch.long, device="cuda")
    mask[1, 900:] = 0
    assert model.layers[0].self_attn.backend(ids.float(), False) == "flex"
    inputs = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    assert_fast_path_within_rounding(model, "flex", inputs, mask.bool())


@pytest.mark.parametrize(("pattern", "combination", "causal"), GRID)
def test_full_attention_overrides_are_full_attention_for_every_combination(pattern, combination, causal):
    config = grid_config(pattern, combination, causal)
    torch.manual_seed(4)
    sparse = EfficientSparseTransformerModel(config).eval()
    ids = torch.randint(1, 61, (2, 19), generator=torch.Generator().manual_seed(5))
    full = type(config).from_dict({**config.to_dict(), **config.full_attention_overrides(19)})
    degenerate = EfficientSparseTransformerModel(full).eval()
    degenerate.load_state_dict(sparse.state_dict())
    backbone_fields = set(EfficientConfig.__dataclass_fields__)
    backbone = EfficientModel(EfficientConfig(**{k: v for k, v in config.to_dict().items() if k in backbone_fields}))
    backbone.load_state_dict(sparse.state_dict(), strict=False)
    with torch.no_grad():
        exact = backbone.eval()(input_ids=ids, use_cache=False).last_hidden_state
        for backend in ("blocked", "reference"):
            full.attention_backend = backend
            ours = degenerate(input_ids=ids, use_cache=False).last_hidden_state
            torch.testing.assert_close(ours, exact, rtol=1e-5, atol=1e-5, msg=backend)
        assert (sparse(input_ids=ids, use_cache=False).last_hidden_state - exact).abs().max() > 1e-3


@pytest.mark.parametrize(("pattern", "combination"), [("fixed", "heads"), ("strided", "alternate")])
def test_cached_decoding_equals_the_full_pass(pattern, combination):
    config = grid_config(pattern, combination, causal=True)
    torch.manual_seed(6)
    model = EfficientSparseTransformerForCausalLM(config).eval()
    ids = torch.randint(1, 61, (2, 17), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        step = model(input_ids=ids[:, :6], use_cache=True)
        cache, logits = returned_cache(step), [step.logits]
        for position in range(6, 17, 3):  # several new tokens per step
            step = model(input_ids=ids[:, position : position + 3], cache=cache, use_cache=True)
            cache = returned_cache(step)
            logits.append(step.logits)
    torch.testing.assert_close(torch.cat(logits, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(pattern="dilated"), "pattern"),
        (dict(combination="sum"), "combination"),
        (dict(local_size=0), "positive integer"),
        (dict(local_size=True), "positive integer"),
        (dict(num_summary=0), "positive integer"),
        (dict(local_size=4, num_summary=5), "lower num_summary"),
        (dict(combination="heads", num_attention_heads=1), "num_attention_heads >= 2"),
    ],
)
def test_bad_config_says_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        EfficientSparseTransformerConfig(**{**SMALL, **overrides})


def test_strided_ignores_num_summary_and_describes_itself():
    config = EfficientSparseTransformerConfig(**SMALL, pattern="strided", local_size=4, num_summary=32)
    assert config.describe_attention() == ("Sparse Transformer strided factorized attention, l = 4, factors "
                                           "combined 'merged' (bidirectional)")
    default = EfficientSparseTransformerConfig()
    assert (default.pattern, default.local_size, default.num_summary) == ("fixed", 128, 32)
    assert "c = 32 summary columns" in default.describe_attention()


def test_converts_from_bert(tmp_path):
    source = save_tiny_bert(tmp_path / "bert", head=BertForMaskedLM, seed=1)
    with torch.no_grad():  # sharper scores than at init (where attention is almost uniform, so hardly changed)
        for layer in source.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(20)
            layer.attention.self.key.weight.mul_(20)
    source.save_pretrained(tmp_path / "bert")
    result = convert(str(tmp_path / "bert"), "sparse_transformer", out=tmp_path / "out", max_length=128,
                     pattern="strided", local_size=4)
    assert type(result.model) is EfficientSparseTransformerForMaskedLM and result.new_parameters == []
    assert "adds no parameters" in VARIANT.new_parameters.__doc__
    fidelity = result.fidelity
    assert fidelity.degenerate_overrides == {"pattern": "fixed", "local_size": 64, "num_summary": 64}
    assert fidelity.degenerate_max_abs_diff <= 1e-5
    assert fidelity.as_converted_max_abs_diff > 1e-3, "l = 4 on the 64-token check text is really sparse"
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert type(model) is EfficientSparseTransformerModel and model.config.local_size == 4
    with torch.no_grad():
        assert model(input_ids=torch.randint(1, 99, (1, 128))).last_hidden_state.shape == (1, 128, 32)
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
    result = convert(str(tmp_path / family), "sparse_transformer", out=tmp_path / "out", max_length=128,
                     local_size=8, num_summary=2, combination="heads")
    assert type(result.model) is EfficientSparseTransformerForCausalLM and result.model.config.is_causal
    assert result.fidelity.degenerate_max_abs_diff <= 1e-5
    assert result.fidelity.as_converted_max_abs_diff > 1e-3
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(model) is EfficientSparseTransformerForCausalLM
    ids = torch.randint(1, 99, (1, 40))
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=5, do_sample=False)
        greedy = ids
        for _ in range(5):
            next_token = model(input_ids=greedy, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            greedy = torch.cat([greedy, next_token], dim=1)
    assert torch.equal(generated, greedy)


def test_knobs_given_to_from_pretrained_are_checked(tmp_path):
    EfficientSparseTransformerModel(EfficientSparseTransformerConfig(**SMALL, local_size=4, num_summary=1)
                                    ).save_pretrained(tmp_path)
    model = EfficientSparseTransformerModel.from_pretrained(tmp_path, combination="heads", pattern="strided")
    assert model.layers[0].self_attn.factors == ("A1", "A1", "A2", "A2")
    assert model.layers[0].self_attn.settings == ("strided", 4, 1, False)
    with pytest.raises(ValueError, match="lower num_summary"):
        EfficientSparseTransformerModel.from_pretrained(tmp_path, num_summary=5)
