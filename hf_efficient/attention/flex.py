"""FlexAttention plumbing shared by the block-sparse mechanisms (Dong et al., "Flex Attention", arXiv 2412.05496).

A mechanism describes its pattern as a `mask_mod(b, h, q_idx, kv_idx) -> bool`; `create_block_mask` turns it into
a BlockMask whose empty 128x128 blocks are skipped, and the compiled kernel runs fused forward and backward on CUDA.
On CPU FlexAttention runs forward only, unfused (used in tests to check a mask against a reference).
"""

import functools

import torch
from transformers.utils import logging

from .compiled import run_compiled

logger = logging.get_logger(__name__)

FLEX_TILE = 128  # the BlockMask's default tile: FlexAttention skips empty FLEX_TILE x FLEX_TILE blocks
SMALL_FLEX_TILE = 64  # a finer tile, for patterns made of 64-token blocks, where the kernels can run it
MIN_HEAD_DIM = 16  # compiled FlexAttention kernels need q/k/v head dims of at least 16


def flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def block_mask(mask_mod, batch: int | None, length: int, device: torch.device, key_length: int | None = None,
               heads: int | None = None):
    """A BlockMask for `mask_mod` (batch / heads None: the same pattern for every row / head)."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask_mod, batch, heads, length, key_length or length, device=device,
                             _compile=device.type == "cuda")


def tile_kernel_options(mask) -> dict | None:
    """Forward kernel tiles no larger than the BlockMask's tiles (the kernel must divide them); None for the
    default tile, where torch's own choice stands."""
    q_tile, kv_tile = mask.BLOCK_SIZE
    if (q_tile, kv_tile) == (FLEX_TILE, FLEX_TILE):
        return None
    return {"fwd_BLOCK_M": q_tile, "fwd_BLOCK_N": kv_tile}


def flex_attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask, scaling: float,
                compiled: bool = True) -> torch.Tensor:
    """softmax(q k^T * scaling) v over the BlockMask's pattern. q (batch, heads, N, d) -> (batch, N, heads, d)."""
    from torch.nn.attention.flex_attention import flex_attention

    gqa = query.shape[1] != key.shape[1]
    if not compiled:
        return flex_attention(query, key, value, block_mask=mask, scale=scaling, enable_gqa=gqa).transpose(1, 2)
    out = run_compiled(flex_attention, query, key, value, block_mask=mask, scale=scaling, enable_gqa=gqa,
                       kernel_options=tile_kernel_options(mask))
    return out.transpose(1, 2)


@functools.cache
def small_tiles_compile(head_dim: int, dtype: torch.dtype, device: str) -> bool:
    """Whether compiled FlexAttention runs forward and backward over SMALL_FLEX_TILE tiles for this head dim, dtype
    and CUDA device. torch's default kernel tiles depend on the GPU generation and head dim (its backward kernels
    use 128-wide tiles on some), and a kernel tile must divide the BlockMask's, so this is tried once on a tiny
    input: any failure to compile means "no" (logged), and callers keep FLEX_TILE."""
    from torch.nn.attention.flex_attention import BlockMask

    tile = SMALL_FLEX_TILE
    try:
        query, key, value = (torch.randn(1, 1, 2 * tile, head_dim, device=device, dtype=dtype, requires_grad=True)
                             for _ in range(3))
        counts = torch.full((1, 1, 2), 2, dtype=torch.int32, device=device)
        indices = torch.arange(2, dtype=torch.int32, device=device).expand(1, 1, 2, 2).contiguous()
        mask = BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=tile, seq_lengths=(2 * tile, 2 * tile))
        flex_attend(query, key, value, mask, head_dim**-0.5).sum().backward()
        return True
    except Exception as error:  # compile failures come as many types (InductorError, BackendCompilerFailed, ...)
        logger.info(f"FlexAttention with {tile}x{tile} tiles does not compile for head_dim {head_dim}, {dtype} on "
                    f"{device} ({type(error).__name__}); using {FLEX_TILE}x{FLEX_TILE} tiles.")
        return False
