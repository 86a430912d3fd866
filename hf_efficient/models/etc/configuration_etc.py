"""Configuration of EfficientETC (Ainslie et al., "ETC: Encoding Long and Structured Inputs in Transformers",
arXiv 2004.08483)."""

from ...core.configuration import EfficientConfig


class EfficientETCConfig(EfficientConfig):
    """Backbone fields plus ETC's knobs (defaults: the paper's base models).

    local_radius: each long token attends to the long tokens at most this far on each side (l2l).
    relative_position_max_distance: D; the l2l and g2g relative distances are clipped to [-D, D] (2D + 1 labels).
    relative_vocab_size: rows of each layer's relative tables; at least 2D + 5 (the distances and four cross labels:
        long to its own / another global token, global to its own / another long token).
    use_hard_g2l_mask: a global token attends only to the long tokens of its segment (else to every long token).
    use_hard_l2g_mask: a long token attends only to the global token of its segment (else to every global token).

    An encoder only (is_causal=True is refused when a model is built). Positions: the relative labels, plus the
    backbone's absolute table when position_embedding_type="absolute" (BERT conversion keeps it; the paper's models use
    "none"); rotary positions are refused.
    """

    model_type = "efficient_etc"

    local_radius: int = 84
    relative_position_max_distance: int = 12
    relative_vocab_size: int = 32
    use_hard_g2l_mask: bool = False
    use_hard_l2g_mask: bool = False

    def validate_mechanism(self) -> None:
        if not isinstance(self.local_radius, int) or isinstance(self.local_radius, bool) or self.local_radius < 1:
            raise ValueError(f"local_radius={self.local_radius!r}: use a positive integer (tokens on each side), "
                             "e.g. 84.")
        distance = self.relative_position_max_distance
        if not isinstance(distance, int) or isinstance(distance, bool) or distance < 0:
            raise ValueError(f"relative_position_max_distance={distance!r}: use an integer >= 0, e.g. 12.")
        if isinstance(self.relative_vocab_size, int) and self.relative_vocab_size < 2 * distance + 5:
            raise ValueError(f"relative_vocab_size={self.relative_vocab_size} is too small for "
                             f"relative_position_max_distance={distance}: it needs at least 2 * {distance} + 5 = "
                             f"{2 * distance + 5} labels; raise it or lower the distance.")
        if self.position_embedding_type == "rotary":
            raise ValueError("EfficientETC takes its positions from relative labels (and optionally an absolute "
                             "table); set position_embedding_type='absolute' or 'none' instead of 'rotary'.")

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """A radius covering the input and D = 0: with no global input every pair of a row gets the one label 0, a
        constant shift of that row's logits, so the softmax is exact full attention."""
        return {"local_radius": length, "relative_position_max_distance": 0}

    def describe_attention(self) -> str:
        hard = [name for name, on in (("g2l", self.use_hard_g2l_mask), ("l2g", self.use_hard_l2g_mask)) if on]
        return (f"ETC global-local attention: local radius {self.local_radius}, relative labels clipped at "
                f"{self.relative_position_max_distance}, a global input (global_input_ids, segment_ids) with "
                f"{' and '.join(hard) + ' hard' if hard else 'soft'} cross masks, shared q/k/v")
