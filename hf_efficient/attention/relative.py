"""Transformer-XL's relative multi-head attention over a segment and its memory.

Dai et al., "Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context" (ACL 2019, arXiv 1901.02860),
section 3.3. Query i (at distance-frame position m + i, m = memory length) and key j of the memory-plus-segment:

    score_ij = (q_i + u) . k_j  +  (q_i + v) . W_r R_{m+i-j},   R_d = [sin(d w), cos(d w)], w_k = 10000^(-2k/hidden)

(terms (a)+(c) and (b)+(d) of the paper; u, v are learned per head, W_r projects the fixed sinusoid R). Distances
above `clamp_len` use R_clamp_len; with `same_length` a query sees only distances < mem_len.

Paths: `relative_reference` builds R for every (i, j) pair (tests and `output_attentions`); `relative_blocked`
computes (q + v) W_r R for the m + n distances once and aligns it with the relative shift (pad one column, view,
drop a row: O(1) extra work per score), then hands the result as an additive bias to scaled-dot-product attention
over (q + u) and the keys, which avoids materialising the probabilities on kernels that take a bias (the
memory-efficient kernel on CUDA). Time O(n (m + n) d) per head, memory O(n (m + n)) per head for the bias: the (q+v)
term depends on the query, so no bias-free flash kernel applies.

Deviations: none in the math. Memory holds each layer's input hidden states (the paper's), detached; padding
positions are kept in the memory with their mask, never attended to (a padding query keeps its own key so no softmax
row is empty; its output is discarded by the model).
"""

import torch
from torch import nn


def relative_sinusoid(distances: torch.Tensor, dim: int) -> torch.Tensor:
    """R_d = [sin(d w), cos(d w)] with w_k = 10000^(-2k/dim): (..., ) float distances -> (..., dim)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=distances.device, dtype=torch.float32) / dim))
    angles = distances.float()[..., None] * inv_freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def key_distances(key_length: int, clamp_len: int | None, device: torch.device) -> torch.Tensor:
    """The distances of the relative table, key_length - 1 down to 0 (row c of R: distance key_length - 1 - c),
    clamped at clamp_len."""
    distances = torch.arange(key_length - 1, -1, -1, device=device)
    return distances.clamp(max=clamp_len) if clamp_len is not None else distances


def relative_shift(scores: torch.Tensor) -> torch.Tensor:
    """(..., q, k) scores whose column c belongs to distance k - 1 - c -> column j belongs to query i's distance to
    key j, (k - q) + i - j, for every j <= i + k - q (later columns hold other rows' values; mask them)."""
    *lead, queries, keys = scores.shape
    padded = nn.functional.pad(scores, (1, 0))  # (..., q, k + 1): a zero column in front
    padded = padded.reshape(*lead, keys + 1, queries)  # the same numbers read as (k + 1) rows of q
    return padded[..., 1:, :].reshape(*lead, queries, keys)


def allowed_keys(query_length: int, key_length: int, window: int | None, keep: torch.Tensor | None,
                 device: torch.device) -> torch.Tensor:
    """(batch or 1, 1, q, k) bool: query i sees key j when its distance (k - q) + i - j is in [0, window) (window
    None: >= 0) and key j is real (`keep` (batch, k)); a query always sees its own key, so no row is empty."""
    distance = (torch.arange(query_length, device=device)[:, None] + key_length - query_length
                - torch.arange(key_length, device=device))
    allowed = distance >= 0
    if window is not None:
        allowed = allowed & (distance < window)
    if keep is None:
        return allowed[None, None]
    return (allowed & keep[:, None, :] | (distance == 0))[:, None]


def relative_blocked(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, positional: torch.Tensor,
                     content_bias: torch.Tensor, position_bias: torch.Tensor, allowed: torch.Tensor, scaling: float,
                     dropout: float) -> torch.Tensor:
    """query (b, h, q, d), key/value (b, h, k, d), positional (1, h, k, d) = W_r R over the table's distances,
    biases (h, d), allowed (b|1, 1, q, k) -> (b, q, h, d)."""
    position_scores = torch.matmul(query + position_bias[:, None], positional.transpose(-1, -2))  # (b, h, q, k)
    bias = (relative_shift(position_scores) * scaling).masked_fill(~allowed, torch.finfo(query.dtype).min)
    attended = nn.functional.scaled_dot_product_attention(query + content_bias[:, None], key, value, attn_mask=bias,
                                                          dropout_p=dropout, scale=scaling)
    return attended.transpose(1, 2)


def relative_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, project_positions,
                       content_bias: torch.Tensor, position_bias: torch.Tensor, allowed: torch.Tensor, scaling: float,
                       clamp_len: int | None, dim: int, dropout: float = 0.0, training: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive O(q k hidden) path: R built for every (i, j) pair, no shift. `project_positions` maps
    (q, k, dim) sinusoids to (q, k, h, d). Returns ((b, q, h, d), weights (b, h, q, k))."""
    queries, keys = query.shape[2], key.shape[2]
    distance = (torch.arange(queries, device=query.device)[:, None] + keys - queries
                - torch.arange(keys, device=query.device)).clamp(min=0)
    if clamp_len is not None:
        distance = distance.clamp(max=clamp_len)
    positional = project_positions(relative_sinusoid(distance, dim).to(query.dtype))  # (q, k, h, d)
    content = torch.matmul(query + content_bias[:, None], key.transpose(-1, -2))
    position = torch.einsum("bhid,ijhd->bhij", query + position_bias[:, None], positional)
    scores = ((content + position) * scaling).masked_fill(~allowed, torch.finfo(query.dtype).min)
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=training)
    return torch.matmul(weights, value).transpose(1, 2), weights
