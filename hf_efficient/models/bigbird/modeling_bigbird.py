"""EfficientBigBird: the backbone with BigBird-ITC block-sparse attention in every layer (an encoder)."""

import functools

import torch
from transformers.utils import logging

from ...attention.block_sparse import (
    block_layout,
    block_sparse_blocked,
    block_sparse_flex,
    block_sparse_reference,
    block_table,
    compiled_random_blocks,
    draw_random_blocks,
    flex_block_mask,
    flex_tile,
    random_table,
    seeded_random_blocks,
    token_keep,
)
from ...attention.flex import MIN_HEAD_DIM, bucket_keep, bucket_length, flex_available, pad_length
from ...core.attention import EfficientAttention, repeat_kv
from ...core.distributed import shared_seed
from ...core.heads import (
    EfficientForMaskedLM,
    EfficientForQuestionAnswering,
    EfficientForSequenceClassification,
    EfficientForTokenClassification,
)
from ...core.masks import right_alignment
from ...core.modeling import EfficientModel
from .configuration_bigbird import EfficientBigBirdConfig

logger = logging.get_logger(__name__)


class EfficientBigBirdAttention(EfficientAttention):
    """BigBird attention: Zaheer et al., "Big Bird: Transformers for Longer Sequences" (arXiv 2007.14062), ITC.

    Query block i: softmax over the keys of its w sliding blocks, the g global blocks (the first/last blocks, which
    themselves attend everywhere) and r random blocks, with the ordinary q/k/v projections.
    Time O(N (w + r + g) b d), memory O(N (w + r + g) b) (see attention/block_sparse.py for the paths).
    Randomness: no buffer; the random blocks are a pure function of (config.seed, layer, blocks in the row), drawn
    per key/value head by `random_blocks` (a seeded CPU generator, cached), so save/load and every device give the same
    pattern. Rows too short for the pattern get exact full attention, decided per call and per row (no state).
    Left padding: each row is rotated so that its first real token starts block 0 (`masks.right_alignment`) and
    rotated back after, so a left-padded row has the blocks (and random blocks) of the unpadded row.
    Encoder-only: causal use is refused by the config.
    """

    supports_causal = False
    supports_global_attention = True
    supports_sequence_parallel = True
    sequence_split = None  # a sequence split across ranks: set by hf_efficient.parallel.sequence_parallel

    def random_blocks(self, num_blocks: int, draw: int | None = None) -> torch.Tensor:
        """(kv_heads, num_blocks, r) long: this layer's random key blocks for a row of `num_blocks` blocks (rows of
        global query blocks are unused). `draw` replaces config.seed (fresh patterns in training)."""
        config = self.config
        if num_blocks < config.min_sparse_blocks:
            raise ValueError(f"A row of {num_blocks} blocks uses full attention (it needs at least "
                             f"{config.min_sparse_blocks} for the sparse pattern); it has no random blocks.")
        arguments = (self.layer_idx, num_blocks, self.num_key_value_heads, config.num_random_blocks,
                     config.num_global_blocks, config.num_sliding_blocks)
        if draw is None:
            seeded = compiled_random_blocks if torch.compiler.is_compiling() else seeded_random_blocks
            return seeded(config.seed, *arguments)
        return draw_random_blocks(draw, *arguments)

    def structural_flex_mask(self, batch: int, length: int, device: torch.device, tile: int, query_start: int = 0,
                             query_length: int | None = None):
        """The flex BlockMask of an unpadded input without extra global tokens: a function of the config, the layer
        and the shape only (the seeded random blocks), built once per process (rebuilding it every forward cost
        more than the attention itself at short lengths). With `query_start` / `query_length` (whole blocks): the
        rows of those queries only, against all `length` keys (a sequence split across ranks)."""
        config = self.config
        return _structural_flex_mask(
            self.layer_idx, batch, length, str(device), self.num_heads, self.num_key_value_heads, config.seed,
            config.block_size, config.num_sliding_blocks, config.num_random_blocks, config.num_global_blocks,
            config.min_sparse_blocks, tile, query_start, length if query_length is None else query_length,
        )

    def flex_forward(self, query, key, value, attention_mask, global_attention_mask, draw, shared_state):
        """FlexAttention on the length's shape bucket (see attention/flex.py): the layout of the padded batch (its
        rows' blocks, global blocks and random blocks are those of the real tokens, so real outputs are unchanged),
        or the cached mask of an unpadded input whose length is a bucket. -> (batch, N, heads, d)."""
        config = self.config
        batch, length, device = query.shape[0], query.shape[2], query.device
        tile = flex_tile(config.block_size, query)
        bucket = bucket_length(length)
        if draw is None and attention_mask is None and global_attention_mask is None and bucket == length:
            mask = self.structural_flex_mask(batch, length, device, tile)
        else:
            if "bigbird_flex_layout" not in shared_state:
                extra = None if global_attention_mask is None else pad_length(global_attention_mask, bucket, dim=1)
                shared_state["bigbird_flex_layout"] = block_layout(
                    bucket_keep(attention_mask, batch, length, bucket, device), extra, batch, bucket,
                    config.block_size, config.num_global_blocks, config.min_sparse_blocks, device)
            layout = shared_state["bigbird_flex_layout"]
            random = random_table(layout, self.num_key_value_heads, config.num_random_blocks,
                                  lambda blocks: self.random_blocks(blocks, draw))
            mask = flex_block_mask(layout, block_table(layout, random, config.num_sliding_blocks), self.num_heads,
                                   device, tile)
        return block_sparse_flex(query, key, value, mask, self.scaling)

    def backend(self, hidden_states: torch.Tensor, output_attentions: bool) -> str:
        gpu = "flex" if flex_available() else None
        return self.choose_backend(hidden_states, output_attentions, gpu, gpu_min_head_dim=MIN_HEAD_DIM)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values=None,
        global_attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        shared_state: dict | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if past_key_values is not None:
            raise ValueError("EfficientBigBird is an encoder and has no KV cache; call without past_key_values.")
        shared_state = {} if shared_state is None else shared_state
        if self.sequence_split is not None:
            return self.sequence_split(self, hidden_states, attention_mask, position_embeddings, past_key_values,
                                       global_attention_mask, output_attentions, shared_state)
        config = self.config
        query, key, value = self.project(hidden_states, position_embeddings)
        batch, length = hidden_states.shape[:2]
        alignment = right_alignment(attention_mask, shared_state)  # blocks count from each row's first real token
        if alignment is not None:
            query, key, value = (alignment.align(states, 2) for states in (query, key, value))
            attention_mask = alignment.keep
            if global_attention_mask is not None:
                global_attention_mask = alignment.align(global_attention_mask, 1)
        if "bigbird_layout" not in shared_state:
            layout = block_layout(attention_mask, global_attention_mask, batch, length, config.block_size,
                                  config.num_global_blocks, config.min_sparse_blocks, hidden_states.device)
            if not torch.compiler.is_compiling() and bool(layout.short.any()):
                logger.warning_once(
                    f"EfficientBigBird: inputs of fewer than {config.min_sparse_blocks} blocks of {config.block_size} "
                    "tokens are too short for the block-sparse pattern and use exact full attention."
                )
            shared_state["bigbird_layout"] = layout
        layout = shared_state["bigbird_layout"]
        draw = None
        if self.training and config.resample_random_blocks_in_training:
            if "bigbird_draw" not in shared_state:  # one per forward (patterns differ by layer), the same on every rank
                shared_state["bigbird_draw"] = shared_seed(2**62)
            draw = shared_state["bigbird_draw"]
        backend = self.backend(hidden_states, output_attentions)
        if backend == "flex":
            attended, weights = self.flex_forward(query, key, value, attention_mask, global_attention_mask, draw,
                                                  shared_state), None
        elif backend in ("reference", "blocked"):
            random = random_table(layout, self.num_key_value_heads, config.num_random_blocks,
                                  lambda blocks: self.random_blocks(blocks, draw))
            if backend == "reference":
                keep = token_keep(layout, block_table(layout, random, config.num_sliding_blocks))
                groups = self.num_key_value_groups
                attended, weights = block_sparse_reference(
                    query, repeat_kv(key, groups), repeat_kv(value, groups), repeat_kv(keep, groups), self.scaling
                )
            else:
                attended, weights = block_sparse_blocked(
                    self, query, key, value, layout, random, config.num_sliding_blocks
                ), None
        else:
            raise ValueError(f"Unknown attention_backend {backend!r}; use auto, reference, blocked or flex.")
        if attention_mask is not None:  # padding rows are zero
            attended = attended * attention_mask[:, :, None, None]
            if weights is not None:
                weights = weights * attention_mask[:, None, :, None]
        if alignment is not None:
            attended = alignment.restore(attended, 1)
            weights = None if weights is None else alignment.restore(alignment.restore(weights, 2), 3)
        return self.merge_heads(attended), (weights if output_attentions else None)


def no_new_parameters(weights: dict[str, torch.Tensor], config: EfficientBigBirdConfig) -> list[str]:
    """Conversion adds no parameters: every layer keeps the source's q/k/v/o projections, and BigBird's random
    blocks come from the config's seed, not from weights. Below g + w + 2r blocks the model is the source exactly."""
    return []


class EfficientBigBirdModel(EfficientModel):
    config_class = EfficientBigBirdConfig
    attention_class = EfficientBigBirdAttention

    def resample_random_blocks(self, seed: int | None = None) -> int:
        """Redraw every layer's random blocks by changing config.seed (to `seed`, or one drawn from torch's global
        generator, rank 0's under torch.distributed); saved with the config, so save/load keeps the new pattern.
        Returns the seed."""
        self.config.seed = shared_seed(2**31 - 1) if seed is None else int(seed)
        return self.config.seed


class EfficientBigBirdForMaskedLM(EfficientForMaskedLM):
    config_class = EfficientBigBirdConfig
    model_class = EfficientBigBirdModel


class EfficientBigBirdForSequenceClassification(EfficientForSequenceClassification):
    config_class = EfficientBigBirdConfig
    model_class = EfficientBigBirdModel


class EfficientBigBirdForTokenClassification(EfficientForTokenClassification):
    config_class = EfficientBigBirdConfig
    model_class = EfficientBigBirdModel


class EfficientBigBirdForQuestionAnswering(EfficientForQuestionAnswering):
    config_class = EfficientBigBirdConfig
    model_class = EfficientBigBirdModel


@functools.lru_cache(maxsize=64)
def _structural_flex_mask(layer: int, batch: int, length: int, device: str, heads: int, kv_heads: int, seed: int,
                          block_size: int, num_sliding: int, num_random: int, num_global: int, min_sparse: int,
                          tile: int, query_start: int, query_length: int):
    device = torch.device(device)
    bucket = bucket_length(length)  # the one-process path comes here only when the length is its own bucket
    keep = None if bucket == length else bucket_keep(None, batch, length, bucket, device)
    layout = block_layout(keep, None, batch, bucket, block_size, num_global, min_sparse, device)
    random = random_table(layout, kv_heads, num_random, lambda blocks: seeded_random_blocks(
        seed, layer, blocks, kv_heads, num_random, num_global, num_sliding))
    rows = slice(query_start // block_size, -(-(query_start + query_length) // block_size))
    return flex_block_mask(layout, block_table(layout, random, num_sliding, rows), heads, device, tile, query_start)
