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

# the variants over images, whose folders carry an EfficientImageProcessor (preprocessor_config.json)
IMAGE_MODEL_TYPES = ("efficient_axial", "efficient_image_transformer")


def register_all() -> None:
    for variant in VARIANTS.values():
        AutoConfig.register(variant.model_type, variant.config)
        AutoModel.register(variant.config, variant.model)
        for head, model_class in variant.heads.items():
            AUTO_HEADS[head].register(variant.config, model_class)
    # Keyed by the config class where the variant is installed (AutoImageProcessor then also finds the processor
    # from a config alone), else by its model_type string, which AutoImageProcessor's mapping accepts as a key: the
    # class is registered either way, so AutoImageProcessor.from_pretrained resolves a saved processor by its name.
    for model_type in IMAGE_MODEL_TYPES:
        key = VARIANTS[model_type].config if model_type in VARIANTS else model_type
        AutoImageProcessor.register(key, image_processor_classes={"pil": EfficientImageProcessor,
                                                                   "torchvision": EfficientImageProcessor})
