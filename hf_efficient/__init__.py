"""hf-efficient: the efficient Transformers of Tay et al.'s survey (arXiv 2009.06732) as Transformers models.

`import hf_efficient` registers every variant with AutoConfig, AutoModel and the AutoModelFor* heads, and exports
each variant's classes (`hf_efficient.EfficientLongformerModel`, ...).
"""

from .auto import AUTO_HEADS, VARIANTS, register_all
from .core import EfficientConfig, EfficientModel
from .data.image_processing import EfficientImageProcessor

register_all()
globals().update({cls.__name__: cls for variant in VARIANTS.values() for cls in variant.classes})

__version__ = "0.1.0"
__all__ = ["AUTO_HEADS", "VARIANTS", "EfficientConfig", "EfficientImageProcessor", "EfficientModel"] + sorted(
    cls.__name__ for variant in VARIANTS.values() for cls in variant.classes
)
