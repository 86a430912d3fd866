from ...core.variant import Variant
from .configuration_longformer import EfficientLongformerConfig
from .modeling_longformer import (
    EfficientLongformerAttention,
    EfficientLongformerForCausalLM,
    EfficientLongformerForMaskedLM,
    EfficientLongformerForQuestionAnswering,
    EfficientLongformerForSequenceClassification,
    EfficientLongformerForTokenClassification,
    EfficientLongformerModel,
    global_projections_from_local,
)

VARIANT = Variant(
    EfficientLongformerConfig,
    EfficientLongformerModel,
    {
        "masked_lm": EfficientLongformerForMaskedLM,
        "causal_lm": EfficientLongformerForCausalLM,
        "sequence_classification": EfficientLongformerForSequenceClassification,
        "token_classification": EfficientLongformerForTokenClassification,
        "question_answering": EfficientLongformerForQuestionAnswering,
    },
    new_parameters=global_projections_from_local,
)

__all__ = [
    "VARIANT",
    "EfficientLongformerAttention",
    "EfficientLongformerConfig",
    "EfficientLongformerForCausalLM",
    "EfficientLongformerForMaskedLM",
    "EfficientLongformerForQuestionAnswering",
    "EfficientLongformerForSequenceClassification",
    "EfficientLongformerForTokenClassification",
    "EfficientLongformerModel",
]
