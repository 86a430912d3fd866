"""What a block-sparse FlexAttention kernel computes for a BlockMask, on CPU.

FlexAttention's CPU path (eager, unfused) evaluates mask_mod on every pair and ignores the BlockMask's tile tables,
so it cannot tell a wrong table. The GPU kernels visit only the listed tiles, evaluate mask_mod inside partial tiles
and keep every pair of a full one. `kernel_keep` expands a BlockMask the way those kernels read it, so that a CPU test
proves the tile tables and mask_mod together; `emulate_flex_kernel` makes the library's compiled flex call compute
with it.
"""

import torch
from torch.nn.attention.flex_attention import create_mask

from hf_efficient.attention import flex


def listed_tiles(counts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """BlockMask's (counts (B, H, Tq), column indices (B, H, Tq, Tk)) -> (B, H, Tq, Tk) bool."""
    columns = torch.arange(indices.shape[-1])
    listed = columns[None, None, None, :] < counts[..., None]
    dense = torch.zeros(indices.shape, dtype=torch.int8)  # amax: a column listed once counts, whatever repeats
    return dense.scatter_reduce(-1, indices.long(), listed.to(torch.int8), reduce="amax").bool()


def tile_tables(mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) (B, H, Tq, Tk) bool: the tiles the kernels evaluate mask_mod in, and those they keep whole."""
    partial = listed_tiles(mask.kv_num_blocks, mask.kv_indices)
    if mask.full_kv_num_blocks is None:
        return partial, torch.zeros_like(partial)
    return partial, listed_tiles(mask.full_kv_num_blocks, mask.full_kv_indices)


def kernel_keep(mask, heads: int) -> torch.Tensor:
    """(B, heads, Q_LEN, KV_LEN) bool: the pairs a block-sparse kernel keeps (full tiles whole, mask_mod inside
    partial tiles, nothing elsewhere)."""
    partial, full = tile_tables(mask)
    batch = partial.shape[0]
    length, key_length = mask.seq_lengths
    q_tile, kv_tile = mask.BLOCK_SIZE

    def tokens(tiles: torch.Tensor) -> torch.Tensor:
        expanded = tiles.repeat_interleave(q_tile, dim=2).repeat_interleave(kv_tile, dim=3)
        return expanded[:, :, :length, :key_length].expand(batch, heads, length, key_length)

    inside = create_mask(mask.mask_mod, batch, heads, length, key_length, device="cpu")
    return tokens(full) | (tokens(partial) & inside)


def kernel_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask, scale: float,
                     **unused) -> torch.Tensor:
    """softmax over `kernel_keep` (rows without a kept key give 0, as the kernels do); q (B, H, N, d), k/v (B, Hkv,
    N, d) -> (B, H, N, d), the layout flex_attention returns."""
    heads = query.shape[1]
    groups = heads // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    keep = kernel_keep(mask, heads)
    scores = (query @ key.transpose(-1, -2) * scale).masked_fill(~keep, float("-inf"))
    weights = torch.nan_to_num(scores.softmax(-1), nan=0.0)
    return weights @ value


def emulate_flex_kernel(monkeypatch) -> list:
    """Route the library's compiled FlexAttention calls through `kernel_attention`; returns the list of BlockMasks
    it was called with."""
    masks = []

    def run(function, query, key, value, block_mask, scale, **options):
        masks.append(block_mask)
        return kernel_attention(query, key, value, block_mask, scale)

    monkeypatch.setattr(flex, "run_compiled", run)
    return masks
