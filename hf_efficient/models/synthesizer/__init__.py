from ...core.variant import Variant
from .configuration_synthesizer import EfficientSynthesizerConfig
from .modeling_synthesizer import (
    EfficientSynthesizerAttention,
    EfficientSynthesizerForCausalLM,
    EfficientSynthesizerForMaskedLM,
    EfficientSynthesizerForQuestionAnswering,
    EfficientSynthesizerForSequenceClassification,
    EfficientSynthesizerForTokenClassification,
    EfficientSynthesizerModel,
    synthesizer_parameters_for_conversion,
)

VARIANT = Variant(
    EfficientSynthesizerConfig,
    EfficientSynthesizerModel,
    {
        "masked_lm": EfficientSynthesizerForMaskedLM,
        "causal_lm": EfficientSynthesizerForCausalLM,
        "sequence_classification": EfficientSynthesizerForSequenceClassification,
        "token_classification": EfficientSynthesizerForTokenClassification,
        "question_answering": EfficientSynthesizerForQuestionAnswering,
    },
    new_parameters=synthesizer_parameters_for_conversion,
)

__all__ = [
    "VARIANT",
    "EfficientSynthesizerAttention",
    "EfficientSynthesizerConfig",
    "EfficientSynthesizerForCausalLM",
    "EfficientSynthesizerForMaskedLM",
    "EfficientSynthesizerForQuestionAnswering",
    "EfficientSynthesizerForSequenceClassification",
    "EfficientSynthesizerForTokenClassification",
    "EfficientSynthesizerModel",
    "synthesizer_parameters_for_conversion",
]
