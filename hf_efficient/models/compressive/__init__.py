from ...core.variant import Variant
from .cache_compressive import CompressiveMemoryCache, CompressiveMemoryLayer
from .configuration_compressive import EfficientCompressiveConfig
from .from_transformer_xl import compressive_from_transformer_xl
from .modeling_compressive import (
    CompressiveCausalLMOutput,
    CompressiveModelOutput,
    EfficientCompressiveAttention,
    EfficientCompressiveForCausalLM,
    EfficientCompressiveForQuestionAnswering,
    EfficientCompressiveForSequenceClassification,
    EfficientCompressiveForTokenClassification,
    EfficientCompressiveModel,
    compression_for_conversion,
)

VARIANT = Variant(
    EfficientCompressiveConfig,
    EfficientCompressiveModel,
    {
        "causal_lm": EfficientCompressiveForCausalLM,
        "sequence_classification": EfficientCompressiveForSequenceClassification,
        "token_classification": EfficientCompressiveForTokenClassification,
        "question_answering": EfficientCompressiveForQuestionAnswering,
    },
    new_parameters=compression_for_conversion,
)

__all__ = [
    "VARIANT",
    "CompressiveCausalLMOutput",
    "CompressiveMemoryCache",
    "CompressiveMemoryLayer",
    "CompressiveModelOutput",
    "EfficientCompressiveAttention",
    "EfficientCompressiveConfig",
    "EfficientCompressiveForCausalLM",
    "EfficientCompressiveForQuestionAnswering",
    "EfficientCompressiveForSequenceClassification",
    "EfficientCompressiveForTokenClassification",
    "EfficientCompressiveModel",
    "compressive_from_transformer_xl",
]
