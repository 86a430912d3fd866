"""Every Auto* registration in one place. `import hf_efficient` runs `register_all()` once."""

from dataclasses import dataclass, field

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from . import models

AUTO_HEADS = {
    "masked_lm": AutoModelForMaskedLM,
    "causal_lm": AutoModelForCausalLM,
    "sequence_classification": AutoModelForSequenceClassification,
    "token_classification": AutoModelForTokenClassification,
    "question_answering": AutoModelForQuestionAnswering,
}


@dataclass(frozen=True)
class Variant:
    """A registered variant: its config, bare model and the task heads it supports (keys of AUTO_HEADS)."""

    config: type
    model: type
    heads: dict[str, type] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return self.config.model_type


VARIANTS: dict[str, Variant] = {
    v.model_type: v
    for v in (
        Variant(
            models.longformer.EfficientLongformerConfig,
            models.longformer.EfficientLongformerModel,
            {
                "masked_lm": models.longformer.EfficientLongformerForMaskedLM,
                "causal_lm": models.longformer.EfficientLongformerForCausalLM,
                "sequence_classification": models.longformer.EfficientLongformerForSequenceClassification,
                "token_classification": models.longformer.EfficientLongformerForTokenClassification,
                "question_answering": models.longformer.EfficientLongformerForQuestionAnswering,
            },
        ),
    )
}


def register_all() -> None:
    for variant in VARIANTS.values():
        AutoConfig.register(variant.model_type, variant.config)
        AutoModel.register(variant.config, variant.model)
        for head, model_class in variant.heads.items():
            AUTO_HEADS[head].register(variant.config, model_class)
