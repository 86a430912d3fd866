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

from .core.variant import Variant
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


def register_all() -> None:
    for variant in VARIANTS.values():
        AutoConfig.register(variant.model_type, variant.config)
        AutoModel.register(variant.config, variant.model)
        for head, model_class in variant.heads.items():
            AUTO_HEADS[head].register(variant.config, model_class)
