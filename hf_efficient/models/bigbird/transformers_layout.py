"""Move checkpoints both ways between our EfficientBigBird* models and transformers' BigBird* models, and read the
random blocks transformers' block-sparse attention uses, so the two can be compared output for output.

Layout: transformers' BigBird is BERT's layout (absolute positions from 0, post-norm blocks, q/k/v/o with biases,
BERT's masked-LM head) with the pooler as a bare `pooler` Linear; its heads keep an (unused) pooler. Supported
classes: BigBirdModel, BigBirdForMaskedLM, BigBirdForTokenClassification (its sequence-classification and QA heads
have no counterpart here). Its pattern is ours with w = 3 sliding and g = 2 global blocks (the first and last).

Behaviour differences (why the parity test aligns the random blocks explicitly):
* Random blocks. transformers draws them in training mode from numpy, re-seeded with the layer index on every
  forward (`np.random.seed(layer_idx)`), following the original code's "plan" (for inputs of more than 2r + 5 blocks
  every random block lies among the first 2r + 5 blocks). In eval mode it draws none: every random slot points at
  block 0, which is already global, so block 0 is counted r + 1 times in the softmax of the middle blocks -- no
  set of keys (our pattern, or the paper's) gives that. Ours draws uniformly from config.seed in both modes.
  `transformers_random_blocks` reads transformers' training-mode pattern through its own methods; with it injected
  into our layers (`EfficientBigBirdAttention.random_blocks`), our model equals transformers' in training mode
  (dropout 0). With num_random_blocks=0 nothing needs aligning, but transformers' block-sparse code fails on 0
  random blocks (a reshape of an empty tensor), so that comparison is impossible.
* Short inputs: at <= (2r + 5) blocks transformers switches the whole model to full attention for good
  (`set_attention_type`); ours falls back per call and per row, keeping no state.
* Padding: transformers' last global block is the last block of the padded batch; ours is each row's last block
  holding a real token. The two agree on rows that fill the batch's last block.
"""

from types import SimpleNamespace

import numpy as np
import torch
import transformers

from ...conversion.convert import load_exactly
from ...conversion.families import BERT_HEAD_RULES, BERT_LAYER_RULES, ConversionError, rename, strip_prefix
from .configuration_bigbird import EfficientBigBirdConfig
from .modeling_bigbird import (
    EfficientBigBirdForMaskedLM,
    EfficientBigBirdForTokenClassification,
    EfficientBigBirdModel,
)

OURS = {
    "model": EfficientBigBirdModel,
    "masked_lm": EfficientBigBirdForMaskedLM,
    "token_classification": EfficientBigBirdForTokenClassification,
}
THEIRS = {
    "model": "BigBirdModel",
    "masked_lm": "BigBirdForMaskedLM",
    "token_classification": "BigBirdForTokenClassification",
}
LEGACY_PLAN_LENGTHS = (1024, 3072, 4096)  # transformers draws these lengths' random blocks with the old, looser plan

# our backbone key -> transformers' BigBirdModel key
BACKBONE_RULES = [
    (r"embeddings\.embed_tokens\.weight", r"embeddings.word_embeddings.weight"),
    (r"embeddings\.embed_positions\.weight", r"embeddings.position_embeddings.weight"),
    (r"embeddings\.embed_token_types\.weight", r"embeddings.token_type_embeddings.weight"),
    (r"embeddings\.norm\.(weight|bias)", r"embeddings.LayerNorm.\1"),
    (r"layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", r"encoder.layer.\1.attention.self.query.\2"),
    (r"layers\.(\d+)\.self_attn\.k_proj\.(weight|bias)", r"encoder.layer.\1.attention.self.key.\2"),
    (r"layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)", r"encoder.layer.\1.attention.self.value.\2"),
    (r"layers\.(\d+)\.self_attn\.o_proj\.(weight|bias)", r"encoder.layer.\1.attention.output.dense.\2"),
    (r"layers\.(\d+)\.attention_norm\.(weight|bias)", r"encoder.layer.\1.attention.output.LayerNorm.\2"),
    (r"layers\.(\d+)\.mlp\.up_proj\.(weight|bias)", r"encoder.layer.\1.intermediate.dense.\2"),
    (r"layers\.(\d+)\.mlp\.down_proj\.(weight|bias)", r"encoder.layer.\1.output.dense.\2"),
    (r"layers\.(\d+)\.mlp_norm\.(weight|bias)", r"encoder.layer.\1.output.LayerNorm.\2"),
    (r"pooler\.dense\.(weight|bias)", r"pooler.\1"),
]
HEAD_RULES = {
    "model": [],
    "masked_lm": [
        (r"lm_head\.dense\.(weight|bias)", r"cls.predictions.transform.dense.\1"),
        (r"lm_head\.norm\.(weight|bias)", r"cls.predictions.transform.LayerNorm.\1"),
        (r"lm_head\.decoder\.(weight|bias)", r"cls.predictions.decoder.\1"),  # cls.predictions.bias is added below
    ],
    "token_classification": [(r"classifier\.(weight|bias)", r"classifier.\1")],
}


def our_head(model: torch.nn.Module) -> str:
    for head, model_class in OURS.items():
        if type(model) is model_class:
            return head
    raise ConversionError(f"{type(model).__name__} has no transformers BigBird counterpart; use one of "
                          f"{sorted(cls.__name__ for cls in OURS.values())}.")


def unsupported(config: EfficientBigBirdConfig, head: str) -> list[str]:
    """Everything about `config` that transformers' BigBird lacks, each saying what to change."""
    expected = {
        "num_sliding_blocks": (3, "its window is fixed at 3 blocks"),
        "num_global_blocks": (2, "its global blocks are fixed: the first and the last"),
        "position_embedding_type": ("absolute", "it has learned absolute positions only"),
        "norm_position": ("post", "its block is post-norm (BERT)"),
        "norm_type": ("layernorm", "it uses LayerNorm"),
        "mlp_type": ("standard", "its MLP is dense -> act -> dense"),
        "embedding_norm": (True, "it always normalises the summed embeddings"),
        "attention_bias": (True, "its output projection always has a bias"),
        "mlp_bias": (True, "its MLP layers always have biases"),
        "embedding_size": (config.hidden_size, "its embeddings are hidden_size wide"),
        "pooler_act": ("tanh", "its pooler is tanh"),
    }
    problems = [f"{name}={getattr(config, name, value)!r} ({why}; needs {name}={value!r})"
                for name, (value, why) in expected.items() if getattr(config, name, value) != value]
    if config.num_random_blocks < 1:
        problems.append("num_random_blocks=0 (its block-sparse code fails without random blocks; needs >= 1)")
    if config.num_key_value_heads != config.num_attention_heads or config.head_dim * config.num_attention_heads != (
            config.hidden_size):
        problems.append("grouped KV heads or a custom head_dim (it has neither; needs num_key_value_heads="
                        "num_attention_heads and head_dim=hidden_size/num_attention_heads)")
    if config.type_vocab_size < 1:
        problems.append("type_vocab_size=0 (it always has a token-type table; needs type_vocab_size >= 1)")
    if head == "masked_lm" and (not config.masked_lm_transform or not config.lm_head_bias):
        problems.append("its masked-LM head is dense -> act -> LayerNorm -> decoder with bias (needs "
                        "masked_lm_transform=True, lm_head_bias=True)")
    return problems


def to_transformers_bigbird(model: torch.nn.Module) -> torch.nn.Module:
    """EfficientBigBirdModel / ForMaskedLM / ForTokenClassification -> transformers' BigBirdModel / ForMaskedLM /
    ForTokenClassification (attention_type="block_sparse") with identical weights, in eval mode, on the device and in
    the dtype of `model`. Raises a `ConversionError` listing what to change when transformers can't express it."""
    head = our_head(model)
    config = model.config
    problems = unsupported(config, head)
    if problems:
        raise ConversionError(f"transformers' BigBird can't express this {type(model).__name__}: "
                              + "; ".join(problems) + ".")
    fields = dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act, hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
        initializer_range=config.initializer_range, layer_norm_eps=config.layer_norm_eps,
        pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        sep_token_id=getattr(config, "sep_token_id", None), attention_type="block_sparse", use_bias=True,
        rescale_embeddings=False, block_size=config.block_size, num_random_blocks=config.num_random_blocks,
        classifier_dropout=config.classifier_dropout, tie_word_embeddings=config.tie_word_embeddings,
    )
    if head == "token_classification":
        fields.update(id2label=dict(config.id2label), label2id=dict(config.label2id))
    hf_config = transformers.BigBirdConfig(**fields)
    model_class = getattr(transformers, THEIRS[head])
    pooling = {"add_pooling_layer": config.use_pooler} if head == "model" else {}
    hf_model = model_class(hf_config, **pooling)
    state_dict = {key.removeprefix("model."): tensor for key, tensor in model.state_dict().items()}
    prefix = "" if head == "model" else "bert."
    rules = [(pattern, prefix + target) for pattern, target in BACKBONE_RULES] + HEAD_RULES[head]
    weights = rename(state_dict, rules, ignored=[])
    if head == "masked_lm":
        weights["cls.predictions.bias"] = weights["cls.predictions.decoder.bias"]
    missing, unexpected = hf_model.load_state_dict(weights, strict=False)
    unused_pooler = {"bert.pooler.weight", "bert.pooler.bias"}  # transformers' heads keep a pooler they never call
    if unexpected or set(missing) - unused_pooler:
        raise ConversionError(f"Weights don't line up with {THEIRS[head]}: missing {missing}, unexpected {unexpected}.")
    parameter = next(model.parameters())
    return hf_model.to(parameter.device, parameter.dtype).eval()


def from_transformers_bigbird(hf_model: torch.nn.Module, **options) -> torch.nn.Module:
    """transformers' BigBirdModel / ForMaskedLM / ForTokenClassification -> the matching EfficientBigBird* model with
    identical weights, in eval mode. `options` are our config knobs (e.g. seed, attention_backend)."""
    hf_config = hf_model.config
    heads = {name: head for head, name in THEIRS.items()}
    head = heads.get(type(hf_model).__name__)
    if getattr(hf_config, "model_type", None) != "big_bird" or head is None:
        raise ConversionError(f"Expected one of {sorted(THEIRS.values())}, got {type(hf_model).__name__}.")
    problems = [f"{name}={getattr(hf_config, name)!r} (needs {value!r})" for name, value in
                (("rescale_embeddings", False), ("use_bias", True), ("is_decoder", False),
                 ("add_cross_attention", False)) if getattr(hf_config, name) != value]
    if problems:
        raise ConversionError("EfficientBigBird can't express this BigBird: " + "; ".join(problems) + ".")
    state_dict = strip_prefix(hf_model.state_dict(), "bert.")
    fields = dict(
        vocab_size=hf_config.vocab_size, hidden_size=hf_config.hidden_size,
        num_hidden_layers=hf_config.num_hidden_layers, num_attention_heads=hf_config.num_attention_heads,
        intermediate_size=hf_config.intermediate_size, hidden_act=hf_config.hidden_act,
        layer_norm_eps=hf_config.layer_norm_eps, max_position_embeddings=hf_config.max_position_embeddings,
        type_vocab_size=hf_config.type_vocab_size, hidden_dropout_prob=hf_config.hidden_dropout_prob,
        attention_probs_dropout_prob=hf_config.attention_probs_dropout_prob,
        classifier_dropout=hf_config.classifier_dropout, initializer_range=hf_config.initializer_range,
        use_pooler="pooler.weight" in state_dict, tie_word_embeddings=hf_config.tie_word_embeddings,
        pad_token_id=hf_config.pad_token_id, bos_token_id=hf_config.bos_token_id,
        eos_token_id=hf_config.eos_token_id, block_size=hf_config.block_size,
        num_random_blocks=hf_config.num_random_blocks, num_sliding_blocks=3, num_global_blocks=2,
    )
    if head == "token_classification":
        fields.update(id2label=dict(hf_config.id2label), label2id=dict(hf_config.label2id))
    model = OURS[head](EfficientBigBirdConfig(**{**fields, **options}))
    rules = [*BERT_LAYER_RULES, (r"pooler\.(weight|bias)", r"model.pooler.dense.\1"), *BERT_HEAD_RULES]
    weights = rename(state_dict, rules, ignored=[r"embeddings\.(position|token_type)_ids"])
    if head == "model":
        weights = {key.removeprefix("model."): tensor for key, tensor in weights.items()}
    load_exactly(model, weights)
    return model.eval()


def transformers_random_blocks(hf_model: torch.nn.Module, length: int) -> list[torch.Tensor]:
    """The random blocks transformers' block-sparse BigBird uses in training mode on inputs of `length` tokens, one
    (heads, blocks, r) tensor per layer in our layout (`EfficientBigBirdAttention.random_blocks`; the rows of the
    global first and last blocks are 0). Read through transformers' own methods with numpy seeded as its forward
    seeds it; numpy's global state is restored afterwards and no module is changed."""
    config = hf_model.config
    block, random = config.block_size, config.num_random_blocks
    padded = -(-length // block) * block
    blocks = padded // block
    if padded <= (5 + 2 * random) * block:
        raise ValueError(f"{length} tokens are <= (5 + 2r) blocks: transformers uses full attention, no random blocks.")
    if padded in LEGACY_PLAN_LENGTHS:
        raise ValueError(f"At {padded} tokens transformers uses its legacy random plan, which may repeat window or "
                         "global blocks (no set of keys expresses that); pick another length.")
    patterns = []
    state = np.random.get_state()
    try:
        for layer in hf_model.base_model.encoder.layer:
            attention = layer.attention.self
            if not isinstance(attention, transformers.models.big_bird.modeling_big_bird.BigBirdBlockSparseAttention):
                raise ValueError("The model is not in block_sparse mode (attention_type); it has no random blocks.")
            np.random.seed(attention.seed)
            plan_lengths, plan_blocks = attention._get_rand_attn_plan(padded, block, random)
            # its draw only reads `training` and the static row sampler from self: a stand-in in training mode
            stand_in = SimpleNamespace(training=True,
                                       _get_single_block_row_attention=attention._get_single_block_row_attention)
            drawn = type(attention)._bigbird_block_rand_mask_with_head(
                stand_in, from_seq_length=padded, to_seq_length=padded, from_block_size=block, to_block_size=block,
                num_heads=config.num_attention_heads, plan_from_length=plan_lengths, plan_num_rand_blocks=plan_blocks,
            )
            pattern = torch.zeros(config.num_attention_heads, blocks, random, dtype=torch.long)
            pattern[:, 1:-1] = torch.from_numpy(np.stack(drawn)).long()  # theirs skips the first and last block
            patterns.append(pattern)
    finally:
        np.random.set_state(state)
    return patterns
