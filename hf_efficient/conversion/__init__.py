"""Conversion of pretrained BERT-family, GPT-2 and Llama weights (and transformers' Longformer) into variants."""

from .convert import ConversionResult, FidelityReport, convert, convert_model, load_source
from .families import FAMILIES, ConversionError, family_of
from .longformer_layout import from_transformers_longformer, to_transformers_longformer
from .positions import extend_positions, scale_rotary

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
    "scale_rotary",
    "to_transformers_longformer",
]
