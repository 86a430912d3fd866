"""Configuration of EfficientLinformer (Wang et al., arXiv 2006.04768)."""

from ...core.configuration import EfficientConfig

SHARING_MODES = ("none", "headwise", "key_value", "layerwise")
PROJECTION_INITS = ("average_pooling", "random")


class EfficientLinformerConfig(EfficientConfig):
    """Backbone fields plus Linformer's knobs. The maximum length n is `max_position_embeddings`: E and F have n
    columns, an input of L <= n tokens uses the first L of them, and a longer input raises.

    projected_length: k, the rows of E and F (the paper's default 256); at most n.
    projection_sharing: which projections exist (the paper's section 4; the parameters, per mode):
        "none"      every layer: `key_length_proj` E and `value_length_proj` F, one (k, n) matrix per key/value head
                    (weights (kv_heads, k, n));
        "headwise"  every layer: E and F shared by the heads (weights (1, k, n) each) -- the default, as in the
                    authors' released code (fairseq's examples/linformer);
        "key_value" every layer: one E used for keys and values (`key_length_proj` only, (1, k, n));
        "layerwise" one E for keys and values of every head of every layer: a single parameter,
                    `layers.0.self_attn.key_length_proj.weight` (1, k, n), owned by the first layer and handed to
                    the later ones through the model's per-forward `shared_state` (saved and loaded once, no tying).
    projection_init: how E and F start, in a fresh model and in conversion (VARIANT.new_parameters):
        "average_pooling" row j averages the j-th of k contiguous segments of the n positions (the identity when
                    k = n), so a converted model starts as attention over segment means of its keys and values;
        "random"    the paper's random start (Xavier-uniform with gain 1/sqrt(2), as the authors' code).
    identity_projection: True replaces E and F by the identity (k = n): no projection, exact softmax attention over
        the real keys, O(L^2). E and F still exist (unused) so one checkpoint loads in both settings; this is the
        degenerate setting (`full_attention_overrides`) in which a converted model reproduces its source.
    """

    model_type = "efficient_linformer"

    projected_length: int = 256
    projection_sharing: str = "headwise"
    projection_init: str = "average_pooling"
    identity_projection: bool = False

    def validate_mechanism(self) -> None:
        if self.is_causal:
            raise ValueError(
                "Linformer can't be causal: E and F mix every position (future ones included) into each projected "
                "key and value. Set is_causal=False (an encoder), or use a causal variant."
            )
        if self.projection_sharing not in SHARING_MODES:
            raise ValueError(f"projection_sharing={self.projection_sharing!r} is not supported; use one of "
                             f"{SHARING_MODES}.")
        if self.projection_init not in PROJECTION_INITS:
            raise ValueError(f"projection_init={self.projection_init!r} is not supported; use one of "
                             f"{PROJECTION_INITS}.")
        k, n = self.projected_length, self.max_position_embeddings
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"projected_length must be a positive integer (the paper uses 256), got {k!r}.")
        if k > n:
            raise ValueError(
                f"projected_length={k} exceeds max_position_embeddings={n}: projecting n={n} positions to more rows "
                "compresses nothing. Lower projected_length, or set identity_projection=True for exact attention."
            )

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """E = F = identity (k = n, no projection) is exact full attention, at any length."""
        return {"identity_projection": True}

    def describe_attention(self) -> str:
        if self.identity_projection:
            return "Linformer with identity projections: exact full attention (no projection)"
        return (f"Linformer low-rank attention: keys and values projected along the sequence from "
                f"n={self.max_position_embeddings} to k={self.projected_length} rows, sharing "
                f"{self.projection_sharing!r}, projections initialised by {self.projection_init}")
