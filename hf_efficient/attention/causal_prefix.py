"""Chunk-parallel causal kernelised attention: the prefix-sum form shared by linear attention and causal FAVOR+.

For query features phi(q_i), key features phi(k_j) = exp(c_j) u_j (c_j a per-key log scale, 0 for linear attention)
and values v_j, causal kernelised attention needs, for every i,

    numerator_i = phi(q_i)^T sum_{j<=i} phi(k_j) v_j^T,      denominator_i = phi(q_i)^T sum_{j<=i} phi(k_j).

Both come from one product by appending a column of ones to the values (v_j -> [v_j, 1]). The N tokens are cut into
N / C chunks of C, all processed at once (no loop over chunks):

* intra-chunk: the masked (C x C) matrix tril(phi(Q_c) phi(K_c)^T) times [V_c, 1];
* inter-chunk: each chunk's state phi(K_c)^T [V_c, 1] (m x (d + 1)), then an inclusive prefix sum over the chunks
  (after an initial state: what a cache carried), so that chunk c starts from the state of everything before it.

With log scales (FAVOR+), exp(c_j) can overflow, so every sum is kept relative to a reference r, the running maximum
of the log scales it covers (the online-softmax trick): a chunk's state is taken relative to its own max, and the
prefix sum over chunks, `rescaled_cumsum`, re-references each term to the running max of the terms before it, so
every exponent it takes is <= 0 and the largest term has exponent 0 (no overflow, and no underflow of a query's
whole prefix: the cause of wrong answers with one global reference, when an early query sees only keys whose log
scales are far below a later key's). It is a scan: the chunks in groups of GROUP, a (GROUP x GROUP) matrix of
exp(s_m - p_t) inside each group and the same scan (recursively) over the groups' totals, so depth log_GROUP(N / C)
and no Python loop over chunks. Inside a chunk each query uses its own running max, as in the (N x N) reference.
Without log scales (linear attention) the prefix sum is a plain torch.cumsum. References are detached: they
cancel exactly between numerator and denominator, so the gradients are those of the unstabilised formula.

Time O(N (C m + m d)) and memory O(N C + N m d / C) per head (the states of every chunk are kept for backward);
C = 64 balances the (C x C) elementwise work of a chunk against the m (d + 1) state of each chunk for the sizes of
this package (m ~ 110, d = 32: sqrt(m (d + 1)) ~ 60).
"""

import torch
import torch.nn.functional as F

FLOOR = torch.finfo(torch.float32).min  # the reference of an empty sum (and the log scale of a padding key)
GROUP = 64  # chunks per group of `rescaled_cumsum`'s scan


def rescaled_cumsum(values: torch.Tensor, scales: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, ...]:
    """Inclusive prefix sums of terms given relative to their own log scale, re-referenced to the running max:

        prefix_t = sum_{m <= t} exp(s_m - p_t) x_m,   p_t = max_{m <= t} s_m.

    values (..., n, F), scales (..., n) (detached; FLOOR for empty terms). Returns prefix (..., n, F), p (..., n).
    """
    count = values.shape[-2]
    if count <= group:  # the (n x n) matrix of exp(s_m - p_t), m <= t
        running = scales.cummax(-1).values
        exponent = scales[..., None, :] - running[..., :, None]  # (..., t, m) <= 0 where m <= t
        lower = torch.ones(count, count, dtype=torch.bool, device=values.device).tril()
        return torch.exp(exponent.masked_fill(~lower, float("-inf"))) @ values, running
    groups = -(-count // group)
    padded = groups * group - count
    values = F.pad(values, (0, 0, 0, padded))
    scales = F.pad(scales, (0, padded), value=FLOOR)
    # (..., groups * group, F) -> (..., groups, group, F): the scan inside each group
    local, local_ref = rescaled_cumsum(values.unflatten(-2, (groups, group)), scales.unflatten(-1, (groups, group)),
                                       group)
    # each group's total, then the scan over the totals; group g starts from the totals of the groups before it
    before, before_ref = rescaled_cumsum(local[..., -1, :], local_ref[..., -1], group)  # (..., groups, F)
    before = F.pad(before, (0, 0, 1, 0))[..., :-1, :]
    before_ref = F.pad(before_ref, (1, 0), value=FLOOR)[..., :-1]
    reference = torch.maximum(before_ref[..., None], local_ref)  # (..., groups, group)
    prefix = (torch.exp(before_ref[..., None] - reference)[..., None] * before[..., None, :]
              + torch.exp(local_ref - reference)[..., None] * local)
    return prefix.flatten(-3, -2)[..., :count, :], reference.flatten(-2)[..., :count]


def causal_prefix_attention(
    query_features: torch.Tensor, key_features: torch.Tensor, value: torch.Tensor, chunk_size: int,
    key_log_scale: torch.Tensor | None = None, initial: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]]:
    """Causal kernelised attention, chunk-parallel (see the module docstring).

    query_features (B, Hkv, G, N, m) (the G queries of a key/value head side by side), key_features (B, Hkv, N, m)
    with padding keys zeroed, value (B, Hkv, N, d), all float32; key_log_scale (B, Hkv, N) or None (detached is not
    needed: only the references are); initial: (sums (B, Hkv, m, d + 1), reference (B, Hkv) or None) of earlier
    tokens, the last column of sums being the normaliser sum phi(k).

    Returns the numerator (B, Hkv, G, N, d) and denominator (B, Hkv, G, N), both relative to each query's own
    reference when there are log scales (their ratio is the output), and the state after the N tokens in the
    layout of `initial`.
    """
    batch, kv_heads, groups, length, features = query_features.shape
    value = F.pad(value.float(), (0, 1), value=1.0)  # (B, Hkv, N, d + 1): the ones column gives the normaliser
    width = value.shape[-1]
    chunk = max(1, min(chunk_size, length))
    chunks = -(-length // chunk)
    padded = chunks * chunk - length  # zero keys add nothing; the padded queries' rows are cut at the end
    # (..., N, x) -> (..., chunks, C, x)
    queries = F.pad(query_features, (0, 0, 0, padded)).unflatten(-2, (chunks, chunk))  # (B, Hkv, G, n, C, m)
    keys = F.pad(key_features, (0, 0, 0, padded)).unflatten(-2, (chunks, chunk))  # (B, Hkv, n, C, m)
    values = F.pad(value, (0, 0, 0, padded)).unflatten(-2, (chunks, chunk))  # (B, Hkv, n, C, d + 1)
    if initial is None:
        initial = (keys.new_zeros(batch, kv_heads, features, width),
                   None if key_log_scale is None else keys.new_full((batch, kv_heads), FLOOR))
    scores = queries @ keys.transpose(-1, -2)[:, :, None]  # (B, Hkv, G, n, C, C)
    lower = torch.ones(chunk, chunk, dtype=torch.bool, device=keys.device).tril()

    if key_log_scale is None:
        chunk_sums = keys.transpose(-1, -2) @ values  # (B, Hkv, n, m, d + 1)
        prefix = torch.cat([initial[0][:, :, None], chunk_sums], dim=2).cumsum(2)  # (B, Hkv, n + 1, m, d + 1)
        weights = scores.masked_fill(~lower, 0.0)
        out = weights @ values[:, :, None] + queries @ prefix[:, :, None, :-1]  # (B, Hkv, G, n, C, d + 1)
        final = (prefix[:, :, -1], None)
    else:
        log_scale = F.pad(key_log_scale.float(), (0, padded), value=FLOOR).unflatten(-1, (chunks, chunk))
        chunk_max = log_scale.detach().amax(-1)  # (B, Hkv, n): each chunk's state relative to its own max
        weighted_keys = keys * torch.exp(log_scale - chunk_max[..., None])[..., None]
        chunk_sums = weighted_keys.transpose(-1, -2) @ values  # (B, Hkv, n, m, d + 1)
        # the initial state is term 0 of the scan; term c + 1 is chunk c; entry c is the state chunk c starts from
        prefix, prefix_ref = rescaled_cumsum(torch.cat([initial[0][:, :, None], chunk_sums], dim=2).flatten(-2),
                                             torch.cat([initial[1][:, :, None], chunk_max], dim=2))
        prefix = prefix.unflatten(-1, (features, width))  # (B, Hkv, n + 1, m, d + 1)
        # each query's reference: the running max over the keys it sees (earlier chunks and its own chunk so far)
        running = torch.maximum(log_scale.detach().cummax(-1).values, prefix_ref[..., :-1, None])  # (B, Hkv, n, C)
        exponent = (log_scale[..., None, :] - running[..., :, None]).masked_fill(~lower, float("-inf"))
        weights = scores * torch.exp(exponent)[:, :, None]  # (B, Hkv, G, n, C, C)
        carry = torch.exp(prefix_ref[..., :-1, None] - running)[:, :, None, ..., None]  # (B, Hkv, 1, n, C, 1)
        out = weights @ values[:, :, None] + carry * (queries @ prefix[:, :, None, :-1])
        final = (prefix[:, :, -1], prefix_ref[..., -1])
    out = out.flatten(3, 4)[..., :length, :]  # (B, Hkv, G, N, d + 1)
    return out[..., :-1], out[..., -1], final
