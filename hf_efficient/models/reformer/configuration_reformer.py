"""Configuration of EfficientReformer (Kitaev, Kaiser, Levskaya, "Reformer: The Efficient Transformer", arXiv
2001.04451)."""

import math

from ...core.configuration import EfficientConfig

LAYER_KINDS = ("local", "lsh")


def default_num_buckets(max_length: int, chunk: int) -> int:
    """The paper's b ~ 2 N / c for the longest input, rounded down to a power of two (at least 2)."""
    return max(2, 2 ** int(math.log2(max(2 * max_length // chunk, 2))))


class EfficientReformerConfig(EfficientConfig):
    """Backbone fields plus the Reformer's knobs (names and defaults as transformers' ReformerConfig where it has them).

    attn_layers: one kind per layer, "local" (chunked attention with separate q, k, v) or "lsh" (shared-QK LSH
        attention); a single string: every layer; None (the default) alternates local and lsh, local first (as
        transformers' default ["local", "lsh"] * 3).
    lsh_attn_chunk_length / local_attn_chunk_length: c, the chunk length of each kind (the paper: 64).
    lsh_num_chunks_before / lsh_num_chunks_after, local_num_chunks_before / local_num_chunks_after: the neighbouring
        chunks each chunk attends to (the paper: one back, none ahead; causal models must have none ahead). A causal
        LSH query sees the lsh_attn_chunk_length * lsh_num_chunks_before most recent earlier tokens of its bucket.
    num_hashes: R, hash rounds per LSH layer (the paper sweeps 1, 2, 4, 8).
    num_buckets: b, buckets per round, even, or 1 (no hashing: one bucket); None = the paper's 2 N / c for
        N = max_position_embeddings, rounded down to a power of two, fixed when the config is made.
    hash_seed: seeds the rotations: layer l draws them from hash_seed * 100003 + l. They are persistent buffers, so
        eval and generate() always hash alike and a saved model reloads them.
    resample_rotations: in training, draw fresh rotations every forward (the paper) from a per-layer generator
        seeded like the buffers (the global RNG is never touched); False keeps the buffers in training too.
    reversible: the reversible residual stack (RevNet): two streams, y1 = x1 + attn(x2), y2 = x2 + ffn(y1), started
        from two copies of the embeddings and ended by a LayerNorm over both (2 * hidden_size features: the heads
        read that width, and tie_word_embeddings must be False), as transformers' Reformer. Needs
        norm_position="pre". False: the backbone's usual residual blocks (BERT's post-norm included).
    reversible_backward: with reversible=True in training, recompute each layer's inputs from its outputs in the
        backward pass instead of keeping activations (memory O(1) in depth; the same hashes and dropout masks are
        reused); False keeps them as ordinary autograd does (the same gradients: for checking).
    chunk_size_feed_forward: apply the feed-forward to this many positions at a time (0: all at once), which bounds
        its intermediate activations; the function does not depend on it.
    """

    model_type = "efficient_reformer"

    attn_layers: list[str] | str | None = None
    lsh_attn_chunk_length: int = 64
    local_attn_chunk_length: int = 64
    lsh_num_chunks_before: int = 1
    lsh_num_chunks_after: int = 0
    local_num_chunks_before: int = 1
    local_num_chunks_after: int = 0
    num_hashes: int = 1
    num_buckets: int | None = None
    hash_seed: int = 0
    resample_rotations: bool = True
    reversible: bool = False
    reversible_backward: bool = True
    chunk_size_feed_forward: int = 0

    def validate_mechanism(self) -> None:
        kinds = self.attn_layers
        if kinds is None:
            kinds = [LAYER_KINDS[layer % 2] for layer in range(self.num_hidden_layers)]
        elif isinstance(kinds, str):
            kinds = [kinds] * self.num_hidden_layers
        kinds = list(kinds)
        if len(kinds) != self.num_hidden_layers:
            raise ValueError(f"attn_layers has {len(kinds)} entries but the model has num_hidden_layers="
                             f"{self.num_hidden_layers}; give one of {LAYER_KINDS} per layer, one kind, or None.")
        for layer, kind in enumerate(kinds):
            if kind not in LAYER_KINDS:
                raise ValueError(f"attn_layers[{layer}]={kind!r} is not a layer kind; use one of {LAYER_KINDS}.")
        self.attn_layers = kinds
        for name, least in (("lsh_attn_chunk_length", 1), ("local_attn_chunk_length", 1), ("num_hashes", 1),
                            ("lsh_num_chunks_before", 0), ("lsh_num_chunks_after", 0), ("local_num_chunks_before", 0),
                            ("local_num_chunks_after", 0), ("hash_seed", 0), ("chunk_size_feed_forward", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}={value!r}: use an integer >= {least}.")
        if self.is_causal and (self.lsh_num_chunks_after or self.local_num_chunks_after):
            raise ValueError("A causal model can't attend to later chunks: set lsh_num_chunks_after=0 and "
                             "local_num_chunks_after=0 (or is_causal=False).")
        if self.num_buckets is None:
            self.num_buckets = default_num_buckets(self.max_position_embeddings, self.lsh_attn_chunk_length)
        value = self.num_buckets
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (value > 1 and value % 2):
            raise ValueError(f"num_buckets={value!r}: use an even number of buckets (hashing by random rotations "
                             "makes them in +/- pairs), 1 (no hashing), or None (2 N / c).")
        for name in ("resample_rotations", "reversible", "reversible_backward"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.reversible and self.norm_position != "pre":
            raise ValueError("reversible=True needs norm_position='pre' (the reversible stack normalises inside each "
                             "branch; a post-norm block can't be inverted). Use norm_position='pre' or "
                             "reversible=False.")
        if self.reversible and self.tie_word_embeddings:
            raise ValueError("reversible=True: the heads read both streams (2 * hidden_size features), which can't "
                             "share the (vocab x hidden_size) embedding; set tie_word_embeddings=False.")
        if self.attention_backend not in ("auto", "reference", "blocked"):
            raise ValueError(f"attention_backend={self.attention_backend!r}: the Reformer's paths are 'blocked' "
                             "(sorted chunks, any device) and 'reference' (dense); use 'auto', 'blocked' or "
                             "'reference'.")

    @property
    def output_size(self) -> int:
        """The width of the last hidden state: both streams of the reversible stack, else hidden_size."""
        return 2 * self.hidden_size if self.reversible else self.hidden_size

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """None: an LSH layer has one shared query-key projection, keys normalised to unit length and no attention to
        a query's own key, so no setting of it equals a source layer with separate W_q and W_k. The exact setting of
        the Reformer is a model with local layers only (attn_layers="local", local_attn_chunk_length >= the length,
        reversible=False), which a conversion must choose up front (LSH layers have no key projection to load)."""
        raise NotImplementedError(
            "EfficientReformer's LSH layers share one query-key projection, so no setting of them equals full "
            "attention with separate queries and keys. Convert with attn_layers='local', "
            "local_attn_chunk_length >= the input length and reversible=False for an exact copy of the source."
        )

    def describe_attention(self) -> str:
        pattern = "".join("H" if kind == "lsh" else "L" for kind in self.attn_layers)
        lsh = (f"the {self.lsh_attn_chunk_length * self.lsh_num_chunks_before} most recent earlier tokens of a "
               "query's bucket" if self.is_causal else f"chunks of {self.lsh_attn_chunk_length} of the sorted order "
               f"({self.lsh_num_chunks_before} back, {self.lsh_num_chunks_after} ahead)")
        return (f"Reformer attention, layers {pattern} (H = LSH, L = local): LSH with {self.num_hashes} hash round(s) "
                f"of {self.num_buckets} buckets, {lsh}; local chunks of "
                f"{self.local_attn_chunk_length} ({self.local_num_chunks_before} back, {self.local_num_chunks_after} "
                f"ahead); {'reversible' if self.reversible else 'standard'} residuals"
                + (" (causal)" if self.is_causal else " (bidirectional)"))
