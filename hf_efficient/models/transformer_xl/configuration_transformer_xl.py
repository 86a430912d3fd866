"""Configuration of EfficientTransformerXL (Dai et al., "Transformer-XL: Attentive Language Models Beyond a
Fixed-Length Context", ACL 2019, arXiv 1901.02860)."""

import math

from ...core.configuration import EfficientConfig


class EfficientTransformerXLConfig(EfficientConfig):
    """Backbone fields plus Transformer-XL's knobs. The backbone defaults are the paper's (post-norm, ReLU FFN, no
    absolute positions, no bias in the attention projections, causal); any backbone style may be chosen instead.

    mem_len: hidden states kept per layer as memory for the next segment (the paper trains with 150-384 and
        evaluates with up to 1600 on WikiText-103). 0 = no memory. Each new token then costs O(mem_len + n).
    clamp_len: relative distances above it use the encoding of clamp_len (the paper's evaluation: 1000); None = no
        clamping.
    same_length: every query attends to exactly mem_len keys (itself and the mem_len - 1 before it), so that all
        positions of a segment see contexts of the same length (the paper's evaluation setting); needs mem_len >= 1.
        Under it the model is a sliding window over hidden states, and segmenting the stream changes nothing.
    relative_attention: True (the paper): scores (q_i + u) k_j + (q_i + v) W_r R_{i-j}. False drops the relative
        terms (the parameters stay, so a checkpoint loads in both settings): plain softmax attention, the setting in
        which a converted GPT-2 / Llama (with its absolute / rotary positions) is reproduced exactly.
    embedding_multiplier: the token embeddings are multiplied by it (the paper's code scales them by
        sqrt(hidden_size); 1.0 keeps GPT-2 / Llama embeddings as they are).
    adaptive_cutoffs: token-id boundaries of the adaptive input / softmax clusters (Baevski & Auli; Grave et al.),
        e.g. [20000, 40000, 200000] for WikiText-103; None = a plain embedding and a full softmax.
    adaptive_div_val: cluster i has embedding size embedding_size // adaptive_div_val**i (WikiText-103: 4).
    adaptive_tie_projections: per cluster, whether the softmax uses the input's projection (with tied embeddings);
        None = every cluster but the first (the paper's WikiText-103 setting).
    """

    model_type = "efficient_transformer_xl"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # Trainer's evaluation leaves the memory out

    # the paper's backbone (overrides of the BERT-style defaults)
    is_causal: bool | None = True
    hidden_act: str = "relu"
    layer_norm_eps: float = 1e-5
    attention_bias: bool = False
    position_embedding_type: str = "none"
    type_vocab_size: int = 0
    embedding_norm: bool = False
    use_pooler: bool = False
    masked_lm_transform: bool = False
    lm_head_bias: bool = False
    # Transformer-XL
    mem_len: int = 256
    clamp_len: int | None = None
    same_length: bool = False
    relative_attention: bool = True
    embedding_multiplier: float = 1.0
    adaptive_cutoffs: list[int] | None = None
    adaptive_div_val: int = 1
    adaptive_tie_projections: list[bool] | None = None

    def validate_mechanism(self) -> None:
        if not self.is_causal:
            raise ValueError("Transformer-XL is a causal language model (segment recurrence reads only the past); "
                             "set is_causal=True.")
        for name, value in (("mem_len", self.mem_len), ("adaptive_div_val", self.adaptive_div_val)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "mem_len" else 1):
                raise ValueError(f"{name}={value!r}: use an integer >= {0 if name == 'mem_len' else 1}.")
        if self.clamp_len is not None and (isinstance(self.clamp_len, bool) or not isinstance(self.clamp_len, int)
                                           or self.clamp_len < 1):
            raise ValueError(f"clamp_len={self.clamp_len!r}: use a positive integer (the paper: 1000) or None.")
        if not isinstance(self.same_length, bool) or not isinstance(self.relative_attention, bool):
            raise ValueError("same_length and relative_attention must be True or False.")
        if self.same_length and self.mem_len < 1:
            raise ValueError("same_length=True makes every query attend to mem_len keys; give mem_len >= 1 or set "
                             "same_length=False.")
        multiplier = self.embedding_multiplier
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not math.isfinite(multiplier) \
                or multiplier <= 0:
            raise ValueError(f"embedding_multiplier={multiplier!r}: use a positive number (1.0, or "
                             "sqrt(hidden_size) as the paper's code).")
        cutoffs = self.adaptive_cutoffs
        if cutoffs is None and (self.adaptive_div_val != 1 or self.adaptive_tie_projections is not None):
            raise ValueError("adaptive_div_val and adaptive_tie_projections shape the adaptive input and softmax, "
                             "which only exist with adaptive_cutoffs; give the cutoffs or leave them at 1 / None.")
        if cutoffs is not None:
            cutoffs = list(cutoffs)
            if not cutoffs or any(isinstance(c, bool) or not isinstance(c, int) for c in cutoffs) \
                    or cutoffs != sorted(set(cutoffs)) or cutoffs[0] < 1 or cutoffs[-1] >= self.vocab_size:
                raise ValueError(f"adaptive_cutoffs={self.adaptive_cutoffs!r}: give increasing token ids in "
                                 f"(0, vocab_size={self.vocab_size}), e.g. [20000, 40000, 200000], or None.")
            self.adaptive_cutoffs = cutoffs
            smallest = self.embedding_size // self.adaptive_div_val ** len(cutoffs)
            if smallest < 1:
                raise ValueError(f"adaptive_div_val={self.adaptive_div_val} leaves the last cluster no embedding "
                                 f"dimension (embedding_size={self.embedding_size}); lower it or use fewer cutoffs.")
            tied = self.adaptive_tie_projections
            if tied is not None and (len(tied) != len(cutoffs) + 1 or not all(isinstance(t, bool) for t in tied)):
                raise ValueError(f"adaptive_tie_projections={tied!r}: give one True/False per cluster "
                                 f"({len(cutoffs) + 1}), or None (all but the first tied).")
            if self.type_vocab_size or self.embedding_norm:
                raise ValueError("The adaptive input has no token-type embeddings or embedding norm; set "
                                 "type_vocab_size=0 and embedding_norm=False.")

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """Without the relative terms and with no window, one memoryless pass is plain causal softmax attention (the
        u, v and W_r parameters stay, unused)."""
        return {"relative_attention": False, "same_length": False}

    def describe_attention(self) -> str:
        terms = "relative positions (sinusoid R, biases u and v)" if self.relative_attention else "no relative terms"
        clamp = f", distances clamped at {self.clamp_len}" if self.clamp_len else ""
        window = ", same-length window" if self.same_length else ""
        return f"Transformer-XL segment recurrence: memory of {self.mem_len} hidden states per layer, {terms}{clamp}" \
               f"{window} (causal)"
