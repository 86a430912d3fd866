"""The common suite every registered variant must pass (parametrized over hf_efficient.VARIANTS)."""

import dataclasses

import pytest
import torch
from testers import TESTERS, enable_activation_checkpointing
from transformers import AutoConfig, AutoModel

import hf_efficient
from hf_efficient.auto import AUTO_HEADS, VARIANTS
from hf_efficient.core import EfficientConfig, EfficientModel
from hf_efficient.core.cache_argument import returned_cache

VARIANT_NAMES = sorted(VARIANTS)
NUM_LABELS = 3


def get_tester(model_type: str):
    if model_type not in TESTERS:
        pytest.fail(f"{model_type} is registered but tests/testers.py has no tester for it")
    return TESTERS[model_type]


def styles(model_type: str) -> list[str]:
    attention = VARIANTS[model_type].model.attention_class
    return (["bert"] if attention.supports_bidirectional else []) + (
        ["gpt2", "llama"] if attention.supports_causal else []
    )


def head_style_cases() -> list:
    cases = []
    for model_type in VARIANT_NAMES:
        for head in ["model", *VARIANTS[model_type].heads]:
            for style in styles(model_type):
                causal = style != "bert"
                if (head == "masked_lm" and causal) or (head == "causal_lm" and not causal):
                    continue
                if head == "image_classification" and causal and "bert" in styles(model_type):
                    continue  # an image model with a bidirectional encoder classifies with it
                cases.append(pytest.param(model_type, head, style, id=f"{model_type}-{head}-{style}"))
    return cases


def build(model_type: str, head: str, style: str, seed: int = 0, **overrides):
    config = get_tester(model_type).config(style, num_labels=NUM_LABELS, **overrides)
    variant = VARIANTS[model_type]
    torch.manual_seed(seed)
    model_class = variant.model if head == "model" else variant.heads[head]
    return model_class(config).eval()


def with_globals(model, inputs: dict) -> dict:
    if not type(model.base_model).attention_class.supports_global_attention:
        return inputs
    return {**inputs, "global_attention_mask": get_tester(model.config.model_type).global_mask(inputs["input_ids"])}


def main_output(output) -> torch.Tensor:
    for name in ("logits", "start_logits", "last_hidden_state"):
        if getattr(output, name, None) is not None:
            return getattr(output, name)
    raise AssertionError("no output tensor")


def real_positions(inputs: dict) -> torch.Tensor:
    return inputs["attention_mask"].bool()


def training_head(model_type: str, style: str) -> str:
    """The head a training step of the common tests goes through: the language model of the direction, or for a
    variant without LM heads (a model over sets) its sequence (set) classification head; an image model's encoder
    (no masked LM) trains through its image classification head."""
    if style == "bert" and "masked_lm" not in VARIANTS[model_type].heads and "image_classification" in VARIANTS[
            model_type].heads:
        return "image_classification"
    if "masked_lm" in VARIANTS[model_type].heads or "causal_lm" in VARIANTS[model_type].heads:
        return "causal_lm" if style != "bert" else "masked_lm"
    return "sequence_classification"


def training_labels(head: str, inputs: dict) -> torch.Tensor:
    if head.endswith("_lm"):
        return inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    return torch.arange(inputs["attention_mask"].shape[0], device=inputs["attention_mask"].device) % NUM_LABELS


@pytest.mark.parametrize("model_type", VARIANT_NAMES)
def test_every_registered_variant_has_a_tester(model_type):
    assert model_type in TESTERS, f"add a tester for {model_type} to tests/testers.py"


@pytest.mark.parametrize("model_type", VARIANT_NAMES)
def test_auto_classes_resolve_to_the_variant(model_type):
    variant = VARIANTS[model_type]
    config = get_tester(model_type).config()
    assert type(AutoConfig.for_model(model_type)) is variant.config
    assert type(AutoModel.from_config(config)) is variant.model
    for head, model_class in variant.heads.items():
        head_config = get_tester(model_type).config("gpt2" if head == "causal_lm" else "bert")
        assert type(AUTO_HEADS[head].from_config(head_config)) is model_class
    for cls in (variant.config, variant.model, *variant.heads.values()):
        assert cls.__name__.startswith("Efficient"), "never reuse a transformers name"
    assert model_type.startswith("efficient_")


@pytest.mark.parametrize(("model_type", "head", "style"), head_style_cases())
def test_output_shapes_and_loss(model_type, head, style):
    model = build(model_type, head, style)
    tester = get_tester(model_type)
    inputs = with_globals(model, tester.inputs(model.config))
    batch, length = inputs["attention_mask"].shape
    labels = {
        "masked_lm": {"labels": training_labels(head, inputs)} if head == "masked_lm" else {},
        "causal_lm": {"labels": training_labels(head, inputs)} if head == "causal_lm" else {},
        "sequence_classification": {"labels": torch.tensor([0, 2, 1])},
        "image_classification": {"labels": torch.tensor([0, 2, 1])},
        "token_classification": {"labels": torch.randint(0, NUM_LABELS, (batch, length))},
        "question_answering": {"start_positions": torch.tensor([1, 2, 3]), "end_positions": torch.tensor([4, 5, 6])},
    }.get(head, {})
    output = model(**inputs, **labels, output_hidden_states=True)
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    expected = {
        "model": (batch, length, hidden),
        "masked_lm": (batch, length, vocab),
        "causal_lm": (batch, length, vocab),
        "sequence_classification": (batch, NUM_LABELS),
        "image_classification": (batch, NUM_LABELS),
        "token_classification": (batch, length, NUM_LABELS),
        "question_answering": (batch, length),
    }[head]
    assert tuple(main_output(output).shape) == expected
    assert len(output.hidden_states) == model.config.num_hidden_layers + 1
    if head != "model":
        assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    tuple_output = model(**inputs, return_dict=False)
    assert isinstance(tuple_output, tuple)
    torch.testing.assert_close(tuple_output[0], main_output(model(**inputs)), rtol=0, atol=0)


@pytest.mark.parametrize(("model_type", "head", "style"), head_style_cases())
def test_save_load_round_trip(model_type, head, style, tmp_path):
    model = build(model_type, head, style)
    inputs = with_globals(model, get_tester(model_type).inputs(model.config))
    model.save_pretrained(tmp_path)
    auto = AutoModel if head == "model" else AUTO_HEADS[head]
    loaded = auto.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    for (name, tensor), (loaded_name, loaded_tensor) in zip(
        list(model.named_parameters()) + list(model.named_buffers()),
        list(loaded.named_parameters()) + list(loaded.named_buffers()),
        strict=True,
    ):
        assert name == loaded_name and torch.equal(tensor, loaded_tensor), name
    with torch.no_grad():
        torch.testing.assert_close(main_output(loaded(**inputs)), main_output(model(**inputs)), rtol=0, atol=0)


@pytest.mark.parametrize("model_type", VARIANT_NAMES)
def test_padding_does_not_change_real_tokens(model_type):
    tester = get_tester(model_type)
    for style in styles(model_type):
        model = build(model_type, "model", style)
        inputs = tester.inputs(model.config, batch=1, padded=False)
        padded = tester.pad_right(inputs, model.config, 9)
        with torch.no_grad():
            alone = model(**inputs).last_hidden_state
            in_padding = model(**padded).last_hidden_state[:, : alone.shape[1]]
        torch.testing.assert_close(in_padding, alone, rtol=1e-5, atol=1e-5, msg=f"style {style}")


@pytest.mark.parametrize("model_type", VARIANT_NAMES)
def test_causal_outputs_ignore_later_tokens(model_type):
    causal_styles = [s for s in styles(model_type) if s != "bert"]
    if not causal_styles:
        pytest.skip(f"{model_type} is encoder-only")
    tester = get_tester(model_type)
    for style in causal_styles:
        model = build(model_type, "model", style)
        inputs = tester.inputs(model.config, batch=1, padded=False)
        changed = inputs["input_ids"].clone()
        cut = inputs["input_ids"].shape[1] // 2
        changed[0, cut] = (changed[0, cut] % (model.config.vocab_size - 1)) + 1
        with torch.no_grad():
            before = model(**inputs).last_hidden_state
            after = model(input_ids=changed, attention_mask=inputs["attention_mask"]).last_hidden_state
        torch.testing.assert_close(after[:, :cut], before[:, :cut], rtol=0, atol=1e-6)
        assert (after[:, cut] - before[:, cut]).abs().max() > 1e-3, "the changed token's own output must change"


@pytest.mark.parametrize("model_type", VARIANT_NAMES)
def test_gradient_reaches_every_parameter(model_type):
    tester = get_tester(model_type)
    for style in styles(model_type):
        head = training_head(model_type, style)
        if head not in VARIANTS[model_type].heads:
            continue
        model = build(model_type, head, style, use_pooler=False).train()
        inputs = with_globals(model, tester.inputs(model.config))
        model(**inputs, labels=training_labels(head, inputs)).loss.backward()
        without = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
                   and not any(part in n for part in tester.trained_only_with_memory)]
        assert not without, f"{style}: no gradient reaches {without}"


def full_attention_twin(model: torch.nn.Module, length: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The variant in its full-attention setting, and the plain backbone (exact softmax attention), same weights."""
    config = model.config
    degenerate_config = type(config).from_dict({**config.to_dict(), **config.full_attention_overrides(length)})
    degenerate = type(model)(degenerate_config).eval()
    degenerate.load_state_dict(model.state_dict())
    backbone_fields = {f.name for f in dataclasses.fields(EfficientConfig)}
    backbone = EfficientModel(EfficientConfig(**{k: v for k, v in config.to_dict().items() if k in backbone_fields}))
    missing, unexpected = backbone.load_state_dict(model.state_dict(), strict=False)
    assert not missing, missing
    return degenerate, backbone.eval()


@pytest.mark.parametrize("model_type", VARIANT_NAMES)
def test_degenerate_setting_equals_full_attention(model_type):
    tester = get_tester(model_type)
    if tester.degenerate_tolerance is None:
        with pytest.raises(NotImplementedError):
            VARIANTS[model_type].config.full_attention_overrides(tester.length)
        pytest.skip(f"{model_type} has no setting equal to softmax attention (declared by its tester)")
    for style in styles(model_type):
        model = build(model_type, "model", style)
        inputs = tester.inputs(model.config)
        degenerate, backbone = full_attention_twin(model, inputs["input_ids"].shape[1])
        with torch.no_grad():
            ours, exact = degenerate(**inputs).last_hidden_state, backbone(**inputs).last_hidden_state
            sparse = model(**inputs).last_hidden_state
        real = real_positions(inputs)
        tolerance = tester.degenerate_tolerance
        torch.testing.assert_close(ours[real], exact[real], rtol=tolerance, atol=tolerance, msg=f"style {style}")
        assert (sparse[real] - exact[real]).abs().max() > 1e-3, "the tiny pattern should really be sparse"


def compare_backends(model_type: str, backends: tuple[str, ...], device: str, **overrides) -> None:
    """Every fast path equals the naive reference: outputs and parameter gradients, fp32, random inputs."""
    tester = get_tester(model_type)
    for style in styles(model_type):
        head = training_head(model_type, style)
        model = build(model_type, head, style, **overrides).to(device).train()  # dropout 0: train mode for grads
        inputs = with_globals(model, tester.inputs(model.config, seed=1))
        inputs = {k: v.to(device) for k, v in inputs.items()}
        labels = training_labels(head, inputs)
        logits = {"return_logits": True} if head.endswith("_lm") else {}
        results = {}
        for backend in ("reference", *backends):
            model.config.attention_backend = backend
            model.zero_grad()
            output = model(**inputs, labels=labels, **logits)
            output.loss.backward()
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
            results[backend] = (output.logits.detach(), grads)
        model.config.attention_backend = "auto"
        real = real_positions(inputs) if head.endswith("_lm") else slice(None)
        reference_logits, reference_grads = results["reference"]
        for backend in backends:
            logits, grads = results[backend]
            torch.testing.assert_close(logits[real], reference_logits[real], rtol=1e-5, atol=2e-5,
                                       msg=f"{backend} {style} logits")
            for name, grad in reference_grads.items():
                torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=f"{backend} {style} {name}")


@pytest.mark.parametrize("model_type", VARIANT_NAMES)
def test_cpu_fast_paths_equal_reference(model_type):
    compare_backends(model_type, get_tester(model_type).cpu_backends, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
@pytest.mark.parametrize("model_type", VARIANT_NAMES)
def test_gpu_fast_paths_equal_reference(model_type):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tester = get_tester(model_type)
    # head_dim 16: the smallest that compiled GPU kernels (FlexAttention) take
    compare_backends(model_type, tester.cpu_backends + tester.gpu_backends, "cuda", head_dim=16)
    model = build(model_type, "model", styles(model_type)[0]).to("cuda")  # head_dim 8: the fast path steps aside
    inputs = {k: v.cuda() for k, v in get_tester(model_type).inputs(model.config).items()}
    with torch.no_grad():
        model(**inputs)


@pytest.mark.parametrize("model_type", VARIANT_NAMES)
def test_cached_decoding_equals_full_pass(model_type):
    attention = VARIANTS[model_type].model.attention_class
    if not attention.supports_cache or "causal_lm" not in VARIANTS[model_type].heads:
        pytest.skip(f"{model_type} has no incremental decoding")
    tester = get_tester(model_type)
    for style in ("gpt2", "llama"):
        model = build(model_type, "causal_lm", style)
        input_ids = tester.inputs(model.config, batch=2, padded=False)["input_ids"]
        with torch.no_grad():
            full = model(input_ids=input_ids, use_cache=False).logits
            prefix = 5
            step = model(input_ids=input_ids[:, :prefix], use_cache=True)
            torch.testing.assert_close(step.logits, full[:, :prefix], rtol=1e-5, atol=1e-5)
            cache = returned_cache(step)
            for position in range(prefix, input_ids.shape[1]):
                step = model(input_ids=input_ids[:, position : position + 1], cache=cache, use_cache=True)
                cache = returned_cache(step)
                torch.testing.assert_close(step.logits[:, 0], full[:, position], rtol=1e-5, atol=1e-5,
                                           msg=f"{style} position {position}")
            generated = model.generate(input_ids[:, :prefix], max_new_tokens=12, do_sample=False)
            greedy = input_ids[:, :prefix]
            for _ in range(12):
                next_token = model(input_ids=greedy, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                greedy = torch.cat([greedy, next_token], dim=1)
        assert torch.equal(generated, greedy), f"{style}: generate() with the cache differs from full passes"


@pytest.mark.parametrize("model_type", VARIANT_NAMES)
def test_forward_leaves_the_module_unchanged(model_type):
    model = build(model_type, "model", "bert" if "bert" in styles(model_type) else "gpt2")
    inputs = with_globals(model, get_tester(model_type).inputs(model.config))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attributes = {name: set(vars(module)) for name, module in model.named_modules()}
    with torch.no_grad():
        model(**inputs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert attributes == {name: set(vars(module)) for name, module in model.named_modules()}


@pytest.mark.parametrize("model_type", VARIANT_NAMES)
def test_gradient_checkpointing_gives_the_same_gradients(model_type):
    style = "bert" if "bert" in styles(model_type) else "gpt2"
    model = build(model_type, "model", style).train()
    inputs = with_globals(model, get_tester(model_type).inputs(model.config))
    gradients = []
    for checkpointing in (False, True):
        if checkpointing:
            enable_activation_checkpointing(model)
        model.zero_grad()
        model(**inputs).last_hidden_state.pow(2).mean().backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("model_type", VARIANT_NAMES)
def test_bad_inputs_raise_clear_errors(model_type):
    model = build(model_type, "model", styles(model_type)[0])
    ids = torch.randint(1, model.config.vocab_size, (2, 20))
    for inputs, message in get_tester(model_type).bad_inputs(model.config):
        with pytest.raises(ValueError, match=message):
            model(**inputs)
    if type(model).attention_class.supports_global_attention:
        with pytest.raises(ValueError, match="global_attention_mask"):
            model(input_ids=ids, global_attention_mask=torch.ones(2, 21))


def test_package_exports_every_variant():
    for variant in VARIANTS.values():
        for cls in (variant.config, variant.model, *variant.heads.values()):
            assert getattr(hf_efficient, cls.__name__) is cls
