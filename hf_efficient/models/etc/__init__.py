from ...core.variant import Variant
from .configuration_etc import EfficientETCConfig
from .global_input import GlobalInputCollator, build_global_input
from .modeling_etc import (
    EfficientETCAttention,
    EfficientETCForMaskedLM,
    EfficientETCForQuestionAnswering,
    EfficientETCForSequenceClassification,
    EfficientETCForTokenClassification,
    EfficientETCModel,
    zero_relative_tables,
)

VARIANT = Variant(
    EfficientETCConfig,
    EfficientETCModel,
    {
        "masked_lm": EfficientETCForMaskedLM,
        "sequence_classification": EfficientETCForSequenceClassification,
        "token_classification": EfficientETCForTokenClassification,
        "question_answering": EfficientETCForQuestionAnswering,
    },
    new_parameters=zero_relative_tables,
)

__all__ = [
    "VARIANT",
    "EfficientETCAttention",
    "EfficientETCConfig",
    "EfficientETCForMaskedLM",
    "EfficientETCForQuestionAnswering",
    "EfficientETCForSequenceClassification",
    "EfficientETCForTokenClassification",
    "EfficientETCModel",
    "GlobalInputCollator",
    "build_global_input",
]
