"""FlexAttention plumbing shared by the block-sparse mechanisms (Dong et al., "Flex Attention", arXiv 2412.05496).

A mechanism describes its pattern as a `mask_mod(b, h, q_idx, kv_idx) -> bool`; `create_block_mask` turns it into
a BlockMask whose empty 128x128 blocks are skipped, and the compiled kernel runs fused forward and backward on CUDA.
On CPU FlexAttention runs forward only, unfused (used in tests to check a mask against a reference).
"""

import functools

import torch

FLEX_TILE = 128  # the BlockMask's tile: FlexAttention skips empty FLEX_TILE x FLEX_TILE blocks
MIN_HEAD_DIM = 16  # compiled FlexAttention kernels need q/k/v head dims of at least 16
# torch.compile specialises the kernel to each shape and mask function; past dynamo's recompile limit (8) it silently
# falls back to eager flex_attention, which materialises the N x N scores. A model sees one or two per input length,
# but a run over many lengths or variants (a benchmark, a test suite) needs more.
FLEX_RECOMPILE_LIMIT = 256


def flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def block_mask(mask_mod, batch: int | None, length: int, device: torch.device, key_length: int | None = None,
               heads: int | None = None):
    """A BlockMask for `mask_mod` (batch / heads None: the same pattern for every row / head)."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask_mod, batch, heads, length, key_length or length, device=device,
                             _compile=device.type == "cuda")


def flex_attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask, scaling: float,
                compiled: bool = True) -> torch.Tensor:
    """softmax(q k^T * scaling) v over the BlockMask's pattern. q (batch, heads, N, d) -> (batch, N, heads, d)."""
    from torch.nn.attention.flex_attention import flex_attention

    gqa = query.shape[1] != key.shape[1]
    if not compiled:
        return flex_attention(query, key, value, block_mask=mask, scale=scaling, enable_gqa=gqa).transpose(1, 2)
    with torch._dynamo.config.patch(recompile_limit=FLEX_RECOMPILE_LIMIT):
        out = compiled_flex_attention()(query, key, value, block_mask=mask, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2)
