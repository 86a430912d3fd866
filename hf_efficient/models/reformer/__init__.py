from ...core.variant import Variant
from .cache_reformer import ReformerCache, ReformerCacheLayer
from .configuration_reformer import EfficientReformerConfig
from .modeling_reformer import (
    EfficientReformerAttention,
    EfficientReformerForCausalLM,
    EfficientReformerForMaskedLM,
    EfficientReformerForQuestionAnswering,
    EfficientReformerForSequenceClassification,
    EfficientReformerForTokenClassification,
    EfficientReformerModel,
    shared_query_key_for_conversion,
)

VARIANT = Variant(
    EfficientReformerConfig,
    EfficientReformerModel,
    {
        "masked_lm": EfficientReformerForMaskedLM,
        "causal_lm": EfficientReformerForCausalLM,
        "sequence_classification": EfficientReformerForSequenceClassification,
        "token_classification": EfficientReformerForTokenClassification,
        "question_answering": EfficientReformerForQuestionAnswering,
    },
    new_parameters=shared_query_key_for_conversion,
)

__all__ = [
    "VARIANT",
    "EfficientReformerAttention",
    "EfficientReformerConfig",
    "EfficientReformerForCausalLM",
    "EfficientReformerForMaskedLM",
    "EfficientReformerForQuestionAnswering",
    "EfficientReformerForSequenceClassification",
    "EfficientReformerForTokenClassification",
    "EfficientReformerModel",
    "ReformerCache",
    "ReformerCacheLayer",
]
