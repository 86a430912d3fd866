from ...core.variant import Variant
from .configuration_sinkhorn import EfficientSinkhornConfig
from .modeling_sinkhorn import (
    EfficientSinkhornAttention,
    EfficientSinkhornForCausalLM,
    EfficientSinkhornForMaskedLM,
    EfficientSinkhornForQuestionAnswering,
    EfficientSinkhornForSequenceClassification,
    EfficientSinkhornForTokenClassification,
    EfficientSinkhornModel,
    sort_network_for_conversion,
)

VARIANT = Variant(
    EfficientSinkhornConfig,
    EfficientSinkhornModel,
    {
        "masked_lm": EfficientSinkhornForMaskedLM,
        "causal_lm": EfficientSinkhornForCausalLM,
        "sequence_classification": EfficientSinkhornForSequenceClassification,
        "token_classification": EfficientSinkhornForTokenClassification,
        "question_answering": EfficientSinkhornForQuestionAnswering,
    },
    new_parameters=sort_network_for_conversion,
)

__all__ = [
    "VARIANT",
    "EfficientSinkhornAttention",
    "EfficientSinkhornConfig",
    "EfficientSinkhornForCausalLM",
    "EfficientSinkhornForMaskedLM",
    "EfficientSinkhornForQuestionAnswering",
    "EfficientSinkhornForSequenceClassification",
    "EfficientSinkhornForTokenClassification",
    "EfficientSinkhornModel",
]
