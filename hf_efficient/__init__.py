"""hf-efficient: the efficient Transformers of Tay et al.'s survey (arXiv 2009.06732) as Transformers models.

`import hf_efficient` registers every variant with AutoConfig, AutoModel and the AutoModelFor* heads.
"""

from .auto import VARIANTS, register_all
from .core import EfficientConfig, EfficientModel
from .models.longformer import (
    EfficientLongformerConfig,
    EfficientLongformerForCausalLM,
    EfficientLongformerForMaskedLM,
    EfficientLongformerForQuestionAnswering,
    EfficientLongformerForSequenceClassification,
    EfficientLongformerForTokenClassification,
    EfficientLongformerModel,
)

register_all()

__version__ = "0.1.0"
__all__ = [
    "VARIANTS",
    "EfficientConfig",
    "EfficientLongformerConfig",
    "EfficientLongformerForCausalLM",
    "EfficientLongformerForMaskedLM",
    "EfficientLongformerForQuestionAnswering",
    "EfficientLongformerForSequenceClassification",
    "EfficientLongformerForTokenClassification",
    "EfficientLongformerModel",
    "EfficientModel",
]
