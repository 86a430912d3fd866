"""The Reformer's two attentions: Kitaev, Kaiser, Levskaya, "Reformer: The Efficient Transformer" (arXiv 2001.04451).

LSH attention, one shared query-key projection x per head: keys are length-normalised, k = x / |x| (as
transformers' Reformer: x * rsqrt(mean(x^2) + 1e-6) / sqrt(d)); scores q.k. Each of R hash rounds draws a random
rotation W (d x b/2) and gives a token the bucket h(x) = argmax([xW; -xW]) (padding gets an extra bucket, b). Per
round the tokens are sorted by (bucket, position) and cut into chunks of c.

* Bidirectional (the paper's, trax's and transformers' rule): a chunk attends to itself and `before` / `after`
  neighbouring chunks of the sorted order, cyclically over the concatenation of the rounds (chunk 0 of round r looks
  back into the last chunk of round r - 1). A key reached twice counts twice (no duplicate correction, as in trax's
  and transformers' code). Time O(R N c (1 + before + after) d), memory O(R N c (1 + before + after)).
* Causal: a query attends to itself and to the `c * before` most recent earlier tokens of its own bucket (per
  round). Time and memory as above.

The rounds are merged with weights softmax_r(lse_r) of their log-normalisers. A query's own key scores -1e5 instead
of q.k (kept only when a query has nothing else), masked keys -1e9 (transformers' fp32 values).

Local attention (separate q, k, v): the sequence is cut into chunks of c; a chunk attends to itself and `before` /
`after` neighbouring chunks (cyclically, as transformers' Reformer, when bidirectional), scores q.k / sqrt(d), causal
masks later positions. Time O(N c (1 + before + after) d).

Deviations from the paper and from transformers' Reformer:
* Causal LSH uses the bucket window above instead of fixed chunks of the sorted order: with fixed chunks, which
  earlier tokens a query sees depends on the buckets of later tokens (a later token of a lower bucket shifts the
  chunk grid), so the output at position i changes with tokens after i, and cached decoding (which trax and
  transformers do by bucket, not by chunk) can't equal the full pass. Bidirectional LSH is the paper's rule.
* Neighbouring chunks cycle over the chunks that hold real tokens (padding sorts last in every round): on an
  unpadded input that is transformers' cycle over all chunks; with padding, real tokens keep the neighbours they
  have without it (transformers' padded rows lose the look-back of each round's first chunk into padding).
* Inputs of any length: the sequence is padded to a multiple of c inside (transformers pads to the least common
  multiple of the chunk lengths and refuses other lengths in training); an input no longer than c is one chunk,
  which gives exact (shared-QK) full attention, as transformers' short-input path.
"""

import math

import torch
from torch import nn

MASKED = -1e9  # the score of a key a query may not see
SELF = -1e5  # the score of a query's own key (LSH only): used only when nothing else is there
NORM_EPS = 1e-6


def normalize_keys(shared: torch.Tensor) -> torch.Tensor:
    """The LSH keys: the shared projection scaled to unit length, x * rsqrt(mean(x^2) + 1e-6) / sqrt(d)."""
    variance = shared.pow(2).mean(-1, keepdim=True)
    return shared * torch.rsqrt(variance + NORM_EPS) / math.sqrt(shared.shape[-1])


def hash_buckets(shared: torch.Tensor, rotations: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """shared (B, H, N, d), rotations (H, d, R, b/2) -> buckets (B, H, R, N) in [0, b); padding gets bucket b.
    rotations with b/2 = 0 mean one bucket (no hashing)."""
    batch, heads, length, _ = shared.shape
    rounds, half = rotations.shape[2], rotations.shape[3]
    if half == 0:
        buckets = torch.zeros(batch, heads, rounds, length, dtype=torch.long, device=shared.device)
    else:
        rotated = torch.einsum("bhnd,hdrk->bhrnk", shared.detach(), rotations.to(shared.dtype))
        buckets = torch.cat([rotated, -rotated], dim=-1).argmax(-1)
    if keep is not None:
        buckets = buckets.masked_fill(~keep[:, None, None, :], max(2 * half, 1))
    return buckets


def chunk_neighbours(real_chunks: torch.Tensor, rounds: int, chunks: int, before: int, after: int) -> torch.Tensor:
    """(B, R * C, before + 1 + after) long: for each chunk of the concatenated rounds, the chunks it attends to
    (offsets -before..after), cyclic over the `real_chunks` (B,) chunks of every round that hold real tokens.
    Chunks past a row's real ones (padding queries) take the last real chunk's neighbours."""
    device = real_chunks.device
    real = real_chunks.clamp(min=1)[:, None, None]  # (B, 1, 1)
    round_index = torch.arange(rounds, device=device)[None, :, None]
    chunk_index = torch.minimum(torch.arange(chunks, device=device)[None, None, :], real - 1)
    flat = (round_index * real + chunk_index).reshape(real.shape[0], rounds * chunks)  # (B, R * C)
    offsets = torch.arange(-before, after + 1, device=device)
    target = (flat[..., None] + offsets) % (rounds * real[:, :, 0, None])  # (B, R * C, O)
    return target // real[:, :, 0, None] * chunks + target % real[:, :, 0, None]


def _gather_chunks(chunked: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """chunked (B, H, K, c, ...), neighbours (B, K, O) -> (B, H, K, O * c, ...): each chunk's neighbours in a row."""
    batch, heads, count, size = chunked.shape[:4]
    rest = chunked.shape[4:]
    flat = chunked.reshape(batch, heads, count, -1)
    index = neighbours.reshape(batch, 1, -1, 1).expand(batch, heads, neighbours.shape[1] * neighbours.shape[2],
                                                       flat.shape[-1])
    gathered = flat.gather(2, index)
    return gathered.reshape(batch, heads, count, neighbours.shape[2] * size, *rest)


def _pad_to(states: torch.Tensor, length: int, dim: int, value=0) -> torch.Tensor:
    missing = length - states.shape[dim]
    if missing == 0:
        return states
    pad = [0, 0] * (states.dim() - 1 - dim % states.dim()) + [0, missing]
    return nn.functional.pad(states, pad, value=value)


def _wide(states: torch.Tensor) -> torch.Tensor:
    """At least float32 (half-precision inputs are computed in float32; float64 stays, for gradcheck)."""
    return states if states.dtype == torch.float64 else states.float()


def _softmax_with_lse(scores: torch.Tensor, dropout: float, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last axis and its log-normaliser; the maximum is subtracted before exponentiating, which keeps
    rows whose scores sit near the -1e5 self value exact in float32."""
    top = scores.amax(-1, keepdim=True)
    exp = torch.exp(scores - top)
    total = exp.sum(-1, keepdim=True)
    probs = nn.functional.dropout(exp / total, p=dropout, training=training)
    return probs, top + total.log()


def merge_rounds(outputs: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """outputs (B, H, R, N, d) and log-normalisers (B, H, R, N, 1) -> (B, H, N, d), round r weighted by
    softmax_r(lse)."""
    return (outputs * torch.softmax(lse, dim=2)).sum(2)


def real_chunk_count(keep: torch.Tensor | None, batch: int, length: int, chunk: int, device) -> torch.Tensor:
    """(B,) long: the chunks of c that hold real tokens once they come first (ceil(real / c), at least 1)."""
    real = torch.full((batch,), length, device=device) if keep is None else keep.sum(-1)
    return ((real + chunk - 1) // chunk).clamp(min=1)


def lsh_blocked(query: torch.Tensor, keys: torch.Tensor, value: torch.Tensor, buckets: torch.Tensor,
                keep: torch.Tensor | None, chunk: int, before: int, after: int, causal: bool, dropout: float = 0.0,
                training: bool = False) -> torch.Tensor:
    """LSH attention by sorted chunks. query = the shared projection (B, H, N, d), keys its `normalize_keys`,
    value (B, H, N, d), buckets (B, H, R, N) from `hash_buckets`. Returns (B, H, N, d), float32."""
    batch, heads, length, dim = query.shape
    rounds = buckets.shape[2]
    padded = -(-length // chunk) * chunk
    chunks = padded // chunk
    positions = torch.arange(padded, device=query.device)
    # the chunk-padding sorts after every real token and every padding bucket
    buckets = _pad_to(buckets, padded, -1, value=torch.iinfo(torch.long).max // (4 * padded))
    order = (buckets * padded + positions).argsort(-1)  # (B, H, R, Np): per round, by (bucket, position)
    flat_order = order.reshape(batch, heads, rounds * padded)

    def sort(states):  # (B, H, N, d) -> (B, H, R * Np, d), sorted per round
        states = _pad_to(states, padded, 2)
        return states.gather(2, flat_order[..., None].expand(-1, -1, -1, states.shape[-1]))

    sorted_query, sorted_keys, sorted_values = sort(_wide(query)), sort(_wide(keys)), sort(_wide(value))
    real = torch.ones(batch, length, dtype=torch.bool, device=query.device) if keep is None else keep
    sorted_real = _pad_to(real, padded, 1, value=False).gather(1, flat_order.reshape(batch, -1)).view(
        batch, heads, rounds * padded)
    sorted_buckets = buckets.gather(-1, order).reshape(batch, heads, rounds * padded)
    # (B, H, R * Np): the position and the rank in the round's sorted order
    sorted_positions = flat_order
    ranks = torch.arange(padded, device=query.device).repeat(rounds)[None, None].expand(batch, heads, -1)

    def chunked(states):  # (B, H, R * Np, ...) -> (B, H, R * C, c, ...)
        return states.reshape(batch, heads, rounds * chunks, chunk, *states.shape[3:])

    if causal:
        # each chunk with the `before` chunks preceding it in its own round (none across rounds)
        index = torch.arange(rounds * chunks, device=query.device)
        offsets = torch.arange(-before, 1, device=query.device)
        target = index[:, None] + offsets
        valid = (target >= index[:, None] // chunks * chunks)  # (R * C, O)
        neighbours = target.clamp(min=0)[None].expand(batch, -1, -1)
    else:
        real_chunks = real_chunk_count(keep, batch, length, chunk, query.device)
        neighbours = chunk_neighbours(real_chunks, rounds, chunks, before, after)
    key_chunks = _gather_chunks(chunked(sorted_keys), neighbours)  # (B, H, R * C, O * c, d)
    value_chunks = _gather_chunks(chunked(sorted_values), neighbours)
    key_real = _gather_chunks(chunked(sorted_real), neighbours)  # (B, H, R * C, O * c)
    key_positions = _gather_chunks(chunked(sorted_positions), neighbours)
    query_positions = chunked(sorted_positions)
    scores = torch.matmul(chunked(sorted_query), key_chunks.transpose(-1, -2))  # (B, H, R * C, c, O * c)
    allowed = key_real[..., None, :]
    if causal:
        key_buckets = _gather_chunks(chunked(sorted_buckets), neighbours)
        key_ranks = _gather_chunks(chunked(ranks), neighbours)
        distance = chunked(ranks)[..., None] - key_ranks[..., None, :]
        window = before * chunk
        same = chunked(sorted_buckets)[..., None] == key_buckets[..., None, :]
        allowed = allowed & same & (distance >= 0) & (distance <= window)
    scores = scores.masked_fill(~allowed, MASKED)
    scores = scores.masked_fill(query_positions[..., None] == key_positions[..., None, :], SELF)
    if causal:  # look-back chunks before the round's first are not there at all
        scores = scores.masked_fill(~valid.repeat_interleave(chunk, dim=1)[None, None, :, None, :], float("-inf"))
    probs, lse = _softmax_with_lse(scores, dropout, training)
    out = torch.matmul(probs, value_chunks).reshape(batch, heads, rounds * padded, dim)
    lse = lse.reshape(batch, heads, rounds * padded, 1)
    # back to position order, per round: (B, H, R, Np, ...)
    undo = order.argsort(-1) + (torch.arange(rounds, device=query.device) * padded)[None, None, :, None]
    undo = undo.reshape(batch, heads, rounds * padded)
    out = out.gather(2, undo[..., None].expand(-1, -1, -1, dim)).view(batch, heads, rounds, padded, dim)
    lse = lse.gather(2, undo[..., None]).view(batch, heads, rounds, padded, 1)
    return merge_rounds(out, lse)[:, :, :length]


def lsh_multiplicity(buckets: torch.Tensor, keep: torch.Tensor | None, chunk: int, before: int,
                     after: int) -> torch.Tensor:
    """Bidirectional LSH as a dense count (B, H, R, N, N): how many times query i of round r reaches key j through
    the chunks of `lsh_blocked` (0 = not at all). For the reference path and tests."""
    batch, heads, rounds, length = buckets.shape
    padded = -(-length // chunk) * chunk
    chunks = padded // chunk
    positions = torch.arange(length, device=buckets.device)
    order = (buckets * padded + positions).argsort(-1)
    rank = order.argsort(-1)  # (B, H, R, N): each token's place in its round's sorted order
    token_chunk = rank // chunk + (torch.arange(rounds, device=buckets.device) * chunks)[None, None, :, None]
    real_chunks = real_chunk_count(keep, batch, length, chunk, buckets.device)
    neighbours = chunk_neighbours(real_chunks, rounds, chunks, before, after)  # (B, R * C, O)
    reached = neighbours[:, None].expand(batch, heads, -1, -1).gather(
        2, token_chunk.reshape(batch, heads, -1, 1).expand(-1, -1, -1, neighbours.shape[-1]))
    reached = reached.view(batch, heads, rounds, length, -1)  # (B, H, R, N, O): chunks query i reaches
    # key j sits in chunk token_chunk[r', j] of every round r'
    hits = reached[..., None, None, :] == token_chunk[:, :, None, None, :, :, None]  # (B, H, R, N, R', N, O)
    return hits.sum((-1, -3))


def lsh_causal_allowed(query_buckets: torch.Tensor, key_buckets: torch.Tensor, query_positions: torch.Tensor,
                       keep: torch.Tensor | None, window: int) -> torch.Tensor:
    """Causal LSH as a dense mask (B, H, R, Nq, Nk): key j (positions 0..Nk-1) is seen by the query at position p when
    it is real, of the query's bucket, j <= p, and at most `window` tokens of that bucket lie in (j, p]; its own key
    always (scored as SELF: a padding query has nothing else). For the reference path and cached decoding (where the
    queries are the last Nq positions)."""
    same = query_buckets[..., :, None] == key_buckets[..., None, :]  # (B, H, R, Nq, Nk)
    if keep is not None:
        same = same & keep[:, None, None, None, :]
    count = same.cumsum(-1)
    key_positions = torch.arange(key_buckets.shape[-1], device=key_buckets.device)
    at_query = count.gather(-1, query_positions.view(1, 1, 1, -1, 1).expand(*count.shape[:-1], 1))
    earlier = key_positions <= query_positions[:, None]
    return (same & earlier & (at_query - count <= window)) | (key_positions == query_positions[:, None])


def lsh_dense(query: torch.Tensor, keys: torch.Tensor, value: torch.Tensor, weight_of_key: torch.Tensor,
              query_positions: torch.Tensor, keep: torch.Tensor | None, dropout: float = 0.0,
              training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense LSH attention: `weight_of_key` (B, H, R, Nq, Nk) counts (or 0/1) how often each query reaches each key;
    query (B, H, Nq, d), keys and value (B, H, Nk, d). Returns (output (B, H, Nq, d), weights (B, H, Nq, Nk)), float."""
    scores = torch.matmul(query.float(), keys.float().transpose(-1, -2))[:, :, None]  # (B, H, 1, Nq, Nk)
    if keep is not None:
        scores = scores.masked_fill(~keep[:, None, None, None, :], MASKED)
    key_positions = torch.arange(keys.shape[2], device=keys.device)
    scores = scores.masked_fill(query_positions[:, None] == key_positions, SELF)
    reached = weight_of_key > 0
    scores = torch.where(reached, scores + weight_of_key.float().clamp(min=1).log(), float("-inf"))
    probs, lse = _softmax_with_lse(scores, dropout, training)
    round_weights = torch.softmax(lse, dim=2)  # (B, H, R, Nq, 1)
    weights = (probs * round_weights).sum(2)
    return torch.matmul(weights, value.float()), weights


def local_blocked(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor | None,
                  chunk: int, before: int, after: int, causal: bool, scaling: float, dropout: float = 0.0,
                  training: bool = False) -> torch.Tensor:
    """Chunked local attention on (B, H, N, d) (keys and values already repeated to H heads); real tokens first
    (right padding). Returns (B, H, N, d), float32."""
    batch, heads, length, dim = query.shape
    padded = -(-length // chunk) * chunk
    chunks = padded // chunk
    real = torch.ones(batch, length, dtype=torch.bool, device=query.device) if keep is None else keep
    if causal:
        real_chunks = torch.full((batch,), chunks, device=query.device)
        neighbours = chunk_neighbours(real_chunks, 1, chunks, before, 0)
    else:
        neighbours = chunk_neighbours(real_chunk_count(keep, batch, length, chunk, query.device), 1, chunks, before,
                                      after)

    def chunked(states):
        states = _pad_to(states, padded, 2)
        return states.reshape(batch, states.shape[1], chunks, chunk, *states.shape[3:])

    key_chunks = _gather_chunks(chunked(_wide(key)), neighbours)
    value_chunks = _gather_chunks(chunked(_wide(value)), neighbours)
    positions = torch.arange(padded, device=query.device)[None, None].expand(batch, 1, -1)
    key_positions = _gather_chunks(chunked(positions), neighbours)  # (B, 1, C, O * c)
    key_real = _gather_chunks(chunked(_pad_to(real, padded, 1, value=False)[:, None]), neighbours)
    scores = torch.matmul(chunked(_wide(query)), key_chunks.transpose(-1, -2)) * scaling
    allowed = key_real[..., None, :]
    if causal:
        allowed = allowed & (key_positions[..., None, :] <= chunked(positions)[..., None])
    scores = scores.masked_fill(~allowed, MASKED)
    probs, _ = _softmax_with_lse(scores, dropout, training)
    return torch.matmul(probs, value_chunks).reshape(batch, heads, padded, dim)[:, :, :length]


def local_multiplicity(query_positions: torch.Tensor, key_length: int, keep: torch.Tensor | None, chunk: int,
                       before: int, after: int, causal: bool) -> torch.Tensor:
    """Local attention as a dense count (B, Nq, Nk): how often the query at each position reaches each key through
    the chunks of `local_blocked` (causal: only keys at or before the query). For the reference path and decoding."""
    batch = 1 if keep is None else keep.shape[0]
    device = query_positions.device
    chunks = -(-key_length // chunk)
    if causal:
        neighbours = chunk_neighbours(torch.full((batch,), chunks, device=device), 1, chunks, before, 0)
    else:
        neighbours = chunk_neighbours(real_chunk_count(keep, batch, key_length, chunk, device), 1, chunks, before,
                                      after)
    reached = neighbours[:, query_positions // chunk]  # (B, Nq, O)
    key_positions = torch.arange(key_length, device=device)
    counts = (reached[..., None] == (key_positions // chunk)[None, None, None]).sum(-2)  # (B, Nq, Nk)
    if causal:
        counts = counts * (key_positions <= query_positions[:, None])
    return counts


def local_dense(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, counts: torch.Tensor,
                keep: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense local attention with `counts` (B, Nq, Nk) from `local_multiplicity`; returns (output, weights), float."""
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    if keep is not None:
        scores = scores.masked_fill(~keep[:, None, None, :], MASKED)
    reached = counts[:, None] > 0
    scores = torch.where(reached, scores + counts[:, None].float().clamp(min=1).log(), float("-inf"))
    probs, _ = _softmax_with_lse(scores, dropout, training)
    return torch.matmul(probs, value.float()), probs
