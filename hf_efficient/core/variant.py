"""What a variant declares about itself; `hf_efficient.models` collects one `VARIANT` per subpackage."""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# weights (head-level names: "model.layers.0...") and the target config -> names of the tensors it added; its
# docstring is the recipe the model card prints ("Conversion: ...": how each added tensor starts, and why)
NewParameters = Callable[[dict[str, torch.Tensor], object], list[str]]


def no_new_parameters(weights: dict[str, torch.Tensor], config) -> list[str]:
    return []


@dataclass(frozen=True)
class Variant:
    """A registered variant: its config, bare model, the task heads it supports (keys of auto.AUTO_HEADS), how
    conversion initialises the parameters it adds to a pretrained backbone, or why it refuses conversion."""

    config: type
    model: type
    heads: dict[str, type] = field(default_factory=dict)
    new_parameters: NewParameters = no_new_parameters
    # why no pretrained token model converts into this variant (a model over other inputs); "" = conversion applies
    conversion_refusal: str = ""

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def classes(self) -> list[type]:
        return [self.config, self.model, *self.heads.values()]
