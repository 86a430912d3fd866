"""Configuration of EfficientLinearTransformer (Katharopoulos et al., arXiv 2006.16236)."""

from transformers.utils import logging

from ...core.configuration import EfficientConfig

logger = logging.get_logger(__name__)


class EfficientLinearTransformerConfig(EfficientConfig):
    """Backbone fields plus linear attention's knobs.

    linear_attention_eps: added to the denominator phi(q)^T z (1e-6, as in the paper's fast-transformers code).
    causal_chunk_size: tokens per chunk of the causal form (an implementation knob, not the paper's: the function
        does not depend on it; larger chunks do more O(C^2) work per chunk and keep fewer O(d^2) states).
    attention_probs_dropout_prob: defaults to 0 here; linear attention never forms the attention matrix, so there is
        nothing to drop and a positive value (e.g. carried over from BERT) is not used (a warning says so).
    """

    model_type = "efficient_linear_transformer"
    has_compiled_path = True
    has_fla_path = True

    linear_attention_eps: float = 1e-6
    causal_chunk_size: int = 64
    attention_probs_dropout_prob: float = 0.0

    def validate_mechanism(self) -> None:
        if self.attention_backend == "fla" and not self.is_causal:
            raise ValueError("attention_backend='fla' runs flash-linear-attention's causal kernel; this model is "
                             "bidirectional (is_causal=False): use 'auto' or 'blocked'.")
        if isinstance(self.linear_attention_eps, bool) or not isinstance(self.linear_attention_eps, (int, float)) \
                or not self.linear_attention_eps > 0:
            raise ValueError(
                f"linear_attention_eps={self.linear_attention_eps!r}: use a small positive number, e.g. 1e-6 (it keeps "
                "the denominator phi(q)^T z away from zero)."
            )
        if isinstance(self.causal_chunk_size, bool) or not isinstance(self.causal_chunk_size, int) \
                or self.causal_chunk_size <= 0:
            raise ValueError(f"causal_chunk_size={self.causal_chunk_size!r}: use a positive integer, e.g. 64.")
        if self.attention_probs_dropout_prob > 0:
            logger.warning_once(
                f"attention_probs_dropout_prob={self.attention_probs_dropout_prob} is not used: linear attention never "
                "forms the attention matrix, so there is no attention dropout. Set it to 0.0 to silence this."
            )

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """None: the elu(x)+1 kernel phi(q)^T phi(k) is a different similarity from exp(q^T k / sqrt(d)), whatever the
        settings, so no configuration reproduces softmax attention."""
        raise NotImplementedError(
            f"{cls.__name__}: linear attention (elu(x)+1 kernel) has no setting equal to softmax attention."
        )

    def describe_attention(self) -> str:
        return (f"linear attention, feature map elu(x)+1, eps {self.linear_attention_eps:g}, causal chunks of "
                f"{self.causal_chunk_size} tokens; the kernel replaces softmax, so weights converted from a softmax "
                "model compute a different function until fine-tuned")
