"""A Compressive Transformer from a Transformer-XL: whatever EfficientTransformerXL holds (a transformers-v4
`TransfoXL*` checkpoint loaded with `hf_efficient.conversion.load_transfo_xl`, a GPT-2 / Llama converted to
transformer_xl, a model trained here) becomes the same head of EfficientCompressive with the same weights."""

from ..transformer_xl import EfficientTransformerXLConfig
from . import modeling_compressive
from .configuration_compressive import EfficientCompressiveConfig


def compressive_from_transformer_xl(model, **fields):
    """The EfficientCompressive twin of an EfficientTransformerXL model or head: its config plus `fields` (cmem_len,
    compression_rate, compression, reconstruction_loss_weight, or any other), every weight copied, and each layer's
    compression convolution started as mean pooling (weight[o, i, t] = 1/c for o == i; bias 0). With cmem_len=0 it
    computes exactly what the source computes."""
    if not isinstance(model.config, EfficientTransformerXLConfig) or isinstance(model.config,
                                                                               EfficientCompressiveConfig):
        raise ValueError(f"{type(model).__name__} is not an EfficientTransformerXL model; convert the source to "
                         "transformer_xl first, or convert it to compressive directly (hf-efficient convert).")
    name = type(model).__name__.replace("EfficientTransformerXL", "EfficientCompressive")
    target_class = getattr(modeling_compressive, name, None)
    if target_class is None:
        raise ValueError(f"{type(model).__name__} has no EfficientCompressive counterpart.")
    settings = {key: value for key, value in model.config.to_dict().items() if key != "model_type"}
    config = EfficientCompressiveConfig(**{**settings, **fields})
    target = target_class(config).to(model.device, model.dtype)
    missing, unexpected = target.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(".compression." not in key for key in missing):
        raise ValueError(f"Weights that don't fit: missing {missing[:8]}, unexpected {unexpected[:8]}.")
    return target.train(model.training)
