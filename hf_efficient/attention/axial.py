"""Axial attention: exact softmax attention along one axis of a grid (Ho, Kalchbrenner, Weissenborn, Salimans, "Axial
Attention in Multidimensional Transformers", arXiv 1912.12180).

On a grid of states X (batch, H, W, C, hidden), attention along axis a mixes only the positions that agree on every
other axis: out[.., i_a, ..] = sum_{j_a} softmax_j(q_i . k_j / sqrt(d)) v_j, the keys running over the line through
i along a (all of it, or j_a <= i_a when masked). Time O(N * n_a * d) and memory O(N * n_a) for N = H*W*C grid
positions and a line of n_a, instead of O(N^2): a row costs W, a column H, a channel line C.

Fast path (every device): the lines become the batch, (batch * other axes, heads, n_a, d), and one scaled-dot-product
attention call (transformers' interface, sdpa by default) with `is_causal` for a masked axis. Reference (tests and
output_attentions): dense attention over the flattened grid with the equivalent (N, N) mask, `dense_axial_keep`.

Padding: a boolean keep-mask over the grid hides the masked positions as keys; a query always keeps its own key (as
core/masks.key_keep does), so a line without any real key has no empty softmax row, and real queries are unaffected.

Deviations from the paper: none in the attention itself (the paper's code also calls dense attention per line).
How the layers use it (the decoder's shifts, channels) is described in models/axial/modeling_axial.py.
"""

import torch

AXES = {"column": 1, "row": 2, "channel": 3}  # the grid dimension (of batch, H, W, C) each attention runs along


def to_lines(states: torch.Tensor, dim: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(batch, H, W, C, features) -> (lines, n, features), the line along grid dim `dim` (1, 2 or 3) last but one;
    returns the moved shape for `from_lines`."""
    moved = states.movedim(dim, 3)  # (batch, a, b, n, features), a and b the other two grid axes
    return moved.reshape(-1, *moved.shape[3:]), tuple(moved.shape)


def from_lines(lines: torch.Tensor, moved_shape: tuple[int, ...], dim: int) -> torch.Tensor:
    """The inverse of `to_lines`: (lines, n, features) -> (batch, H, W, C, features), contiguous (a strided input
    takes another matmul path in the next projection, whose rounding would differ from a wrapped copy's, e.g. LoRA)."""
    return lines.reshape(*moved_shape[:4], lines.shape[-1]).movedim(3, dim).contiguous()


def line_keep(keep: torch.Tensor | None, dim: int) -> torch.Tensor | None:
    """(batch, H, W, C) key keep-mask -> (lines, 1, n, n) for the lines along `dim`, with each query's own key kept."""
    if keep is None:
        return None
    lines, _ = to_lines(keep[..., None], dim)  # (lines, n, 1)
    lines = lines[..., 0]
    own = torch.eye(lines.shape[-1], dtype=torch.bool, device=keep.device)
    return lines[:, None, None, :] | own


def dense_axial_keep(grid: tuple[int, int, int], axis: str, causal: bool, keep: torch.Tensor | None,
                     device: torch.device) -> torch.Tensor:
    """The (batch or 1, 1, N, N) boolean mask over the flattened grid (raster order: (row, col, channel)) that axial
    attention along `axis` equals: same position on the other axes, key <= query on `axis` when causal, keys kept
    by `keep` (batch, H, W, C) or the query's own."""
    coordinates = torch.stack(torch.meshgrid(*(torch.arange(n, device=device) for n in grid), indexing="ij"), -1)
    coordinates = coordinates.reshape(-1, 3)  # (N, 3): (row, col, channel) of each flattened position
    along = AXES[axis] - 1
    others = [d for d in range(3) if d != along]
    same_line = (coordinates[:, None, others] == coordinates[None, :, others]).all(-1)  # (N, N)
    if causal:
        same_line = same_line & (coordinates[None, :, along] <= coordinates[:, None, along])
    if keep is None:
        return same_line[None, None]
    own = torch.eye(same_line.shape[0], dtype=torch.bool, device=device)
    return (same_line & (keep.flatten(1)[:, None, :] | own))[:, None]  # (batch, 1, N, N)


def axial_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, axis: str, causal: bool,
                              keep: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                              training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive O(N^2) axial attention: q, k, v (batch, heads, H, W, C, d) (k, v with as many heads as q) ->
    ((batch, H, W, C, heads, d), weights (batch, heads, N, N)) over the flattened grid."""
    batch, heads, *grid, dim = query.shape
    q, k, v = (t.reshape(batch, heads, -1, dim) for t in (query, key, value))  # (batch, heads, N, d)
    mask = dense_axial_keep(tuple(grid), axis, causal, keep, query.device)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=training)
    attended = torch.matmul(weights, v)  # (batch, heads, N, d)
    return attended.transpose(1, 2).reshape(batch, *grid, heads, dim), weights
