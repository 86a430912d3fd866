"""Configuration of EfficientSparseTransformer (Child et al., arXiv 1904.10509)."""

from transformers.utils import logging

from ...attention.factorized import PATTERNS
from ...core.configuration import EfficientConfig

logger = logging.get_logger(__name__)

COMBINATIONS = ("alternate", "merged", "heads")


class EfficientSparseTransformerConfig(EfficientConfig):
    """Backbone fields plus the Sparse Transformer's knobs (defaults: the paper's text setting, fixed with l = 128
    and c = 32).

    pattern: "strided" (A1: the previous l positions, A2: every l-th position before) or "fixed" (A1: the own block
        of l positions, A2: the last c positions of every block, the "summary" columns). See
        hf_efficient/attention/factorized.py for the exact sets and their bidirectional extension.
    local_size: l, the block / stride length (the paper takes l ~ sqrt(N)).
    num_summary: c, summary columns per block for "fixed" (1 <= c <= l); unused by "strided".
    combination: how the two factors are combined (the paper's three options): "alternate" (layer k uses A1 if k
        is even, A2 if odd), "merged" (every head attends to A1 and A2), "heads" (the first ceil(H/2) heads A1, the
        others A2).
    """

    model_type = "efficient_sparse_transformer"

    pattern: str = "fixed"
    local_size: int = 128
    num_summary: int = 32
    combination: str = "merged"

    def validate_mechanism(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern={self.pattern!r} is not supported; use one of {PATTERNS}.")
        if self.combination not in COMBINATIONS:
            raise ValueError(f"combination={self.combination!r} is not supported; use one of {COMBINATIONS}.")
        for name in ("local_size", "num_summary"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: use a positive integer (the paper: l = 128, c = 32).")
        if self.pattern == "fixed" and self.num_summary > self.local_size:
            raise ValueError(
                f"num_summary={self.num_summary} > local_size={self.local_size}: a block of l positions has at most "
                "l summary columns; lower num_summary or raise local_size."
            )
        if self.combination == "heads" and self.num_attention_heads < 2:
            raise ValueError("combination='heads' splits the heads between A1 and A2 and needs "
                             "num_attention_heads >= 2; use combination='merged' or 'alternate'.")
        if self.combination == "alternate" and self.num_hidden_layers == 1:
            logger.warning_once("combination='alternate' with a single layer uses A1 only.")

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """Pattern "fixed" with l >= length and c = l: one block (A1 = every key) whose every column is a summary
        column (A2 = every key), so every combination (alternate, merged, heads) is full attention, causal or not.
        "strided" has no such setting for alternate and heads (l >= N leaves A2 = {i}, l = 1 leaves A1 = {i}), so the
        setting switches the pattern; no parameter depends on it."""
        return {"pattern": "fixed", "local_size": length, "num_summary": length}

    def describe_attention(self) -> str:
        summary = f", c = {self.num_summary} summary columns per block" if self.pattern == "fixed" else ""
        return (f"Sparse Transformer {self.pattern} factorized attention, l = {self.local_size}{summary}, "
                f"factors combined {self.combination!r}" + (" (causal)" if self.is_causal else " (bidirectional)"))
