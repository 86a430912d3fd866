"""Configuration of EfficientBigBird (Zaheer et al., arXiv 2007.14062), the ITC form."""

from ...core.configuration import EfficientConfig


class EfficientBigBirdConfig(EfficientConfig):
    """Backbone fields plus BigBird's knobs (the paper's BigBird-ITC defaults, Table 8: b = 64, 3 + 3 + 2 blocks).

    block_size: b, tokens per block; inputs of any length are cut into blocks (the last one partial).
    num_sliding_blocks: w, the window of each query block: the block itself and (w - 1) / 2 neighbours each side
        (odd; 3 in the paper).
    num_random_blocks: r, random key blocks per query block, outside its window and the global blocks; drawn per
        key/value head from `seed` (see `EfficientBigBirdAttention.random_blocks`).
    num_global_blocks: g, global blocks (ITC: existing tokens): the first ceil(g/2) and the last floor(g/2) blocks of
        each row (up to its last real token); they attend everywhere and every block attends to them. 2 in the paper
        (the first and the last block).
    seed: seeds the random blocks, with the layer index and the number of blocks: the pattern is a pure function of
        (seed, layer, length), so outputs are reproducible and survive save/load. Redraw with
        `model.base_model.resample_random_blocks()`.
    resample_random_blocks_in_training: draw a fresh random pattern in every training forward (one seed per forward
        from torch's global generator, like dropout: reproducible under `torch.manual_seed`, reused by gradient
        checkpointing; under torch.distributed rank 0's seed on every rank); eval always uses the `seed` pattern.

    A row of at most g + w + 2r blocks is too short for the sparse pattern (as in transformers' BigBird) and gets
    exact full attention. BigBird is bidirectional: `is_causal=True` is refused.
    """

    model_type = "efficient_bigbird"

    block_size: int = 64
    num_sliding_blocks: int = 3
    num_random_blocks: int = 3
    num_global_blocks: int = 2
    seed: int = 0
    resample_random_blocks_in_training: bool = False

    def validate_mechanism(self) -> None:
        if self.is_causal:
            raise ValueError(
                "BigBird's block-sparse attention is bidirectional (encoder-only; global blocks see the whole "
                "sequence): set is_causal=False. For a causal long-context model use e.g. efficient_longformer."
            )
        checks = {
            "block_size": (1, "tokens per block, e.g. 64"),
            "num_sliding_blocks": (1, "an odd number of blocks: the block itself and (w-1)/2 each side, e.g. 3"),
            "num_random_blocks": (0, "random key blocks per query block, e.g. 3 (0 = none)"),
            "num_global_blocks": (0, "global blocks, e.g. 2 = the first and the last block (0 = none)"),
        }
        for name, (smallest, meaning) in checks.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
                raise ValueError(f"{name}={value!r}: use an integer >= {smallest} ({meaning}).")
        if self.num_sliding_blocks % 2 == 0:
            raise ValueError(
                f"num_sliding_blocks={self.num_sliding_blocks} must be odd (the block itself plus the same number of "
                "neighbours on each side), e.g. 3."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r}: use an integer.")

    @property
    def min_sparse_blocks(self) -> int:
        """Rows with more blocks than g + w + 2r use the sparse pattern; shorter ones get full attention."""
        return self.num_global_blocks + self.num_sliding_blocks + 2 * self.num_random_blocks + 1

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """One block covering the whole input: the row is too short for the pattern, so it is full attention."""
        return {"block_size": max(1, length)}

    def describe_attention(self) -> str:
        return (
            f"BigBird-ITC block-sparse attention: blocks of {self.block_size} tokens, each query block sees "
            f"{self.num_sliding_blocks} sliding + {self.num_random_blocks} random (seed {self.seed}) + "
            f"{self.num_global_blocks} global blocks (the first/last blocks attend everywhere), plus any "
            f"`global_attention_mask` tokens; inputs of < {self.min_sparse_blocks} blocks use full attention"
        )
