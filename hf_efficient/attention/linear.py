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
* `linear_attention_causal_chunked`: chunk-parallel, every chunk of C tokens at once (attention/causal_prefix.py):
  each chunk's sums phi(K_c)^T [V_c, 1], an exclusive prefix sum over chunks (torch.cumsum) gives the (S, z) every
  chunk starts from, and inside a chunk the masked quadratic form tril(phi(Q_c) phi(K_c)^T) [V_c, 1] adds the
  chunk's own earlier keys. Time O(N (C + d) d), memory O(N d^2 / C + N C + N d) instead of the O(N d^2) of a
  per-token cumulative sum. Takes and returns the (S, z) state, so the same function is the prefill and, with
  one-token inputs, the O(d^2)-per-token recurrent decoder.
* GPU: the chunked form above (batched matmuls through cuBLAS), or through torch.compile ("compiled"), or
  flash-linear-attention's chunk kernel ("fla", optional: `pip install hf-efficient[fla]`, CUDA): its unnormalised
  numerator `chunk_linear_attn(..., normalize=False)`, with the denominator phi(q_i)^T sum_{j<=i} phi(k_j) + eps
  computed here (fla's own normalisation adds 1e-10, not eps).

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

from .causal_prefix import causal_prefix_attention


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
    """Causal linear attention, chunk-parallel (attention/causal_prefix.py), continuing from `initial_state` (S, z)
    of the earlier tokens.

    phi(q) (batch, heads, N, d); phi(k) (padding rows zeroed), v (batch, kv_heads, N, d). Returns the output
    (batch, N, heads, d_v) and the state (S, z) after the N tokens (float32).
    """
    initial = None if initial_state is None else (torch.cat([initial_state[0], initial_state[1][..., None]], -1), None)
    queries = group_queries(query_features, key_features.shape[1])  # (batch, kv, groups, N, d)
    numerator, denominator, (sums, _) = causal_prefix_attention(queries, key_features, value, chunk_size,
                                                               initial=initial)
    return ungroup(numerator / (denominator[..., None] + eps)), (sums[..., :-1], sums[..., -1])


def linear_attention_qkv(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor | None, causal: bool, eps: float,
    chunk_size: int, initial_state: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Feature map, padding and the bidirectional or causal chunked form in one function (so that compiling it
    fuses the elementwise work). q (batch, heads, N, d), k/v (batch, kv_heads, N, d), keep (batch, N) or None.
    Returns the output (batch, N, heads, d_v) and the causal state after the N tokens (None when bidirectional)."""
    query_features, key_features = elu_feature_map(query), elu_feature_map(key)  # float32
    if keep is not None:
        key_features = key_features * keep[:, None, :, None]  # padding keys contribute nothing
    if causal:
        return linear_attention_causal_chunked(query_features, key_features, value, eps, chunk_size, initial_state)
    return linear_attention_bidirectional(query_features, key_features, value, eps), None


def linear_attention_causal_fla(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor | None, eps: float,
) -> torch.Tensor:
    """Causal linear attention through flash-linear-attention's chunk kernel (CUDA, Triton), the same function as
    `linear_attention_causal_chunked` from the start of the sequence: fla computes the numerator
    phi(q_i)^T sum_{j<=i} phi(k_j) v_j^T (`normalize=False`; its own normalisation adds 1e-10, not eps) and the
    denominator phi(q_i)^T sum_{j<=i} phi(k_j) + eps is computed here, in float32, from the same features. The kernel
    runs in the inputs' dtype (float32 inputs: TF32 products inside the kernel); keys and values are repeated to
    every query head (the kernel has no grouped heads). q (batch, heads, N, d), k/v (batch, kv_heads, N, d)
    -> (batch, N, heads, d_v) float32."""
    try:
        from fla.ops.linear_attn import chunk_linear_attn
    except ImportError as error:
        raise ValueError("attention_backend='fla' needs flash-linear-attention's kernels (module fla.ops): install "
                         "them with `pip install 'hf-efficient[fla]'` (fla-core, CUDA), or use 'auto'.") from error
    from ..core.attention import repeat_kv

    dtype = value.dtype
    query_features, key_features = elu_feature_map(query), elu_feature_map(key)
    if keep is not None:
        key_features = key_features * keep[:, None, :, None]
    query_features, key_features = query_features.to(dtype), key_features.to(dtype)  # what the kernel sees
    groups = query.shape[1] // key.shape[1]
    # (batch, heads, N, d) -> (batch, N, heads, d), the kernel's layout
    q, k, v = (x.transpose(1, 2).contiguous() for x in (query_features, repeat_kv(key_features, groups),
                                                        repeat_kv(value, groups)))
    numerator, _ = chunk_linear_attn(q, k, v, scale=1.0, normalize=False)  # (batch, N, heads, d_v)
    normaliser = key_features.float().cumsum(2)  # (batch, kv, N, d): sum_{j<=i} phi(k_j)
    denominator = torch.einsum("bkgnd,bknd->bkgn", group_queries(query_features.float(), key.shape[1]), normaliser)
    denominator = denominator.reshape(query.shape[0], query.shape[1], -1).transpose(1, 2)  # (batch, N, heads)
    return numerator.float() / (denominator[..., None] + eps)
