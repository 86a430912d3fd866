from ...core.variant import Variant
from .cache_routing import RoutingCache, RoutingCacheLayer
from .configuration_routing import EfficientRoutingConfig
from .modeling_routing import (
    EfficientRoutingAttention,
    EfficientRoutingForCausalLM,
    EfficientRoutingForMaskedLM,
    EfficientRoutingForQuestionAnswering,
    EfficientRoutingForSequenceClassification,
    EfficientRoutingForTokenClassification,
    EfficientRoutingModel,
    no_new_parameters,
)

VARIANT = Variant(
    EfficientRoutingConfig,
    EfficientRoutingModel,
    {
        "masked_lm": EfficientRoutingForMaskedLM,
        "causal_lm": EfficientRoutingForCausalLM,
        "sequence_classification": EfficientRoutingForSequenceClassification,
        "token_classification": EfficientRoutingForTokenClassification,
        "question_answering": EfficientRoutingForQuestionAnswering,
    },
    new_parameters=no_new_parameters,
)

__all__ = [
    "VARIANT",
    "EfficientRoutingAttention",
    "EfficientRoutingConfig",
    "EfficientRoutingForCausalLM",
    "EfficientRoutingForMaskedLM",
    "EfficientRoutingForQuestionAnswering",
    "EfficientRoutingForSequenceClassification",
    "EfficientRoutingForTokenClassification",
    "EfficientRoutingModel",
    "RoutingCache",
    "RoutingCacheLayer",
]
