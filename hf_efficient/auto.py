"""Every Auto* registration in one place. `import hf_efficient` runs `register_all()` once."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

# from its module: transformers 5.17 exports a placeholder at the top level that needs torchvision
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from .core.variant import Variant
from .data.image_processing import EfficientImageProcessor
from .models import discover

AUTO_HEADS = {
    "masked_lm": AutoModelForMaskedLM,
    "causal_lm": AutoModelForCausalLM,
    "sequence_classification": AutoModelForSequenceClassification,
    "token_classification": AutoModelForTokenClassification,
    "question_answering": AutoModelForQuestionAnswering,
    "image_classification": AutoModelForImageClassification,
}

VARIANTS: dict[str, Variant] = discover()


def is_image_config(config_class: type) -> bool:
    """An image model (a sequence of bos and sub-pixel levels, hf_efficient's image contract)."""
    return hasattr(config_class, "num_levels")


# the variants over images, whose folders carry an EfficientImageProcessor (preprocessor_config.json)
IMAGE_MODEL_TYPES = tuple(name for name, variant in VARIANTS.items() if is_image_config(variant.config))


def register_all() -> None:
    for variant in VARIANTS.values():
        AutoConfig.register(variant.model_type, variant.config)
        AutoModel.register(variant.config, variant.model)
        for head, model_class in variant.heads.items():
            AUTO_HEADS[head].register(variant.config, model_class)
    # keyed by the config class: AutoImageProcessor finds the processor from a saved folder or from a config alone
    for model_type in IMAGE_MODEL_TYPES:
        AutoImageProcessor.register(VARIANTS[model_type].config, image_processor_classes={
            "pil": EfficientImageProcessor, "torchvision": EfficientImageProcessor})
