"""Move checkpoints both ways between our EfficientReformer* models and transformers' Reformer* models.

Layout: transformers' Reformer is our reversible stack (reversible=True, pre-norm LayerNorm blocks, no attention
biases, a standard MLP with biases, no token types or embedding norm, a LayerNorm over both streams) with its heads
reading 2 * hidden_size features. Supported classes: ReformerModel, ReformerModelWithLMHead (our ForCausalLM) and
ReformerForMaskedLM (its sequence-classification and QA heads have no counterpart here). Axial position embeddings
become our learned table (row p = [w0[p // s1], w1[p % s1]], the vectors transformers' eval mode adds), so a
checkpoint moved back has a plain table (`axial_pos_embds=False`) with the same values.

What agrees, and what does not:
* Rotations. Ours are per-layer buffers drawn from hash_seed * 100003 + layer; transformers draws new ones on every
  call, or, with `hash_seed` set, the same draw (torch.manual_seed(hash_seed)) in every layer.
  `align_transformers_hashes` sets each of its LSH layers' seed to ours, and then both hash alike (fp32, eval).
* Bidirectional models agree on unpadded inputs (any length for ours; transformers pads to a multiple of the chunk
  lengths itself). With padding, transformers' first chunk of each hash round looks back into padding; ours into the
  previous round's last real chunk (see attention/lsh.py), so padded rows differ.
* Causal LSH layers: transformers attends by sorted chunks in a full pass (which earlier tokens a query sees then
  depends on later tokens) and by bucket when decoding; ours by bucket window in both. They agree where transformers
  takes its short-input path (length <= lsh_attn_chunk_length: every earlier token) and ours has one bucket
  (num_buckets=1) and a window covering the input. Local layers agree in both directions.
* Training differs in where dropout is applied: transformers also drops inside the feed-forward (before the
  activation), after the final LayerNorm and on axial positions (dropout2d).
"""

import re

import torch
import transformers
from transformers.utils import logging

from ...conversion.convert import load_exactly
from ...conversion.families import ConversionError, rename
from .configuration_reformer import EfficientReformerConfig
from .modeling_reformer import (
    EfficientReformerForCausalLM,
    EfficientReformerForMaskedLM,
    EfficientReformerModel,
    layer_seed,
)

logger = logging.get_logger(__name__)

OURS = {"model": EfficientReformerModel, "causal_lm": EfficientReformerForCausalLM,
        "masked_lm": EfficientReformerForMaskedLM}
THEIRS = {"model": "ReformerModel", "causal_lm": "ReformerModelWithLMHead", "masked_lm": "ReformerForMaskedLM"}
# our backbone key -> transformers' ReformerModel key ("{attention}" is the layer's self-attention module)
BACKBONE_RULES = [
    (r"embeddings\.embed_tokens\.weight", r"embeddings.word_embeddings.weight"),
    (r"embeddings\.embed_positions\.weight", r"embeddings.position_embeddings.embedding.weight"),
    (r"layers\.(\d+)\.attention_norm\.(weight|bias)", r"encoder.layers.\1.attention.layer_norm.\2"),
    (r"layers\.(\d+)\.self_attn\.v_proj\.weight", r"encoder.layers.\1.attention.self_attention.value.weight"),
    (r"layers\.(\d+)\.self_attn\.k_proj\.weight", r"encoder.layers.\1.attention.self_attention.key.weight"),
    (r"layers\.(\d+)\.self_attn\.o_proj\.weight", r"encoder.layers.\1.attention.output.dense.weight"),
    (r"layers\.(\d+)\.mlp_norm\.(weight|bias)", r"encoder.layers.\1.feed_forward.layer_norm.\2"),
    (r"layers\.(\d+)\.mlp\.up_proj\.(weight|bias)", r"encoder.layers.\1.feed_forward.dense.dense.\2"),
    (r"layers\.(\d+)\.mlp\.down_proj\.(weight|bias)", r"encoder.layers.\1.feed_forward.output.dense.\2"),
    (r"final_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
]
HEAD_RULES = {
    "model": [],
    "causal_lm": [(r"lm_head\.weight", r"lm_head.decoder.weight"), (r"lm_head\.bias", r"lm_head.decoder.bias")],
    "masked_lm": [(r"lm_head\.decoder\.(weight|bias)", r"lm_head.decoder.\1")],
}
PREFIX = "reformer."


def _query_rules(kinds: list[str]) -> list[tuple[str, str]]:
    """q_proj is transformers' query_key in an LSH layer, its query in a local one."""
    return [(rf"layers\.{layer}\.self_attn\.q_proj\.weight",
             rf"encoder.layers.{layer}.attention.self_attention.{'query_key' if kind == 'lsh' else 'query'}.weight")
            for layer, kind in enumerate(kinds)]


def _head_of(model: torch.nn.Module, table: dict, names: bool = False) -> str:
    for head, model_class in table.items():
        if (type(model).__name__ == model_class) if names else (type(model) is model_class):
            return head
    classes = sorted(table.values()) if names else sorted(cls.__name__ for cls in table.values())
    raise ConversionError(f"{type(model).__name__} has no counterpart here; use one of {classes}.")


def unsupported(config: EfficientReformerConfig) -> list[str]:
    """Everything about `config` that transformers' Reformer lacks, each saying what to change."""
    expected = {
        "reversible": (True, "its stack is always reversible"), "norm_position": ("pre", "its blocks are pre-norm"),
        "norm_type": ("layernorm", "it uses LayerNorm"), "mlp_type": ("standard", "its MLP is dense -> act -> dense"),
        "mlp_bias": (True, "its MLP layers have biases"), "attention_bias": (False, "its projections have no bias"),
        "position_embedding_type": ("absolute", "it has learned (or axial) absolute positions"),
        "type_vocab_size": (0, "it has no token types"), "embedding_norm": (False, "it doesn't normalise embeddings"),
        "embedding_size": (config.hidden_size, "its embeddings are hidden_size wide"),
        "num_key_value_heads": (config.num_attention_heads, "it has no grouped KV heads"),
        "use_pooler": (False, "it has no pooler"), "masked_lm_transform": (False, "its LM head is one Linear"),
        "lm_head_bias": (True, "its LM head has a bias"),
    }
    return [f"{name}={getattr(config, name)!r} ({why}; needs {name}={value!r})"
            for name, (value, why) in expected.items() if getattr(config, name) != value]


def to_transformers_reformer(model: torch.nn.Module) -> torch.nn.Module:
    """EfficientReformerModel / ForCausalLM / ForMaskedLM -> transformers' ReformerModel / ReformerModelWithLMHead /
    ReformerForMaskedLM with identical weights (plain position table), in eval mode, on the device and in the dtype of
    `model`, its LSH layers hashing as ours (`align_transformers_hashes`). Raises a `ConversionError` listing what to
    change when transformers can't express the model."""
    head = _head_of(model, OURS)
    config = model.config
    problems = unsupported(config)
    if problems:
        raise ConversionError(f"transformers' Reformer can't express this {type(model).__name__}: "
                              + "; ".join(problems) + ".")
    hf_config = transformers.ReformerConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_attention_heads=config.num_attention_heads,
        attention_head_size=config.head_dim, num_hidden_layers=config.num_hidden_layers,
        attn_layers=list(config.attn_layers), feed_forward_size=config.intermediate_size, hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        lsh_attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        local_attention_probs_dropout_prob=config.attention_probs_dropout_prob, layer_norm_eps=config.layer_norm_eps,
        max_position_embeddings=config.max_position_embeddings, axial_pos_embds=False, is_decoder=config.is_causal,
        lsh_attn_chunk_length=config.lsh_attn_chunk_length, local_attn_chunk_length=config.local_attn_chunk_length,
        lsh_num_chunks_before=config.lsh_num_chunks_before, lsh_num_chunks_after=config.lsh_num_chunks_after,
        local_num_chunks_before=config.local_num_chunks_before, local_num_chunks_after=config.local_num_chunks_after,
        num_hashes=config.num_hashes, num_buckets=config.num_buckets, hash_seed=config.hash_seed,
        chunk_size_feed_forward=config.chunk_size_feed_forward, initializer_range=config.initializer_range,
        pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id, tie_word_embeddings=False,
    )
    hf_model = getattr(transformers, THEIRS[head])(hf_config)
    state_dict = {key.removeprefix("model."): tensor for key, tensor in model.state_dict().items()
                  if not key.endswith("self_attn.rotations")}
    prefix = "" if head == "model" else PREFIX
    rules = [(pattern, prefix + target) for pattern, target in _query_rules(config.attn_layers) + BACKBONE_RULES]
    weights = rename(state_dict, rules + HEAD_RULES[head], ignored=[])
    if head != "model":
        weights["lm_head.bias"] = weights["lm_head.decoder.bias"]
    missing, unexpected = hf_model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ConversionError(f"Weights don't line up with {THEIRS[head]}: missing {missing}, unexpected {unexpected}.")
    align_transformers_hashes(hf_model, config)
    parameter = next(model.parameters())
    return hf_model.to(parameter.device, parameter.dtype).eval()


def align_transformers_hashes(hf_model: torch.nn.Module, config: EfficientReformerConfig) -> None:
    """Give each of transformers' LSH layers our layer's seed, so that it draws our rotations (transformers reseeds
    the global RNG with it on every call: its behaviour, not ours)."""
    from transformers.models.reformer.modeling_reformer import LSHSelfAttention

    for module in hf_model.modules():
        if isinstance(module, LSHSelfAttention):
            module.hash_seed = layer_seed(config, module.layer_idx)


def axial_table(hf_embeddings: torch.nn.Module) -> torch.Tensor:
    """transformers' axial position embeddings as the (prod(shape), hidden) table its eval mode reads from."""
    weights = [weight.detach() for weight in hf_embeddings.weights]
    shape = tuple(hf_embeddings.axial_pos_shape)
    full = torch.cat([weight.expand(*shape, weight.shape[-1]) for weight in weights], dim=-1)
    return full.reshape(-1, full.shape[-1])


def from_transformers_reformer(hf_model: torch.nn.Module, **options) -> torch.nn.Module:
    """transformers' ReformerModel / ReformerModelWithLMHead / ReformerForMaskedLM -> the matching EfficientReformer*
    model with identical weights, in eval mode. `options` are our config knobs (e.g. hash_seed, attention_backend)."""
    head = _head_of(hf_model, THEIRS, names=True)
    hf_config = hf_model.config
    if not isinstance(hf_config.num_buckets, int):
        raise ConversionError(f"num_buckets={hf_config.num_buckets!r}: EfficientReformer needs one even number of "
                              "buckets (no factorised buckets, no per-length choice); set config.num_buckets.")
    dropouts = {hf_config.lsh_attention_probs_dropout_prob, hf_config.local_attention_probs_dropout_prob}
    if len(dropouts) > 1:
        logger.warning(f"lsh/local attention dropout {sorted(dropouts)}: EfficientReformer has one "
                       f"attention_probs_dropout_prob; using {max(dropouts)}.")
    base = hf_model if head == "model" else hf_model.reformer
    state_dict = {key.removeprefix(PREFIX): tensor for key, tensor in hf_model.state_dict().items()}
    length = hf_config.max_position_embeddings
    if hf_config.axial_pos_embds:
        table = axial_table(base.embeddings.position_embeddings)
        length = table.shape[0]
        state_dict = {k: v for k, v in state_dict.items() if ".position_embeddings.weights." not in k}
        state_dict["embeddings.position_embeddings.embedding.weight"] = table
    fields = dict(
        vocab_size=hf_config.vocab_size, hidden_size=hf_config.hidden_size,
        num_attention_heads=hf_config.num_attention_heads, head_dim=hf_config.attention_head_size,
        num_hidden_layers=hf_config.num_hidden_layers, attn_layers=list(hf_config.attn_layers),
        intermediate_size=hf_config.feed_forward_size, hidden_act=hf_config.hidden_act,
        hidden_dropout_prob=hf_config.hidden_dropout_prob, attention_probs_dropout_prob=max(dropouts),
        layer_norm_eps=hf_config.layer_norm_eps, max_position_embeddings=length, is_causal=hf_config.is_decoder,
        lsh_attn_chunk_length=hf_config.lsh_attn_chunk_length,
        local_attn_chunk_length=hf_config.local_attn_chunk_length,
        lsh_num_chunks_before=hf_config.lsh_num_chunks_before, lsh_num_chunks_after=hf_config.lsh_num_chunks_after,
        local_num_chunks_before=hf_config.local_num_chunks_before,
        local_num_chunks_after=hf_config.local_num_chunks_after, num_hashes=hf_config.num_hashes,
        num_buckets=hf_config.num_buckets, hash_seed=hf_config.hash_seed or 0,
        chunk_size_feed_forward=hf_config.chunk_size_feed_forward, initializer_range=hf_config.initializer_range,
        pad_token_id=hf_config.pad_token_id, eos_token_id=hf_config.eos_token_id, reversible=True,
        norm_position="pre", norm_type="layernorm", attention_bias=False, type_vocab_size=0, embedding_norm=False,
        use_pooler=False, masked_lm_transform=False, lm_head_bias=True, tie_word_embeddings=False,
    )
    model = OURS[head](EfficientReformerConfig(**{**fields, **options}))
    names = _our_names(model, head)
    unused = sorted(set(state_dict) - set(names) - {"lm_head.bias"})  # lm_head.bias: the decoder's bias again
    if unused:
        raise ConversionError(f"Weights of {type(hf_model).__name__} this model has no place for: {unused}.")
    load_exactly(model, {names[key]: tensor for key, tensor in state_dict.items() if key in names})
    return model.eval()


def _our_names(model: torch.nn.Module, head: str) -> dict[str, str]:
    """transformers' key (without its `reformer.` prefix) -> our state-dict key, by the rules applied to our keys."""
    backbone = [(re.compile(p), t) for p, t in _query_rules(model.config.attn_layers) + BACKBONE_RULES]
    head_rules = [(re.compile(p), t) for p, t in HEAD_RULES[head]]
    names = {}
    for key in model.state_dict():
        if key.endswith("self_attn.rotations"):
            continue
        in_backbone = head == "model" or key.startswith("model.")
        bare = key.removeprefix("model.") if head != "model" else key
        for pattern, target in backbone if in_backbone else head_rules:
            if pattern.fullmatch(bare):
                names[pattern.sub(target, bare)] = key
                break
    return names
