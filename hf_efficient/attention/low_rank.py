"""Low-rank (Linformer) attention: keys and values projected along the sequence to a fixed number of rows.

Wang, Li, Khabsa, Fang & Ma, "Linformer: Self-Attention with Linear Complexity", arXiv 2006.04768.

With length projections E, F of shape (k, n) (n the fixed maximum length, k the projected length), an input of
L <= n tokens uses their first L columns:

    out = softmax(Q (E[:, :L] K)^T / sqrt(d)) (F[:, :L] V)                           Q, K, V: (L, d)

Padded keys and values are zeroed before the projection, so padding adds nothing to any projected row and a padded
input gives its real tokens exactly the outputs of the unpadded one (a left-padded row is first rotated to the
right-padded layout by the model, `core.masks.right_alignment`). Every projected row takes part in the softmax
(there is nothing to mask after the projection). Two paths compute the same function:

* `low_rank_reference`: explicit per-head projection matrices with the padding columns masked out, then a
  hand-written softmax; returns the (batch, heads, L, k) weights. For tests and `output_attentions`.
* `low_rank_attention`: E K and F V as batched matmuls (O(L k d) time, O(k d) extra memory), then exact softmax
  over the k projected keys through transformers' attention interface (`EfficientAttention.attend`, eager or sdpa):
  O(L k d) time, O(L k) memory (O(L) with sdpa's fused kernels). Matmul-only, so the same path is the GPU path:
  no special kernel is needed.

`projections` are tensors (groups, k, n) with groups 1 (one projection for every head) or the number of key/value
heads (one per head); `None` stands for the identity (k = n, E = F = I), which is exact softmax attention over the
real keys.
"""

import torch

from ..core.attention import EfficientAttention


def average_pooling_rows(projected_length: int, max_length: int) -> torch.Tensor:
    """(k, n): row j averages the j-th of k contiguous, near-equal segments of the n positions (k = n: identity)."""
    bounds = [(j * max_length) // projected_length for j in range(projected_length + 1)]
    rows = torch.zeros(projected_length, max_length)
    for j in range(projected_length):
        rows[j, bounds[j]:bounds[j + 1]] = 1.0 / (bounds[j + 1] - bounds[j])
    return rows


def project_length(states: torch.Tensor, projection: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """E[:, :L] X: states (batch, heads, L, d), projection (groups, k, n) with groups 1 or heads.

    Padded rows of `states` are zeroed first (keep: (batch, L) bool). Returns (batch, heads, k, d).
    """
    length = states.shape[2]
    if keep is not None:
        states = states * keep[:, None, :, None].to(states.dtype)
    # (groups, k, L) @ (batch, heads, L, d): groups broadcasts against heads -> (batch, heads, k, d)
    return torch.matmul(projection[:, :, :length].to(device=states.device, dtype=states.dtype), states)


def low_rank_attention(
    attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    key_projection: torch.Tensor, value_projection: torch.Tensor, keep: torch.Tensor | None,
) -> torch.Tensor:
    """The O(L k) path. query (batch, heads, L, d); key/value (batch, kv_heads, L, d). Returns (batch, L, heads, d)."""
    projected_keys = project_length(key, key_projection, keep)  # (batch, kv_heads, k, d)
    projected_values = project_length(value, value_projection, keep)
    attended, _ = attention.attend(query, projected_keys, projected_values, None)
    return attended


def low_rank_reference(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    key_projection: torch.Tensor | None, value_projection: torch.Tensor | None, keep: torch.Tensor | None,
    scaling: float, dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit projection, then softmax by hand. q/k/v (batch, heads, L, d), k/v already repeated to all heads.

    Projections (groups, k, n) or None (identity: softmax over the real keys, each query keeping its own key).
    Returns the output (batch, L, heads, d) and the weights (batch, heads, L, k or L); padding rows are zero.
    """
    batch, heads, length, _ = query.shape
    real = torch.ones(batch, length, dtype=torch.bool, device=query.device) if keep is None else keep
    if key_projection is None:
        own = torch.eye(length, dtype=torch.bool, device=query.device)
        scores = torch.einsum("bhqd,bhjd->bhqj", query, key) * scaling
        scores = scores.masked_fill(~(real[:, None, None, :] | own), float("-inf"))
        weights = scores.softmax(-1)
        projected_values = value
    else:

        def per_head(projection: torch.Tensor) -> torch.Tensor:
            # (groups, k, n) -> (batch, heads, k, L): the first L columns, padding columns zeroed, groups -> heads
            matrix = projection[:, :, :length].repeat_interleave(heads // projection.shape[0], dim=0)
            return matrix[None] * real[:, None, None, :].to(matrix.dtype)

        projected_keys = torch.einsum("bhjl,bhld->bhjd", per_head(key_projection), key)
        projected_values = torch.einsum("bhjl,bhld->bhjd", per_head(value_projection), value)
        weights = (torch.einsum("bhqd,bhjd->bhqj", query, projected_keys) * scaling).softmax(-1)
    weights = torch.nn.functional.dropout(weights, p=dropout) * real[:, None, :, None]
    out = torch.einsum("bhqj,bhjd->bhqd", weights, projected_values)
    return out.transpose(1, 2), weights
