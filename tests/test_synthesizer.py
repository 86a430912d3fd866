"""EfficientSynthesizer specifics: the paper's formulas per component, the fast path against the reference for every
kind, the fixed length, seeded random tables, the dot-product-only setting, conversion from BERT / GPT-2 / Llama."""

import logging

import pytest
import torch
from test_conversion import save_tiny_bert
from transformers import AutoModel, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import hf_efficient
from hf_efficient import (
    EfficientSynthesizerConfig,
    EfficientSynthesizerForCausalLM,
    EfficientSynthesizerForMaskedLM,
    EfficientSynthesizerModel,
)
from hf_efficient.conversion import convert

SMALL = dict(vocab_size=61, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=24, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
             factorized_random_rank=4)
LLAMA = dict(norm_type="rmsnorm", norm_position="pre", position_embedding_type="rotary", mlp_type="gated",
             hidden_act="silu", num_key_value_heads=1, embedding_norm=False, type_vocab_size=0, is_causal=True,
             attention_bias=False, mlp_bias=False, use_pooler=False, masked_lm_transform=False)
KINDS = ["dense", "random", "factorized_dense", "factorized_random"]


def small_config(**overrides) -> EfficientSynthesizerConfig:
    return EfficientSynthesizerConfig(**{**SMALL, **overrides})


def padded_inputs(batch: int = 2, length: int = 17, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 61, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, length - 6:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter and buffer random (no zero pattern, sharp logits) for the maths checks."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(synthesizer_type="dense+sparse"), "join distinct components"),
        (dict(synthesizer_type="random+random"), "join distinct components"),
        (dict(synthesizer_type="vanilla"), "no synthetic component"),
        (dict(synthesizer_type=["dense"]), "use a string"),
        (dict(mixture_weights=[1.0]), "single component"),
        (dict(synthesizer_type="dense+vanilla", mixture_weights=[1.0]), "one finite number per component"),
        (dict(synthesizer_type="dense+vanilla", mixture_weights=[1.0, float("nan")]), "one finite number"),
        (dict(mixture_trainable="yes"), "mixture_trainable"),
        (dict(random_init_std=0.0), "random_init_std"),
        (dict(synthesizer_type="factorized_random", factorized_random_rank=25), "1 <= k <= max_position_embeddings"),
        (dict(factorized_random_rank=0), "factorized_random_rank"),
        (dict(synthesizer_type="factorized_dense", factorized_dense_a=5), "positive divisor of max_position"),
        (dict(dense_hidden_size=0), "dense_hidden_size"),
        (dict(seed=-1), "non-negative"),
        (dict(attention_backend="flex"), "no FlexAttention path"),
    ],
)
def test_bad_config_says_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_config(**overrides)


def test_knobs_are_checked_again_when_a_model_is_built(tmp_path):
    EfficientSynthesizerModel(small_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="join distinct components"):
        AutoModel.from_pretrained(tmp_path, synthesizer_type="dense+bogus")
    model = AutoModel.from_pretrained(tmp_path, synthesizer_type="dense+vanilla")  # a mixture: vanilla added
    assert model.layers[0].self_attn.mixture_weights.tolist() == [1.0, 1.0]


def test_flags_and_heads():
    attention = EfficientSynthesizerModel.attention_class
    assert attention.max_length_fixed and attention.supports_causal and attention.supports_bidirectional
    assert attention.supports_padding_mask and attention.supports_cache
    assert set(hf_efficient.VARIANTS["efficient_synthesizer"].heads) == {
        "masked_lm", "causal_lm", "sequence_classification", "token_classification", "question_answering"}


def test_parameters_of_each_component():
    """Shapes per head h = 2, n = 24, d_h = head_dim = 8, a x b = 4 x 6, k = 4; alphas only for a mixture."""
    config = small_config(synthesizer_type="dense+random+factorized_dense+factorized_random+vanilla")
    attention = EfficientSynthesizerModel(config).layers[0].self_attn
    found = {name: tuple(p.shape) for name, p in attention.named_parameters() if not name.endswith("_proj.weight")
             and not name.endswith("_proj.bias")}
    assert found == {
        "mixture_weights": (5,),
        "synthesizers.dense.weight": (2, 24, 8), "synthesizers.dense.bias": (2, 24),
        "synthesizers.dense.hidden.weight": (16, 16), "synthesizers.dense.hidden.bias": (16,),
        "synthesizers.random.weight": (2, 24, 24),
        "synthesizers.factorized_dense.weight_a": (2, 4, 8), "synthesizers.factorized_dense.bias_a": (2, 4),
        "synthesizers.factorized_dense.weight_b": (2, 6, 8), "synthesizers.factorized_dense.bias_b": (2, 6),
        "synthesizers.factorized_dense.hidden.weight": (16, 16), "synthesizers.factorized_dense.hidden.bias": (16,),
        "synthesizers.factorized_random.left": (2, 24, 4), "synthesizers.factorized_random.right": (2, 24, 4),
    }
    assert small_config(max_position_embeddings=512).factorized_dense_sizes == (16, 32)
    assert small_config(dense_hidden_size=3).synthesizer_width == 3


def test_unused_query_key_projections_are_buffers_and_checkpoints_cross_load():
    """Without "vanilla", q_proj/k_proj are persistent buffers (same keys, not trained); fixed alphas are a buffer
    under the trainable ones' key: checkpoints load strictly across these settings."""
    pure = EfficientSynthesizerModel(small_config(synthesizer_type="random"))
    names = {name for name, _ in pure.named_parameters()}
    assert "layers.0.self_attn.q_proj.weight" not in names and "layers.0.self_attn.v_proj.weight" in names
    assert "layers.0.self_attn.k_proj.weight" in dict(pure.named_buffers())
    exact = EfficientSynthesizerModel(small_config(synthesizer_type="random", dot_product_only=True))
    assert "layers.0.self_attn.q_proj.weight" in dict(exact.named_parameters())
    exact.load_state_dict(pure.state_dict())
    pure.load_state_dict(exact.state_dict())
    trainable = EfficientSynthesizerModel(small_config(synthesizer_type="dense+vanilla", mixture_weights=[0.3, 0.9]))
    fixed = EfficientSynthesizerModel(small_config(synthesizer_type="dense+vanilla", mixture_trainable=False))
    assert "layers.0.self_attn.mixture_weights" in dict(fixed.named_buffers())
    fixed.load_state_dict(trainable.state_dict())
    assert fixed.layers[1].self_attn.mixture_weights.tolist() == pytest.approx([0.3, 0.9])


CASES = [
    ("dense", True, 1), ("random", False, 2), ("factorized_dense", False, 2), ("factorized_random", True, 2),
    ("factorized_dense+random", True, 2), ("random+vanilla", False, 2), ("dense+factorized_random+vanilla", True, 1),
]


@pytest.mark.parametrize(("kind", "causal", "kv_heads"), CASES)
def test_fast_path_equals_reference_with_gradients(kind, causal, kv_heads):
    """Outputs and every parameter's gradient, fp32, random tables, a padded row; pure kinds (own softmax) and
    mixtures (sdpa with the synthetic logits as a mask), causal or not, grouped-query values."""
    weights = None if "+" not in kind else [0.6 + 0.2 * i for i in range(kind.count("+") + 1)]
    config = small_config(synthesizer_type=kind, is_causal=causal, num_key_value_heads=kv_heads, use_pooler=False,
                          mixture_weights=weights)
    torch.manual_seed(0)
    model = (EfficientSynthesizerForCausalLM if causal else EfficientSynthesizerForMaskedLM)(config).train()
    for layer in model.model.layers:
        randomise(layer.self_attn.synthesizers)
    inputs = padded_inputs()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    results = {}
    for backend in ("reference", "blocked"):
        config.attention_backend = backend
        model.zero_grad()
        output = model(**inputs, labels=labels, return_logits=True)
        output.loss.backward()
        results[backend] = output.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    real = inputs["attention_mask"].bool()
    (fast, fast_grads), (reference, reference_grads) = results["blocked"], results["reference"]
    torch.testing.assert_close(fast[real], reference[real], rtol=1e-5, atol=1e-5)
    for name, grad in reference_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        assert grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_eager_interface_gives_the_same_mixture():
    config = small_config(synthesizer_type="random+vanilla", mixture_weights=[0.5, 1.5])
    model = EfficientSynthesizerModel(config).eval()
    inputs = padded_inputs()
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        outputs = {}
        for implementation in ("sdpa", "eager"):
            model.set_attn_implementation(implementation)
            outputs[implementation] = model(**inputs).last_hidden_state
        config.attention_backend = "reference"
        reference = model(**inputs).last_hidden_state
    for output in outputs.values():
        torch.testing.assert_close(output[real], reference[real], rtol=1e-5, atol=1e-5)


def attention_weights(kind: str, hidden: torch.Tensor, **overrides) -> tuple[torch.Tensor, torch.nn.Module]:
    config = small_config(synthesizer_type=kind, **overrides)
    attention = EfficientSynthesizerModel(config).layers[0].self_attn.eval()
    randomise(attention)
    with torch.no_grad():
        _, weights = attention(hidden, output_attentions=True)
    return weights[0], attention


def head_features(synthesizer: torch.nn.Module, hidden: torch.Tensor, head: int) -> torch.Tensor:
    rows = slice(head * 8, (head + 1) * 8)  # d_h = 8 rows of W1 per head
    return torch.relu(hidden @ synthesizer.hidden.weight[rows].T + synthesizer.hidden.bias[rows])


def test_weights_follow_the_papers_formulas():
    """Per head, by hand: dense softmax(W2 relu(W1 x_i + b1) + b2)[:N]; random softmax(R[:N, :N]); factorized
    dense C_i[p a + r] = A_i[r] B_i[p]; factorized random softmax((R1 R2^T)[:N, :N]); a mixture
    softmax(alpha_r R + alpha_v Q K^T / sqrt(d))."""
    length = 13
    hidden = torch.randn(1, length, 16, generator=torch.Generator().manual_seed(5))
    x = hidden[0]
    with torch.no_grad():
        weights, attention = attention_weights("dense", hidden)
        dense = attention.synthesizers["dense"]
        for head in range(2):
            logits = head_features(dense, x, head) @ dense.weight[head].T + dense.bias[head]  # (N, n)
            torch.testing.assert_close(weights[head], logits[:, :length].softmax(-1), rtol=1e-5, atol=1e-6)

        weights, attention = attention_weights("factorized_dense", hidden)
        factorized = attention.synthesizers["factorized_dense"]
        for head in range(2):
            features = head_features(factorized, x, head)
            factor_a = features @ factorized.weight_a[head].T + factorized.bias_a[head]  # (N, a = 4)
            factor_b = features @ factorized.weight_b[head].T + factorized.bias_b[head]  # (N, b = 6)
            logits = torch.stack([torch.stack([factor_a[i, j % 4] * factor_b[i, j // 4] for j in range(24)])
                                  for i in range(length)])
            torch.testing.assert_close(weights[head], logits[:, :length].softmax(-1), rtol=1e-5, atol=1e-6)

        weights, attention = attention_weights("random", hidden)
        table = attention.synthesizers["random"].weight
        torch.testing.assert_close(weights, table[:, :length, :length].softmax(-1), rtol=1e-5, atol=1e-6)

        weights, attention = attention_weights("factorized_random", hidden)
        factorized = attention.synthesizers["factorized_random"]
        left, right = factorized.left, factorized.right
        torch.testing.assert_close(weights, (left @ right.transpose(1, 2))[:, :length, :length].softmax(-1),
                                   rtol=1e-5, atol=1e-6)

        weights, attention = attention_weights("random+vanilla", hidden, mixture_trainable=False)
        alpha_random, alpha_vanilla = attention.mixture_weights
        query = (x @ attention.q_proj.weight.T + attention.q_proj.bias).view(length, 2, 8).transpose(0, 1)
        key = (x @ attention.k_proj.weight.T + attention.k_proj.bias).view(length, 2, 8).transpose(0, 1)
        logits = alpha_random * attention.synthesizers["random"].weight[:, :length, :length] + \
            alpha_vanilla * query @ key.transpose(1, 2) / 8**0.5
        torch.testing.assert_close(weights, logits.softmax(-1), rtol=1e-5, atol=1e-6)

        weights, _ = attention_weights("dense+factorized_random", hidden, is_causal=True)
        assert not weights.triu(1).any(), "causal: the upper triangle is masked before the softmax"
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, length))


@pytest.mark.parametrize("kind", KINDS)
def test_padding_and_unused_table_entries_change_nothing(kind):
    """A padded row equals the row alone; the entries of the n-sized tables beyond the input are never read."""
    model = EfficientSynthesizerModel(small_config(synthesizer_type=kind)).eval()
    for layer in model.layers:
        randomise(layer.self_attn.synthesizers)
    inputs = padded_inputs()
    with torch.no_grad():
        padded = model(**inputs).last_hidden_state[1, :11]
        alone = model(input_ids=inputs["input_ids"][1:, :11]).last_hidden_state[0]
        for layer in model.layers:
            synthesizer = layer.self_attn.synthesizers[kind]
            if kind == "dense":
                synthesizer.weight[:, 11:] = 9.0
                synthesizer.bias[:, 11:] = 9.0
            elif kind == "random":
                synthesizer.weight[:, 11:] = 9.0
                synthesizer.weight[:, :, 11:] = 9.0
            elif kind == "factorized_dense":  # columns j < 11 = p * 4 + r use B_p for p <= 2 only
                synthesizer.weight_b[:, 3:] = 9.0
                synthesizer.bias_b[:, 3:] = 9.0
            else:
                synthesizer.left[:, 11:] = 9.0
                synthesizer.right[:, 11:] = 9.0
        changed_tail = model(input_ids=inputs["input_ids"][1:, :11]).last_hidden_state[0]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(changed_tail, alone, rtol=0, atol=0)


def test_too_long_input_and_flex_backend_raise():
    config = small_config(**LLAMA)  # rotary: no position table, the attention's own check speaks
    model = EfficientSynthesizerModel(config).eval()
    with pytest.raises(ValueError, match="fixed maximum length.*max_position_embeddings=24"):
        model(input_ids=torch.randint(1, 61, (1, 25)))
    model(input_ids=torch.randint(1, 61, (1, 24)))
    config.attention_backend = "flex"
    with pytest.raises(ValueError, match="'reference' and 'blocked'"):
        model(input_ids=torch.randint(1, 61, (1, 8)))


def test_fixed_random_tables_are_seeded_buffers_that_round_trip(tmp_path):
    config = small_config(synthesizer_type="random+factorized_random", random_trainable=False, seed=3)
    torch.manual_seed(0)
    model = EfficientSynthesizerModel(config).eval()
    torch.manual_seed(1)
    twin = EfficientSynthesizerModel(small_config(synthesizer_type="random+factorized_random",
                                                  random_trainable=False, seed=3))
    other_seed = EfficientSynthesizerModel(small_config(synthesizer_type="random+factorized_random",
                                                        random_trainable=False, seed=4))
    buffers = dict(model.named_buffers())
    assert "layers.0.self_attn.synthesizers.random.weight" in buffers
    assert "layers.1.self_attn.synthesizers.factorized_random.left" in buffers
    assert not any("synthesizers.random" in name for name, _ in model.named_parameters())
    assert all(torch.equal(t, dict(twin.named_buffers())[n]) for n, t in buffers.items() if "synthesizers" in n)
    assert not torch.equal(buffers["layers.0.self_attn.synthesizers.random.weight"],
                           dict(other_seed.named_buffers())["layers.0.self_attn.synthesizers.random.weight"])
    assert not torch.equal(buffers["layers.0.self_attn.synthesizers.random.weight"],
                           buffers["layers.1.self_attn.synthesizers.random.weight"]), "each layer its own draw"
    inputs = padded_inputs()
    with torch.no_grad():
        before = model(**inputs).last_hidden_state
        assert model.redraw_random_synthesizers(seed=11) == 11 and model.config.seed == 11
        redrawn = model(**inputs).last_hidden_state
        assert (redrawn - before).abs().max() > 1e-3
        model.layers[1].self_attn.synthesizers.factorized_random.left.add_(0.5)  # no longer the seed's draw
        redrawn = model(**inputs).last_hidden_state
        model.save_pretrained(tmp_path)
        loaded = AutoModel.from_pretrained(tmp_path).eval()
        assert loaded.config.seed == 11
        torch.testing.assert_close(loaded(**inputs).last_hidden_state, redrawn, rtol=0, atol=0)
        fresh = EfficientSynthesizerModel(loaded.config).layers[0].self_attn.synthesizers.random.weight
        assert torch.equal(fresh, loaded.layers[0].self_attn.synthesizers.random.weight), "redrawn = the seed's draw"
        assert torch.equal(loaded.layers[1].self_attn.synthesizers.factorized_random.left,
                           model.layers[1].self_attn.synthesizers.factorized_random.left), "loaded, not redrawn"


@pytest.mark.parametrize("kind", ["dense", "factorized_random+vanilla"])
def test_dot_product_only_is_exact_attention_on_both_paths(kind):
    config = small_config(synthesizer_type=kind, dot_product_only=True, **LLAMA)
    model = EfficientSynthesizerModel(config).eval()
    backbone = hf_efficient.EfficientModel(hf_efficient.EfficientConfig(
        **{k: v for k, v in config.to_dict().items() if k in hf_efficient.EfficientConfig.__dataclass_fields__}))
    missing, _ = backbone.load_state_dict(model.state_dict(), strict=False)
    assert not missing
    inputs = padded_inputs()
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        exact = backbone.eval()(**inputs).last_hidden_state
        for backend in ("blocked", "reference"):
            config.attention_backend = backend
            torch.testing.assert_close(model(**inputs).last_hidden_state[real], exact[real], rtol=1e-5, atol=1e-5)
    assert "dot-product-only" in config.describe_attention()


def test_describe_attention():
    text = small_config(synthesizer_type="random+vanilla", mixture_weights=[0.5, 0.5],
                        random_trainable=False).describe_attention()
    assert "0.5 x random (fixed R" in text and "0.5 x dot product" in text and "fixed maximum length 24" in text


def converted_weights(model, name: str) -> torch.Tensor:
    return dict(list(model.named_parameters()) + list(model.named_buffers()))[name]


@pytest.mark.parametrize("kind", ["dense+vanilla", "random+vanilla"])
def test_bert_mixture_conversion_starts_exactly_at_its_source(tmp_path, kind):
    """Synthetic logits start at zero: as converted, the mixture is its source (the same figure as the degenerate,
    dot-product-only setting)."""
    save_tiny_bert(tmp_path / "bert", head=BertForMaskedLM, seed=1)
    result = convert(str(tmp_path / "bert"), "synthesizer", out=tmp_path / "out", max_length=64, eval_tokens=0,
                     synthesizer_type=kind)
    fidelity = result.fidelity
    assert fidelity.degenerate_overrides == {"dot_product_only": True}
    assert fidelity.degenerate_max_abs_diff <= 1e-5
    assert fidelity.as_converted_max_abs_diff <= 1e-5
    assert abs(fidelity.as_converted_max_abs_diff - fidelity.degenerate_max_abs_diff) <= 1e-5
    component = kind.split("+")[0]
    assert f"model.layers.1.self_attn.synthesizers.{component}.weight" in result.new_parameters
    assert "model.layers.0.self_attn.mixture_weights" in result.new_parameters
    assert "starts as its source exactly" in " ".join(result.new_parameters_recipe.split())
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert type(model) is EfficientSynthesizerModel
    assert not converted_weights(model, f"layers.0.self_attn.synthesizers.{component}.weight").any()
    with torch.no_grad():
        assert model(input_ids=torch.randint(1, 99, (2, 64))).last_hidden_state.shape == (2, 64, 32)


def test_pure_synthesizer_conversion_starts_as_uniform_attention(tmp_path):
    save_tiny_bert(tmp_path / "bert", seed=2)
    result = convert(str(tmp_path / "bert"), "synthesizer", out=None, max_length=64, eval_tokens=0,
                     synthesizer_type="factorized_dense")
    assert result.fidelity.degenerate_max_abs_diff <= 1e-5
    # no dot products: not the source (by little here: a tiny random BERT itself attends almost uniformly)
    assert result.fidelity.as_converted_max_abs_diff > 1e-5
    inputs = padded_inputs(length=20)
    with torch.no_grad():
        weights = result.model(**inputs, output_attentions=True).attentions[0]
    real = inputs["attention_mask"].bool()
    expected = real[:, None, None, :] / real.sum(-1)[:, None, None, None]
    torch.testing.assert_close(weights[real[:, None, :].expand(-1, 4, -1)],
                               expected.expand(-1, 4, 20, -1)[real[:, None, :].expand(-1, 4, -1)])


def test_alpha_vanilla_other_than_one_warns_and_moves_the_start(tmp_path, caplog):
    save_tiny_bert(tmp_path / "bert", seed=2)
    with caplog.at_level(logging.WARNING):
        result = convert(str(tmp_path / "bert"), "synthesizer", out=None, max_length=64, eval_tokens=0,
                         synthesizer_type="random+vanilla", mixture_weights=[0.5, 0.5])
    assert "alpha_vanilla != 1" in caplog.text
    assert result.fidelity.degenerate_max_abs_diff <= 1e-5 < result.fidelity.as_converted_max_abs_diff


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_sources_convert_exactly_into_a_mixture(tmp_path, family):
    torch.manual_seed(2)
    if family == "gpt2":
        source = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64))
        kind = "random+vanilla"
    else:
        source = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                              max_position_embeddings=64))
        kind = "factorized_dense+factorized_random+vanilla"
    source.eval().save_pretrained(tmp_path / family)
    result = convert(str(tmp_path / family), "synthesizer", out=tmp_path / "out", max_length=64, eval_tokens=0,
                     synthesizer_type=kind)
    assert type(result.model) is EfficientSynthesizerForCausalLM and result.model.config.is_causal
    assert result.fidelity.degenerate_max_abs_diff <= 1e-5
    assert result.fidelity.as_converted_max_abs_diff <= 1e-5
    loaded = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert type(loaded) is EfficientSynthesizerModel
    ids = torch.randint(1, 99, (1, 20))
    with torch.no_grad():
        generated = result.model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
        assert loaded(input_ids=ids).last_hidden_state.shape == (1, 20, 32)
    assert generated.shape == (1, 24)
