"""The shared backbone every variant builds on."""

from .attention import EfficientAttention
from .configuration import EfficientConfig
from .heads import (
    EfficientForCausalLM,
    EfficientForMaskedLM,
    EfficientForQuestionAnswering,
    EfficientForSequenceClassification,
    EfficientForTokenClassification,
)
from .modeling import EfficientModel, EfficientPreTrainedModel

__all__ = [
    "EfficientAttention",
    "EfficientConfig",
    "EfficientForCausalLM",
    "EfficientForMaskedLM",
    "EfficientForQuestionAnswering",
    "EfficientForSequenceClassification",
    "EfficientForTokenClassification",
    "EfficientModel",
    "EfficientPreTrainedModel",
]
