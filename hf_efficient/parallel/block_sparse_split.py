"""Sequence parallelism for BigBird's block-sparse attention (EfficientBigBird): the split mode of one layer.

Random blocks reach anywhere in the sequence and global blocks see (and are seen by) every token, so no halo is
enough: in every layer each rank projects q/k/v for its own chunk of n = N / world tokens, all-gathers the keys and
values of the whole sequence (`GatherSequence`, whose backward returns to each rank the rank-summed gradient of its
own chunk's keys and values), and computes the rows of its own query blocks against them with the usual paths:
`block_sparse_blocked` on a range of query blocks (CPU), `block_sparse_flex` over a BlockMask of Q_LEN = n and
KV_LEN = N (GPU). Full rows (global blocks, extra global tokens, rows too short for the pattern) are computed by the
rank that holds them, each against every key. The block layout (each row's last real block, its global blocks, its
short rows) is that of the whole sequence, from its padding and global masks gathered once per forward, and the
random blocks are drawn for the whole row's block count (a pure function of seed, layer and blocks), so every rank
holds the same table; a training redraw (`resample_random_blocks_in_training`) is the first rank's seed on all.

Costs per layer and rank: attention work O(n (w + r + g) b d + F_own N d) (F_own: the rank's full rows), 1 / world
of one process's; communication one all-gather of the K/V (2 N kv_heads d numbers) forward and one all-reduce (gloo)
or reduce-scatter of their gradient backward. Memory: the whole sequence's keys and values, 2 N kv_heads d per layer,
are held for the backward on every rank (one process holds them too; the queries, outputs and MLP activations are
1 / world of its), so the split pays off where the activations of the rest of the layer dominate, as at base size.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..attention.block_sparse import (
    block_layout,
    block_sparse_blocked,
    block_sparse_flex,
    block_table,
    flex_block_mask,
    flex_tile,
    random_table,
)
from ..attention.flex import bucket_keep, bucket_length, pad_length
from ..core.distributed import shared_seed
from ..core.masks import refuse_left_padding
from .sequence import gathered_masks, split_backend


class GatherSequence(torch.autograd.Function):
    """(..., n, d) of every rank -> (..., world * n, d), the chunks in rank order; the backward gives each rank the
    sum over the ranks of the gradient of its own chunk."""

    @staticmethod
    def forward(ctx, chunk: torch.Tensor, group):
        ctx.group = group
        chunk = chunk.contiguous()
        parts = [torch.empty_like(chunk) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, chunk, group=group)
        return torch.cat(parts, dim=-2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        parts = [part.contiguous() for part in grad.chunk(dist.get_world_size(ctx.group), dim=-2)]
        if dist.get_backend(ctx.group) == "gloo":  # gloo has no reduce-scatter
            total = grad.contiguous()
            dist.all_reduce(total, group=ctx.group)
            return total.chunk(len(parts), dim=-2)[dist.get_rank(ctx.group)], None
        own = torch.empty_like(parts[0])
        dist.reduce_scatter(own, parts, group=ctx.group)
        return own, None


@dataclass
class BlockSparseSplit:
    """The forward of a BigBird attention layer on this rank's chunk (installed by `sequence_parallel`)."""

    group: object
    rank: int
    world: int

    def __call__(self, attention, hidden_states, attention_mask, position_embeddings, past_key_values,
                 global_attention_mask, output_attentions, shared_state):
        backend = split_backend(attention, hidden_states, output_attentions, past_key_values)
        config = attention.config
        size = config.block_size
        batch, length = hidden_states.shape[:2]
        if length % size:
            raise ValueError(f"Each rank holds {length} tokens, not a multiple of block_size={size}, so its chunk "
                             f"would cut a block: pad the sequence to a multiple of {size * self.world} tokens "
                             f"(block_size x ranks, e.g. the tokenizer's pad_to_multiple_of, with its attention_mask).")
        if "sequence_masks" not in shared_state:
            masks = gathered_masks(attention_mask, global_attention_mask, batch, length, hidden_states.device,
                                   self.group, self.world)
            refuse_left_padding(masks[0], "EfficientBigBird under sequence parallelism")
            shared_state["sequence_masks"] = masks
        keep, is_global = shared_state["sequence_masks"]  # (batch, N), the whole sequence
        total, start = length * self.world, self.rank * length
        query, key, value = attention.project(hidden_states, position_embeddings)
        keys, values = GatherSequence.apply(torch.stack([key, value]), self.group)  # each (batch, kv_heads, N, d)
        draw = None
        if attention.training and config.resample_random_blocks_in_training:
            if "bigbird_draw" not in shared_state:  # one per forward, the same on every rank
                shared_state["bigbird_draw"] = shared_seed(2**62, self.group)
            draw = shared_state["bigbird_draw"]
        padded = None if bool(keep.all()) else keep
        rows = slice(start // size, (start + length) // size)  # this rank's query blocks

        if backend == "flex":
            bucket, device, kv_heads = bucket_length(total), query.device, attention.num_key_value_heads
            tile = flex_tile(size, query)
            if padded is None and is_global is None and draw is None:  # a function of the shapes: built once
                mask = attention.structural_flex_mask(batch, total, device, tile, start, length)
            else:
                if "bigbird_split_flex_layout" not in shared_state:
                    extra = None if is_global is None else pad_length(is_global, bucket, dim=1)
                    shared_state["bigbird_split_flex_layout"] = block_layout(
                        bucket_keep(padded, batch, total, bucket, device), extra, batch, bucket, size,
                        config.num_global_blocks, config.min_sparse_blocks, device)
                layout = shared_state["bigbird_split_flex_layout"]
                random = random_table(layout, kv_heads, config.num_random_blocks,
                                      lambda blocks: attention.random_blocks(blocks, draw))
                table = block_table(layout, random, config.num_sliding_blocks, rows)
                mask = flex_block_mask(layout, table, attention.num_heads, device, tile, start)
            attended = block_sparse_flex(query, keys, values, mask, attention.scaling, compiled=query.is_cuda)
        else:
            if "bigbird_split_layout" not in shared_state:
                shared_state["bigbird_split_layout"] = block_layout(
                    padded, is_global, batch, total, size, config.num_global_blocks, config.min_sparse_blocks,
                    hidden_states.device)
            layout = shared_state["bigbird_split_layout"]
            random = random_table(layout, attention.num_key_value_heads, config.num_random_blocks,
                                  lambda blocks: attention.random_blocks(blocks, draw))
            attended = block_sparse_blocked(attention, query, keys, values, layout, random,
                                            config.num_sliding_blocks, start)
        attended = attended * keep[:, start:start + length, None, None]  # padding rows are zero
        return attention.merge_heads(attended), None
