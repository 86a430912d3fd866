"""FAVOR+: softmax attention through positive orthogonal random features (Performer).

Choromanski et al., "Rethinking Attention with Performers", arXiv 2009.14794.

    phi(x) = exp(W x - |x|^2 / 2) / sqrt(m),  W: (m, d) random rows,  E[phi(q) . phi(k)] = exp(q . k)
    out_i = sum_j phi(q_i) . phi(k_j) v_j / sum_j phi(q_i) . phi(k_j)      (j <= i when causal)

with q, k scaled by d^-1/4 so that q . k is the attention logit. The ReLU kernel phi(x) = relu(W x) / sqrt(m) is
the paper's other choice (not an estimate of softmax; + 1e-3, as in the paper's code).

Features: `draw_random_features` stacks ceil(m / d) independent orthogonal d x d blocks (QR of a Gaussian
matrix), then scales each row by a chi(d) draw (the norm of a Gaussian row, so each row is marginally N(0, I):
unbiased) or by sqrt(d) ("regularized", the paper code's `scaling=1`: rows no longer Gaussian, so the softmax
estimate is biased).

Numerical stabilisation (the paper's code subtracts a max inside the exp and adds eps = 1e-6). Here every token's
features are shifted by the max of its own exponent, so its largest feature is exactly 1 + eps:
    phi(x) = exp(c_x) u_x,  u_x = (exp(e_x - c_x) + eps) / sqrt(m),  e_x = W x - |x|^2 / 2,  c_x = max e_x.
A query's exp(c_q) cancels between numerator and denominator and is dropped; a key's c_k ("log scale") is kept
and applied relative to a reference r (the max c_k seen so far: the online-softmax trick), exp(c_k - r) <= 1.
Deviation from the paper's code, which shifts every key by one max over the whole sequence and batch: that max
makes outputs depend (through eps) on later tokens, padding and the batch; the per-token shift doesn't, so
causality, padding invariance and cached decoding hold exactly, and phi is a fixed function of each token.

Paths (all compute the same function; features and sums in float32):
* `favor_reference`: the explicit (N x N) matrix phi(Q) phi(K)^T, masked and row-normalised; tests, and the
  attention weights for output_attentions. Time O(N^2 m), memory O(N^2 + N m).
* `favor_bidirectional`: phi(Q) (phi(K)^T V) / phi(Q) (phi(K)^T 1). Time O(N m d), memory O(N m + m d).
* `favor_causal_chunked`: chunk-parallel prefix sums (attention/causal_prefix.py): every chunk of C at once, the
  masked (C x C) matrix inside a chunk, the chunks' (m x d) states summed over the chunks by a scan that keeps each
  sum relative to the running max log scale (no loop over chunks). Time O(N (C m + m d)); memory O(N m + N C) plus
  the chunks' states O(N m d / C). Decoding continues from the cached (S, z, r): O(m d) per new token.
* "compiled" (CUDA): the same functions through torch.compile: `favor_bidirectional_qkv` / `favor_causal_qkv`
  (features and sums in one graph); the elementwise float32 work on the (N, m) features and the (C x C) chunk
  matrices, which dominates the eager path's time and memory, is fused into a few kernels.
GQA: keys, values and the state are per KV head; the queries of a group share them (a group axis G).
"""

import math
from dataclasses import dataclass

import torch

from .causal_prefix import FLOOR, causal_prefix_attention

SOFTMAX_EPSILON = 1e-6  # the paper code's numerical_stabilizer for the softmax kernel
RELU_EPSILON = 1e-3  # and for the ReLU kernel


def draw_random_features(
    nb_features: int, head_dim: int, generator: torch.Generator, orthogonal: bool = True, norms: str = "chi"
) -> torch.Tensor:
    """(nb_features, head_dim) float32 projection rows, drawn on CPU from `generator` (also under a meta-device
    context: transformers builds models on meta before loading, and the draw must not depend on the device).

    orthogonal: rows within each block of head_dim are exactly orthogonal (QR with the sign of diag(R), so the
    block is Haar-distributed); else i.i.d. Gaussian rows. norms: "chi" (Gaussian row lengths) or "regularized"
    (every row has length sqrt(head_dim)).
    """
    if orthogonal:
        blocks = math.ceil(nb_features / head_dim)
        gaussian = torch.randn(blocks, head_dim, head_dim, generator=generator, dtype=torch.float64, device="cpu")
        q, r = torch.linalg.qr(gaussian)  # batched over the blocks
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # Haar: columns signed by diag(R)
        directions = q.transpose(-1, -2).reshape(blocks * head_dim, head_dim)[:nb_features]  # orthonormal rows
        if norms == "chi":
            lengths = torch.randn(nb_features, head_dim, generator=generator, dtype=torch.float64, device="cpu")
            lengths = lengths.norm(dim=1)
        else:
            lengths = torch.full((nb_features,), math.sqrt(head_dim), dtype=torch.float64, device="cpu")
        rows = directions * lengths[:, None]
    else:
        rows = torch.randn(nb_features, head_dim, generator=generator, dtype=torch.float64, device="cpu")
        if norms == "regularized":
            rows = rows / rows.norm(dim=1, keepdim=True) * math.sqrt(head_dim)
    return rows.to(torch.float32)


def softmax_features(x: torch.Tensor, projection: torch.Tensor, normalizer: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive random features of x (..., d) -> (u (..., m), log scale c (...)), phi(x) = exp(c) u."""
    x = x.float() * normalizer  # d^-1/4: then q . k is the attention logit
    exponent = x @ projection.float().T - x.pow(2).sum(-1, keepdim=True) / 2  # (..., m)
    log_scale = exponent.amax(-1)
    features = (torch.exp(exponent - log_scale[..., None]) + SOFTMAX_EPSILON) / math.sqrt(projection.shape[0])
    return features, log_scale


def relu_features(x: torch.Tensor, projection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU random features (the paper code's relu_kernel_transformation); the log scale is 0."""
    features = torch.relu(x.float() @ projection.float().T / math.sqrt(projection.shape[0])) + RELU_EPSILON
    return features, features.new_zeros(features.shape[:-1])


def _masked_log_scale(log_scale: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """(B, Hkv, 1, N) with padded keys at FLOOR (their weight is zeroed separately)."""
    if keep is None:
        return log_scale
    return log_scale.masked_fill(~keep[:, None, None, :], FLOOR)


def favor_reference(
    query_features: torch.Tensor, key_features: torch.Tensor, key_log_scale: torch.Tensor, value: torch.Tensor,
    keep: torch.Tensor | None, causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The explicit masked kernel matrix. query_features (B, Hkv, G, N, m), key_features (B, Hkv, 1, N, m),
    key_log_scale (B, Hkv, 1, N), value (B, Hkv, 1, N, d), keep (B, N) bool or None.

    Returns the output (B, Hkv, G, N, d) and the implied attention weights (B, Hkv, G, N, N).
    """
    length = key_features.shape[-2]
    allowed = torch.ones(length, length, dtype=torch.bool, device=value.device)
    if causal:
        allowed = allowed.tril()
    if keep is not None:
        allowed = allowed & keep[:, None, None, None, :]  # (B, 1, 1, N, N)
    exponent = key_log_scale[..., None, :].masked_fill(~allowed, float("-inf"))  # (B, Hkv, 1, N, N)
    reference = exponent.amax(-1, keepdim=True).clamp_min(FLOOR).detach()  # per query row
    kernel = (query_features @ key_features.transpose(-1, -2)) * torch.exp(exponent - reference)
    weights = kernel / kernel.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return weights @ value.float(), weights


def favor_bidirectional(
    query_features: torch.Tensor, key_features: torch.Tensor, key_log_scale: torch.Tensor, value: torch.Tensor,
    keep: torch.Tensor | None,
) -> torch.Tensor:
    """phi(Q) (phi(K)^T V) / phi(Q) (phi(K)^T 1), shapes as in `favor_reference`. Returns (B, Hkv, G, N, d)."""
    log_scale = _masked_log_scale(key_log_scale, keep)
    reference = log_scale.amax(-1, keepdim=True).detach()  # (B, Hkv, 1, 1)
    weight = torch.exp(log_scale - reference)
    if keep is not None:
        weight = weight * keep[:, None, None, :]
    weighted_keys = key_features * weight[..., None]  # (B, Hkv, 1, N, m)
    sums = weighted_keys.transpose(-1, -2) @ value.float()  # (B, Hkv, 1, m, d)
    normaliser = weighted_keys.sum(-2)  # (B, Hkv, 1, m)
    numerator = query_features @ sums  # (B, Hkv, G, N, d)
    denominator = (query_features @ normaliser[..., None]).clamp_min(torch.finfo(torch.float32).tiny)
    return numerator / denominator


@dataclass
class FavorState:
    """The causal prefix state after some tokens, relative to the log-scale reference r:
    sums = sum_j exp(c_j - r) u_j v_j^T (B, Hkv, 1, m, d), normaliser = sum_j exp(c_j - r) u_j (B, Hkv, 1, m),
    reference r (B, Hkv, 1). Its size does not depend on the number of tokens."""

    sums: torch.Tensor
    normaliser: torch.Tensor
    reference: torch.Tensor

    @classmethod
    def empty(cls, key_features: torch.Tensor, value: torch.Tensor) -> "FavorState":
        batch, kv_heads, _, _, features = key_features.shape
        sums = key_features.new_zeros(batch, kv_heads, 1, features, value.shape[-1])
        return cls(sums, key_features.new_zeros(batch, kv_heads, 1, features),
                   key_features.new_full((batch, kv_heads, 1), FLOOR))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.sums, self.normaliser, self.reference


def advance_state(state: FavorState, key_features: torch.Tensor, log_scale: torch.Tensor, value: torch.Tensor,
                  real: torch.Tensor | None) -> FavorState:
    """The state after adding keys (B, Hkv, 1, C, m) with log scales (B, Hkv, 1, C) (padded ones at FLOOR), values
    (B, Hkv, 1, C, d) and real-key mask (B, 1, 1, C) or None; re-referenced to the new running max."""
    reference = torch.maximum(log_scale.amax(-1), state.reference).detach()  # (B, Hkv, 1)
    key_weight = torch.exp(log_scale - reference[..., None])
    if real is not None:
        key_weight = key_weight * real
    weighted_keys = key_features * key_weight[..., None]  # (B, Hkv, 1, C, m)
    rescale = torch.exp(state.reference - reference)
    sums = rescale[..., None, None] * state.sums + weighted_keys.transpose(-1, -2) @ value.float()
    normaliser = rescale[..., None] * state.normaliser + weighted_keys.sum(-2)
    return FavorState(sums, normaliser, reference)


def favor_state(key_features: torch.Tensor, key_log_scale: torch.Tensor, value: torch.Tensor,
                keep: torch.Tensor | None) -> FavorState:
    """The causal state after all these tokens (what decoding continues from), in one step."""
    real = None if keep is None else keep[:, None, None, :]
    return advance_state(FavorState.empty(key_features, value), key_features,
                         _masked_log_scale(key_log_scale, keep), value, real)


def favor_causal_chunked(
    query_features: torch.Tensor, key_features: torch.Tensor, key_log_scale: torch.Tensor, value: torch.Tensor,
    keep: torch.Tensor | None, chunk_size: int, state: FavorState | None = None,
) -> tuple[torch.Tensor, FavorState]:
    """Causal FAVOR+ by chunk-parallel prefix sums (attention/causal_prefix.py), continuing from `state` (None: from
    the start). Shapes as in `favor_reference` (N = the new tokens; keep (B, N) covers only them). Returns the output
    (B, Hkv, G, N, d) and the state after the last token."""
    log_scale = _masked_log_scale(key_log_scale, keep)[:, :, 0]  # (B, Hkv, N), padded keys at FLOOR
    keys = key_features[:, :, 0] if keep is None else key_features[:, :, 0] * keep[:, None, :, None]
    initial = None if state is None else (torch.cat([state.sums, state.normaliser[..., None]], -1)[:, :, 0],
                                          state.reference[:, :, 0])
    numerator, denominator, (sums, reference) = causal_prefix_attention(
        query_features, keys, value[:, :, 0], chunk_size, log_scale, initial)
    out = numerator / denominator.clamp_min(torch.finfo(torch.float32).tiny)[..., None]
    return out, FavorState(sums[:, :, None, :, :-1], sums[:, :, None, :, -1], reference[:, :, None])


def favor_causal_qkv(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, projection: torch.Tensor, kernel: str,
    normalizer: float, keep: torch.Tensor | None, chunk_size: int, state: tuple[torch.Tensor, ...] | None,
) -> tuple[torch.Tensor, ...]:
    """`feature_map` of q (B, Hkv, G, N, d) and k (B, Hkv, 1, N, d), then `favor_causal_chunked` from the state
    tensors (sums, normaliser, reference) or None: one function, so that compiling it fuses the features' and the
    chunks' elementwise work. Returns the output (B, Hkv, G, N, d) and the state's tensors."""
    query_features, _ = feature_map(query, projection, kernel, normalizer)
    key_features, key_log_scale = feature_map(key, projection, kernel, normalizer)
    out, after = favor_causal_chunked(query_features, key_features, key_log_scale, value, keep, chunk_size,
                                      None if state is None else FavorState(*state))
    return out, *after.tensors()


def feature_map(x: torch.Tensor, projection: torch.Tensor, kernel: str, normalizer: float):
    """The kernel's features of x: `softmax_features` (normalizer d^-1/4) or `relu_features`."""
    if kernel == "relu":
        return relu_features(x, projection)
    return softmax_features(x, projection, normalizer)


def favor_bidirectional_qkv(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, projection: torch.Tensor, kernel: str,
    normalizer: float, keep: torch.Tensor | None,
) -> torch.Tensor:
    """`feature_map` of q (B, Hkv, G, N, d) and k (B, Hkv, 1, N, d), then `favor_bidirectional`: one function, so
    that compiling it fuses the features' elementwise work (exp, shifts, sums) with the sums' (the GPU path)."""
    query_features, _ = feature_map(query, projection, kernel, normalizer)
    key_features, key_log_scale = feature_map(key, projection, kernel, normalizer)
    return favor_bidirectional(query_features, key_features, key_log_scale, value, keep)


def exact_softmax_reference(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor | None, causal: bool,
    scaling: float,
) -> torch.Tensor:
    """Exact softmax attention, (B, H, N, d) inputs with K/V already repeated: what FAVOR+ estimates (tests)."""
    length = key.shape[-2]
    allowed = torch.ones(length, length, dtype=torch.bool, device=query.device)
    if causal:
        allowed = allowed.tril()
    if keep is not None:
        allowed = allowed & keep[:, None, None, :]
    scores = (query @ key.transpose(-1, -2)) * scaling
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ value
