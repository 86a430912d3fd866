from ...core.variant import Variant
from .configuration_axial import EfficientAxialConfig
from .modeling_axial import (
    EfficientAxialAttention,
    EfficientAxialForCausalLM,
    EfficientAxialForImageClassification,
    EfficientAxialModel,
)

VARIANT = Variant(
    EfficientAxialConfig,
    EfficientAxialModel,
    {
        "causal_lm": EfficientAxialForCausalLM,
        "image_classification": EfficientAxialForImageClassification,
    },
    conversion_refusal="an Axial Transformer models images: a grid of pixel intensities (vocabulary num_levels + 1) "
    "with row, column and channel positions, not text tokens, so a BERT, GPT-2 or Llama's embeddings and positions "
    "have nothing to map to. Build it with EfficientAxialConfig / AutoModel.from_config and train it on images.",
)

__all__ = [
    "VARIANT",
    "EfficientAxialAttention",
    "EfficientAxialConfig",
    "EfficientAxialForCausalLM",
    "EfficientAxialForImageClassification",
    "EfficientAxialModel",
]
