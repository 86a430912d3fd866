"""Sliding-window attention with dilation and global tokens (Longformer's pattern).

Beltagy, Peters & Cohan, "Longformer: The Long-Document Transformer", arXiv 2004.05150.

With one-sided window w (the config's `attention_window` / 2) and dilation d, query i keeps key j when

    band(i, j)  = |i - j| <= w*d  and  (i - j) mod d == 0          (and j <= i when causal)
    local(i, j) = (band(i, j) or global(j)) and real(j)             scored with the local q/k/v projections
    global row  = every real j (j <= i when causal)                 scored with the global q/k/v projections

so a global token attends everywhere and every token attends to it. Three paths compute the same function:

* `sliding_window_reference`: dense O(N^2) masks, for tests only.
* `sliding_window_blocked`: queries in blocks of w against the three neighbouring key blocks (per residue class
  mod d), plus the global keys, through transformers' attention interface. Time O(N (3w + G) D), memory
  O(N (3w + G)); trains on CPU.
* `sliding_window_flex`: a FlexAttention block mask (GPU): only the band's blocks and the global-key columns are
  computed. Time O(N (2w d + G) D) in blocks of 128, memory O(N D).

Global query rows are computed apart (`global_rows`): G queries against all N keys, O(G N D).
"""

import functools
import math

import torch
import torch.nn.functional as F

from ..core.attention import EfficientAttention
from .flex import FLEX_TILE, flex_attend, offset_tiles, tile_block_mask, token_tiles
from .global_tokens import gather_positions


def band(diff: torch.Tensor, one_sided: int, dilation: int, causal: bool) -> torch.Tensor:
    """Keep where the offset i - j is in the dilated band: |i - j| <= w*d, (i - j) mod d == 0, j <= i if causal."""
    keep = (diff.abs() <= one_sided * dilation) & (diff.remainder(dilation) == 0)
    return keep & (diff >= 0) if causal else keep


def band_keep(query_positions: torch.Tensor, key_positions: torch.Tensor, one_sided: int, dilation: int,
              causal: bool) -> torch.Tensor:
    """(q, k) bool band over explicit positions."""
    return band(query_positions[:, None] - key_positions[None, :], one_sided, dilation, causal)


def sliding_window_reference(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    global_query: torch.Tensor | None, global_key: torch.Tensor | None, global_value: torch.Tensor | None,
    keep: torch.Tensor | None, is_global: torch.Tensor | None,
    one_sided: int, dilation: int, causal: bool, scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense masked reference. q/k/v (batch, heads, N, d) with k/v already repeated to all heads.

    Returns the output (batch, N, heads, d) and the full weights (batch, heads, N, N); padding rows are zero.
    """
    batch, heads, length, _ = query.shape
    positions = torch.arange(length, device=query.device)
    causal_ok = band_keep(positions, positions, length, 1, causal)  # (N, N): all, or j <= i
    key_ok = torch.ones(batch, length, dtype=torch.bool, device=query.device) if keep is None else keep
    own = torch.eye(length, dtype=torch.bool, device=query.device)
    local = band_keep(positions, positions, one_sided, dilation, causal)[None]
    if is_global is not None:
        local = local | (is_global[:, None, :] & causal_ok)
    local = (local & key_ok[:, None, :]) | own

    def softmax_attend(q, k, v, mask):
        scores = (q @ k.transpose(-1, -2)) * scaling
        weights = scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1)
        return weights @ v, weights

    out, weights = softmax_attend(query, key, value, local)
    if is_global is not None:
        global_mask = (key_ok[:, None, :] & causal_ok) | own
        global_out, global_weights = softmax_attend(global_query, global_key, global_value, global_mask)
        rows = is_global[:, None, :, None]
        out, weights = torch.where(rows, global_out, out), torch.where(rows, global_weights, weights)
    real = key_ok[:, None, :, None]
    return (out * real).transpose(1, 2), weights * real


def sliding_window_blocked(
    attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    keep: torch.Tensor | None, is_global: torch.Tensor | None,
    global_index: torch.Tensor | None, global_valid: torch.Tensor | None,
    one_sided: int, dilation: int, causal: bool,
) -> torch.Tensor:
    """The local rows (global rows are overwritten later) in O(N w) memory. Returns (batch, N, heads, d).

    Positions p = m*d + r are split into d residue classes r; within a class the dilated band is a plain band of
    one-sided width w over m. Each class is cut into blocks of w queries, and block c's keys are blocks c-1..c+1
    (3w keys), so every key of the band is present; the exact band is then a boolean mask.
    """
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    d = dilation
    # a reach beyond the sequence is the whole sequence: clamping keeps blocks (and memory) no larger than the input
    block = min(one_sided, math.ceil(length / d))
    per_class = math.ceil(length / (d * block)) * block  # M: positions per residue class, a multiple of w
    padded = per_class * d
    blocks = per_class // block
    device = query.device

    def residues(x: torch.Tensor) -> torch.Tensor:
        # (batch, h, N, d) -> pad to M*d -> (batch, h, M, d_res, dim) -> (batch * d_res, h, M, dim)
        h = x.shape[1]
        x = F.pad(x, (0, 0, 0, padded - length))
        return x.view(batch, h, per_class, d, dim).permute(0, 3, 1, 2, 4).reshape(batch * d, h, per_class, dim)

    def windows(x: torch.Tensor) -> torch.Tensor:
        # (batch * d_res, h, M, dim) -> (batch * d_res * blocks, h, 3w, dim): keys of blocks c-1, c, c+1
        h = x.shape[1]
        x = F.pad(x, (0, 0, block, block)).unfold(2, 3 * block, block)  # (B*d, h, blocks, dim, 3w)
        return x.permute(0, 2, 1, 4, 3).reshape(batch * d * blocks, h, 3 * block, dim)

    query_blocks = residues(query).view(batch * d, heads, blocks, block, dim).transpose(1, 2)
    query_blocks = query_blocks.reshape(batch * d * blocks, heads, block, dim)
    key_windows, value_windows = windows(residues(key)), windows(residues(value))

    key_ok = torch.arange(padded, device=device)[None, :] < length  # (1 or batch, M*d)
    if keep is not None:
        key_ok = key_ok & F.pad(keep, (0, padded - length))
    if is_global is not None:  # global keys enter once, through their own columns below
        key_ok = key_ok & ~F.pad(is_global, (0, padded - length))
    key_ok = key_ok.expand(batch, padded).reshape(batch, per_class, d).transpose(1, 2).reshape(batch * d, per_class)
    key_ok = F.pad(key_ok.to(torch.uint8), (block, block)).unfold(1, 3 * block, block).bool()  # (B*d, blocks, 3w)
    offsets = torch.arange(block, device=device)[:, None] + block - torch.arange(3 * block, device=device)[None, :]
    in_band = band(offsets, block, 1, causal)  # offsets are query-minus-key sub-indices, (w, 3w)
    mask = (in_band & key_ok[:, :, None, :]) | (offsets == 0)  # (B*d, blocks, w, 3w); own key always kept
    mask = mask.reshape(batch * d * blocks, 1, block, 3 * block)

    if global_index is not None:
        count = global_index.shape[1]
        global_keys = gather_positions(key, global_index)  # (batch, kv_heads, G, dim)
        global_values = gather_positions(value, global_index)

        def per_block(x: torch.Tensor) -> torch.Tensor:
            # (batch, kv_heads, G, dim) -> (batch * d_res * blocks, kv_heads, G, dim)
            return x[:, None, None].expand(batch, d, blocks, kv_heads, count, dim).reshape(-1, kv_heads, count, dim)

        sub = torch.arange(per_class, device=device).view(blocks, block)
        query_positions = sub[None] * d + torch.arange(d, device=device)[:, None, None]  # (d_res, blocks, w)
        global_mask = global_valid[:, None, None, None, :].expand(batch, d, blocks, block, count)
        if causal:
            global_mask = global_mask & (global_index[:, None, None, None, :] <= query_positions[None, ..., None])
        key_windows = torch.cat([key_windows, per_block(global_keys)], dim=2)
        value_windows = torch.cat([value_windows, per_block(global_values)], dim=2)
        mask = torch.cat([mask, global_mask.reshape(batch * d * blocks, 1, block, count)], dim=-1)

    attended, _ = attention.attend(query_blocks, key_windows, value_windows, mask)  # (B*d*blocks, w, heads, dim)
    attended = attended.reshape(batch, d, blocks, block, heads, dim).permute(0, 2, 3, 1, 4, 5)
    return attended.reshape(batch, padded, heads, dim)[:, :length]


FEW_GLOBAL_QUERIES = 64  # global rows scored by matmuls rather than a fused SDPA kernel (see `global_rows`)


def global_rows(
    attention: EfficientAttention, global_query: torch.Tensor, global_key: torch.Tensor, global_value: torch.Tensor,
    keep: torch.Tensor | None, global_index: torch.Tensor, causal: bool,
) -> torch.Tensor:
    """Each global token's row: its global query against every real key (earlier ones when causal).

    On CUDA up to FEW_GLOBAL_QUERIES rows are scored as plain matmuls (the weights, heads x G x N, are small): torch's
    fused SDPA kernels parallelise over query tiles, so one query against N keys runs on a handful of thread blocks,
    and its memory-efficient backward took 25 ms a layer at 65,536 tokens on an H200 (60% of a base-size step). On
    CPU SDPA stays (the matmul path made a 4096-token MiniLM test 1.8x slower). Returns (batch, G, heads, d).
    """
    length = global_key.shape[2]
    positions = torch.arange(length, device=global_key.device)
    mask = torch.ones(1, 1, 1, length, dtype=torch.bool, device=global_key.device)
    if keep is not None:
        mask = keep[:, None, None, :]
    if causal:
        mask = mask & (positions <= global_index[:, None, :, None])
    mask = mask | (positions == global_index[:, None, :, None])
    few = global_key.is_cuda and global_index.shape[1] <= FEW_GLOBAL_QUERIES
    attended, _ = attention.attend(gather_positions(global_query, global_index), global_key, global_value, mask,
                                   need_weights=few)
    return attended


def flex_block_mask(
    length: int, one_sided: int, dilation: int, causal: bool, keep: torch.Tensor | None,
    is_global: torch.Tensor | None, device: torch.device, tile: int = FLEX_TILE,
):
    """The local rows' pattern (band, global-key columns, real keys) as a FlexAttention BlockMask over `length`
    tokens (a shape bucket: keep (batch, length) marks the real ones). The band's tiles come from its offsets alone
    (`band_tiles`, cached per length); the padding and global tokens enter as tile-level any/all of their masks."""
    batch = 1 if keep is None and is_global is None else (keep if keep is not None else is_global).shape[0]
    keep = torch.ones(batch, length, dtype=torch.bool, device=device) if keep is None else keep.bool().contiguous()
    is_global = torch.zeros_like(keep) if is_global is None else is_global.bool().contiguous()
    tiles = -(-length // tile)
    band_any, band_all = band_tiles(tiles, tile, one_sided, dilation, causal, str(device))
    real_any, real_all = token_tiles(keep, tile)  # (batch, T)
    visible = token_tiles(is_global & keep, tile)[0][:, None, :]  # (batch, 1, T): a global key in tile J
    if causal:
        visible = visible & torch.ones(tiles, tiles, dtype=torch.bool, device=device).tril()
    rows = real_any[:, :, None]  # query tiles without a real token list no tile: their rows are never computed
    partial = (band_any | visible) & real_any[:, None, :] & rows
    full = band_all & real_all[:, None, :] & rows

    def mask_mod(b, h, q_idx, kv_idx):
        diff = q_idx - kv_idx
        visible = is_global[b, kv_idx] & (diff >= 0) if causal else is_global[b, kv_idx]
        return ((band(diff, one_sided, dilation, causal) | visible) & keep[b, kv_idx]) | (diff == 0)

    return tile_block_mask(partial[:, None], full[:, None], mask_mod, length, tile)


@functools.lru_cache(maxsize=64)
def band_tiles(tiles: int, tile: int, one_sided: int, dilation: int, causal: bool,
               device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(any, all) (tiles, tiles) bool: the tiles the dilated band touches and those it covers (a pure offset
    pattern, see `flex.offset_tiles`)."""
    return offset_tiles(lambda diff: band(diff, one_sided, dilation, causal), tiles, tile, torch.device(device))


def sliding_window_flex(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask, scaling: float, compiled: bool = True
) -> torch.Tensor:
    """FlexAttention over the block mask (global keys included). q (batch, heads, N, d) -> (batch, N, heads, d); the
    mask may cover a longer bucket (see `flex.flex_attend`)."""
    return flex_attend(query, key, value, mask, scaling, compiled)
