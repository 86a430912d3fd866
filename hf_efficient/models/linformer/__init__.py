from ...core.variant import Variant
from .configuration_linformer import EfficientLinformerConfig
from .modeling_linformer import (
    EfficientLinformerAttention,
    EfficientLinformerForMaskedLM,
    EfficientLinformerForQuestionAnswering,
    EfficientLinformerForSequenceClassification,
    EfficientLinformerForTokenClassification,
    EfficientLinformerModel,
    length_projections_for_conversion,
)

VARIANT = Variant(
    EfficientLinformerConfig,
    EfficientLinformerModel,
    {
        "masked_lm": EfficientLinformerForMaskedLM,
        "sequence_classification": EfficientLinformerForSequenceClassification,
        "token_classification": EfficientLinformerForTokenClassification,
        "question_answering": EfficientLinformerForQuestionAnswering,
    },
    new_parameters=length_projections_for_conversion,
)

__all__ = [
    "VARIANT",
    "EfficientLinformerAttention",
    "EfficientLinformerConfig",
    "EfficientLinformerForMaskedLM",
    "EfficientLinformerForQuestionAnswering",
    "EfficientLinformerForSequenceClassification",
    "EfficientLinformerForTokenClassification",
    "EfficientLinformerModel",
]
