"""Configuration of EfficientSetTransformer (Lee et al., "Set Transformer", arXiv 1810.00825)."""

from ...core.configuration import EfficientConfig

ENCODER_BLOCKS = ("isab", "sab")
# backbone fields of token models that a set model can't honour: each must keep the value given here
SEQUENCE_ONLY = {
    "is_causal": (False, "a set has no order, so nothing can be causal"),
    "position_embedding_type": ("none", "a set has no positions"),
    "type_vocab_size": (0, "a set has no token types"),
    "embedding_norm": (False, "inputs enter through a linear projection, without an embedding norm"),
    "use_pooler": (False, "PMA (num_seeds) is the pooling of a set"),
    "norm_position": ("post", "MAB is the paper's post-norm block (use_layer_norm=False drops its norms)"),
    "use_cache": (False, "a set model has no incremental decoding"),
    "tie_word_embeddings": (False, "a set model has no word embeddings"),
}


class EfficientSetTransformerConfig(EfficientConfig):
    """The package's backbone fields (widths, heads, rFF, norm type and eps, dropouts, init, attention backend) plus
    the Set Transformer's own. Defaults are the paper's code's (`SetTransformer(num_inds=32, dim_hidden=128,
    num_heads=4)`: two ISABs, PMA, two SABs), with the paper's layer norms.

    input_size: features per set element; the model's input is `input_features` (batch, set size, input_size),
        projected linearly to hidden_size.
    encoder_block: "isab" (m inducing points, O(n m)) or "sab" (full self-attention over the set, O(n^2)), for each of
        the num_hidden_layers encoder blocks.
    num_inducing_points: m of every ISAB.
    num_seeds: k seed vectors of PMA: the set is pooled into k vectors (1 for classification and regression; k
        outputs, e.g. k cluster parameters, for set-to-k-vectors tasks).
    num_decoder_layers: SABs over the k pooled vectors after PMA (the paper's decoder has 2; 0 = PMA alone).
    use_layer_norm: the two layer norms of every MAB (the paper); False drops them (the paper's code's default).

    Fields of token models mean nothing here: those in SEQUENCE_ONLY must keep their neutral values (a ValueError
    says why otherwise); vocab_size, max_position_embeddings, rope_parameters, embedding_size, pooler_act,
    classifier_pooling, masked_lm_transform, lm_head_bias and the token ids are carried by every package config and
    unused (a set model has no vocabulary, positions or LM heads).
    """

    model_type = "efficient_set_transformer"

    input_size: int = 1
    encoder_block: str = "isab"
    num_inducing_points: int = 32
    num_seeds: int = 1
    num_decoder_layers: int = 2
    use_layer_norm: bool = True
    # the backbone's defaults that a set model changes (the paper's code's sizes; no dropout; no token fields)
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    hidden_act: str = "relu"
    layer_norm_eps: float = 1e-5
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    position_embedding_type: str = "none"
    type_vocab_size: int = 0
    embedding_norm: bool = False
    use_pooler: bool = False
    masked_lm_transform: bool = False
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    use_cache: bool = False

    def validate_mechanism(self) -> None:
        for field, (value, reason) in SEQUENCE_ONLY.items():
            if getattr(self, field) != value:
                raise ValueError(f"{field}={getattr(self, field)!r}: {reason}; use {field}={value!r}.")
        if self.encoder_block not in ENCODER_BLOCKS:
            raise ValueError(f"encoder_block={self.encoder_block!r} is not supported; use one of {ENCODER_BLOCKS}.")
        for field, least in (("input_size", 1), ("num_inducing_points", 1), ("num_seeds", 1),
                             ("num_decoder_layers", 0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{field}={value!r}: use an integer >= {least}.")
        if not isinstance(self.use_layer_norm, bool):
            raise ValueError(f"use_layer_norm={self.use_layer_norm!r}: use True (the paper) or False.")
        if self.attention_backend not in ("auto", "reference", "blocked"):
            raise ValueError(f"attention_backend={self.attention_backend!r}: a set model's attention is exact softmax "
                             "over the set (sdpa); use 'auto', 'blocked' or 'reference'.")

    def describe_attention(self) -> str:
        encoder = (f"ISAB with {self.num_inducing_points} inducing points" if self.encoder_block == "isab"
                   else "SAB (full self-attention over the set)")
        return (f"Set Transformer: {self.num_hidden_layers} x {encoder}, PMA with {self.num_seeds} seed(s), "
                f"{self.num_decoder_layers} decoder SAB(s), layer norms {'on' if self.use_layer_norm else 'off'}")
