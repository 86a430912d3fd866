from ...core.variant import Variant
from .configuration_image_transformer import EfficientImageTransformerConfig
from .modeling_image_transformer import (
    EfficientImageTransformerForCausalLM,
    EfficientImageTransformerModel,
    EfficientLocalImageAttention,
)

VARIANT = Variant(
    EfficientImageTransformerConfig,
    EfficientImageTransformerModel,
    {"causal_lm": EfficientImageTransformerForCausalLM},
    conversion_refusal="an Image Transformer reads sub-pixel intensities (num_levels + 1 ids with row, column and "
    "channel embeddings), not text: a BERT, GPT-2 or Llama's vocabulary and positions mean nothing there. Build it "
    "with EfficientImageTransformerConfig / AutoModelForCausalLM.from_config and train it on images.",
)

__all__ = [
    "VARIANT",
    "EfficientImageTransformerConfig",
    "EfficientImageTransformerForCausalLM",
    "EfficientImageTransformerModel",
    "EfficientLocalImageAttention",
]
