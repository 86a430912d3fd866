"""FlexAttention plumbing shared by the block-sparse mechanisms (Dong et al., "Flex Attention", arXiv 2412.05496).

A mechanism gives its pattern twice. At tile level, as tables over tile x tile tiles (128 by default): the tiles
that hold some kept (query, key) pair ("partial") and those whose pairs are all kept ("full"), derived with tensor
ops from the pattern's structure and the padding mask (`tile_block_mask` turns them into a BlockMask); the kernel
skips every other tile. At token level, as a `mask_mod(b, h, q_idx, kv_idx) -> bool` that the kernel evaluates
inside partial tiles only. Both read the padding and the global tokens from tensors, so a new batch is new data for
the same compiled kernel, never a new compile; nothing evaluates mask_mod on all N^2 pairs.

Shape buckets: the compiled kernels are built with static shapes (compiled.py), one per input shape, so the flex
paths run on the length rounded up to a bucket (`bucket_length`): `flex_attend` pads q/k/v to the BlockMask's
length and cuts the output back. Padding keys are never in a tile table and query tiles without a real token list
no tile, so the padding costs the kernel nothing but empty programs; real tokens' outputs are exactly those of the
unpadded input. On CPU FlexAttention runs forward only, unfused: the dense math over mask_mod (tests check the
tile tables apart, see tests/block_mask_emulation.py).
"""

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.utils import logging

from .compiled import run_compiled

logger = logging.get_logger(__name__)

FLEX_TILE = 128  # the BlockMask's default tile: FlexAttention skips empty FLEX_TILE x FLEX_TILE blocks
SMALL_FLEX_TILE = 64  # a finer tile, for patterns made of 64-token blocks, where the kernels can run it
MIN_HEAD_DIM = 16  # compiled FlexAttention kernels need q/k/v head dims of at least 16
SMALLEST_BUCKET = 256  # a multiple of every tile
DOUBLING_UP_TO = 4096  # buckets are powers of two up to here, then four per doubling


def flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def bucket_length(length: int) -> int:
    """The padded length the compiled paths run at: 256, 512, 1024, 2048, 4096, then four buckets per doubling
    (5120, 6144, 7168, 8192, 10240, ...).

    Each bucket costs one compile (seconds) per batch size, however many lengths fall into it, so short inputs, where
    a step is fast and a compile is not, get few buckets: five cover 1 to 4096 tokens. The padding costs memory-bound
    copies of q/k/v and the output (the kernels skip padding tiles), up to 2x the attention tensors below 4096 tokens;
    above, where those tensors are large and a compile is small next to a step, at most 25%."""
    if length <= SMALLEST_BUCKET:
        return SMALLEST_BUCKET
    if length <= DOUBLING_UP_TO:
        return 1 << (length - 1).bit_length()
    step = 1 << ((length - 1).bit_length() - 3)  # an eighth of the next power of two
    return -(-length // step) * step


def pad_length(x: torch.Tensor, length: int, dim: int = -2) -> torch.Tensor:
    """x padded with zeros along `dim` to `length`."""
    missing = length - x.shape[dim]
    if missing == 0:
        return x
    dim = dim % x.dim()
    return F.pad(x, (0, 0) * (x.dim() - 1 - dim) + (0, missing))


def bucket_keep(keep: torch.Tensor | None, batch: int, length: int, bucket: int, device: torch.device) -> torch.Tensor:
    """(batch, bucket) bool: the real tokens (`keep`, or all of the first `length`), False on the bucket's padding."""
    if keep is None:
        return (torch.arange(bucket, device=device) < length).expand(batch, bucket).contiguous()
    return pad_length(keep.bool(), bucket, dim=1).contiguous()


def token_tiles(tokens: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, N) bool -> (any, all), each (batch, ceil(N / tile)): whether a tile holds some / only marked tokens
    (positions past N count as unmarked, so a tile cut by the end is never 'all')."""
    tiles = -(-tokens.shape[1] // tile)
    per_tile = pad_length(tokens, tiles * tile, dim=1).view(tokens.shape[0], tiles, tile)
    return per_tile.any(-1), per_tile.all(-1)


def offset_tiles(keep_offset: Callable[[torch.Tensor], torch.Tensor], tiles: int, tile: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(any, all), each (tiles, tiles) bool, for a pattern that depends only on the offset i - j. The pairs of query
    tile I and key tile J have the offsets (I - J) * tile + r, r = -(tile - 1) .. tile - 1, so evaluating
    `keep_offset` on those (2 tiles - 1, 2 tile - 1) offsets decides every tile exactly: O(tiles * tile) work."""
    shifts = torch.arange(-(tiles - 1), tiles, device=device)  # I - J
    offsets = shifts[:, None] * tile + torch.arange(-(tile - 1), tile, device=device)[None, :]
    kept = keep_offset(offsets)
    index = torch.arange(tiles, device=device)[:, None] - torch.arange(tiles, device=device)[None, :] + tiles - 1
    return kept.any(-1)[index], kept.all(-1)[index]


def ordered_tiles(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (batch, heads, T, T) tile table as BlockMask's (counts, column indices listed first where kept)."""
    counts = tiles.sum(-1, dtype=torch.int32)
    indices = torch.argsort(tiles.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts.contiguous(), indices.contiguous()


def tile_block_mask(partial: torch.Tensor, full: torch.Tensor, mask_mod, length: int, tile: int = FLEX_TILE,
                    key_length: int | None = None):
    """The BlockMask of (batch or 1, heads or 1, T, T) bool tile tables: mask_mod decides inside the partial tiles,
    full tiles keep every pair (they must: the kernel skips mask_mod there), the others are skipped. `key_length`:
    KV_LEN when it differs from Q_LEN = `length` (the tables then (..., T_q, T_kv))."""
    from torch.nn.attention.flex_attention import BlockMask

    partial = partial & ~full
    return BlockMask.from_kv_blocks(*ordered_tiles(partial), *ordered_tiles(full), BLOCK_SIZE=tile,
                                    mask_mod=mask_mod, seq_lengths=(length, key_length or length))


def block_mask(mask_mod, batch: int | None, length: int, device: torch.device, key_length: int | None = None,
               heads: int | None = None):
    """A BlockMask evaluated from `mask_mod` over every pair (torch's create_block_mask, compiled on CUDA), for the
    patterns that have no tile-level builder yet (the Sparse Transformer's grid and summary masks): built, and
    compiled, once per shape, unlike `tile_block_mask`."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask_mod, batch, heads, length, key_length or length, device=device,
                             _compile=device.type == "cuda")


# Forward kernel tiles measured faster than torch's own choice (benchmarks/flex_probe.py --sweep, results in
# benchmarks/results/issue11/flex_sweep.md): keyed by (CUDA capability, head dim). On the H200 torch picks 128 x 128
# tiles with 4 warps for bf16/fp16 at head dim 64, which spill registers: 1.62 ms against 0.15 ms for 64 x 64.
MEASURED_FORWARD_TILES = {((9, 0), 64): {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 64, "fwd_num_warps": 4, "fwd_num_stages": 3}}


def tile_kernel_options(mask, query: torch.Tensor) -> dict | None:
    """FlexAttention kernel options for this BlockMask and query: forward kernel tiles no larger than the BlockMask's
    (the kernel must divide them), or a measured better forward config for half-precision inputs on this GPU; None
    where torch's own choice stands."""
    q_tile, kv_tile = mask.BLOCK_SIZE
    if (q_tile, kv_tile) != (FLEX_TILE, FLEX_TILE):
        return {"fwd_BLOCK_M": q_tile, "fwd_BLOCK_N": kv_tile}
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16):
        capability = torch.cuda.get_device_capability(query.device)
        return MEASURED_FORWARD_TILES.get((capability, query.shape[-1]))
    return None


def flex_attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask, scaling: float,
                compiled: bool = True) -> torch.Tensor:
    """softmax(q k^T * scaling) v over the BlockMask's pattern. q (batch, heads, N, d) -> (batch, N, heads, d).

    The mask may be longer than N (a shape bucket) when it drops every key past N: q/k/v are then padded to its
    lengths (Q_LEN for q, KV_LEN for k/v) and the output cut back to N."""
    from torch.nn.attention.flex_attention import flex_attention

    length, (padded, key_padded) = query.shape[2], mask.seq_lengths
    if padded < length or key_padded < key.shape[2]:
        raise ValueError(f"The BlockMask covers {padded} queries and {key_padded} keys but the input has {length} "
                         f"and {key.shape[2]}.")
    query = pad_length(query, padded)
    key, value = pad_length(key, key_padded), pad_length(value, key_padded)
    gqa = query.shape[1] != key.shape[1]
    if not compiled:
        out = flex_attention(query, key, value, block_mask=mask, scale=scaling, enable_gqa=gqa)
    else:
        out = run_compiled(flex_attention, query, key, value, block_mask=mask, scale=scaling, enable_gqa=gqa,
                           kernel_options=tile_kernel_options(mask, query))
    return out[:, :, :length].transpose(1, 2)


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
