"""BigBird block-sparse attention, ITC form: sliding + random + global blocks.

Zaheer et al., "Big Bird: Transformers for Longer Sequences", arXiv 2007.14062. ITC ("internal transformer
construction"): the global tokens are existing tokens of the sequence, its first and last blocks.

Each row is cut into n blocks of b tokens (up to its last real token; the last block may be partial). With w sliding,
r random and g global blocks, query block i keeps the key blocks

    keys(i) = {i-k, ..., i+k} u global u random(i)      k = (w-1)/2; global = the first ceil(g/2) and last floor(g/2)
                                                         blocks; random(i) = r blocks outside the other two
    keys(i) = all blocks                                 when i is itself global

and takes exact softmax(q K^T / sqrt(d)) V over their real tokens. Random blocks differ per key/value head and per
layer. A row of n <= g + w + 2r blocks is too short for the pattern (transformers' rule) and gets full attention.
Tokens marked in `global_attention_mask` are global too: their rows see every key and every query sees them.

Three paths compute the same function:

* `block_sparse_reference`: a dense (N, N) mask expanded from the block table; tests only.
* `block_sparse_blocked`: every query block gathers its w + r + g key blocks (and the extra global tokens) and calls
  `attention.attend`; the full rows (global blocks, extra global tokens, short rows) are G queries against all keys.
  Time O(N (w + r + g) b d + G N d), memory O(N (w + r + g) b + G N); trains on CPU.
* `block_sparse_flex`: FlexAttention over a BlockMask of the same table (GPU); the kernel skips empty tiles.
  Its tiles are 64 x 64 when b = 64 and 128 x 128 otherwise (`flex_tile`): for b = 64 and multiples of 128
  every kept tile is whole and the kernel does exactly the pattern's work; other sizes use the mask_mod inside
  the partial tiles. The BlockMask is derived from the (n, n) block table, never from all N^2 token pairs.
  Time O(N (w + r + g) b d) up to tile rounding, memory O(N d) plus the (n, n) block table.

The blocked and flex paths also take the queries of a range of whole blocks only, against the whole sequence's keys
(`query_start`; `block_table`'s `rows`): a sequence split across ranks (hf_efficient/parallel/block_sparse_split.py).

Deviations from the paper and from transformers' BigBird:
* Random blocks are drawn uniformly among every block outside the window and the global blocks (transformers'
  training mode only draws among the first 2r + 5 blocks, its eval mode points every random slot at block 0).
* The last global block is each row's last block holding a real token, so right padding never changes real tokens'
  outputs (transformers takes the last block of the padded batch). Short rows fall back per row, without any state.
* Extra global tokens (`global_attention_mask`, an ETC-like addition) reuse the ordinary q/k/v projections.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..core.attention import EfficientAttention
from .flex import FLEX_TILE, SMALL_FLEX_TILE, flex_attend, small_tiles_compile, tile_block_mask, token_tiles
from .global_tokens import gather_positions, global_slots, scatter_global_rows


@dataclass(frozen=True)
class BlockLayout:
    """The block structure of one batch, shared by every layer of a forward (the random blocks are per layer)."""

    block_size: int  # b
    length: int  # N, tokens of the input
    num_blocks: int  # ceil(N / b): blocks of the padded input
    row_blocks: torch.Tensor  # (batch,) long: blocks up to each row's last real token
    short: torch.Tensor  # (batch,) bool: rows too short for the pattern (full attention)
    global_block: torch.Tensor  # (batch, blocks) bool: the global blocks of the sparse rows
    global_index: torch.Tensor  # (batch, g) long: those blocks in order (clamped; meaningless on short rows)
    key_real: torch.Tensor  # (batch, blocks * b) bool: real tokens, padded with False to whole blocks
    extra_global: torch.Tensor | None  # (batch, N) bool: tokens marked in global_attention_mask
    full_index: torch.Tensor  # (batch, F) positions whose rows attend to every key (global blocks and tokens, short
    full_valid: torch.Tensor  # rows), with which slots are real: see `global_tokens.global_slots`
    row_block_counts: tuple[int, ...] = ()  # the blocks a sparse row can have, known from the shapes alone

    @property
    def sparse_query(self) -> torch.Tensor:
        """(batch, blocks) bool: query blocks that use the sparse pattern (not global, not padding, not short)."""
        blocks = torch.arange(self.num_blocks, device=self.row_blocks.device)
        in_row = blocks[None, :] < self.row_blocks[:, None]
        return in_row & ~self.global_block & ~self.short[:, None]


def block_layout(
    keep: torch.Tensor | None, extra_global: torch.Tensor | None, batch: int, length: int, block_size: int,
    num_global: int, min_sparse_blocks: int, device: torch.device,
) -> BlockLayout:
    """The blocks of each row from its padding mask (bool (batch, N) or None) and extra global tokens."""
    num_blocks = -(-length // block_size)
    padded = num_blocks * block_size
    positions = torch.arange(padded, device=device)
    if keep is None:
        key_real = (positions < length).expand(batch, padded)
        real_length = torch.full((batch,), length, device=device)
    else:
        key_real = F.pad(keep, (0, padded - length))
        last_real = (positions[:length] * keep).argmax(1) + 1
        real_length = torch.where(keep.any(1), last_real, 0)
    row_blocks = -(-real_length // block_size)
    short = row_blocks < min_sparse_blocks
    first, last = -(-num_global // 2), num_global // 2
    global_index = torch.cat([
        torch.arange(first, device=device).expand(batch, first),
        row_blocks[:, None] - last + torch.arange(last, device=device)[None, :],
    ], dim=1).clamp(0, num_blocks - 1)
    global_block = torch.zeros(batch, num_blocks, dtype=torch.bool, device=device)
    global_block = global_block.scatter(1, global_index, True) & ~short[:, None]
    block_of = positions // block_size
    full_query = global_block.gather(1, block_of.expand(batch, padded))
    full_query = full_query | (short[:, None] & (block_of[None, :] < row_blocks[:, None]))
    # a bound on each row's full rows that the shapes give (for torch.compile): a short row's tokens, or the global
    # blocks of a sparse row (fewer), plus any extra global tokens
    bound = (min_sparse_blocks - 1) * block_size + (length if extra_global is not None else 0)
    if extra_global is not None:
        full_query = full_query | F.pad(extra_global, (0, padded - length))
    full_index, full_valid = global_slots(full_query, bound)
    counts = (num_blocks,) if keep is None else tuple(range(min_sparse_blocks, num_blocks + 1))
    return BlockLayout(block_size, length, num_blocks, row_blocks, short, global_block, global_index, key_real,
                       extra_global, full_index, full_valid, counts)


def _generator(seed: int, layer: int, num_blocks: int) -> torch.Generator:
    """A CPU generator seeded from (seed, layer, blocks) through SHA-256: stable across runs, machines and Pythons."""
    digest = hashlib.sha256(f"bigbird-random-blocks:{seed}:{layer}:{num_blocks}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def draw_random_blocks(seed: int, layer: int, num_blocks: int, num_heads: int, num_random: int, num_global: int,
                       num_sliding: int) -> torch.Tensor:
    """(heads, blocks, r) long: for each head and query block, r distinct key blocks outside its window and the
    global blocks, uniformly at random. Rows of global query blocks are unused. A pure function of its arguments."""
    scores = torch.rand(num_heads, num_blocks, num_blocks, generator=_generator(seed, layer, num_blocks))
    blocks = torch.arange(num_blocks)
    first, last = -(-num_global // 2), num_global // 2
    is_global = (blocks < first) | (blocks >= num_blocks - last)
    forbidden = ((blocks[:, None] - blocks[None, :]).abs() <= num_sliding // 2) | is_global[None, :]
    return scores.masked_fill(forbidden, -1.0).topk(num_random, dim=-1).indices


@lru_cache(maxsize=256)
def seeded_random_blocks(seed: int, layer: int, num_blocks: int, num_heads: int, num_random: int, num_global: int,
                         num_sliding: int) -> torch.Tensor:
    """`draw_random_blocks`, cached: the pattern of a given config, layer and length is drawn once per process."""
    return draw_random_blocks(seed, layer, num_blocks, num_heads, num_random, num_global, num_sliding)


@torch.library.custom_op("hf_efficient::bigbird_random_blocks", mutates_args=())
def compiled_random_blocks(seed: int, layer: int, num_blocks: int, num_heads: int, num_random: int, num_global: int,
                           num_sliding: int) -> torch.Tensor:
    """`seeded_random_blocks` as an operator that torch.compile keeps whole (its SHA-256 seeding is plain Python)."""
    return seeded_random_blocks(seed, layer, num_blocks, num_heads, num_random, num_global, num_sliding).clone()


@compiled_random_blocks.register_fake
def _(seed: int, layer: int, num_blocks: int, num_heads: int, num_random: int, num_global: int,
      num_sliding: int) -> torch.Tensor:
    return torch.empty(num_heads, num_blocks, num_random, dtype=torch.long)


def random_table(layout: BlockLayout, kv_heads: int, num_random: int,
                 pattern: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """(batch, kv_heads, blocks, r) long: each sparse row's random blocks; `pattern(n)` gives (kv_heads, n, r) for
    rows of n blocks. Entries of short rows, global and padding query blocks are 0 and unused."""
    batch, device = layout.row_blocks.shape[0], layout.row_blocks.device
    table = torch.zeros(batch, kv_heads, layout.num_blocks, num_random, dtype=torch.long, device=device)
    if num_random == 0:
        return table
    sparse_rows = ~layout.short
    if torch.compiler.is_compiling():  # every row length the shapes allow, chosen per row without reading values
        for blocks in layout.row_block_counts:
            rows = (sparse_rows & (layout.row_blocks == blocks))[:, None, None, None]
            table[:, :, :blocks] = torch.where(rows, pattern(blocks).to(device), table[:, :, :blocks])
        return table
    for blocks in layout.row_blocks[sparse_rows].unique().tolist():
        rows = sparse_rows & (layout.row_blocks == blocks)
        table[rows, :, :blocks] = pattern(blocks).to(device)
    return table


def block_table(layout: BlockLayout, random: torch.Tensor, num_sliding: int,
                rows: slice = slice(None)) -> torch.Tensor:
    """(batch, kv_heads, blocks, blocks) bool: key block j is in query block i's set (every j on short rows). `rows`:
    only those query blocks' rows (a sequence split across ranks)."""
    batch, kv_heads = random.shape[:2]
    blocks = torch.arange(layout.num_blocks, device=random.device)
    window = (blocks[rows, None] - blocks[None, :]).abs() <= num_sliding // 2
    is_global = layout.global_block
    table = window[None, None] | is_global[:, None, rows, None] | is_global[:, None, None, :]
    table = table | layout.short[:, None, None, None]
    if random.shape[-1]:
        random = random[:, :, rows]
        chosen = torch.zeros(batch, kv_heads, random.shape[2], layout.num_blocks, dtype=torch.bool,
                             device=random.device).scatter(-1, random, True)
        table = table | (chosen & layout.sparse_query[:, None, rows, None])
    return table.expand(batch, kv_heads, window.shape[0], layout.num_blocks)


def token_keep(layout: BlockLayout, table: torch.Tensor) -> torch.Tensor:
    """(batch, kv_heads, N, N) bool: the block table at token level, with extra global tokens, padding keys removed
    and each query's own key kept (so padding rows are never empty)."""
    length = layout.length
    block_of = torch.arange(length, device=table.device) // layout.block_size
    keep = table[:, :, block_of][:, :, :, block_of]
    if layout.extra_global is not None:
        extra = layout.extra_global
        keep = keep | extra[:, None, :, None] | extra[:, None, None, :]
    keep = keep & layout.key_real[:, None, None, :length]
    return keep | torch.eye(length, dtype=torch.bool, device=table.device)


def block_sparse_reference(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense masked softmax. q/k/v (batch, heads, N, d) with k/v repeated to all heads, keep (batch, heads, N, N).

    Returns the output (batch, N, heads, d) and the weights (batch, heads, N, N).
    """
    scores = (query @ key.transpose(-1, -2)) * scaling
    weights = scores.masked_fill(~keep, float("-inf")).softmax(-1)
    return (weights @ value).transpose(1, 2), weights


def block_sparse_blocked(
    attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    layout: BlockLayout, random: torch.Tensor, num_sliding: int, query_start: int = 0,
) -> torch.Tensor:
    """Gathered key blocks per query block, then the full rows apart. q (batch, heads, N, d), k/v (batch, kv_heads,
    N, d), random (batch, kv_heads, blocks, r) -> (batch, N, heads, d).

    With `query_start` (a multiple of b), q holds the n queries from there on only (a sequence split across ranks:
    n a multiple of b, k/v still the whole sequence's) and the result is theirs, (batch, n, heads, d)."""
    batch, heads, q_length, dim = query.shape
    length = key.shape[2]
    kv_heads, size, blocks = key.shape[1], layout.block_size, layout.num_blocks
    padded = blocks * size
    device = query.device
    first, q_blocks = query_start // size, -(-q_length // size)
    query = F.pad(query, (0, 0, 0, q_blocks * size - q_length))
    key, value = (F.pad(x, (0, 0, 0, padded - length)) for x in (key, value))
    rows = slice(first, first + q_blocks)  # this call's query blocks

    # key block slots of each query block: window (w) | random (r) | global (g), and which slots are in its set
    half = num_sliding // 2
    block_ids = torch.arange(first, first + q_blocks, device=device)
    window = block_ids[:, None] + torch.arange(-half, half + 1, device=device)[None, :]  # (blocks, w)
    window_ok = (window >= 0) & (window < layout.row_blocks[:, None, None])  # (batch, blocks, w)
    window = window.clamp(0, blocks - 1)
    window_ok = window_ok & ~layout.global_block[:, window]  # global blocks come once, through their own slots
    num_global = layout.global_index.shape[1]
    shape = (batch, kv_heads, q_blocks)
    index = torch.cat([
        window.expand(*shape, num_sliding), random[:, :, rows],
        layout.global_index[:, None, None, :].expand(*shape, num_global),
    ], dim=-1)  # (batch, kv_heads, query blocks, K), K = w + r + g
    slot_ok = torch.cat([
        window_ok[:, None].expand(*shape, num_sliding),
        layout.sparse_query[:, None, rows, None].expand(*shape, random.shape[-1]),
        (~layout.short)[:, None, None, None].expand(*shape, num_global),
    ], dim=-1)
    slots = index.shape[-1]
    flat = index.reshape(batch, kv_heads, q_blocks * slots)

    def gather_blocks(x: torch.Tensor) -> torch.Tensor:
        # (batch, kv_heads, blocks * b, d) -> (batch, kv_heads, query blocks, K * b, d)
        blocked = x.view(batch, kv_heads, blocks, size, dim)
        picked = blocked.gather(2, flat[..., None, None].expand(batch, kv_heads, q_blocks * slots, size, dim))
        return picked.view(batch, kv_heads, q_blocks, slots * size, dim)

    keys, values = gather_blocks(key), gather_blocks(value)
    key_ok = layout.key_real
    if layout.extra_global is not None:  # extra global keys enter once, through their own columns below
        key_ok = key_ok & ~F.pad(layout.extra_global, (0, padded - length))
    key_ok = key_ok.view(batch, 1, blocks, size).expand(batch, kv_heads, blocks, size)
    key_ok = key_ok.gather(2, flat[..., None].expand(batch, kv_heads, q_blocks * slots, size))
    key_ok = (key_ok.view(*shape, slots, size) & slot_ok[..., None]).view(*shape, 1, slots * size)
    sub = torch.arange(size, device=device)
    own = torch.arange(slots * size, device=device)[None, :] == (half * size + sub)[:, None]  # (b, K * b)
    mask = key_ok | own  # (batch, kv_heads, query blocks, b, K * b): the query's own key is always kept

    if layout.extra_global is not None:
        extra_index, extra_valid = global_slots(layout.extra_global)  # (batch, G)
        count = extra_index.shape[1]

        def per_block(x: torch.Tensor) -> torch.Tensor:
            # (batch, kv_heads, G, d) -> (batch, kv_heads, query blocks, G, d)
            return x[:, :, None].expand(*shape, count, dim)

        keys = torch.cat([keys, per_block(gather_positions(key, extra_index))], dim=3)
        values = torch.cat([values, per_block(gather_positions(value, extra_index))], dim=3)
        mask = torch.cat([mask, extra_valid[:, None, None, None, :].expand(*shape, size, count)], dim=-1)

    total = keys.shape[3]
    groups = heads // kv_heads
    if groups > 1:  # the key set is per key/value head: every query head of a group shares it
        mask = mask[:, :, None].expand(batch, kv_heads, groups, q_blocks, size, total)
        mask = mask.reshape(batch, heads, q_blocks, size, total)
    # (batch, h, query blocks, ...) -> (batch * query blocks, h, ...): one attention call over every query block
    query_blocks = query.view(batch, heads, q_blocks, size, dim).transpose(1, 2)
    query_blocks = query_blocks.reshape(batch * q_blocks, heads, size, dim)
    keys = keys.transpose(1, 2).reshape(batch * q_blocks, kv_heads, total, dim)
    values = values.transpose(1, 2).reshape(batch * q_blocks, kv_heads, total, dim)
    mask = mask.transpose(1, 2).reshape(batch * q_blocks, mask.shape[1], size, total)
    attended, _ = attention.attend(query_blocks, keys, values, mask)  # (batch * query blocks, b, heads, d)
    attended = attended.reshape(batch, q_blocks * size, heads, dim)

    full_index, full_valid = layout.full_index, layout.full_valid
    if q_blocks != blocks:  # this call's own full rows, at their offsets in q
        marked = torch.zeros(batch, padded + 1, dtype=torch.bool, device=device)
        marked = marked.scatter(1, torch.where(full_valid, full_index, padded), True)
        full_index, full_valid = global_slots(marked[:, query_start:query_start + q_blocks * size])
    if full_index.shape[1]:
        rows = full_rows(attention, query, key, value, layout.key_real, full_index, query_start)
        attended = scatter_global_rows(attended, rows, full_index, full_valid)
    return attended[:, :q_length]


def full_rows(attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              key_real: torch.Tensor, index: torch.Tensor, query_start: int = 0) -> torch.Tensor:
    """The queries at `index` (batch, F) against every real key: (batch, F, heads, d). q holds the queries from
    position `query_start` on (k/v all of them)."""
    positions = torch.arange(key.shape[2], device=key.device)
    own = positions == (index + query_start)[:, None, :, None]
    mask = key_real[:, None, None, :] | own  # (batch, 1, F, keys)
    attended, _ = attention.attend(gather_positions(query, index), key, value, mask)
    return attended


def flex_tile(block_size: int, query: torch.Tensor) -> int:
    """The BlockMask tile for blocks of b tokens: b's own 64 when b = 64 and the compiled kernels take it here
    (tiles of 128 would each hold two query blocks with different random blocks: up to 2.5x the work, masked
    inside), else FlexAttention's default 128."""
    small = block_size == SMALL_FLEX_TILE and query.is_cuda
    if small and small_tiles_compile(query.shape[-1], query.dtype, str(query.device)):
        return SMALL_FLEX_TILE
    return FLEX_TILE


def flex_block_mask(layout: BlockLayout, table: torch.Tensor, num_heads: int, device: torch.device,
                    tile: int = FLEX_TILE, query_start: int = 0):
    """The token-level pattern of `token_keep` as a FlexAttention BlockMask of tile x tile tiles, per row and per
    query head (rows of padding queries are not computed).

    With `query_start` (a multiple of b) and a table of some query blocks' rows only (`block_table`'s `rows`): the
    BlockMask of those queries (Q_LEN = their rows' tokens) against every key (KV_LEN = N), for a sequence split
    across ranks.

    The BlockMask is built from the block table itself (`tile_table`), O(batch h (N/b)^2 N/128) work, instead of
    evaluating mask_mod on every (query, key) pair (create_block_mask: O(batch h N^2) per layer and forward, which
    at 64K tokens cost more than the attention). The mask_mod still decides inside the partial tiles; it reads the
    table, the real keys and the extra global tokens from tensors (zeros when there are none), so every batch of a
    shape runs the same compiled kernel."""
    groups = num_heads // table.shape[1]
    table, real = table.contiguous(), layout.key_real.contiguous()
    extra = layout.extra_global
    extra = torch.zeros_like(real[:, :layout.length]) if extra is None else extra.bool().contiguous()
    size = layout.block_size
    query_length = table.shape[2] * size if query_start or table.shape[2] != layout.num_blocks else layout.length

    def mask_mod(b, h, q_idx, kv_idx):
        position = q_idx + query_start
        allowed = table[b, h // groups, q_idx // size, kv_idx // size] | extra[b, position] | extra[b, kv_idx]
        return (allowed & real[b, kv_idx]) | (position == kv_idx)

    partial, full = tile_table(layout, table, tile, query_start, query_length)
    partial, full = partial.repeat_interleave(groups, dim=1), full.repeat_interleave(groups, dim=1)
    return tile_block_mask(partial, full, mask_mod, query_length, tile, layout.length)


def tile_table(layout: BlockLayout, table: torch.Tensor, tile: int = FLEX_TILE, query_start: int = 0,
               query_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full): (batch, kv_heads, T, T) bool over the BlockMask's tile x tile tiles, T = ceil(N / tile). A
    tile is full when every pair in it is kept (all its block pairs in the table, all its keys real, inside N);
    partial when some pair may be kept (a block pair, an extra global token's row or column, the diagonal) but not
    all. Query tiles without a real token are neither: their rows are never computed. With O the (T, blocks) 0/1
    overlap of tiles and blocks, O table O^T counts the kept block pairs of each tile. With `query_start` and
    `query_length` (a split sequence, see `flex_block_mask`): the query tiles of those queries only, T_q of them."""
    length, tile_count = layout.length, -(-layout.length // tile)
    query_length = length if query_length is None else query_length
    query_tiles = -(-query_length // tile)
    device = table.device
    tokens = torch.arange(length, device=device)
    overlap = torch.zeros(tile_count, layout.num_blocks, device=device)
    overlap[tokens // tile, tokens // layout.block_size] = 1.0
    queries = torch.arange(query_length, device=device)  # offsets from query_start, a multiple of b
    query_overlap = torch.zeros(query_tiles, table.shape[2], device=device)
    query_overlap[queries // tile, queries // layout.block_size] = 1.0
    kept_pairs = query_overlap @ table.float() @ overlap.T  # exact: small integer counts in fp32
    any_kept = kept_pairs > 0
    all_kept = kept_pairs == query_overlap.sum(1)[:, None] * overlap.sum(1)[None, :]
    all_real = token_tiles(layout.key_real[:, :length], tile)[1]  # past N: not all real
    real_query = token_tiles(layout.key_real[:, query_start:query_start + query_length], tile)[0]
    whole = torch.ones(query_tiles, dtype=torch.bool, device=device)
    whole[-1] = query_length % tile == 0
    rows = real_query[:, None, :, None]
    full = all_kept & all_real[:, None, None, :] & whole[None, None, :, None] & rows
    diagonal = torch.zeros(query_tiles, tile_count, dtype=torch.bool, device=device)
    diagonal[queries // tile, (queries + query_start) // tile] = True  # the identity without an offset
    any_kept = any_kept | diagonal
    if layout.extra_global is not None:
        extra = token_tiles(layout.extra_global, tile)[0]
        extra_query = token_tiles(layout.extra_global[:, query_start:query_start + query_length], tile)[0]
        any_kept = any_kept | extra_query[:, None, :, None] | extra[:, None, None, :]
    return any_kept & rows & ~full, full


def block_sparse_flex(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask, scaling: float,
                      compiled: bool = True) -> torch.Tensor:
    """FlexAttention over the block mask. q (batch, heads, N, d) -> (batch, N, heads, d)."""
    return flex_attend(query, key, value, mask, scaling, compiled)
