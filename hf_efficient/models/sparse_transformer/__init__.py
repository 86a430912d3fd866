from ...core.variant import Variant
from .configuration_sparse_transformer import EfficientSparseTransformerConfig
from .modeling_sparse_transformer import (
    EfficientSparseTransformerAttention,
    EfficientSparseTransformerForCausalLM,
    EfficientSparseTransformerForMaskedLM,
    EfficientSparseTransformerForQuestionAnswering,
    EfficientSparseTransformerForSequenceClassification,
    EfficientSparseTransformerForTokenClassification,
    EfficientSparseTransformerModel,
    no_new_parameters,
)

VARIANT = Variant(
    EfficientSparseTransformerConfig,
    EfficientSparseTransformerModel,
    {
        "masked_lm": EfficientSparseTransformerForMaskedLM,
        "causal_lm": EfficientSparseTransformerForCausalLM,
        "sequence_classification": EfficientSparseTransformerForSequenceClassification,
        "token_classification": EfficientSparseTransformerForTokenClassification,
        "question_answering": EfficientSparseTransformerForQuestionAnswering,
    },
    new_parameters=no_new_parameters,
)

__all__ = [
    "VARIANT",
    "EfficientSparseTransformerAttention",
    "EfficientSparseTransformerConfig",
    "EfficientSparseTransformerForCausalLM",
    "EfficientSparseTransformerForMaskedLM",
    "EfficientSparseTransformerForQuestionAnswering",
    "EfficientSparseTransformerForSequenceClassification",
    "EfficientSparseTransformerForTokenClassification",
    "EfficientSparseTransformerModel",
]
