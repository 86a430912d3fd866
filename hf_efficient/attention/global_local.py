"""ETC's global-local attention with relative position labels.

Ainslie, Ontanon, Alberti, Cvicek, Fisher, Pham, Ravula, Sanghai, Wang & Yang, "ETC: Encoding Long and Structured
Inputs in Transformers" (EMNLP 2020, arXiv 2004.08483).

The model attends over one stream [global ; long] of T = G + N tokens (positions 0..G-1 global, G.. long), with one
set of q/k/v projections for the four pieces (the paper's shared-projection setting) and one softmax per query:

    logit(i, j) = (q_i . k_j + q_i . R[label(i, j)] + b[label(i, j)]) / sqrt(d)      where keep(i, j)

    keep: g2g every global key; l2l |i - j| <= local_radius; l2g / g2l every key of the other stream, or with the
          hard masks only the pairs of the same segment (a long token and the global token it is assigned to);
          always the real keys only, and the query's own key.
    label: l2l and g2g the clipped relative distance clip(j - i, -D, D) + D; l2g 2D+1 (another segment's global
           token) or 2D+2 (its own); g2l 2D+3 or 2D+4. R (V, heads, d) and b (V, heads) are per layer, V >= 2D + 5.

"Segments" come as one id per stream position (`segments`, (batch, T)): a global token's own index, a long token's
global index (-1: none), so that "same segment" is one comparison for both cross pieces.

Paths (the same function):
* `global_local_reference`: dense T x T masks and labels, for tests and `output_attentions`.
* `global_local_blocked`: long queries in blocks of r = local_radius against the three neighbouring blocks (3r keys)
  and the G global keys; global queries against every key. Time O((N (3r + G) + G T) d), memory
  O(N (3r + G) + G T) per head; trains on CPU.
* `global_local_flex` (GPU): one FlexAttention call over [global ; long] (a shape bucket), the pattern as a BlockMask
  built from tile-level tensor ops, the relative term as a score_mod that gathers q.R + b (precomputed, (batch,
  heads, T, V)) by label. Time O(T (2r + G) d) in 128-tiles (hard masks skip the cross tiles of other segments).

Deviations from the paper: the relative labels of the cross pieces are the paper's two (own segment / other) per
direction, held in the same per-layer table as the distance labels (the reference code keeps separate tables for
long and global queries); every piece shares the projections, norms and feed-forward (the reference code's default
sharing of q/k/v and feed-forward, and beyond it of the output projection and norms). Padding rows are zero.
"""

import torch
import torch.nn.functional as F

from ..core.attention import eager_attention
from .flex import FLEX_TILE, offset_tiles, pad_length, run_compiled, tile_block_mask, tile_kernel_options, token_tiles


def distance_labels(diff: torch.Tensor, max_distance: int) -> torch.Tensor:
    """clip(j - i, -D, D) + D, for offsets diff = j - i."""
    return diff.clamp(-max_distance, max_distance) + max_distance


def pair_keep(query_pos, key_pos, query_segment, key_segment, key_real, num_global: int, radius: int,
              hard_g2l: bool, hard_l2g: bool) -> torch.Tensor:
    """Whether stream position query_pos attends to key_pos (broadcasting tensors of positions, their segments and the
    keys' real flags)."""
    query_global, key_global = query_pos < num_global, key_pos < num_global
    cross = query_global != key_global
    local = ~query_global & ~key_global & ((query_pos - key_pos).abs() <= radius)
    if hard_g2l or hard_l2g:  # cross pairs of another segment are dropped in the hard directions
        strict = cross if hard_g2l and hard_l2g else cross & (query_global if hard_g2l else ~query_global)
        cross = cross & ((query_segment == key_segment) | ~strict)
    return ((query_global & key_global) | local | cross) & key_real | (query_pos == key_pos)


def pair_label(query_pos, key_pos, query_segment, key_segment, num_global: int, max_distance: int) -> torch.Tensor:
    """The relative position label of each pair (see the module docstring)."""
    query_global, key_global = query_pos < num_global, key_pos < num_global
    cross_label = torch.where(query_global, 2 * max_distance + 3, 2 * max_distance + 1) + (
        query_segment == key_segment).long()
    return torch.where(query_global == key_global, distance_labels(key_pos - query_pos, max_distance), cross_label)


def relative_scores(query: torch.Tensor, relative_key: torch.Tensor, relative_bias: torch.Tensor) -> torch.Tensor:
    """q . R[v] + b[v] for every label v: q (batch, heads, T, d), R (V, heads, d), b (V, heads) -> (batch, heads, T,
    V)."""
    bias = relative_bias.to(query.dtype).T[None, :, None, :]
    return torch.einsum("bhtd,vhd->bhtv", query, relative_key.to(query.dtype)) + bias


def global_local_reference(query, key, value, relative, segments, real, num_global: int, radius: int,
                           max_distance: int, hard_g2l: bool, hard_l2g: bool, scaling: float):
    """Dense reference. q/k/v (batch, heads, T, d) with k/v repeated to every head, relative (batch, heads, T, V),
    segments (batch, T) long, real (batch, T) bool. Returns (batch, T, heads, d) and weights (batch, heads, T, T)."""
    length = query.shape[2]
    positions = torch.arange(length, device=query.device)
    query_pos, key_pos = positions[None, :, None], positions[None, None, :]
    keep = pair_keep(query_pos, key_pos, segments[:, :, None], segments[:, None, :], real[:, None, :], num_global,
                     radius, hard_g2l, hard_l2g)
    label = pair_label(query_pos, key_pos, segments[:, :, None], segments[:, None, :], num_global, max_distance)
    heads = query.shape[1]
    relative_term = relative.gather(-1, label[:, None].expand(-1, heads, -1, -1))
    scores = (query @ key.transpose(-1, -2) + relative_term) * scaling
    weights = scores.masked_fill(~keep[:, None], float("-inf")).softmax(-1)
    weights = weights * real[:, None, :, None]
    return (weights @ value).transpose(1, 2), weights


def global_local_blocked(module, query, key, value, relative, segments, real, num_global: int, radius: int,
                         max_distance: int, hard_g2l: bool, hard_l2g: bool, dropout: float = 0.0) -> torch.Tensor:
    """Long queries in blocks of `radius` against 3 key blocks + the global keys, global queries against every key;
    the masks and labels as an additive float mask of eager attention. q (batch, heads, T, d), k/v (batch, kv_heads,
    T, d). Returns (batch, T, heads, d)."""
    batch, heads, length, dim = query.shape
    device, dtype = query.device, query.dtype
    g, n = num_global, length - num_global
    block = min(radius, n)
    blocks = -(-n // block)
    padded = blocks * block

    def additive(keep, label, rel):  # (batch, Q, K) keep/label, rel (batch, heads, Q, V) -> (batch, heads, Q, K)
        term = rel.gather(-1, label[:, None].expand(-1, heads, -1, -1)) * module.scaling
        return term.masked_fill(~keep[:, None], torch.finfo(dtype).min)

    # global queries (0..G-1) against every key (0..T-1)
    parts = []
    if g:
        positions = torch.arange(length, device=device)
        query_pos, key_pos = positions[None, :g, None], positions[None, None, :]
        seg_q, seg_k = segments[:, :g, None], segments[:, None, :]
        keep = pair_keep(query_pos, key_pos, seg_q, seg_k, real[:, None, :], g, radius, hard_g2l, hard_l2g)
        label = pair_label(query_pos, key_pos, seg_q, seg_k, g, max_distance)
        mask = additive(keep, label, relative[:, :, :g])
        parts.append(eager_attention(module, query[:, :, :g], key, value, mask, module.scaling, dropout)[0])

    # long queries: block c holds long positions c*r .. c*r+r-1; its keys are long blocks c-1..c+1, then the globals
    def long_blocks(x):  # (batch, h, N, e) -> (batch, h, blocks, r, e)
        return pad_length(x[:, :, g:], padded).view(x.shape[0], x.shape[1], blocks, block, x.shape[-1])

    def windows(x):  # (batch, h, N, e) -> (batch, h, blocks, 3r, e)
        x = F.pad(x[:, :, g:], (0, 0, block, padded - n + block)).unfold(2, 3 * block, block)
        return x.transpose(-1, -2)

    def with_globals(x):  # windows then the global keys: (batch * blocks, h, 3r + G, e)
        h = x.shape[1]
        parts_ = [windows(x), x[:, :, None, :g].expand(-1, -1, blocks, -1, -1)]
        return torch.cat(parts_, dim=3).transpose(1, 2).reshape(batch * blocks, h, 3 * block + g, x.shape[-1])

    index = torch.arange(blocks, device=device)[:, None] * block
    long_query = index + torch.arange(block, device=device)  # (blocks, r) long index
    long_key = index - block + torch.arange(3 * block, device=device)  # (blocks, 3r) long index (may be outside)
    query_pos = (g + long_query)[None, :, :, None]
    key_pos = torch.cat([g + long_key, torch.arange(g, device=device).expand(blocks, g)], dim=1)[None, :, None, :]
    inside = torch.cat([(long_key >= 0) & (long_key < n), torch.ones(blocks, g, dtype=torch.bool, device=device)], 1)
    gather_at = key_pos.clamp(0, length - 1).reshape(1, -1).expand(batch, -1)  # (batch, blocks * (3r + G))
    seg_k = segments.gather(1, gather_at).view(batch, blocks, 1, -1)
    real_k = (real.gather(1, gather_at).view(batch, blocks, 1, -1)) & inside[None, :, None, :]
    seg_q = pad_length(segments[:, g:], padded, dim=1).view(batch, blocks, block, 1)
    keep = pair_keep(query_pos, key_pos, seg_q, seg_k, real_k, g, radius, hard_g2l, hard_l2g)
    label = pair_label(query_pos, key_pos, seg_q, seg_k, g, max_distance)  # (batch, blocks, r, 3r + G)
    rel = long_blocks(relative).transpose(1, 2).reshape(batch * blocks, heads, block, -1)
    mask = additive(keep.reshape(batch * blocks, block, -1), label.reshape(batch * blocks, block, -1), rel)
    blocked_query = long_blocks(query).transpose(1, 2).reshape(batch * blocks, heads, block, dim)
    out, _ = eager_attention(module, blocked_query, with_globals(key), with_globals(value), mask, module.scaling,
                             dropout)  # (batch * blocks, r, heads, d)
    parts.append(out.reshape(batch, padded, heads, dim)[:, :n])
    return torch.cat(parts, dim=1)


def cross_tiles(segments: torch.Tensor, real: torch.Tensor, num_global: int, tile: int) -> torch.Tensor:
    """(batch, T/tile, T/tile) bool: the (long tile, global tile) pairs holding a real long token and the global token
    of its segment (for the hard masks), from each tile's range of segment ids: exact where segments grow along the
    input, as `build_global_input` makes them, and never missing a pair otherwise."""
    batch, length = segments.shape
    tiles = -(-length // tile)
    positions = torch.arange(length, device=segments.device)
    assigned = real & (segments >= 0) & (positions >= num_global)
    per_tile = F.pad(torch.where(assigned, segments, -1), (0, tiles * tile - length), value=-1).view(batch, tiles, tile)
    highest = per_tile.amax(-1)
    lowest = per_tile.masked_fill(per_tile < 0, torch.iinfo(segments.dtype).max).amin(-1)
    starts = torch.arange(tiles, device=segments.device) * tile  # global indices start..end-1 of each tile
    ends = (starts + tile).clamp(max=num_global)
    return (lowest[:, :, None] < ends[None, None, :]) & (highest[:, :, None] >= starts[None, None, :])


def global_local_block_mask(segments: torch.Tensor, real: torch.Tensor, num_global: int, radius: int,
                            hard_g2l: bool, hard_l2g: bool, tile: int = FLEX_TILE):
    """The BlockMask of the pattern over the (bucketed) stream length of `segments`/`real` (batch, T), from tile-level
    tensor ops: the band's tiles from its offsets, the global rows/columns, the real keys, and for hard masks the
    tiles whose segment ranges meet."""
    batch, length = real.shape
    device = real.device
    tiles = -(-length // tile)
    positions = torch.arange(length, device=device)
    is_global = (positions < num_global).expand(batch, length)
    band_any, band_all = offset_tiles(lambda diff: diff.abs() <= radius, tiles, tile, device)
    global_any, global_all = token_tiles(is_global, tile)  # (batch, T)
    long_any = token_tiles(~is_global & real, tile)[0]
    real_any, real_all = token_tiles(real, tile)
    long_cover = token_tiles(~is_global, tile)[1]
    g2g = global_any[:, :, None] & (global_any & real_any)[:, None, :]
    l2l = band_any & long_any[:, :, None] & long_any[:, None, :]
    l2g = long_any[:, :, None] & (global_any & real_any)[:, None, :]
    g2l = global_any[:, :, None] & long_any[:, None, :]
    if hard_l2g or hard_g2l:
        meets = cross_tiles(segments, real, num_global, tile)  # (batch, long tile, global tile)
        if hard_l2g:
            l2g = l2g & meets
        if hard_g2l:
            g2l = g2l & meets.transpose(1, 2)
    rows = real_any[:, :, None]
    partial = (g2g | l2l | l2g | g2l) & rows | torch.eye(tiles, dtype=torch.bool, device=device) & rows
    full = (band_all & long_cover[:, :, None] & (long_cover & real_all)[:, None, :]) | (
        global_all[:, :, None] & (global_all & real_all)[:, None, :])
    full = full & rows

    count = torch.tensor(num_global, device=device)  # a tensor: a new global length is data, not a recompile

    def mask_mod(b, h, q_idx, kv_idx):
        return pair_keep(q_idx, kv_idx, segments[b, q_idx], segments[b, kv_idx], real[b, kv_idx], count, radius,
                         hard_g2l, hard_l2g)

    return tile_block_mask(partial[:, None], full[:, None], mask_mod, length, tile)


def global_local_flex(query, key, value, relative, segments, mask, num_global: int, max_distance: int,
                      scaling: float, compiled: bool = True) -> torch.Tensor:
    """One FlexAttention call over [global ; long] padded to the mask's length (as segments, (batch, bucket), is),
    the relative term added by a score_mod. q (batch, heads, T, d) -> (batch, T, heads, d)."""
    from torch.nn.attention.flex_attention import flex_attention

    length, padded = query.shape[2], mask.seq_lengths[0]
    query, key, value, relative = (pad_length(x, padded) for x in (query, key, value, relative))
    relative = relative * scaling
    count = torch.tensor(num_global, device=query.device)  # a tensor: a new global length is data, not a recompile

    def score_mod(score, b, h, q_idx, kv_idx):
        label = pair_label(q_idx, kv_idx, segments[b, q_idx], segments[b, kv_idx], count, max_distance)
        return score + relative[b, h, q_idx, label]

    gqa = query.shape[1] != key.shape[1]
    run = run_compiled if compiled else (lambda f, *a, **k: f(*a, **k))
    options = {"kernel_options": tile_kernel_options(mask, query)} if compiled else {}
    out = run(flex_attention, query, key, value, score_mod=score_mod, block_mask=mask, scale=scaling,
              enable_gqa=gqa, **options)
    return out[:, :, :length].transpose(1, 2)
