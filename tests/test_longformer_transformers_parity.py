"""Checkpoints move both ways between transformers' Longformer and our EfficientLongformer with equal outputs.

Tiny random models (fp32, eval, no dropout) on a right-padded batch with global tokens; only real (non-padding)
positions are compared: the two models disagree on padding rows by design (ours zeroes them; transformers gives
them the pad position).
"""

import pytest
import torch
import transformers

import hf_efficient
from hf_efficient.conversion.families import ConversionError
from hf_efficient.conversion.longformer_layout import from_transformers_longformer, to_transformers_longformer

TOLERANCE = 1e-4
LENGTH = 13  # a multiple of no window: transformers pads internally, ours takes any length
REAL_LENGTHS = (13, 9, 11)  # right padding on rows 1 and 2
GLOBALS = ([0, 5, 11], [0, 3, 10], [])  # row 1's position 10 is padding (ignored by both); row 2 has none
SIZES = dict(
    vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    # transformers pads to a multiple of the largest window only (each must divide it) and fails on a window of 2
    attention_window=[4, 8, 4],
)
OURS = {
    "model": hf_efficient.EfficientLongformerModel,
    "masked_lm": hf_efficient.EfficientLongformerForMaskedLM,
    "sequence_classification": hf_efficient.EfficientLongformerForSequenceClassification,
    "token_classification": hf_efficient.EfficientLongformerForTokenClassification,
    "question_answering": hf_efficient.EfficientLongformerForQuestionAnswering,
}
THEIRS = {
    "model": transformers.LongformerModel,
    "masked_lm": transformers.LongformerForMaskedLM,
    "sequence_classification": transformers.LongformerForSequenceClassification,
    "token_classification": transformers.LongformerForTokenClassification,
    "question_answering": transformers.LongformerForQuestionAnswering,
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, and spares a shared CI machine intra-op oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Matrices ~ N(0, 0.3), biases ~ N(0, 0.1), LayerNorm scales ~ 1 + N(0, 0.1): far from the init, with peaked
    attention (score std ~3), so a wrong key set, position or projection shows far above the tolerance."""
    generator = torch.Generator().manual_seed(seed)
    norm_scales = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if id(parameter) in norm_scales:
                parameter.copy_(1 + 0.1 * noise)
            else:
                parameter.copy_(noise * (0.3 if parameter.dim() > 1 else 0.1))
    return model.eval()


def batch(pad_token_id: int, vocab_size: int, with_globals: bool = True, seed: int = 0) -> dict:
    """Random ids that are never the pad id at real positions and are the pad id at padding positions."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(pad_token_id + 1, vocab_size, (len(REAL_LENGTHS), LENGTH), generator=generator)
    attention_mask = torch.zeros_like(input_ids)
    global_attention_mask = torch.zeros_like(input_ids)  # zeros, not None: transformers' heads add globals to None
    for row, (length, positions) in enumerate(zip(REAL_LENGTHS, GLOBALS, strict=True)):
        attention_mask[row, :length] = 1
        if with_globals:
            global_attention_mask[row, positions] = 1
    input_ids[attention_mask == 0] = pad_token_id
    return dict(input_ids=input_ids, attention_mask=attention_mask, global_attention_mask=global_attention_mask)


def output(model: torch.nn.Module, head: str, inputs: dict) -> torch.Tensor:
    """The head's main output, (batch, seq, ...) per token or (batch, labels) for sequence classification."""
    with torch.no_grad():
        out = model(**inputs)
    if head == "model":
        return out.last_hidden_state
    if head == "question_answering":
        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return out.logits


def max_diff(a: torch.Tensor, b: torch.Tensor, head: str, attention_mask: torch.Tensor) -> float:
    difference = (a - b).abs()
    if head != "sequence_classification":
        difference = difference[attention_mask.bool()]  # real positions only
    return float(difference.max())


def our_model(head: str, pad_token_id: int = 1, **overrides) -> torch.nn.Module:
    config = hf_efficient.EfficientLongformerConfig(
        **SIZES, max_position_embeddings=32, pad_token_id=pad_token_id, num_labels=3, **overrides
    )
    return randomize(OURS[head](config))


@pytest.mark.parametrize("with_globals", [True, False], ids=["globals", "no-globals"])
@pytest.mark.parametrize("head", list(THEIRS))
def test_transformers_to_ours(head, with_globals):
    config = transformers.LongformerConfig(**SIZES, max_position_embeddings=34, num_labels=3)
    if head == "question_answering":
        config.num_labels = 2
    theirs = randomize(THEIRS[head](config))
    ours = from_transformers_longformer(theirs)
    assert type(ours) is OURS[head]
    assert ours.config.max_position_embeddings == 32 and ours.config.attention_window == [4, 8, 4]
    inputs = batch(config.pad_token_id, config.vocab_size, with_globals)
    diff = max_diff(output(theirs, head, inputs), output(ours, head, inputs), head, inputs["attention_mask"])
    assert diff <= TOLERANCE, f"{head}: max |difference| {diff:.3g}"


@pytest.mark.parametrize("backend", ["blocked", "reference"])
def test_transformers_to_ours_every_backend(backend):
    config = transformers.LongformerConfig(**SIZES, max_position_embeddings=34)
    theirs = randomize(transformers.LongformerModel(config))
    ours = from_transformers_longformer(theirs, attention_backend=backend)
    inputs = batch(config.pad_token_id, config.vocab_size)
    diff = max_diff(output(theirs, "model", inputs), output(ours, "model", inputs), "model", inputs["attention_mask"])
    assert diff <= TOLERANCE, f"{backend}: max |difference| {diff:.3g}"


@pytest.mark.parametrize("pad_token_id", [0, 1])
@pytest.mark.parametrize("head", list(OURS))
def test_ours_to_transformers(head, pad_token_id):
    ours = our_model(head, pad_token_id)  # use_pooler=True: heads other than sequence classification drop it
    theirs = to_transformers_longformer(ours)
    assert type(theirs) is THEIRS[head]
    assert theirs.config.max_position_embeddings == 32 + pad_token_id + 1
    inputs = batch(pad_token_id, ours.config.vocab_size)
    diff = max_diff(output(ours, head, inputs), output(theirs, head, inputs), head, inputs["attention_mask"])
    assert diff <= TOLERANCE, f"{head}: max |difference| {diff:.3g}"


@pytest.mark.parametrize(
    "head, overrides",
    [
        ("model", {}),
        ("model", dict(use_pooler=False)),
        ("masked_lm", dict(use_pooler=False)),
        ("masked_lm", dict(use_pooler=False, tie_word_embeddings=False)),
        ("sequence_classification", {}),
        ("token_classification", dict(use_pooler=False)),
        ("question_answering", dict(use_pooler=False)),
    ],
)
def test_round_trip_is_identical(head, overrides):
    ours = our_model(head, **overrides)
    back = from_transformers_longformer(to_transformers_longformer(ours))
    assert type(back) is type(ours)
    expected, actual = ours.state_dict(), back.state_dict()
    assert sorted(actual) == sorted(expected)
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert not different, f"changed by the round trip: {different}"
    for field in ("max_position_embeddings", "attention_window", "pad_token_id", "use_pooler", "tie_word_embeddings"):
        assert getattr(back.config, field) == getattr(ours.config, field), field


@pytest.mark.parametrize(
    "head, overrides, names",
    [
        ("model", dict(is_causal=True), ["is_causal"]),
        ("causal_lm", dict(is_causal=True), ["is_causal", "causal-LM head"]),
        ("model", dict(attention_dilation=[1, 2, 1]), ["attention_dilation", "needs 1"]),
        ("model", dict(num_key_value_heads=2), ["num_key_value_heads"]),
        ("model", dict(position_embedding_type="rotary"), ["position_embedding_type", "rotary"]),
        ("model", dict(norm_position="pre"), ["norm_position", "post"]),
        ("model", dict(norm_type="rmsnorm"), ["norm_type", "layernorm"]),
        ("model", dict(mlp_type="gated"), ["mlp_type"]),
        ("model", dict(type_vocab_size=0), ["type_vocab_size", ">= 1"]),
        ("model", dict(attention_window=[4, 2, 4]), ["attention_window", ">= 4"]),
        ("sequence_classification", dict(use_pooler=False), ["use_pooler=True"]),
    ],
)
def test_unexpressible_models_raise(head, overrides, names):
    model_class = OURS.get(head, hf_efficient.EfficientLongformerForCausalLM)
    config = hf_efficient.EfficientLongformerConfig(**{**SIZES, "max_position_embeddings": 32, **overrides})
    with pytest.raises(ConversionError) as error:
        to_transformers_longformer(model_class(config))
    for name in names:
        assert name in str(error.value)


def test_transformers_head_without_counterpart_raises():
    config = transformers.LongformerConfig(**SIZES, max_position_embeddings=34)
    with pytest.raises(ConversionError, match="no EfficientLongformer counterpart"):
        from_transformers_longformer(transformers.LongformerForMultipleChoice(config))
