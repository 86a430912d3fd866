"""Move checkpoints both ways between our EfficientLongformer* models and transformers' Longformer* models.

transformers -> ours reuses the Longformer source family (families.py) through `convert_model`. Ours -> transformers
is the inverse key map below; it covers exactly what transformers' Longformer can express (bidirectional, no
dilation, BERT/RoBERTa-style post-norm block) and raises a `ConversionError` saying what to change otherwise.

Two layout differences: transformers' position table has `pad_token_id + 1` extra leading rows (RoBERTa-style
positions: real tokens start at pad_token_id + 1), and its sequence-classification head is
dropout -> dense -> tanh -> dropout -> out_proj on the first token, which is our pooler (dense + tanh) ->
dropout -> classifier (equal in eval mode). Behaviour differences to keep in mind: its ForSequenceClassification
makes the first token global and its ForQuestionAnswering makes the question global when no
`global_attention_mask` is passed; ours never adds global tokens by itself, so pass the same mask to both.
"""

import math

import torch
import transformers
from transformers.utils import logging

from ..auto import VARIANTS
from .convert import convert_model
from .families import FAMILIES, ConversionError, rename

logger = logging.get_logger(__name__)

TARGET = "efficient_longformer"
# our head key -> transformers class; the causal-LM head has no counterpart
TRANSFORMERS_CLASSES = {
    "model": "LongformerModel",
    "masked_lm": "LongformerForMaskedLM",
    "sequence_classification": "LongformerForSequenceClassification",
    "token_classification": "LongformerForTokenClassification",
    "question_answering": "LongformerForQuestionAnswering",
}

# our backbone key -> transformers' LongformerModel key (the inverse of families.longformer_weights)
BACKBONE_RULES = [
    (r"embeddings\.embed_tokens\.weight", r"embeddings.word_embeddings.weight"),
    (r"embeddings\.embed_positions\.weight", r"embeddings.position_embeddings.weight"),
    (r"embeddings\.embed_token_types\.weight", r"embeddings.token_type_embeddings.weight"),
    (r"embeddings\.norm\.(weight|bias)", r"embeddings.LayerNorm.\1"),
    (r"layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", r"encoder.layer.\1.attention.self.query.\2"),
    (r"layers\.(\d+)\.self_attn\.k_proj\.(weight|bias)", r"encoder.layer.\1.attention.self.key.\2"),
    (r"layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)", r"encoder.layer.\1.attention.self.value.\2"),
    (r"layers\.(\d+)\.self_attn\.q_global_proj\.(weight|bias)", r"encoder.layer.\1.attention.self.query_global.\2"),
    (r"layers\.(\d+)\.self_attn\.k_global_proj\.(weight|bias)", r"encoder.layer.\1.attention.self.key_global.\2"),
    (r"layers\.(\d+)\.self_attn\.v_global_proj\.(weight|bias)", r"encoder.layer.\1.attention.self.value_global.\2"),
    (r"layers\.(\d+)\.self_attn\.o_proj\.(weight|bias)", r"encoder.layer.\1.attention.output.dense.\2"),
    (r"layers\.(\d+)\.attention_norm\.(weight|bias)", r"encoder.layer.\1.attention.output.LayerNorm.\2"),
    (r"layers\.(\d+)\.mlp\.up_proj\.(weight|bias)", r"encoder.layer.\1.intermediate.dense.\2"),
    (r"layers\.(\d+)\.mlp\.down_proj\.(weight|bias)", r"encoder.layer.\1.output.dense.\2"),
    (r"layers\.(\d+)\.mlp_norm\.(weight|bias)", r"encoder.layer.\1.output.LayerNorm.\2"),
]
# our head-level key (outside the backbone) -> transformers' key, per head
HEAD_RULES = {
    "model": [(r"pooler\.dense\.(weight|bias)", r"pooler.dense.\1")],
    "masked_lm": [
        (r"lm_head\.dense\.(weight|bias)", r"lm_head.dense.\1"),
        (r"lm_head\.norm\.(weight|bias)", r"lm_head.layer_norm.\1"),
        (r"lm_head\.decoder\.(weight|bias)", r"lm_head.decoder.\1"),  # lm_head.bias is added from decoder.bias
    ],
    "sequence_classification": [
        (r"pooler\.dense\.(weight|bias)", r"classifier.dense.\1"),
        (r"classifier\.(weight|bias)", r"classifier.out_proj.\1"),
    ],
    "token_classification": [(r"classifier\.(weight|bias)", r"classifier.\1")],
    "question_answering": [(r"qa_outputs\.(weight|bias)", r"qa_outputs.\1")],
}


def from_transformers_longformer(hf_model: torch.nn.Module, head: str | None = None, **options) -> torch.nn.Module:
    """transformers' LongformerModel / ForMaskedLM / ForSequenceClassification / ForTokenClassification /
    ForQuestionAnswering -> the matching EfficientLongformer* model with identical weights, in eval mode.

    `head` (a key of hf_efficient.auto.AUTO_HEADS, or "model") defaults to the one matching the class of
    `hf_model`; `options` are our config knobs (e.g. attention_backend). Positions are kept as they are.
    """
    family = FAMILIES["longformer"]
    if getattr(hf_model.config, "model_type", None) not in family.model_types:
        raise ConversionError(
            f"Expected a transformers Longformer model, got model_type={hf_model.config.model_type!r}; "
            "for BERT / GPT-2 / Llama sources use hf_efficient.conversion.convert_model."
        )
    if head is None:
        class_name = type(hf_model).__name__
        suffixes = [s for s in sorted(family.heads, key=len, reverse=True) if class_name.endswith(s)]
        if not suffixes:
            raise ConversionError(
                f"{class_name} has no EfficientLongformer counterpart; convert one of "
                f"{sorted(TRANSFORMERS_CLASSES.values())} (or its .longformer backbone) instead."
            )
        head = family.heads[suffixes[0]]
    return convert_model(hf_model, family, TARGET, head, max_length=None, **options).model


def to_transformers_longformer(model: torch.nn.Module) -> torch.nn.Module:
    """An EfficientLongformer* model -> the matching transformers Longformer* model with identical weights.

    Bare model -> LongformerModel, ForMaskedLM -> LongformerForMaskedLM, and likewise for sequence and token
    classification and question answering; returned in eval mode, on the device and in the dtype of `model`. Raises a
    `ConversionError` listing what to change when transformers' Longformer can't express the model.
    """
    config = model.config
    if getattr(config, "model_type", None) != TARGET:
        raise ConversionError(f"Expected an EfficientLongformer model, got model_type={config.model_type!r}.")
    head = our_head(model)
    problems = unsupported(config, head)
    if problems:
        raise ConversionError(
            f"transformers' Longformer can't express this {type(model).__name__}: " + "; ".join(problems) + "."
        )
    largest = max(config.attention_window)
    if any(largest % window for window in config.attention_window):
        logger.warning(
            f"attention_window={config.attention_window}: transformers' Longformer pads inputs to a multiple of the "
            f"largest window ({largest}) only, but each layer needs a multiple of its own window, so it fails on "
            f"other lengths; pad inputs yourself to a multiple of {math.lcm(*config.attention_window)} (mask 0)."
        )
    hf_config = transformers_config(config, head)
    model_class = getattr(transformers, TRANSFORMERS_CLASSES[head])
    pooling = {"add_pooling_layer": config.use_pooler} if head == "model" else {}
    hf_model = model_class(hf_config, **pooling)
    hf_model.load_state_dict(transformers_weights(model, head), strict=True)
    parameter = next(model.parameters())
    return hf_model.to(parameter.device, parameter.dtype).eval()


def our_head(model: torch.nn.Module) -> str:
    variant = VARIANTS[TARGET]
    if type(model) is variant.model:
        return "model"
    for head, model_class in variant.heads.items():
        if type(model) is model_class:
            return head
    raise ConversionError(f"{type(model).__name__} is not one of the EfficientLongformer model or head classes.")


def unsupported(config, head: str) -> list[str]:
    """Everything about `config` / `head` that transformers' Longformer lacks, each saying what to change."""
    expected = {
        "is_causal": (False, "transformers' Longformer is bidirectional only"),
        "position_embedding_type": ("absolute", "it has learned absolute positions only (no rotary / none)"),
        "norm_position": ("post", "its block is post-norm (BERT/RoBERTa)"),
        "norm_type": ("layernorm", "it uses LayerNorm (no RMSNorm)"),
        "mlp_type": ("standard", "its MLP is dense -> act -> dense (no gated MLP)"),
        "embedding_norm": (True, "it always normalises the summed embeddings"),
        "attention_bias": (True, "its attention projections always have biases"),
        "mlp_bias": (True, "its MLP layers always have biases"),
    }
    problems = [f"{name}={getattr(config, name)!r} ({why}; needs {name}={value!r})"
                for name, (value, why) in expected.items() if getattr(config, name) != value]
    if head == "causal_lm":
        problems.append(f"it has no causal-LM head (heads it has: {sorted(TRANSFORMERS_CLASSES)})")
    if any(d != 1 for d in config.attention_dilation):
        problems.append(f"attention_dilation={config.attention_dilation} (it has no dilation; needs 1 in every layer)")
    if min(config.attention_window) < 4:
        problems.append(f"attention_window={config.attention_window} (its sliding-chunks code fails on a window of 2, "
                        "one token per side; needs every window >= 4)")
    if config.num_key_value_heads != config.num_attention_heads:
        problems.append(
            f"num_key_value_heads={config.num_key_value_heads} (it has no grouped KV heads; needs "
            f"num_key_value_heads=num_attention_heads={config.num_attention_heads})"
        )
    if config.head_dim * config.num_attention_heads != config.hidden_size:
        problems.append(f"head_dim={config.head_dim} (needs hidden_size / num_attention_heads)")
    if config.type_vocab_size < 1:
        problems.append("type_vocab_size=0 (it always has a token-type table; needs type_vocab_size >= 1)")
    if config.pad_token_id is None:
        problems.append("pad_token_id=None (its positions are counted from the pad id; set pad_token_id)")
    if head == "masked_lm":
        if not config.masked_lm_transform or not config.lm_head_bias:
            problems.append("its masked-LM head is dense -> gelu -> LayerNorm -> decoder with bias "
                            "(needs masked_lm_transform=True, lm_head_bias=True)")
        if config.hidden_act != "gelu":
            problems.append(f"hidden_act={config.hidden_act!r} (its masked-LM head always uses gelu)")
    if head == "sequence_classification" and (not config.use_pooler or config.classifier_pooling != "first"):
        problems.append("its classifier is dense + tanh on the first token (needs use_pooler=True, "
                        "classifier_pooling='first')")
    return problems


def transformers_config(config, head: str) -> transformers.LongformerConfig:
    """Our config as a LongformerConfig: positions gain the pad_token_id + 1 leading rows."""
    fields = dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act, hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings + config.pad_token_id + 1,
        type_vocab_size=config.type_vocab_size, initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps, attention_window=list(config.attention_window),
        pad_token_id=config.pad_token_id, tie_word_embeddings=config.tie_word_embeddings,
    )
    for name in ("bos_token_id", "eos_token_id", "sep_token_id"):
        if getattr(config, name, None) is not None:
            fields[name] = getattr(config, name)
    if head in ("sequence_classification", "token_classification"):
        fields.update(id2label=dict(config.id2label), label2id=dict(config.label2id), problem_type=config.problem_type)
    return transformers.LongformerConfig(**fields)


def transformers_weights(model: torch.nn.Module, head: str) -> dict[str, torch.Tensor]:
    """Our state dict renamed to transformers' layout for `head` (the backbone under "longformer." for heads)."""
    state_dict = {key.removeprefix("model."): tensor for key, tensor in model.state_dict().items()}
    positions = "embeddings.embed_positions.weight"
    table = state_dict[positions]  # its rows 0..pad_token_id are never used by real tokens: copies of our row 0
    state_dict[positions] = torch.cat([table[:1].expand(model.config.pad_token_id + 1, -1), table])
    prefix = "" if head == "model" else "longformer."
    rules = [(pattern, prefix + target) for pattern, target in BACKBONE_RULES] + HEAD_RULES[head]
    pooler = r"pooler\.dense\.(weight|bias)"
    ignored = [] if any(pattern == pooler for pattern, _ in HEAD_RULES[head]) else [pooler]
    if ignored and model.config.use_pooler:
        logger.info(f"transformers' {TRANSFORMERS_CLASSES[head]} has no pooler (this head doesn't use it): dropped.")
    weights = rename(state_dict, rules, ignored)
    if head == "masked_lm":
        weights["lm_head.bias"] = weights["lm_head.decoder.bias"]  # tied to lm_head.decoder.bias in transformers
    return weights
