"""Factorized sparse attention: the strided and fixed patterns of the Sparse Transformer.

Child, Gray, Radford & Sutskever, "Generating Long Sequences with Sparse Transformers", arXiv 1904.10509.

With block / stride length l (`local_size`) and c summary columns (`num_summary`), query i keeps key j when

    strided  A1: i - l < j <= i                      A2: (i - j) mod l == 0, j <= i
    fixed    A1: floor(j/l) == floor(i/l), j <= i    A2: j mod l >= l - c, j <= i      (plus j = i, see below)

Bidirectional extension (symmetric, our definition): drop j <= i, so strided A1 is |i - j| < l, strided A2 every
j with (i - j) mod l == 0, fixed A1 the whole block and fixed A2 the summary columns of every block. A layer uses
one factor, or their union ("both"), or one per head (`head_factors`); padded keys are dropped and every query
always keeps its own key (j = i), so no row is empty (causal fixed A2 alone would leave rows i < l - c without
keys; the paper only uses it next to A1). Three paths compute the same function:

* `factorized_reference`: the dense (N, N) mask of `factor_keep` through `attend`, for tests and pattern pictures.
* `factorized_blocked` (trains on CPU): strided A1 and fixed: queries in blocks of l against their neighbouring key
  blocks (strided) or their own block plus the gathered summary columns (fixed), one boolean mask counting each key
  once. Strided A2: positions regrouped by residue class mod l, each class attends within itself (nb = N/l keys).
  Strided A1 + A2 (the merged heads): the two partial softmaxes over disjoint key sets (A2 without j = i) merged
  exactly with their running maxima and sums; this one place computes its softmax itself, because the interface
  behind `attend` returns no log-sum-exp. Per head: time O(N (l + N/l) d) and score memory O(N (l + N/l)) for
  strided, O(N (l + c N/l) d) and O(N (l + c N/l)) for fixed (whose summary keys are also copied per block,
  O(c N^2 d / l^2)): O(N sqrt N) at l ~ sqrt N.
* `strided_grid` (GPU, strided): A1 a FlexAttention band; A2 attention along the columns of the (N / l, l) grid of
  positions (each residue class a dense sequence of N / l tokens: SDPA alone, FlexAttention with its log-sum-exp
  when merged with A1, the two merged exactly). Time O(N (l + N / l) d) per head, no tile of the N x N plane that
  the pattern leaves empty is touched (in the original layout strided A2 hits nearly every tile).
* `fixed_compact` (GPU, fixed): A1 FlexAttention over its block-diagonal BlockMask; A2's summary columns gathered
  into one compact sequence of c N / l keys that FlexAttention scans under a staircase mask (over the original
  layout the columns recur in every block and touch every tile below the diagonal). Time O(N (l + c N / l) d).
* `factorized_flex`: FlexAttention over the whole pattern's BlockMask (`flex_block_mask`), the check of a mask.

Deviations from the paper: the bidirectional extension above; j = i always kept; the paper's fixed-pattern
refinement of giving each head a different subblock of c summary columns is not used (all heads share columns
l - c .. l - 1 of each block); the paper's custom kernels and recomputation are replaced by the paths above.
"""

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..core.attention import EfficientAttention, repeat_kv
from .compiled import run_compiled
from .flex import FLEX_TILE, block_mask, flex_attend, offset_tiles, tile_block_mask, tile_kernel_options, token_tiles

PATTERNS = ("strided", "fixed")
FACTORS = ("A1", "A2", "both")


def factor_keep(query_positions: torch.Tensor, key_positions: torch.Tensor, pattern: str, factor: str,
                local_size: int, num_summary: int, causal: bool) -> torch.Tensor:
    """Broadcast bool: query i keeps key j under `factor` ("A1", "A2" or "both") of `pattern` (j = i included)."""
    i, j, size = query_positions, key_positions, local_size
    diff = i - j
    if pattern == "strided":
        first = diff.abs() < size
        second = diff.remainder(size) == 0
    else:
        first = torch.div(i, size, rounding_mode="floor") == torch.div(j, size, rounding_mode="floor")
        second = j.remainder(size) >= size - num_summary
    keep = {"A1": first, "A2": second, "both": first | second}[factor]
    if causal:
        keep = keep & (diff >= 0)
    return keep | (diff == 0)


def pattern_keep(length: int, pattern: str, factor: str, local_size: int, num_summary: int = 1,
                 causal: bool = False, device: torch.device | None = None) -> torch.Tensor:
    """The (N, N) boolean keep-pattern of one factor (or the union, "both") on `length` tokens, without padding."""
    positions = torch.arange(length, device=device)
    return factor_keep(positions[:, None], positions[None, :], pattern, factor, local_size, num_summary, causal)


def head_factors(combination: str, layer_idx: int, num_heads: int) -> tuple[str, ...]:
    """The factor each head of layer `layer_idx` attends with.

    "alternate": A1 on even layers, A2 on odd layers; "merged": A1 and A2 together ("both") in every head;
    "heads": the first ceil(H/2) heads A1, the others A2.
    """
    if combination == "alternate":
        return ("A1" if layer_idx % 2 == 0 else "A2",) * num_heads
    if combination == "merged":
        return ("both",) * num_heads
    first = (num_heads + 1) // 2
    return ("A1",) * first + ("A2",) * (num_heads - first)


def heads_keep(query_positions: torch.Tensor, key_positions: torch.Tensor, factors: tuple[str, ...], pattern: str,
               local_size: int, num_summary: int, causal: bool) -> torch.Tensor:
    """Stack the per-head patterns on a new leading axis: (1 if all heads agree else heads, *broadcast shape)."""
    masks = {f: factor_keep(query_positions, key_positions, pattern, f, local_size, num_summary, causal)
             for f in dict.fromkeys(factors)}
    if len(masks) == 1:
        return next(iter(masks.values()))[None]
    return torch.stack([masks[f] for f in factors])


def factorized_reference(
    attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    keep: torch.Tensor | None, factors: tuple[str, ...], pattern: str, local_size: int, num_summary: int,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense masked attention over the exact pattern (eager, weights returned). q (batch, heads, N, d), k/v
    (batch, kv_heads, N, d). Returns the output (batch, N, heads, d) and weights (batch, heads, N, N); padding rows
    are zero."""
    length = query.shape[2]
    positions = torch.arange(length, device=query.device)
    mask = heads_keep(positions[:, None], positions[None, :], factors, pattern, local_size, num_summary, causal)
    mask = mask[None]  # (1, 1 or heads, N, N)
    if keep is not None:
        mask = (mask & keep[:, None, None, :]) | torch.eye(length, dtype=torch.bool, device=query.device)
    attended, weights = attention.attend(query, key, value, mask, need_weights=True)
    if keep is not None:
        attended, weights = attended * keep[:, :, None, None], weights * keep[:, None, :, None]
    return attended, weights


class Layout:
    """Positions cut into nb blocks of `block` = min(l, N) tokens (the last one padded); the masks always use the
    true l, so a block wider than the input is just the input."""

    def __init__(self, length: int, local_size: int, keep: torch.Tensor | None, batch: int, device: torch.device):
        self.length, self.batch, self.device = length, batch, device
        self.block = min(local_size, length)
        self.blocks = math.ceil(length / self.block)
        self.padded = self.blocks * self.block
        real = torch.arange(self.padded, device=device)[None, :] < length
        if keep is not None:
            real = real & F.pad(keep, (0, self.padded - length))
        self.key_ok = real.expand(batch, self.padded)  # (batch, nb * block)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, self.padded - self.length))

    def query_blocks(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, h, N, d) -> (batch, h, nb, block, d) -> (batch * nb, h, block, d)
        batch, heads, _, dim = x.shape
        x = self.pad(x).view(batch, heads, self.blocks, self.block, dim).transpose(1, 2)
        return x.reshape(batch * self.blocks, heads, self.block, dim)

    def from_blocks(self, x: torch.Tensor) -> torch.Tensor:
        # (batch * nb, block, h, d) -> (batch, N, h, d)
        x = x.reshape(self.batch, self.padded, *x.shape[2:])
        return x[:, : self.length]

    def key_windows(self, x: torch.Tensor, before: int, after: int) -> torch.Tensor:
        # (batch, h, N, d) -> (batch * nb, h, (before + 1 + after) * block, d): blocks c - before .. c + after
        batch, heads, _, dim = x.shape
        size = (before + 1 + after) * self.block
        x = F.pad(self.pad(x), (0, 0, before * self.block, after * self.block)).unfold(2, size, self.block)
        return x.permute(0, 2, 1, 4, 3).reshape(batch * self.blocks, heads, size, dim)  # from (b, h, nb, d, size)

    def window_positions(self, before: int, after: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Query positions (nb, block, 1) and key positions (nb, 1, window) of `key_windows`."""
        starts = torch.arange(self.blocks, device=self.device)[:, None, None] * self.block
        queries = starts + torch.arange(self.block, device=self.device)[None, :, None]
        offsets = torch.arange((before + 1 + after) * self.block, device=self.device) - before * self.block
        return queries, starts + offsets[None, None, :]

    def window_key_ok(self, before: int, after: int) -> torch.Tensor:
        """(batch * nb, 1, 1, window) real keys of `key_windows`."""
        size = (before + 1 + after) * self.block
        ok = F.pad(self.key_ok.to(torch.uint8), (before * self.block, after * self.block)).unfold(1, size, self.block)
        return ok.bool().reshape(self.batch * self.blocks, 1, 1, size)

    def classes(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, h, N, d) -> (batch, h, nb, block, d) -> (batch, block, h, nb, d) -> (batch * block, h, nb, d)
        batch, heads, _, dim = x.shape
        x = self.pad(x).view(batch, heads, self.blocks, self.block, dim).permute(0, 3, 1, 2, 4)
        return x.reshape(batch * self.block, heads, self.blocks, dim)

    def from_classes(self, x: torch.Tensor) -> torch.Tensor:
        # (batch * block, nb, h, d) -> (batch, block, nb, h, d) -> (batch, nb, block, h, d) -> (batch, N, h, d)
        x = x.reshape(self.batch, self.block, self.blocks, *x.shape[2:]).transpose(1, 2)
        return x.reshape(self.batch, self.padded, *x.shape[3:])[:, : self.length]

    def class_positions(self) -> torch.Tensor:
        """(block, nb) position of member m of residue class r: m * block + r."""
        members = torch.arange(self.blocks, device=self.device)[None, :] * self.block
        return members + torch.arange(self.block, device=self.device)[:, None]

    def class_key_ok(self) -> torch.Tensor:
        """(batch * block, 1, 1, nb) real keys of `classes`."""
        ok = self.key_ok.reshape(self.batch, self.blocks, self.block).transpose(1, 2)
        return ok.reshape(self.batch * self.block, 1, 1, self.blocks)


def factorized_blocked(
    attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    keep: torch.Tensor | None, factors: tuple[str, ...], pattern: str, local_size: int, num_summary: int,
    causal: bool,
) -> torch.Tensor:
    """The memory-efficient path (see the module docstring). q (batch, heads, N, d), k/v (batch, kv_heads, N, d)
    -> (batch, N, heads, d); rows of padding queries are left unspecified (the caller zeroes them)."""
    batch, _, length, _ = query.shape
    layout = Layout(length, local_size, keep, batch, query.device)
    settings = (pattern, local_size, num_summary, causal)
    if pattern == "fixed":
        return fixed_blocked(attention, query, key, value, layout, factors, *settings)
    return split_heads_by_factor(
        lambda q, k, v, factor: strided_one_factor(attention, q, k, v, layout, factor, *settings),
        query, key, value, factors)


def split_heads_by_factor(compute, query, key, value, factors: tuple[str, ...]) -> torch.Tensor:
    """`compute(q, k, v, factor) -> (batch, N, heads, d)` for every factor on its heads, concatenated. Each factor
    runs on the query heads of the key/value groups it touches (a group split by the boundary is computed twice),
    so the grouped-query layout is kept."""
    if len(set(factors)) == 1:
        return compute(query, key, value, factors[0])
    heads = query.shape[1]
    groups = heads // key.shape[1]
    outputs = []
    for factor in dict.fromkeys(factors):
        own = [h for h in range(heads) if factors[h] == factor]
        first_group, last_group = own[0] // groups, own[-1] // groups + 1
        q_heads = slice(first_group * groups, last_group * groups)
        kv_heads = slice(first_group, last_group)
        attended = compute(query[:, q_heads], key[:, kv_heads], value[:, kv_heads], factor)
        outputs.append(attended[:, :, own[0] - q_heads.start : own[-1] + 1 - q_heads.start])
    return torch.cat(outputs, dim=2)


def strided_one_factor(attention, query, key, value, layout: Layout, factor: str, pattern: str, local_size: int,
                       num_summary: int, causal: bool) -> torch.Tensor:
    """Strided A1 (blocks), A2 (residue classes) or both (the two merged exactly). -> (batch, N, heads, d)."""
    if factor == "A1":
        query_blocks, key_blocks, value_blocks, mask = strided_local_inputs(
            query, key, value, layout, local_size, causal)
        attended, _ = attention.attend(query_blocks, key_blocks, value_blocks, mask)  # (B*nb, block, h, d)
        return layout.from_blocks(attended)
    if factor == "A2":
        query_classes, key_classes, value_classes, mask = strided_class_inputs(
            query, key, value, layout, local_size, causal, with_own_key=True)
        attended, _ = attention.attend(query_classes, key_classes, value_classes, mask)  # (B*l, nb, h, d)
        return layout.from_classes(attended)
    # both: A1 holds j = i, A2 without it, so the two key sets are disjoint and the union softmax is exact
    local = partial_softmax(*strided_local_inputs(query, key, value, layout, local_size, causal), attention)
    strided = partial_softmax(*strided_class_inputs(query, key, value, layout, local_size, causal,
                                                    with_own_key=False), attention)
    local = tuple(layout.from_blocks(part.transpose(1, 2)) for part in local)  # each (batch, N, h, d or 1)
    strided = tuple(layout.from_classes(part.transpose(1, 2)) for part in strided)
    return merge_partials(local, strided).to(query.dtype)


def strided_local_inputs(query, key, value, layout: Layout, local_size: int, causal: bool):
    """Strided A1: query block c against key blocks c-1, c (and c+1 when bidirectional) and the exact band."""
    after = 0 if causal else 1
    query_positions, key_positions = layout.window_positions(1, after)
    band = factor_keep(query_positions, key_positions, "strided", "A1", local_size, 1, causal)  # (nb, block, win)
    own = query_positions == key_positions
    mask = band[None].expand(layout.batch, *band.shape).reshape(-1, 1, *band.shape[1:])
    mask = (mask & layout.window_key_ok(1, after)) | own.repeat(layout.batch, 1, 1)[:, None]
    return (layout.query_blocks(query), layout.key_windows(key, 1, after), layout.key_windows(value, 1, after),
            mask)


def strided_class_inputs(query, key, value, layout: Layout, local_size: int, causal: bool, with_own_key: bool):
    """Strided A2: each residue class mod l attends within itself (causally when causal)."""
    positions = layout.class_positions()  # (block, nb)
    query_positions, key_positions = positions[:, :, None], positions[:, None, :]
    same = factor_keep(query_positions, key_positions, "strided", "A2", local_size, 1, causal)  # (block, nb, nb)
    own = query_positions == key_positions
    if not with_own_key:
        same = same & ~own
    mask = same[None].expand(layout.batch, *same.shape).reshape(-1, 1, *same.shape[1:]) & layout.class_key_ok()
    if with_own_key:
        mask = mask | own.repeat(layout.batch, 1, 1)[:, None]
    return layout.classes(query), layout.classes(key), layout.classes(value), mask


def fixed_blocked(attention, query, key, value, layout: Layout, factors: tuple[str, ...], pattern: str,
                  local_size: int, num_summary: int, causal: bool) -> torch.Tensor:
    """Fixed: query block c against its own block and, unless every head is A1, the summary columns of the other
    blocks (gathered once and shared by every block; a summary column inside block c is counted in the block)."""
    batch, kv_heads, _, dim = key.shape
    settings = (pattern, local_size, num_summary, causal)
    query_positions, key_positions = layout.window_positions(0, 0)  # (nb, block, 1), (nb, 1, block)
    mask = heads_keep(query_positions, key_positions, factors, *settings)  # (1 or heads, nb, block, block)
    own = query_positions == key_positions  # (nb, block, block)
    key_blocks, value_blocks = layout.key_windows(key, 0, 0), layout.key_windows(value, 0, 0)
    key_ok = layout.window_key_ok(0, 0)  # (batch * nb, 1, 1, block)
    summary = torch.arange(layout.length, device=query.device)
    summary = summary[summary.remainder(local_size) >= local_size - num_summary]  # (S,) summary positions
    count = summary.numel()
    if set(factors) != {"A1"} and count:

        def per_block(x: torch.Tensor) -> torch.Tensor:
            # (batch, kv_heads, S, d) -> (batch, nb, kv_heads, S, d) -> (batch * nb, kv_heads, S, d)
            x = x[:, None].expand(batch, layout.blocks, kv_heads, count, dim)
            return x.reshape(batch * layout.blocks, kv_heads, count, dim)

        key_blocks = torch.cat([key_blocks, per_block(key[:, :, summary])], dim=2)
        value_blocks = torch.cat([value_blocks, per_block(value[:, :, summary])], dim=2)
        blocks = torch.arange(layout.blocks, device=query.device)[:, None, None]
        outside = torch.div(summary, layout.block, rounding_mode="floor") != blocks  # (nb, 1, S): counted once
        summary_mask = heads_keep(query_positions, summary, factors, *settings) & outside  # (.., nb, block, S)
        mask = torch.cat([mask, summary_mask], dim=-1)
        own = F.pad(own, (0, count))
        summary_ok = layout.key_ok[:, summary].repeat_interleave(layout.blocks, 0)  # (batch * nb, S)
        key_ok = torch.cat([key_ok, summary_ok[:, None, None, :]], dim=-1)
    # (1 or heads, nb, block, keys) -> (batch * nb, 1 or heads, block, keys)
    mask = mask.transpose(0, 1)[None].expand(batch, -1, -1, -1, -1).reshape(-1, *mask.shape[:1], *mask.shape[2:])
    mask = (mask & key_ok) | own.repeat(batch, 1, 1)[:, None]
    attended, _ = attention.attend(layout.query_blocks(query), key_blocks, value_blocks, mask)
    return layout.from_blocks(attended)


def partial_softmax(query, key, value, keep, attention: EfficientAttention):
    """Unnormalised softmax attention over one key set, in fp32: (numerator (b, h, q, d), denominator (b, h, q, 1),
    row maximum (b, h, q, 1), -inf on rows without keys). Dropout acts on the numerator only (as on the weights)."""
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attention.scaling
    scores = scores.masked_fill(~keep, float("-inf"))
    row_max = scores.amax(-1, keepdim=True).detach()
    weights = torch.exp(scores - torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)))
    denominator = weights.sum(-1, keepdim=True)
    weights = F.dropout(weights, p=attention.dropout, training=attention.training)
    return torch.matmul(weights, value.float()), denominator, row_max


def merge_partials(first, second) -> torch.Tensor:
    """Exact softmax over the union of two disjoint key sets from their partials (the first set is never empty)."""
    numerator_a, denominator_a, max_a = first
    numerator_b, denominator_b, max_b = second
    top = torch.maximum(max_a, max_b)
    scale_a, scale_b = torch.exp(max_a - top), torch.exp(max_b - top)
    return (numerator_a * scale_a + numerator_b * scale_b) / (denominator_a * scale_a + denominator_b * scale_b)


def flex_block_mask(length: int, factors: tuple[str, ...], pattern: str, local_size: int, num_summary: int,
                    causal: bool, keep: torch.Tensor | None, device: torch.device, tile: int = FLEX_TILE):
    """The pattern as a FlexAttention BlockMask over `length` tokens (a shape bucket: keep (batch, length) marks the
    real ones), per head when the heads differ, padding keys removed. Each factor's tiles come from its structure
    alone (`factor_tiles`, cached per length); the padding enters as tile-level any/all of `keep`."""
    padded = keep is not None  # without padding the mask is one row for every batch row (mask_mod reads no keep)
    batch = 1 if keep is None else keep.shape[0]
    keep = torch.ones(batch, length, dtype=torch.bool, device=device) if keep is None else keep.bool().contiguous()
    distinct = tuple(dict.fromkeys(factors))
    boundary = factors.index(distinct[-1])  # "heads": heads from here on use the second factor
    tiles = -(-length // tile)
    tables = {f: factor_tiles(tiles, tile, pattern, f, local_size, num_summary, causal, str(device)) for f in distinct}
    heads = factors if len(distinct) > 1 else distinct
    pattern_any = torch.stack([tables[f][0] for f in heads])[None]  # (1, 1 or heads, T, T)
    pattern_all = torch.stack([tables[f][1] for f in heads])[None]
    real_any, real_all = token_tiles(keep, tile)  # (batch, T)
    rows = real_any[:, None, :, None]  # query tiles without a real token list no tile: their rows are never computed
    partial = pattern_any & real_any[:, None, None, :] & rows
    full = pattern_all & real_all[:, None, None, :] & rows

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = factor_keep(q_idx, kv_idx, pattern, distinct[0], local_size, num_summary, causal)
        if len(distinct) > 1:
            second = factor_keep(q_idx, kv_idx, pattern, distinct[1], local_size, num_summary, causal)
            allowed = torch.where(h < boundary, allowed, second)
        return ((allowed & keep[b, kv_idx]) if padded else allowed) | (q_idx == kv_idx)

    return tile_block_mask(partial, full, mask_mod, length, tile)


@functools.lru_cache(maxsize=64)
def factor_tiles(tiles: int, tile: int, pattern: str, factor: str, local_size: int, num_summary: int, causal: bool,
                 device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(any, all) (tiles, tiles) bool over tile x tile tiles: the tiles where `factor` of `pattern` (with j = i)
    keeps some pair, and tiles where it keeps every pair (exact, except that a "both" tile of the fixed pattern
    covered only by the union of A1 and A2 counts as partial). O(tiles^2 + tiles * tile) work, never O(N^2)."""
    device = torch.device(device)
    if pattern == "strided":  # every strided factor depends only on the offset i - j
        return offset_tiles(lambda diff: factor_keep(diff, torch.zeros_like(diff), pattern, factor, local_size,
                                                     num_summary, causal), tiles, tile, device)
    starts = torch.arange(tiles, device=device) * tile
    first_block, last_block = starts // local_size, (starts + tile - 1) // local_size  # (T,): blocks of l a tile meets
    # A1: query i and key j share a block of l: the tiles' block ranges overlap; every pair, when both lie in one
    share_any = (first_block[:, None] <= last_block[None, :]) & (first_block[None, :] <= last_block[:, None])
    one_block = first_block == last_block
    share_all = one_block[:, None] & one_block[None, :] & (first_block[:, None] == first_block[None, :])
    # A2: key j is a summary column (the last c of its block): some / all keys of tile J are
    positions = torch.arange(tiles * tile, device=device).view(tiles, tile)
    summary = positions.remainder(local_size) >= local_size - num_summary
    summary_any = summary.any(-1)[None, :].expand(tiles, tiles)
    summary_all = summary.all(-1)[None, :].expand(tiles, tiles)
    any_kept = {"A1": share_any, "A2": summary_any, "both": share_any | summary_any}[factor]
    all_kept = {"A1": share_all, "A2": summary_all, "both": share_all | summary_all}[factor]
    diagonal = torch.eye(tiles, dtype=torch.bool, device=device)
    if causal:  # keys of an earlier tile all precede the query tile; a later tile's all follow it
        earlier = torch.ones(tiles, tiles, dtype=torch.bool, device=device).tril(-1)
        any_kept, all_kept = any_kept & (earlier | diagonal), all_kept & earlier
    return any_kept | diagonal, all_kept


def factorized_flex(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask, scaling: float,
                    compiled: bool = True) -> torch.Tensor:
    """FlexAttention over the block mask. q (batch, heads, N, d) -> (batch, N, heads, d)."""
    return flex_attend(query, key, value, mask, scaling, compiled)


def cached_mask(masks: dict, name: tuple, build: Callable):
    """masks[name], built once per forward (`masks` is the model's shared_state, passed to every layer)."""
    if name not in masks:
        masks[name] = build()
    return masks[name]


# ---------------------------------------------------------------- strided on the grid (GPU)


def strided_grid(attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 keep: torch.Tensor | None, factors: tuple[str, ...], local_size: int, causal: bool,
                 masks: dict | None = None, compiled: bool = True) -> torch.Tensor:
    """The strided pattern as what it is, for the GPU: A1 is a band of width l, FlexAttention over its BlockMask
    (2 or 3 key tiles per query tile); A2 is attention along the columns of the (N / l, l) grid: positions regrouped
    by residue class mod l (`Layout.classes`), each class a dense (causal) sequence of N / l tokens; alone (A2 heads,
    own key included) it is plain SDPA over the classes (flash kernels when unpadded), merged with A1 ("both": A2
    without the own key, so the key sets are disjoint) both parts run FlexAttention returning their log-sum-exps
    and are combined exactly, softmax over the union. Time O(N (l + N / l) d) per head. q (batch, heads, N, d), k/v
    (batch, kv_heads, N, d) -> (batch, N, heads, d); padding rows unspecified. `masks` caches the BlockMasks across
    the layers of one forward; compiled=False runs FlexAttention eagerly (CPU, forward only: tests)."""
    batch, _, length, _ = query.shape
    layout = Layout(length, local_size, keep, batch, query.device)
    masks = {} if masks is None else masks
    complete = keep is None and layout.padded == length  # no padding key anywhere, no partial last row of the grid

    cached = functools.partial(cached_mask, masks)

    def band():
        return cached(("strided_band", local_size, causal), lambda: flex_block_mask(
            length, ("A1",), "strided", local_size, 1, causal, keep, query.device))

    def compute(q, k, v, factor):
        if factor == "A1":
            return flex_attend(q, k, v, band(), attention.scaling, compiled)
        if factor == "A2":
            if complete:  # every class is a whole sequence: SDPA's own causal kernels
                classes = (layout.classes(x) for x in (q, k, v))
                return layout.from_classes(attention.attend(*classes, None, is_causal=causal)[0])
            attended, _ = attention.attend(*strided_class_inputs(q, k, v, layout, local_size, causal, True))
            return layout.from_classes(attended)
        grid_mask = cached(("strided_grid", local_size, causal), lambda: grid_block_mask(
            layout.blocks, causal, None if complete else layout.class_key_ok().flatten(1), query.device))
        local = flex_attend_lse(q, k, v, band(), attention.scaling, compiled)
        strided = flex_attend_lse(*(layout.classes(x) for x in (q, k, v)), grid_mask, attention.scaling, compiled)
        return merge_by_lse(local, tuple(layout.from_classes(x) for x in strided))

    return split_heads_by_factor(compute, query, key, value, factors)


def grid_block_mask(count: int, causal: bool, key_ok: torch.Tensor | None, device: torch.device):
    """The BlockMask of strided A2 without the own key on the grid's columns (sequences of `count` members): earlier
    members (causal) or all others; key_ok (rows, count) drops padding keys (None: all real, cached)."""
    if key_ok is None:
        return _structural_grid_block_mask(count, causal, str(device))
    return _build_grid_block_mask(count, causal, key_ok, device)


@functools.lru_cache(maxsize=32)
def _structural_grid_block_mask(count: int, causal: bool, device: str):
    return _build_grid_block_mask(count, causal, None, torch.device(device))


def _build_grid_block_mask(count, causal, key_ok, device):
    def mask_mod(b, h, q_idx, kv_idx):
        allowed = kv_idx < q_idx if causal else kv_idx != q_idx
        return allowed if key_ok is None else allowed & key_ok[b, kv_idx]

    return block_mask(mask_mod, None if key_ok is None else key_ok.shape[0], count, device)


def flex_attend_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask, scaling: float,
                    compiled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """FlexAttention with its log-sum-exp, both differentiable: q (batch, heads, N, d) -> output (batch, N, heads, d)
    and lse (batch, N, heads, 1) float32 (-inf, with a zero output, on rows without keys)."""
    arguments = (query, key, value, mask, scaling, query.shape[1] != key.shape[1])
    if compiled:
        out, lse = run_compiled(_flex_with_lse, *arguments, kernel_options=tile_kernel_options(mask, query))
    else:
        out, lse = _flex_with_lse(*arguments)
    return out.transpose(1, 2), lse.transpose(1, 2)[..., None]


def _flex_with_lse(query, key, value, mask, scaling, gqa, kernel_options=None):
    from torch.nn.attention import flex_attention as flex

    options = dict(block_mask=mask, scale=scaling, enable_gqa=gqa, kernel_options=kernel_options)
    if hasattr(flex, "AuxRequest"):
        out, aux = flex.flex_attention(query, key, value, **options, return_aux=flex.AuxRequest(lse=True))
        return out, aux.lse
    return flex.flex_attention(query, key, value, **options, return_lse=True)  # torch < 2.9


def merge_by_lse(first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Exact softmax over the union of two disjoint key sets from each set's (output, log-sum-exp): the outputs
    weighted by sigmoid(lse_1 - lse_2) and its complement (an empty second set, lse -inf, weighs 0)."""
    (out_a, lse_a), (out_b, lse_b) = first, second
    weight = torch.sigmoid(lse_a - lse_b)
    return (out_a.float() * weight + out_b.float() * (1 - weight)).to(out_a.dtype)


# ---------------------------------------------------------------- fixed with compact summary columns (GPU)


def fixed_compact(attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  keep: torch.Tensor | None, factors: tuple[str, ...], local_size: int, num_summary: int,
                  causal: bool, masks: dict | None = None, compiled: bool = True) -> torch.Tensor:
    """The fixed pattern for the GPU with its summary columns gathered: A1 (the own block) is FlexAttention over its
    block-diagonal BlockMask; A2's keys, the last c positions of every block, are copied into one compact sequence of
    S = c N / l keys, which FlexAttention scans with a staircase BlockMask (earlier blocks only, or all), so A2 costs
    N S / 2 instead of the N^2 / 2 of its columns spread over every tile. Merged with A1 ("both") A2 takes the summary
    keys outside the own block; alone it takes every earlier (causal) or every other summary key and the own key.
    The parts' outputs are merged exactly by their log-sum-exps. q (batch, heads, N, d), k/v (batch, kv_heads, N, d)
    -> (batch, N, heads, d); padding rows unspecified. `masks` and `compiled` as in `strided_grid`."""
    batch, _, length, _ = query.shape
    masks = {} if masks is None else masks
    size, count = local_size, num_summary
    summary = torch.arange(length, device=query.device)
    summary = summary[summary.remainder(size) >= size - count]  # (S,) positions of the summary columns, in order

    cached = functools.partial(cached_mask, masks)

    def own_block():
        return cached(("fixed_block", size, causal), lambda: flex_block_mask(
            length, ("A1",), "fixed", size, count, causal, keep, query.device))

    def summary_part(q, k, v, outside_own_block: bool):
        mask = cached(("fixed_summary", size, count, causal, outside_own_block), lambda: summary_block_mask(
            length, summary.numel(), size, count, causal, outside_own_block,
            None if keep is None else keep[:, summary], query.device))
        return flex_attend_lse(q, k[:, :, summary], v[:, :, summary], mask, attention.scaling, compiled)

    def compute(q, k, v, factor):
        if factor == "A1":
            return flex_attend(q, k, v, own_block(), attention.scaling, compiled)
        if factor == "both":
            first = flex_attend_lse(q, k, v, own_block(), attention.scaling, compiled)
        else:  # the own key alone: weight exp(q.k * scaling), value v
            groups = q.shape[1] // k.shape[1]
            own_key, own_value = repeat_kv(k, groups), repeat_kv(v, groups)
            lse = (q.float() * own_key.float()).sum(-1, keepdim=True) * attention.scaling  # (batch, h, N, 1)
            first = own_value.transpose(1, 2), lse.transpose(1, 2)
        if not summary.numel():
            return first[0]
        return merge_by_lse(first, summary_part(q, k, v, outside_own_block=factor == "both"))

    return split_heads_by_factor(compute, query, key, value, factors)


def summary_block_mask(length: int, summaries: int, local_size: int, num_summary: int, causal: bool,
                       outside_own_block: bool, key_ok: torch.Tensor | None, device: torch.device):
    """Queries (N) against the compact summary keys (S): summary key s sits at position (s // c) l + l - c + s % c.
    outside_own_block: keys of earlier blocks (causal) or of other blocks; else earlier positions (causal) or all,
    the own position excluded (it is its own part). key_ok (batch, S) drops padding keys (None: cached)."""
    if key_ok is None:
        return _structural_summary_mask(length, summaries, local_size, num_summary, causal, outside_own_block,
                                        str(device))
    return _build_summary_mask(length, summaries, local_size, num_summary, causal, outside_own_block, key_ok, device)


@functools.lru_cache(maxsize=32)
def _structural_summary_mask(length, summaries, local_size, num_summary, causal, outside_own_block, device: str):
    return _build_summary_mask(length, summaries, local_size, num_summary, causal, outside_own_block, None,
                               torch.device(device))


def _build_summary_mask(length, summaries, local_size, num_summary, causal, outside_own_block, key_ok, device):
    def mask_mod(b, h, q_idx, kv_idx):
        if outside_own_block:
            query_block = torch.div(q_idx, local_size, rounding_mode="floor")
            key_block = torch.div(kv_idx, num_summary, rounding_mode="floor")
            allowed = key_block < query_block if causal else key_block != query_block
        else:
            position = (torch.div(kv_idx, num_summary, rounding_mode="floor") * local_size + local_size
                        - num_summary + kv_idx.remainder(num_summary))
            allowed = position < q_idx if causal else position != q_idx
        return allowed if key_ok is None else allowed & key_ok[b, kv_idx]

    batch = None if key_ok is None else key_ok.shape[0]
    return block_mask(mask_mod, batch, length, device, key_length=summaries)
