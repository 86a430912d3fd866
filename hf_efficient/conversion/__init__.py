"""Conversion of pretrained BERT-family, GPT-2 and Llama weights (and transformers' Longformer, and v4 Transformer-XL
checkpoints) into variants."""

from .convert import ConversionResult, FidelityReport, convert, convert_model, load_source
from .families import FAMILIES, ConversionError, family_of
from .longformer_layout import from_transformers_longformer, to_transformers_longformer
from .positions import extend_positions, scale_rotary
from .transfo_xl import load_transfo_xl

__all__ = [
    "FAMILIES",
    "ConversionError",
    "ConversionResult",
    "FidelityReport",
    "convert",
    "convert_model",
    "extend_positions",
    "family_of",
    "from_transformers_longformer",
    "load_source",
    "load_transfo_xl",
    "scale_rotary",
    "to_transformers_longformer",
]
