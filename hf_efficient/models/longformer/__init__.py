from .configuration_longformer import EfficientLongformerConfig
from .modeling_longformer import (
    EfficientLongformerAttention,
    EfficientLongformerForCausalLM,
    EfficientLongformerForMaskedLM,
    EfficientLongformerForQuestionAnswering,
    EfficientLongformerForSequenceClassification,
    EfficientLongformerForTokenClassification,
    EfficientLongformerModel,
)

__all__ = [
    "EfficientLongformerAttention",
    "EfficientLongformerConfig",
    "EfficientLongformerForCausalLM",
    "EfficientLongformerForMaskedLM",
    "EfficientLongformerForQuestionAnswering",
    "EfficientLongformerForSequenceClassification",
    "EfficientLongformerForTokenClassification",
    "EfficientLongformerModel",
]
