"""Configuration of EfficientSinkhorn (Tay et al., "Sparse Sinkhorn Attention", arXiv 2002.11296)."""

import math

from ...core.configuration import EfficientConfig


class EfficientSinkhornConfig(EfficientConfig):
    """Backbone fields plus Sparse Sinkhorn attention's knobs (defaults: the paper's reported best, 7 iterations at
    temperature 0.75, with blocks of 64; see hf_efficient/attention/sinkhorn.py for the mechanism).

    block_size: b, tokens per block (the paper uses 8 to 64 by task). Each query attends to its own block and to one
        sorted block (2b keys), or to `sortcut_blocks` sorted blocks.
    max_num_blocks: the sorting network's output width, the most blocks an input may have. None = ceil(
        max_position_embeddings / block_size), fixed when the config is made (so a later block_size change, e.g. the
        full-attention setting, keeps the network's shape).
    sinkhorn_iterations: rounds of row and column normalisation (at least 1). Causal models normalise rows only (a
        lower-triangular matrix cannot be balanced; see the mechanism's docstring), once.
    sinkhorn_temperature: tau, the scores (plus Gumbel noise) are divided by it before balancing.
    gumbel_noise: add Gumbel(0, 1) noise to the scores in training (Gumbel-Sinkhorn); never in eval, which is
        deterministic. The noise comes from torch's default generator, like dropout.
    sort_hidden_size: the width of the sorting network's hidden layer; None = head_dim.
    sortcut_blocks: k for SortCut (encoders only): every query attends to the first k blocks of the sorted sequence
        instead of its own block and its partner. None = the ordinary Sparse Sinkhorn attention.
    """

    model_type = "efficient_sinkhorn"

    block_size: int = 64
    max_num_blocks: int | None = None
    sinkhorn_iterations: int = 7
    sinkhorn_temperature: float = 0.75
    gumbel_noise: bool = True
    sort_hidden_size: int | None = None
    sortcut_blocks: int | None = None

    def validate_mechanism(self) -> None:
        for name, example in (("block_size", "64"), ("max_num_blocks", "64 (or None)"),
                              ("sort_hidden_size", "64 (or None for head_dim)"), ("sortcut_blocks", "2 (or None)")):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r}: use a positive integer, e.g. {example}.")
        if isinstance(self.sinkhorn_iterations, bool) or not isinstance(self.sinkhorn_iterations, int) or \
                self.sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations={self.sinkhorn_iterations!r}: use a positive integer (the paper: "
                             "7).")
        temperature = self.sinkhorn_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
                not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"sinkhorn_temperature={temperature!r}: use a positive number (the paper: 0.75).")
        if self.sortcut_blocks is not None and self.is_causal:
            raise ValueError("SortCut (sortcut_blocks) lets every query see the first sorted blocks, which hold later "
                             "tokens: it serves encoders only. Set sortcut_blocks=None for a causal model.")
        if self.attention_backend in ("flex", "compiled", "fla"):
            raise ValueError(f"attention_backend={self.attention_backend!r}: Sparse Sinkhorn attention runs its sorted "
                             "blocks through sdpa on every device; use 'auto', 'blocked' or 'reference'.")
        if self.max_num_blocks is None:
            self.max_num_blocks = math.ceil(self.max_position_embeddings / self.block_size)

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """One block covering the input: the sort of one block is the identity, so every query attends to the whole
        input (bidirectional: its block and its partner, the same keys twice, which leaves the softmax unchanged;
        causal: its block under the causal mask, block 0 having no partner; SortCut: the one sorted block)."""
        return {"block_size": length}

    def describe_attention(self) -> str:
        mode = (f"SortCut over the first {self.sortcut_blocks} sorted blocks" if self.sortcut_blocks is not None
                else "own block + one sorted block per query block")
        noise = ", Gumbel noise in training" if self.gumbel_noise else ""
        balancing = ("causal sort: a softmax over the earlier blocks" if self.is_causal else
                     f"{self.sinkhorn_iterations} log-space Sinkhorn iterations")
        return (f"Sparse Sinkhorn attention, blocks of {self.block_size}, {mode}; {balancing} at temperature "
                f"{self.sinkhorn_temperature}{noise}; soft sort in training, hard in eval"
                + (" (causal)" if self.is_causal else " (bidirectional)"))
