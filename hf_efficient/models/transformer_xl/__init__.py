from ...core.variant import Variant
from .cache_transformer_xl import TransformerXLMemoryCache, TransformerXLMemoryLayer
from .configuration_transformer_xl import EfficientTransformerXLConfig
from .modeling_transformer_xl import (
    EfficientTransformerXLAttention,
    EfficientTransformerXLForCausalLM,
    EfficientTransformerXLForQuestionAnswering,
    EfficientTransformerXLForSequenceClassification,
    EfficientTransformerXLForTokenClassification,
    EfficientTransformerXLModel,
    relative_terms_for_conversion,
)

VARIANT = Variant(
    EfficientTransformerXLConfig,
    EfficientTransformerXLModel,
    {
        "causal_lm": EfficientTransformerXLForCausalLM,
        "sequence_classification": EfficientTransformerXLForSequenceClassification,
        "token_classification": EfficientTransformerXLForTokenClassification,
        "question_answering": EfficientTransformerXLForQuestionAnswering,
    },
    new_parameters=relative_terms_for_conversion,
)

__all__ = [
    "VARIANT",
    "EfficientTransformerXLAttention",
    "EfficientTransformerXLConfig",
    "EfficientTransformerXLForCausalLM",
    "EfficientTransformerXLForQuestionAnswering",
    "EfficientTransformerXLForSequenceClassification",
    "EfficientTransformerXLForTokenClassification",
    "EfficientTransformerXLModel",
    "TransformerXLMemoryCache",
    "TransformerXLMemoryLayer",
]
