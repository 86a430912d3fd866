"""Source families: how a pretrained model's config and weights map onto the shared backbone.

Each family turns a source config into backbone fields and renames (and, for GPT-2's Conv1D, transposes/splits)
its state dict into our names, head-level: "model.<backbone>", "lm_head.*", "classifier.*", "qa_outputs.*".
Every source key must be used or explicitly ignored; anything else raises (nanoGPT's discipline).
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


class ConversionError(ValueError):
    """A source the converter can't turn into the requested target; the message says what would work."""


Rule = tuple[str, str | Callable[[re.Match], str]]


def rename(state_dict: dict[str, torch.Tensor], rules: list[Rule], ignored: list[str]) -> dict[str, torch.Tensor]:
    """Apply the first matching regex rule to every key; raise on keys no rule or ignore-pattern covers."""
    compiled = [(re.compile(pattern), target) for pattern, target in rules]
    ignored_patterns = [re.compile(p) for p in ignored]
    renamed, unused = {}, []
    for key, tensor in state_dict.items():
        for pattern, target in compiled:
            if pattern.fullmatch(key):
                renamed[pattern.sub(target, key)] = tensor
                break
        else:
            if not any(p.fullmatch(key) for p in ignored_patterns):
                unused.append(key)
    if unused:
        raise ConversionError(f"Source weights the converter doesn't know how to place: {sorted(unused)[:10]}")
    return renamed


@dataclass(frozen=True)
class SourceFamily:
    """One family of pretrained sources (e.g. every BERT-style checkpoint)."""

    name: str
    model_types: tuple[str, ...]
    backbone_fields: Callable[[object], dict]
    map_weights: Callable[[dict[str, torch.Tensor], object], dict[str, torch.Tensor]]
    # transformers head class name suffix -> our head key (see hf_efficient.auto.AUTO_HEADS); "model" = bare
    heads: dict[str, str] = field(default_factory=dict)


ENCODER_HEADS = {
    "Model": "model",
    "ForMaskedLM": "masked_lm",
    "ForPreTraining": "masked_lm",
    "ForSequenceClassification": "sequence_classification",
    "ForTokenClassification": "token_classification",
    "ForQuestionAnswering": "question_answering",
}
DECODER_HEADS = {
    "Model": "model",
    "LMHeadModel": "causal_lm",
    "ForCausalLM": "causal_lm",
    "ForSequenceClassification": "sequence_classification",
    "ForTokenClassification": "token_classification",
    "ForQuestionAnswering": "question_answering",
}


# ---------------------------------------------------------------- BERT
def bert_fields(config) -> dict:
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        raise ConversionError(
            f"BERT position_embedding_type={config.position_embedding_type!r} is not supported; only 'absolute'."
        )
    return dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act, mlp_type="standard", norm_type="layernorm", norm_position="post",
        layer_norm_eps=config.layer_norm_eps, attention_bias=True, mlp_bias=True,
        position_embedding_type="absolute", max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size, embedding_norm=True,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        classifier_dropout=getattr(config, "classifier_dropout", None), initializer_range=config.initializer_range,
        is_causal=False, use_pooler=True, classifier_pooling="first", masked_lm_transform=True, lm_head_bias=True,
        tie_word_embeddings=getattr(config, "tie_word_embeddings", True), pad_token_id=config.pad_token_id,
    )


BERT_LAYER_RULES: list[Rule] = [
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.(weight|bias)", r"model.layers.\1.self_attn.q_proj.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.(weight|bias)", r"model.layers.\1.self_attn.k_proj.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.(weight|bias)", r"model.layers.\1.self_attn.v_proj.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|bias)", r"model.layers.\1.attention_norm.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"model.layers.\1.mlp.up_proj.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"model.layers.\1.mlp.down_proj.\2"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|bias)", r"model.layers.\1.mlp_norm.\2"),
    (r"embeddings\.word_embeddings\.weight", r"model.embeddings.embed_tokens.weight"),
    (r"embeddings\.position_embeddings\.weight", r"model.embeddings.embed_positions.weight"),
    (r"embeddings\.token_type_embeddings\.weight", r"model.embeddings.embed_token_types.weight"),
    (r"embeddings\.LayerNorm\.(weight|bias)", r"model.embeddings.norm.\1"),
    (r"pooler\.dense\.(weight|bias)", r"model.pooler.dense.\1"),
]
BERT_HEAD_RULES: list[Rule] = [
    (r"cls\.predictions\.transform\.dense\.(weight|bias)", r"lm_head.dense.\1"),
    (r"cls\.predictions\.transform\.LayerNorm\.(weight|bias)", r"lm_head.norm.\1"),
    (r"cls\.predictions\.decoder\.weight", r"lm_head.decoder.weight"),
    (r"cls\.predictions\.(?:decoder\.)?bias", r"lm_head.decoder.bias"),
    (r"(classifier|qa_outputs)\.(weight|bias)", r"\1.\2"),
]


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key.removeprefix(prefix): tensor for key, tensor in state_dict.items()}


def bert_weights(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    state_dict = strip_prefix(state_dict, "bert.")
    ignored = [r"embeddings\.position_ids", r"cls\.seq_relationship\..*"]
    return rename(state_dict, BERT_LAYER_RULES + BERT_HEAD_RULES, ignored)


# ---------------------------------------------------------------- RoBERTa
def roberta_fields(config) -> dict:
    """RoBERTa is BERT with offset positions: rows 0..pad_token_id of its table are never used by real tokens."""
    fields = bert_fields(config)
    fields["max_position_embeddings"] = config.max_position_embeddings - (config.pad_token_id + 1)
    return fields


def drop_position_offset(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Our positions start at 0 for the first token; RoBERTa-style tables start real tokens at pad_token_id + 1.
    (Equal for right-padded inputs; RoBERTa counts positions past left padding, ours don't.)"""
    key = "embeddings.position_embeddings.weight"
    return {**state_dict, key: state_dict[key][config.pad_token_id + 1 :]}


ROBERTA_HEAD_RULES: list[Rule] = [
    (r"lm_head\.dense\.(weight|bias)", r"lm_head.dense.\1"),
    (r"lm_head\.layer_norm\.(weight|bias)", r"lm_head.norm.\1"),
    (r"lm_head\.decoder\.weight", r"lm_head.decoder.weight"),
    (r"lm_head\.(?:decoder\.)?bias", r"lm_head.decoder.bias"),
    (r"(qa_outputs|classifier)\.(weight|bias)", r"\1.\2"),
    (r"classifier\.out_proj\.(weight|bias)", r"classifier.\1"),
    (r"classifier\.dense\.(weight|bias)", r"model.pooler.dense.\1"),  # dense + act on the first token
]


def roberta_weights(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    state_dict = drop_position_offset(strip_prefix(state_dict, "roberta."), config)
    return rename(state_dict, BERT_LAYER_RULES + ROBERTA_HEAD_RULES, ignored=[r"embeddings\.position_ids"])


# ---------------------------------------------------------------- DistilBERT
def distilbert_fields(config) -> dict:
    return dict(
        vocab_size=config.vocab_size, hidden_size=config.dim, num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads, intermediate_size=config.hidden_dim, hidden_act=config.activation,
        mlp_type="standard", norm_type="layernorm", norm_position="post", layer_norm_eps=1e-12, attention_bias=True,
        mlp_bias=True, position_embedding_type="absolute", max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=0, embedding_norm=True, hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.attention_dropout, classifier_dropout=config.seq_classif_dropout,
        initializer_range=config.initializer_range, is_causal=False, use_pooler=True, pooler_act="relu",
        classifier_pooling="first", masked_lm_transform=True, lm_head_bias=True,
        tie_word_embeddings=getattr(config, "tie_word_embeddings", True), pad_token_id=config.pad_token_id,
    )


def distilbert_weights(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """DistilBERT's sequence classifier is pre_classifier + ReLU on the first token: our pooler with pooler_act relu."""
    state_dict = strip_prefix(state_dict, "distilbert.")
    layer = r"transformer\.layer\.(\d+)\."
    rules = [
        (r"embeddings\.word_embeddings\.weight", r"model.embeddings.embed_tokens.weight"),
        (r"embeddings\.position_embeddings\.weight", r"model.embeddings.embed_positions.weight"),
        (r"embeddings\.LayerNorm\.(weight|bias)", r"model.embeddings.norm.\1"),
        (layer + r"attention\.([qkv])_lin\.(weight|bias)", r"model.layers.\1.self_attn.\2_proj.\3"),
        (layer + r"attention\.out_lin\.(weight|bias)", r"model.layers.\1.self_attn.o_proj.\2"),
        (layer + r"sa_layer_norm\.(weight|bias)", r"model.layers.\1.attention_norm.\2"),
        (layer + r"ffn\.lin1\.(weight|bias)", r"model.layers.\1.mlp.up_proj.\2"),
        (layer + r"ffn\.lin2\.(weight|bias)", r"model.layers.\1.mlp.down_proj.\2"),
        (layer + r"output_layer_norm\.(weight|bias)", r"model.layers.\1.mlp_norm.\2"),
        (r"vocab_transform\.(weight|bias)", r"lm_head.dense.\1"),
        (r"vocab_layer_norm\.(weight|bias)", r"lm_head.norm.\1"),
        (r"vocab_projector\.(weight|bias)", r"lm_head.decoder.\1"),
        (r"pre_classifier\.(weight|bias)", r"model.pooler.dense.\1"),
        (r"(classifier|qa_outputs)\.(weight|bias)", r"\1.\2"),
    ]
    return rename(state_dict, rules, ignored=[r"embeddings\.position_ids"])


# ---------------------------------------------------------------- ELECTRA (discriminator)
def electra_fields(config) -> dict:
    fields = bert_fields(config)
    fields.update(embedding_size=config.embedding_size, pooler_act="gelu")
    return fields


def electra_weights(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The discriminator backbone; its classifier is dense + GELU on the first token (our pooler with gelu).
    The replaced-token-detection head of ElectraForPreTraining has no counterpart and is not carried over."""
    state_dict = strip_prefix(state_dict, "electra.")
    rules = BERT_LAYER_RULES + [
        (r"embeddings_project\.(weight|bias)", r"model.embeddings.project.\1"),
        (r"(qa_outputs|classifier)\.(weight|bias)", r"\1.\2"),
        (r"classifier\.out_proj\.(weight|bias)", r"classifier.\1"),
        (r"classifier\.dense\.(weight|bias)", r"model.pooler.dense.\1"),
    ]
    return rename(state_dict, rules, ignored=[r"embeddings\.position_ids", r"discriminator_predictions\..*"])


# ---------------------------------------------------------------- GPT-2
def gpt2_fields(config) -> dict:
    unsupported = {
        "scale_attn_weights": (getattr(config, "scale_attn_weights", True), True),
        "scale_attn_by_inverse_layer_idx": (getattr(config, "scale_attn_by_inverse_layer_idx", False), False),
        "reorder_and_upcast_attn": (getattr(config, "reorder_and_upcast_attn", False), False),
    }
    for name, (value, expected) in unsupported.items():
        if value != expected:
            raise ConversionError(f"GPT-2 sources with {name}={value} are not supported (only {expected}).")
    return dict(
        vocab_size=config.vocab_size, hidden_size=config.n_embd, num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head, intermediate_size=config.n_inner or 4 * config.n_embd,
        hidden_act=config.activation_function, mlp_type="standard", norm_type="layernorm", norm_position="pre",
        layer_norm_eps=config.layer_norm_epsilon, attention_bias=True, mlp_bias=True,
        position_embedding_type="absolute", max_position_embeddings=config.n_positions, type_vocab_size=0,
        embedding_norm=False, hidden_dropout_prob=config.resid_pdrop, attention_probs_dropout_prob=config.attn_pdrop,
        classifier_dropout=getattr(config, "summary_first_dropout", None), initializer_range=config.initializer_range,
        is_causal=True, use_pooler=False, classifier_pooling="last", masked_lm_transform=False, lm_head_bias=False,
        tie_word_embeddings=getattr(config, "tie_word_embeddings", True), pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
    )


def gpt2_weights(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """GPT-2 stores Linear weights as Conv1D (in, out): transpose them, and split the fused c_attn into q, k, v."""
    state_dict = strip_prefix(state_dict, "transformer.")
    converted = {}
    for key, tensor in list(state_dict.items()):
        match = re.fullmatch(r"h\.(\d+)\.attn\.c_attn\.(weight|bias)", key)
        if match:
            layer, kind = match.groups()
            parts = tensor.t().chunk(3, dim=0) if kind == "weight" else tensor.chunk(3, dim=0)
            for name, part in zip(("q_proj", "k_proj", "v_proj"), parts, strict=True):
                converted[f"model.layers.{layer}.self_attn.{name}.{kind}"] = part.contiguous()
            del state_dict[key]
        elif re.fullmatch(r"h\.\d+\.(attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight", key):
            state_dict[key] = tensor.t().contiguous()
    rules = [
        (r"wte\.weight", r"model.embeddings.embed_tokens.weight"),
        (r"wpe\.weight", r"model.embeddings.embed_positions.weight"),
        (r"h\.(\d+)\.ln_1\.(weight|bias)", r"model.layers.\1.attention_norm.\2"),
        (r"h\.(\d+)\.ln_2\.(weight|bias)", r"model.layers.\1.mlp_norm.\2"),
        (r"h\.(\d+)\.attn\.c_proj\.(weight|bias)", r"model.layers.\1.self_attn.o_proj.\2"),
        (r"h\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"model.layers.\1.mlp.up_proj.\2"),
        (r"h\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"model.layers.\1.mlp.down_proj.\2"),
        (r"ln_f\.(weight|bias)", r"model.final_norm.\1"),
        (r"lm_head\.weight", r"lm_head.weight"),
        (r"score\.weight", r"classifier.weight"),
        (r"(classifier|qa_outputs)\.(weight|bias)", r"\1.\2"),
    ]
    converted.update(rename(state_dict, rules, ignored=[r"h\.\d+\.attn\.(masked_)?bias"]))
    return converted


# ---------------------------------------------------------------- Llama
def llama_fields(config) -> dict:
    return dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        intermediate_size=config.intermediate_size, hidden_act=config.hidden_act, mlp_type="gated",
        norm_type="rmsnorm", norm_position="pre", layer_norm_eps=config.rms_norm_eps,
        attention_bias=config.attention_bias, mlp_bias=getattr(config, "mlp_bias", False),
        position_embedding_type="rotary", rope_parameters=dict(config.rope_parameters),
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=0, embedding_norm=False,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=float(config.attention_dropout or 0.0),
        initializer_range=config.initializer_range, is_causal=True, use_pooler=False, classifier_pooling="last",
        masked_lm_transform=False, lm_head_bias=False, tie_word_embeddings=config.tie_word_embeddings,
        pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
    )


def llama_weights(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    rules = [
        (r"model\.embed_tokens\.weight", r"model.embeddings.embed_tokens.weight"),
        (r"model\.layers\.(\d+)\.self_attn\.([qkvo]_proj)\.(weight|bias)", r"model.layers.\1.self_attn.\2.\3"),
        (r"model\.layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.(weight|bias)", r"model.layers.\1.mlp.\2.\3"),
        (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"model.layers.\1.attention_norm.weight"),
        (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"model.layers.\1.mlp_norm.weight"),
        (r"model\.norm\.weight", r"model.final_norm.weight"),
        (r"lm_head\.weight", r"lm_head.weight"),
        (r"score\.weight", r"classifier.weight"),
    ]
    state_dict = {(k if k.startswith(("model.", "lm_head.", "score.")) else f"model.{k}"): v
                  for k, v in state_dict.items()}
    return rename(state_dict, rules, ignored=[r"model\.rotary_emb\.inv_freq", r"model\.layers\.\d+\..*rotary.*"])


# ---------------------------------------------------------------- transformers' Longformer
def longformer_fields(config) -> dict:
    fields = roberta_fields(config)
    window = config.attention_window
    fields["attention_window"] = list(window) if isinstance(window, (list, tuple)) else window
    return fields


def longformer_weights(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """RoBERTa-style positions and heads, plus the global projections."""
    state_dict = drop_position_offset(strip_prefix(state_dict, "longformer."), config)
    rules = BERT_LAYER_RULES + ROBERTA_HEAD_RULES + [
        (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)_global\.(weight|bias)",
         lambda m: f"model.layers.{m.group(1)}.self_attn.{m.group(2)[0]}_global_proj.{m.group(3)}"),
    ]
    return rename(state_dict, rules, ignored=[r"embeddings\.position_ids"])


FAMILIES: dict[str, SourceFamily] = {
    family.name: family
    for family in (
        SourceFamily("bert", ("bert",), bert_fields, bert_weights, ENCODER_HEADS),
        SourceFamily("roberta", ("roberta", "xlm-roberta"), roberta_fields, roberta_weights, ENCODER_HEADS),
        SourceFamily("distilbert", ("distilbert",), distilbert_fields, distilbert_weights, ENCODER_HEADS),
        SourceFamily("electra", ("electra",), electra_fields, electra_weights,
                     {**ENCODER_HEADS, "ForPreTraining": "model"}),  # the discriminator backbone
        SourceFamily("gpt2", ("gpt2",), gpt2_fields, gpt2_weights, DECODER_HEADS),
        SourceFamily("llama", ("llama",), llama_fields, llama_weights, DECODER_HEADS),
        SourceFamily("longformer", ("longformer",), longformer_fields, longformer_weights, ENCODER_HEADS),
    )
}


def family_of(config) -> SourceFamily:
    for family in FAMILIES.values():
        if config.model_type in family.model_types:
            return family
    supported = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise ConversionError(
        f"Can't convert a source of model_type={config.model_type!r}. Supported source architectures: {supported} "
        "(sentence-transformers folders of these work too)."
    )
