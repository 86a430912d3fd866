"""Local 1D and local 2D self-attention of the Image Transformer.

Parmar, Vaswani, Uszkoreit, Kaiser, Shazeer, Ku & Tran, "Image Transformer", arXiv 1802.05751.

The sequence is [bos, sub-pixel 0, sub-pixel 1, ...] in raster order: sequence position s = 1 + t for sub-pixel
t = (row * W + col) * C + channel. Query s keeps key s' (s' <= s always) when

    s' = 0 (bos, seen by every query)  or  1 <= s' <= s  and  s' is in the memory of the query block of s:
    local 1D: blocks of l_q consecutive sub-pixels; block b keeps sub-pixels t' >= b l_q - l_m (itself + l_m before)
    local 2D: blocks of h x w pixels (all C channels) tiling the H x W image; block (R, K) keeps the pixels of rows
              R h - f_h .. R h + h - 1 and columns K w - f_w .. K w + w + f_w - 1 (the block, f_h rows above it and
              f_w columns left and right of it: the paper's memory flange)

    out_s = softmax_{s' kept}(q_s . k_s' / sqrt(d)) v_s'

Three paths compute this one function (`LocalImagePattern.keep`): `local_image_reference` (dense masked O(N^2), for
tests and output_attentions), `local_image_blocked` (each query block gathers its memory block: time
O(N (m + 1) d), memory O(N (m + 1)), m = l_q + l_m in 1D and (h + f_h)(w + 2 f_w) C in 2D; trains on CPU) and
`local_image_flex` (a FlexAttention BlockMask whose tile tables come from the same gathered blocks, GPU).

Deviations from the paper:
* The generation order is raster order in both modes, as the package's image contract asks (logits at position s
  predict sub-pixel s, generate() writes sub-pixels in raster order). The paper generates 2D mode block by block
  (block-raster order) and masks the memory in that order; here the 2D memory is masked in raster order, so a query
  also sees the right flange of the rows above it inside its block row (pixels the paper generates later) and no
  reordering of the sequence is needed. The gathered path reorders queries into blocks and scatters them back.
* bos is a key of every query (the paper has no start token in the attention: its first position attends to
  nothing earlier). Blocks at the right or bottom edge that the image does not fill are cut, not padded.
"""

import functools
from dataclasses import dataclass

import torch

from ..core.attention import EfficientAttention, repeat_kv
from .flex import FLEX_TILE, flex_attend, tile_block_mask, token_tiles


@dataclass(frozen=True)
class LocalImagePattern:
    """The attention pattern of one config (hashable: tables are cached per pattern, length and device)."""

    kind: str
    height: int
    width: int
    channels: int
    query_block_length: int = 1
    memory_length: int = 0
    query_shape: tuple[int, int] = (1, 1)
    memory_flange: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, config) -> "LocalImagePattern":
        """The pattern of an image config (image_size, num_channels, attention_type and its knobs)."""
        height, width = config.image_size
        return cls(config.attention_type, height, width, config.num_channels, config.query_block_length,
                   config.memory_length, tuple(config.query_shape), tuple(config.memory_flange))

    @property
    def total(self) -> int:
        """Sequence positions of a whole image: bos + H W C sub-pixels."""
        return 1 + self.height * self.width * self.channels

    def coordinates(self, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel row and column of sequence positions (bos maps to pixel 0, 0)."""
        pixel = (position - 1).clamp(min=0) // self.channels
        return pixel // self.width, pixel % self.width

    def keep(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Whether query position `query` keeps key position `key` (broadcasting integer tensors); positions past a
        whole image are never kept, except a query's own position."""
        inside = (key <= query) & (query < self.total)
        if self.kind == "local_1d":
            block_start = torch.div(query - 1, self.query_block_length, rounding_mode="floor") * self.query_block_length
            local = key - 1 >= block_start - self.memory_length
        else:
            (h, w), (flange_h, flange_w) = self.query_shape, self.memory_flange
            query_row, query_col = self.coordinates(query)
            key_row, key_col = self.coordinates(key)
            top = torch.div(query_row, h, rounding_mode="floor") * h - flange_h
            left = torch.div(query_col, w, rounding_mode="floor") * w
            local = (key_row >= top) & (key_col >= left - flange_w) & (key_col < left + w + flange_w)
        return ((key == 0) & inside) | (inside & local) | (key == query)

    def first_key(self, query: torch.Tensor) -> torch.Tensor:
        """The earliest position after bos that a query (>= 1) may keep: where a decoding step's key span starts."""
        if self.kind == "local_1d":
            block = torch.div(query - 1, self.query_block_length, rounding_mode="floor")
            return (1 + block * self.query_block_length - self.memory_length).clamp(min=1)
        (h, w), (flange_h, flange_w) = self.query_shape, self.memory_flange
        row, col = self.coordinates(query)
        top = (torch.div(row, h, rounding_mode="floor") * h - flange_h).clamp(min=0)
        left = (torch.div(col, w, rounding_mode="floor") * w - flange_w).clamp(min=0)
        return 1 + (top * self.width + left) * self.channels

    def block_table(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries (G, Q), keys (G, K)) long, -1 where empty: the query blocks that hold a position < length, each
        block's positions (in raster order within the block) and its memory block (bos first). Every position
        1..length-1 is in exactly one block."""
        if self.kind == "local_1d":
            block, memory = self.query_block_length, self.memory_length
            starts = 1 + torch.arange(0, length - 1, block)[:, None]  # (G, 1)
            queries = starts + torch.arange(block)
            keys = starts - memory + torch.arange(memory + block)
        else:
            (h, w), (flange_h, flange_w) = self.query_shape, self.memory_flange
            block_rows = torch.arange(0, self.height, h)[:, None] + torch.arange(h)  # (rows of blocks, h)
            block_cols = torch.arange(0, self.width, w)[:, None] + torch.arange(w)
            key_rows = torch.arange(0, self.height, h)[:, None] - flange_h + torch.arange(h + flange_h)
            key_cols = torch.arange(0, self.width, w)[:, None] - flange_w + torch.arange(w + 2 * flange_w)
            queries = self._positions(block_rows, block_cols)
            keys = self._positions(key_rows, key_cols)
        queries = torch.where((queries >= 1) & (queries < length), queries, -1)
        keys = torch.where((keys >= 1) & (keys < length), keys, -1)
        keys = torch.cat([torch.zeros(keys.shape[0], 1, dtype=torch.long), keys], dim=1)  # bos, every block
        used = self.blocks_used(length)
        return queries[:used], keys[:used]

    def blocks_used(self, length: int) -> int:
        """How many query blocks hold a position < length: a prefix of the blocks, whose first positions grow in
        block-raster order (counted from the shapes alone, so that the tables trace into one graph)."""
        if self.kind == "local_1d":
            return -(-(length - 1) // self.query_block_length)
        (h, w) = self.query_shape
        return sum(1 + (row * self.width + col) * self.channels < length
                   for row in range(0, self.height, h) for col in range(0, self.width, w))

    def _positions(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """rows (Br, a), cols (Bc, b) of each block -> (Br * Bc, a * b * C) sequence positions, -1 off the image."""
        channels = torch.arange(self.channels)
        pixel = rows[:, None, :, None] * self.width + cols[None, :, None, :]  # (Br, Bc, a, b)
        position = 1 + pixel[..., None] * self.channels + channels  # (Br, Bc, a, b, C)
        on_image = ((rows >= 0) & (rows < self.height))[:, None, :, None, None] & \
            ((cols >= 0) & (cols < self.width))[None, :, None, :, None]
        position = torch.where(on_image, position, -1)
        return position.reshape(rows.shape[0] * cols.shape[0], -1)


@functools.lru_cache(maxsize=32)
def block_tables(pattern: LocalImagePattern, length: int, device: str):
    """The gathered layout of `length` positions on `device`: (queries (G, Q), keys (G, K), pattern mask (G, Q, K),
    order (length,): the inverse of [bos, queries in block order] that scatters the outputs back)."""
    device = torch.device(device)  # the mask, O(N m), is evaluated where the model runs
    queries, keys = (table.to(device) for table in pattern.block_table(length))
    mask = pattern.keep(queries[:, :, None], keys[:, None, :]) & (queries[:, :, None] >= 0) & (keys[:, None, :] >= 0)
    mask[:, :, 0] = True  # bos: every row, real or empty, keeps one key
    listed = torch.cat([torch.zeros(1, dtype=torch.long, device=device), queries.flatten()])  # bos, then the blocks
    # order[s] = the slot of position s in `listed` (empty slots go to a dropped extra entry)
    order = torch.zeros(length + 1, dtype=torch.long, device=device).scatter(
        0, torch.where(listed >= 0, listed, length), torch.arange(len(listed), device=device))[:length]
    return queries, keys, mask, order


def local_image_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, pattern: LocalImagePattern,
                          keep: torch.Tensor | None, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense masked reference. q (batch, heads, N, d), k/v with all heads; keep (batch, N) the real tokens.
    Returns the output (batch, N, heads, d) and the weights (batch, heads, N, N)."""
    positions = torch.arange(query.shape[2], device=query.device)
    mask = pattern.keep(positions[:, None], positions[None, :])[None]
    if keep is not None:
        mask = (mask & keep[:, None, :]) | torch.eye(len(positions), dtype=torch.bool, device=query.device)
    scores = (query @ key.transpose(-1, -2)) * scaling
    weights = scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1)
    return (weights @ value).transpose(1, 2), weights


def local_image_blocked(attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        pattern: LocalImagePattern, keep: torch.Tensor | None) -> torch.Tensor:
    """Each query block against its gathered memory block, through transformers' attention interface.
    q (batch, heads, N, d), k/v (batch, kv_heads, N, d) -> (batch, N, heads, d)."""
    batch, heads, length, dim = query.shape
    queries, keys, mask, order = block_tables(pattern, length, str(query.device))
    blocks, per_query, per_key = mask.shape

    first = repeat_kv(value[:, :, :1], heads // value.shape[1]).transpose(1, 2)  # bos keeps only itself
    if blocks == 0:
        return first
    # without padding every row shares the pattern's mask: the batch joins the heads, (G, batch * heads, n, d), and
    # the (G, 1, Q, K) mask broadcasts without a copy; with padding the batch joins the blocks, (batch * G, heads)
    into_heads = keep is None

    def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # (batch, h, N, d) -> (batch, h, G, n, d) -> (G, batch * h, n, d) or (batch * G, h, n, d)
        h = x.shape[1]
        x = x[:, :, index.clamp(min=0)]
        if into_heads:
            return x.permute(2, 0, 1, 3, 4).reshape(blocks, batch * h, index.shape[1], dim)
        return x.permute(0, 2, 1, 3, 4).reshape(batch * blocks, h, index.shape[1], dim)

    if into_heads:
        mask = mask[:, None]  # (G, 1, Q, K)
    else:  # padding keys dropped; a padding query keeps its own key, an empty slot bos: never an empty row
        own = (queries[:, :, None] == keys[:, None, :]) & (queries[:, :, None] >= 0)
        empty = (queries < 0)[:, :, None] & (torch.arange(per_key, device=keys.device) == 0)
        mask = (mask[None] & (keep[:, keys.clamp(min=0)][:, :, None, :] | own)) | empty
        mask = mask.reshape(batch * blocks, 1, per_query, per_key)
    attended, _ = attention.attend(gather(query, queries), gather(key, keys), gather(value, keys), mask)
    if into_heads:  # (G, Q, batch * heads, d) -> (batch, G * Q, heads, d)
        attended = attended.view(blocks, per_query, batch, heads, dim).permute(2, 0, 1, 3, 4)
    attended = attended.reshape(batch, blocks * per_query, heads, dim)
    return torch.cat([first, attended], dim=1)[:, order]


@functools.lru_cache(maxsize=16)
def pattern_tiles(pattern: LocalImagePattern, length: int, tile: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(any, all), each (T, T) bool over tile x tile tiles of `length` positions: the tiles holding some / only kept
    pairs. Candidates come from the block tables (a query block's tiles x its memory's tiles, and the bos column),
    then the pattern is evaluated exactly inside the candidates only."""
    tiles = -(-length // tile)
    queries, keys = pattern.block_table(min(length, pattern.total))
    listed = torch.zeros(queries.shape[0], tiles + 1, dtype=torch.float32)
    query_tiles = listed.scatter(1, torch.where(queries >= 0, queries // tile, tiles), 1.0)[:, :tiles]
    key_tiles = listed.scatter(1, torch.where(keys >= 0, keys // tile, tiles), 1.0)[:, :tiles]
    candidates = (query_tiles.T @ key_tiles) > 0
    candidates[:, 0] = True
    candidates &= torch.ones(tiles, tiles, dtype=torch.bool).tril()
    device = torch.device(device)  # the exact evaluation runs where the model does: O(candidates x tile^2) work
    pairs = candidates.nonzero().to(device)
    offsets = torch.arange(tile, device=device)
    any_kept, all_kept = (torch.zeros(tiles, tiles, dtype=torch.bool, device=device) for _ in range(2))
    for chunk in pairs.split(256 if device.type == "cpu" else 4096):
        query = chunk[:, :1, None] * tile + offsets[None, :, None]  # (P, tile, 1)
        key = chunk[:, 1:, None].transpose(1, 2) * tile + offsets[None, None, :]  # (P, 1, tile)
        kept = pattern.keep(query, key) & (query < length) & (key < length) & (key <= query)
        kept |= (key == 0) & (query < min(length, pattern.total))
        any_kept[chunk[:, 0], chunk[:, 1]] = kept.flatten(1).any(-1)
        all_kept[chunk[:, 0], chunk[:, 1]] = kept.flatten(1).all(-1)
    return any_kept, all_kept


def flex_block_mask(pattern: LocalImagePattern, length: int, keep: torch.Tensor, device: torch.device,
                    tile: int = FLEX_TILE):
    """The pattern over `length` positions (a shape bucket: keep (batch, length) marks the real tokens) as a
    FlexAttention BlockMask: tile tables from `pattern_tiles` (cached per length) and the padding's tiles; mask_mod
    is the pattern's own rule."""
    keep = keep.bool().contiguous()
    pattern_any, pattern_all = pattern_tiles(pattern, length, tile, str(device))
    real_any, real_all = token_tiles(keep, tile)  # (batch, T)
    rows = real_any[:, :, None]
    partial = pattern_any & real_any[:, None, :] & rows
    full = pattern_all & real_all[:, None, :] & rows

    def mask_mod(b, h, q_idx, kv_idx):
        return (pattern.keep(q_idx, kv_idx) & keep[b, kv_idx]) | (q_idx == kv_idx)

    return tile_block_mask(partial[:, None], full[:, None], mask_mod, length, tile)


def local_image_flex(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask, scaling: float,
                     compiled: bool = True) -> torch.Tensor:
    """FlexAttention over the block mask. q (batch, heads, N, d) -> (batch, N, heads, d)."""
    return flex_attend(query, key, value, mask, scaling, compiled)


def decode_keys(pattern: LocalImagePattern, past_length: int, length: int, device: torch.device):
    """Key positions (K,) a decoding step of queries past_length..length-1 needs (bos, then the span from the
    earliest memory position on) and the pattern mask (n, K)."""
    queries = torch.arange(past_length, length, device=device)
    start = int(pattern.first_key(queries).min())
    keys = torch.cat([torch.zeros(1, dtype=torch.long, device=device), torch.arange(start, length, device=device)])
    return keys, pattern.keep(queries[:, None], keys[None, :])
