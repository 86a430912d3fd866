"""Conversion of pretrained BERT-family, GPT-2 and Llama weights (and transformers' Longformer) into variants."""

from .convert import ConversionResult, FidelityReport, convert, convert_model, load_source
from .families import FAMILIES, ConversionError, family_of
from .positions import extend_positions

__all__ = [
    "FAMILIES",
    "ConversionError",
    "ConversionResult",
    "FidelityReport",
    "convert",
    "convert_model",
    "extend_positions",
    "family_of",
    "load_source",
]
