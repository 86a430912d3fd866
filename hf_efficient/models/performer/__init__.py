from ...core.variant import Variant
from .configuration_performer import EfficientPerformerConfig
from .modeling_performer import (
    EfficientPerformerAttention,
    EfficientPerformerForCausalLM,
    EfficientPerformerForMaskedLM,
    EfficientPerformerForQuestionAnswering,
    EfficientPerformerForSequenceClassification,
    EfficientPerformerForTokenClassification,
    EfficientPerformerModel,
    FavorCache,
    FavorStateLayer,
    no_new_parameters,
    redraw_features,
)

VARIANT = Variant(
    EfficientPerformerConfig,
    EfficientPerformerModel,
    {
        "masked_lm": EfficientPerformerForMaskedLM,
        "causal_lm": EfficientPerformerForCausalLM,
        "sequence_classification": EfficientPerformerForSequenceClassification,
        "token_classification": EfficientPerformerForTokenClassification,
        "question_answering": EfficientPerformerForQuestionAnswering,
    },
    new_parameters=no_new_parameters,
)

__all__ = [
    "VARIANT",
    "EfficientPerformerAttention",
    "EfficientPerformerConfig",
    "EfficientPerformerForCausalLM",
    "EfficientPerformerForMaskedLM",
    "EfficientPerformerForQuestionAnswering",
    "EfficientPerformerForSequenceClassification",
    "EfficientPerformerForTokenClassification",
    "EfficientPerformerModel",
    "FavorCache",
    "FavorStateLayer",
    "redraw_features",
]
