from ...core.variant import Variant
from .cache_linear_transformer import LinearAttentionCache, LinearAttentionStateLayer
from .configuration_linear_transformer import EfficientLinearTransformerConfig
from .modeling_linear_transformer import (
    EfficientLinearTransformerAttention,
    EfficientLinearTransformerForCausalLM,
    EfficientLinearTransformerForMaskedLM,
    EfficientLinearTransformerForQuestionAnswering,
    EfficientLinearTransformerForSequenceClassification,
    EfficientLinearTransformerForTokenClassification,
    EfficientLinearTransformerModel,
    reuse_projections,
)

VARIANT = Variant(
    EfficientLinearTransformerConfig,
    EfficientLinearTransformerModel,
    {
        "masked_lm": EfficientLinearTransformerForMaskedLM,
        "causal_lm": EfficientLinearTransformerForCausalLM,
        "sequence_classification": EfficientLinearTransformerForSequenceClassification,
        "token_classification": EfficientLinearTransformerForTokenClassification,
        "question_answering": EfficientLinearTransformerForQuestionAnswering,
    },
    new_parameters=reuse_projections,
)

__all__ = [
    "VARIANT",
    "EfficientLinearTransformerAttention",
    "EfficientLinearTransformerConfig",
    "EfficientLinearTransformerForCausalLM",
    "EfficientLinearTransformerForMaskedLM",
    "EfficientLinearTransformerForQuestionAnswering",
    "EfficientLinearTransformerForSequenceClassification",
    "EfficientLinearTransformerForTokenClassification",
    "EfficientLinearTransformerModel",
    "LinearAttentionCache",
    "LinearAttentionStateLayer",
]
