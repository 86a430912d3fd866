from ...core.variant import Variant
from .cache_memory_compressed import CompressedMemoryCache, CompressedMemoryLayer
from .configuration_memory_compressed import EfficientMemoryCompressedConfig
from .modeling_memory_compressed import (
    EfficientMemoryCompressedAttention,
    EfficientMemoryCompressedForCausalLM,
    EfficientMemoryCompressedForMaskedLM,
    EfficientMemoryCompressedForQuestionAnswering,
    EfficientMemoryCompressedForSequenceClassification,
    EfficientMemoryCompressedForTokenClassification,
    EfficientMemoryCompressedModel,
    compression_for_conversion,
)

VARIANT = Variant(
    EfficientMemoryCompressedConfig,
    EfficientMemoryCompressedModel,
    {
        "masked_lm": EfficientMemoryCompressedForMaskedLM,
        "causal_lm": EfficientMemoryCompressedForCausalLM,
        "sequence_classification": EfficientMemoryCompressedForSequenceClassification,
        "token_classification": EfficientMemoryCompressedForTokenClassification,
        "question_answering": EfficientMemoryCompressedForQuestionAnswering,
    },
    new_parameters=compression_for_conversion,
)

__all__ = [
    "VARIANT",
    "CompressedMemoryCache",
    "CompressedMemoryLayer",
    "EfficientMemoryCompressedAttention",
    "EfficientMemoryCompressedConfig",
    "EfficientMemoryCompressedForCausalLM",
    "EfficientMemoryCompressedForMaskedLM",
    "EfficientMemoryCompressedForQuestionAnswering",
    "EfficientMemoryCompressedForSequenceClassification",
    "EfficientMemoryCompressedForTokenClassification",
    "EfficientMemoryCompressedModel",
]
