"""Continued pretraining of converted models on long documents (`hf-efficient pretrain`)."""

from .data import pack_documents, split_documents
from .measure import evaluate_lm
from .recipe import PretrainOptions, pretrain
from .texts import TEXT_SOURCES, MissingTextSource, load_documents

__all__ = ["TEXT_SOURCES", "MissingTextSource", "PretrainOptions", "evaluate_lm", "load_documents",
           "pack_documents", "pretrain", "split_documents"]
