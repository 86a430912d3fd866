from ...core.variant import Variant
from .configuration_bigbird import EfficientBigBirdConfig
from .modeling_bigbird import (
    EfficientBigBirdAttention,
    EfficientBigBirdForMaskedLM,
    EfficientBigBirdForQuestionAnswering,
    EfficientBigBirdForSequenceClassification,
    EfficientBigBirdForTokenClassification,
    EfficientBigBirdModel,
    no_new_parameters,
)

# encoder-only: no causal-LM head
VARIANT = Variant(
    EfficientBigBirdConfig,
    EfficientBigBirdModel,
    {
        "masked_lm": EfficientBigBirdForMaskedLM,
        "sequence_classification": EfficientBigBirdForSequenceClassification,
        "token_classification": EfficientBigBirdForTokenClassification,
        "question_answering": EfficientBigBirdForQuestionAnswering,
    },
    new_parameters=no_new_parameters,
)

__all__ = [
    "VARIANT",
    "EfficientBigBirdAttention",
    "EfficientBigBirdConfig",
    "EfficientBigBirdForMaskedLM",
    "EfficientBigBirdForQuestionAnswering",
    "EfficientBigBirdForSequenceClassification",
    "EfficientBigBirdForTokenClassification",
    "EfficientBigBirdModel",
]
