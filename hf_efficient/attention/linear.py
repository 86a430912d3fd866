"""Linear attention with the elu(x)+1 feature map.

Katharopoulos, Vyas, Pappas & Fleuret, "Transformers are RNNs: Fast Autoregressive Transformers with Linear
Attention", arXiv 2006.16236.

With phi(x) = elu(x) + 1 (elementwise, > 0), every query i gets

    out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps),   S_i = sum_j phi(k_j) v_j^T,   z_i = sum_j phi(k_j)

over the real keys j (all of them bidirectional, j <= i causal); padding keys have phi(k_j) set to 0. The paths
(all computing the same function):

* `linear_attention_reference`: the explicit N x N matrix phi(Q) phi(K)^T, masked, row-normalised. Tests only
  (and `output_attentions`). Time O(N^2 d), memory O(N^2).
* `linear_attention_bidirectional`: S and z once, then every query. Time O(N d^2), memory O(d^2 + N d).
* `linear_attention_causal_chunked`: chunks of C tokens. Each chunk's sum phi(K_c)^T V_c, an exclusive prefix sum
  over chunks gives the (S, z) every chunk starts from, and inside a chunk the masked quadratic form
  tril(phi(Q_c) phi(K_c)^T) V_c adds the chunk's own earlier keys. Time O(N (C + d) d), memory
  O(N d^2 / C + N C + N d) instead of the O(N d^2) of a per-token cumulative sum. Takes and returns the (S, z)
  state, so the same function is the prefill and, with one-token inputs, the O(d^2)-per-token recurrent decoder.
* GPU: the chunked form above (batched matmuls through cuBLAS). flash-linear-attention's fused kernels would be
  the natural faster path; they are not used yet.

Numerics: the math runs in float32 whatever the input dtype (bf16/fp16 inputs are upcast, the output is cast
back; on GPU these matmuls are then fp32/TF32 rather than bf16: accuracy over speed); the states (S, z) are
float32. `eps` (1e-6 by default, as in the paper's fast-transformers code) is added to the denominator phi(q)^T z:
positive in exact arithmetic for a real query (phi > 0 and its own key counts), it can still underflow for very
negative q, and a query with no real key (padding) gets 0 / eps = 0 instead of NaN.

Grouped-query attention: keys, values and states stay at `kv_heads`; queries are viewed as
(batch, kv_heads, groups, N, d), query head kv*groups + g sharing kv head kv (the order of `repeat_kv`).
"""

import torch
import torch.nn.functional as F


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1, computed in float32 (> 0 everywhere)."""
    return F.elu(x.float()) + 1.0


def group_queries(query: torch.Tensor, kv_heads: int) -> torch.Tensor:
    # (batch, heads, N, d) -> (batch, kv_heads, groups, N, d)
    batch, heads, length, dim = query.shape
    return query.view(batch, kv_heads, heads // kv_heads, length, dim)


def ungroup(attended: torch.Tensor) -> torch.Tensor:
    # (batch, kv_heads, groups, N, d_v) -> (batch, N, heads, d_v)
    batch, kv_heads, groups, length, dim = attended.shape
    return attended.reshape(batch, kv_heads * groups, length, dim).transpose(1, 2)


def linear_attention_reference(
    query_features: torch.Tensor, key_features: torch.Tensor, value: torch.Tensor, keep: torch.Tensor | None,
    causal: bool, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The explicit form. phi(q), phi(k), v (batch, heads, N, d) with k/v repeated to all heads; keep (batch, N).

    Returns the output (batch, N, heads, d_v) and the normalised weights A_ij / (sum_j A_ij + eps),
    A = mask * phi(Q) phi(K)^T, shape (batch, heads, N, N).
    """
    length = query_features.shape[2]
    scores = query_features @ key_features.transpose(-1, -2)  # (batch, heads, N, N)
    mask = torch.ones(length, length, dtype=torch.bool, device=scores.device)
    if causal:
        mask = mask.tril()
    mask = mask[None, None] if keep is None else mask[None, None] & keep[:, None, None, :]
    scores = scores * mask
    weights = scores / (scores.sum(-1, keepdim=True) + eps)
    return (weights @ value.float()).transpose(1, 2), weights


def linear_state(key_features: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S = phi(K)^T V (batch, kv_heads, d, d_v) and z = sum_j phi(k_j) (batch, kv_heads, d) over all given keys."""
    return torch.einsum("bknd,bkne->bkde", key_features, value.float()), key_features.sum(2)


def linear_attention_bidirectional(
    query_features: torch.Tensor, key_features: torch.Tensor, value: torch.Tensor, eps: float
) -> torch.Tensor:
    """Every query against all keys. phi(q) (batch, heads, N, d); phi(k) (padding rows zeroed), v
    (batch, kv_heads, N, d). Returns (batch, N, heads, d_v)."""
    state, normaliser = linear_state(key_features, value)
    queries = group_queries(query_features, key_features.shape[1])
    numerator = torch.einsum("bkgnd,bkde->bkgne", queries, state)
    denominator = torch.einsum("bkgnd,bkd->bkgn", queries, normaliser)
    return ungroup(numerator / (denominator[..., None] + eps))


def linear_attention_causal_chunked(
    query_features: torch.Tensor, key_features: torch.Tensor, value: torch.Tensor, eps: float, chunk_size: int,
    initial_state: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Causal linear attention in chunks, continuing from `initial_state` (S, z) of the earlier tokens.

    phi(q) (batch, heads, N, d); phi(k) (padding rows zeroed), v (batch, kv_heads, N, d). Returns the output
    (batch, N, heads, d_v) and the state (S, z) after the N tokens (float32).
    """
    batch, kv_heads, length, dim = key_features.shape
    value = value.float()
    value_dim = value.shape[-1]
    chunk = min(chunk_size, length)
    chunks = -(-length // chunk)
    padded = chunks * chunk - length  # zero keys add nothing; zero queries' rows are cut below
    queries = group_queries(F.pad(query_features, (0, 0, 0, padded)), kv_heads)
    groups = queries.shape[2]
    # (batch, kv, [groups,] chunks * C, d) -> (batch, kv, [groups,] chunks, C, d)
    queries = queries.view(batch, kv_heads, groups, chunks, chunk, dim)
    keys = F.pad(key_features, (0, 0, 0, padded)).view(batch, kv_heads, chunks, chunk, dim)
    values = F.pad(value, (0, 0, 0, padded)).view(batch, kv_heads, chunks, chunk, value_dim)

    chunk_states = torch.einsum("bkncd,bknce->bknde", keys, values)  # (batch, kv, chunks, d, d_v)
    chunk_normalisers = keys.sum(3)  # (batch, kv, chunks, d)
    if initial_state is None:
        initial_state = (chunk_states.new_zeros(batch, kv_heads, dim, value_dim),
                         chunk_normalisers.new_zeros(batch, kv_heads, dim))
    # exclusive prefix sums: entry c is the state before chunk c; entry `chunks` is the state after all of them
    states = torch.cat([initial_state[0][:, :, None], chunk_states], dim=2).cumsum(2)  # (b, kv, chunks+1, d, d_v)
    normalisers = torch.cat([initial_state[1][:, :, None], chunk_normalisers], dim=2).cumsum(2)  # (b, kv, chunks+1, d)

    numerator = torch.einsum("bkgncd,bknde->bkgnce", queries, states[:, :, :-1])  # (b, kv, g, chunks, C, d_v)
    denominator = torch.einsum("bkgncd,bknd->bkgnc", queries, normalisers[:, :, :-1])  # (b, kv, g, chunks, C)
    scores = torch.einsum("bkgncd,bknsd->bkgncs", queries, keys)  # (b, kv, g, chunks, C, C)
    scores = scores * torch.ones(chunk, chunk, dtype=torch.bool, device=scores.device).tril()
    numerator = numerator + torch.einsum("bkgncs,bknse->bkgnce", scores, values)
    denominator = denominator + scores.sum(-1)
    attended = (numerator / (denominator[..., None] + eps)).reshape(batch, kv_heads, groups, chunks * chunk, -1)
    return ungroup(attended[:, :, :, :length]), (states[:, :, -1], normalisers[:, :, -1])
