from ...core.variant import Variant
from .configuration_set_transformer import EfficientSetTransformerConfig
from .modeling_set_transformer import (
    EfficientSetAttention,
    EfficientSetTransformerForSequenceClassification,
    EfficientSetTransformerForTokenClassification,
    EfficientSetTransformerModel,
)

VARIANT = Variant(
    EfficientSetTransformerConfig,
    EfficientSetTransformerModel,
    {
        "sequence_classification": EfficientSetTransformerForSequenceClassification,
        "token_classification": EfficientSetTransformerForTokenClassification,
    },
    conversion_refusal="a Set Transformer takes sets of feature vectors (input_features), not tokens: it has no "
    "token embeddings or positions to receive a BERT, GPT-2 or Llama's weights. Build it with "
    "EfficientSetTransformerConfig / AutoModel.from_config and train it on set data.",
)

__all__ = [
    "VARIANT",
    "EfficientSetAttention",
    "EfficientSetTransformerConfig",
    "EfficientSetTransformerForSequenceClassification",
    "EfficientSetTransformerForTokenClassification",
    "EfficientSetTransformerModel",
]
