"""Routing attention: online k-means clusters of tokens, softmax inside each cluster.

Roy, Saffar, Vaswani & Grangier, "Efficient Content-Based Sparse Attention with Routing Transformers", TACL 2021,
arXiv 2003.05997. Each routing head gives token i a unit routing vector r_i = normalize(LN(q_i) + LN(k_i)) (layer
norm without scale; with shared query-key weights, the paper's decoder setting, this is LN(q_i) up to a factor).
The layer's k centroids mu (shared by its routing heads) cut the tokens into clusters, and

    out_i = mean over the clusters C holding i of  sum_{j in C, j visible} softmax_j(q_i . k_j / sqrt(d)) v_j

* bidirectional (the paper's balanced top-k membership): each centroid takes the w tokens with the largest r . mu_c
  (w = min(routing_window, N)); a token taken by several clusters averages their outputs, one taken by none attends
  to itself alone (the paper's implementation gives it zero).
* causal: each token joins its nearest centroid (argmax_c r_i . mu_c) and sees the w most recent tokens of that
  cluster up to itself. Top-k membership over the sequence would let a later token push an earlier one out of a
  cluster, so earlier outputs would depend on later tokens; here a token's cluster depends on the token alone and its
  keys on earlier tokens alone, so nothing leaks from the future.

The centroids are a layer's persistent buffer. After a training forward they move towards the mean routing vector
of the real tokens nearest to each: mu_c <- normalize(decay mu_c + (1 - decay) mean_c), from detached statistics
all-reduced (summed) over the processes of `torch.distributed` when it is initialised, so every process keeps the
same centroids; eval never changes them (see EfficientRoutingAttention).

Paths: `routing_reference` forms the dense (N, N) weights (tests only). `routing_blocked` gathers each cluster's
members (bidirectional: (k, w) of them; causal: the tokens sorted by (cluster, position), in windows of w queries
against the 2w sorted keys that hold their cluster's w most recent tokens) and runs exact softmax through
transformers' attention interface (sdpa on GPU: batched over clusters), then scatters back. Time per routing head
O(k w^2 d) bidirectional (O(N w d) at k w ~ N) and O(N w d) causal, memory O(k w^2) and O(N w); the k-means step
costs O(N k d).

Deviations from the paper: tokens are routed, not queries and keys separately (one routing vector per token and
head, so that causal windows are exact); causal membership is nearest-centroid with a recency window instead of
top-k (above); a token in no cluster sees itself, not nothing; attention uses the raw q . k (the paper
layer-normalises q and k for attention too), so routing heads keep a converted model's attention inside each
cluster; centroids start as seeded random unit vectors, not from data; the update is a plain EMA of normalised means
(no separate EMA counts); there is no commitment loss (the routing vectors get no gradient from the routing).
"""

import torch
import torch.nn.functional as F

from ..core.attention import EfficientAttention
from ..core.distributed import distributed

LAYER_SEED_STRIDE = 100003  # layer l's centroids come from seed * LAYER_SEED_STRIDE + l


def draw_centroids(num_clusters: int, dim: int, seed: int) -> torch.Tensor:
    """(k, d) float32 random unit vectors from `seed` (CPU generator: the same on every device)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return F.normalize(torch.randn(num_clusters, dim, generator=generator, dtype=torch.float32), dim=-1)


def routing_vectors(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """(batch, heads, N, d) unit vectors normalize(LN(q) + LN(k)), detached: routing is discrete."""
    dim = query.shape[-1]
    with torch.no_grad():
        mixed = F.layer_norm(query.float(), (dim,)) + F.layer_norm(key.float(), (dim,))
        return F.normalize(mixed, dim=-1)


def nearest_clusters(vectors: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(batch, heads, N) index of each token's nearest centroid (largest r . mu)."""
    return (vectors @ centroids.to(vectors.dtype).T).argmax(-1)


def causal_clusters(vectors: torch.Tensor, centroids: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """(batch, heads, N) nearest cluster of each token; padding gets cluster k, which no real token joins."""
    clusters = nearest_clusters(vectors, centroids)
    if keep is not None:
        clusters = clusters.masked_fill(~keep[:, None, :], centroids.shape[0])
    return clusters


def top_k_members(vectors: torch.Tensor, centroids: torch.Tensor, keep: torch.Tensor | None,
                  window: int) -> torch.Tensor:
    """(batch, heads, k, w) the w tokens each centroid takes (largest r . mu; padding last), in position order."""
    scores = (vectors @ centroids.to(vectors.dtype).T).transpose(-1, -2)  # (batch, heads, k, N)
    if keep is not None:
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    members = scores.topk(min(window, scores.shape[-1]), dim=-1).indices
    return members.sort(dim=-1).values


def causal_routing_keep(clusters: torch.Tensor, window: int, num_clusters: int, query_start: int = 0) -> torch.Tensor:
    """(batch, heads, N - query_start, N) bool from `causal_clusters` ids of N tokens (padding: id num_clusters):
    query i (from query_start on) keeps key j when they share a cluster, j <= i, and fewer than w tokens of the
    cluster lie in (j, i]."""
    length = clusters.shape[-1]
    counts = F.one_hot(clusters, num_clusters + 1).cumsum(2)  # (batch, heads, N, k + 1): running count per cluster
    ranks = counts.gather(-1, clusters[..., None])[..., 0]  # (batch, heads, N): 1, 2, ... within each cluster
    queries, query_ranks = clusters[..., query_start:, None], ranks[..., query_start:, None]
    positions = torch.arange(length, device=clusters.device)
    earlier = positions[None, :] <= positions[query_start:, None]
    return (queries == clusters[..., None, :]) & earlier & (query_ranks - ranks[..., None, :] < window)


def routing_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, routing: torch.Tensor,
                      keep: torch.Tensor | None, window: int, causal: bool, scaling: float,
                      num_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense reference. q/k/v (batch, heads, N, d), keys one per query head; `routing` is `causal_clusters` (causal)
    or `top_k_members` (bidirectional). Returns (batch, N, heads, d) (padding rows zero) and the (batch, heads, N, N)
    weights: out = weights @ v."""
    length = query.shape[2]
    scores = (query @ key.transpose(-1, -2)) * scaling
    if causal:
        keep_pairs = causal_routing_keep(routing, window, num_clusters)
        weights = scores.masked_fill(~keep_pairs, float("-inf")).softmax(-1)
    else:  # the mean over the clusters holding i of the softmax over the cluster's real tokens
        member = torch.zeros(*routing.shape[:3], length, dtype=torch.bool, device=query.device)
        member = member.scatter(-1, routing, True)  # (batch, heads, k, N)
        key_ok = member[..., None, :] & member[..., :, None]  # (batch, heads, k, N, N)
        real = torch.ones(query.shape[0], length, dtype=torch.bool, device=query.device) if keep is None else keep
        key_ok = key_ok & (real[:, None, None, None, :] | torch.eye(length, dtype=torch.bool, device=query.device))
        per_cluster = scores[:, :, None].masked_fill(~key_ok, float("-inf")).softmax(-1).nan_to_num(0.0)
        count = member.sum(2)  # (batch, heads, N)
        alone = torch.eye(length, dtype=query.dtype, device=query.device)  # a token in no cluster sees itself
        weights = torch.where(count[..., None] > 0, per_cluster.sum(2) / count.clamp(min=1)[..., None], alone)
    if keep is not None:
        weights = weights * keep[:, None, :, None]
    return (weights @ value).transpose(1, 2), weights


class PerHeadKeys:
    """Stands in for the attention module where the keys/values are already one per query head (gathered per routing
    head, or a local/routing split inside a key/value group), so that `attend` does not repeat them for
    grouped-query attention."""

    num_key_value_groups = 1

    def __init__(self, attention: EfficientAttention):
        self.attention = attention

    def __getattr__(self, name: str):
        return getattr(self.attention, name)

    def attend(self, *args, **kwargs):
        return EfficientAttention.attend(self, *args, **kwargs)


def per_head_keys(attention: EfficientAttention) -> EfficientAttention | PerHeadKeys:
    """The module to attend through with keys/values one per query head."""
    return attention if attention.num_key_value_groups == 1 else PerHeadKeys(attention)


def gather_tokens(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """states (batch, heads, N, d), index (batch, heads, *shape) -> (batch, heads, *shape, d)."""
    flat = index.reshape(*index.shape[:2], -1)
    gathered = states.gather(2, flat[..., None].expand(*flat.shape, states.shape[-1]))
    return gathered.view(*index.shape, states.shape[-1])


def routing_blocked(attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    routing: torch.Tensor, keep: torch.Tensor | None, window: int, causal: bool) -> torch.Tensor:
    """The same function as `routing_reference` over gathered clusters, O(N w) memory. Returns (batch, N, heads, d)."""
    if causal:
        return causal_blocked(attention, query, key, value, routing, window)
    batch, heads, length, dim = query.shape
    members = routing  # (batch, heads, k, w)
    clusters, size = members.shape[2:]

    def fold(x: torch.Tensor) -> torch.Tensor:
        # (batch, heads, k, w, ...) -> (batch * k, heads, w, ...)
        return x.transpose(1, 2).reshape(batch * clusters, heads, *x.shape[3:])

    mask = None  # without padding every member is a real token: no mask (sdpa's fused kernels)
    if keep is not None:  # padding keys masked (a padding query keeps itself, so no row is empty)
        member_real = keep[:, None, :].expand(batch, heads, length).gather(2, members.reshape(batch, heads, -1))
        eye = torch.eye(size, dtype=torch.bool, device=query.device)
        mask = fold(member_real.view(batch, heads, clusters, 1, size) | eye)
    q, k, v = (fold(gather_tokens(x, members)) for x in (query, key, value))
    attended, _ = attend_per_head(attention, q, k, v, mask)  # (batch * k, w, heads, d)
    attended = attended.view(batch, clusters, size, heads, dim).permute(0, 3, 1, 2, 4).reshape(batch, heads, -1, dim)
    index = members.reshape(batch, heads, -1)
    total = query.new_zeros(batch, heads, length, dim).scatter_add(2, index[..., None].expand(-1, -1, -1, dim),
                                                                    attended)
    count = query.new_zeros(batch, heads, length).scatter_add(2, index, query.new_ones(index.shape))
    out = torch.where(count[..., None] > 0, total / count.clamp(min=1)[..., None], value)  # in no cluster: itself
    return out.transpose(1, 2)


def causal_blocked(attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   clusters: torch.Tensor, window: int) -> torch.Tensor:
    """Causal routing: tokens sorted by (cluster, position); sorted block t of w queries against sorted blocks t-1 and
    t (2w keys), which hold every query's w most recent cluster-mates; the exact pattern is a mask."""
    batch, heads, length, dim = query.shape
    device = query.device
    order = (clusters * length + torch.arange(length, device=device)).argsort(dim=-1)  # position order per cluster
    block = min(window, length)
    blocks = -(-length // block)
    padded = blocks * block
    # sorted cluster ids; the slots past the end and before the first block hold -1, which no token has
    sorted_ids = F.pad(clusters.gather(2, order), (0, padded - length), value=-1)
    order = F.pad(order, (0, padded - length))  # the filler slots read token 0; no real query sees them

    def windows(x: torch.Tensor) -> torch.Tensor:
        # (batch, heads, padded, d) -> (batch, heads, blocks, 2w, d): sorted blocks t-1 and t
        return F.pad(x, (0, 0, block, 0)).unfold(2, 2 * block, block).movedim(-1, 3)

    q = gather_tokens(query, order).view(batch, heads, blocks, block, dim)
    k, v = windows(gather_tokens(key, order)), windows(gather_tokens(value, order))
    key_ids = F.pad(sorted_ids, (block, 0), value=-1).unfold(2, 2 * block, block)  # (batch, heads, blocks, 2w)
    offsets = torch.arange(block, device=device)[:, None] + block - torch.arange(2 * block, device=device)[None, :]
    recent = (offsets >= 0) & (offsets < block)  # sorted key at most w - 1 places before the query
    mask = (sorted_ids.view(batch, heads, blocks, block, 1) == key_ids[..., None, :]) & recent

    def fold(x: torch.Tensor) -> torch.Tensor:
        # (batch, heads, blocks, ...) -> (batch * blocks, heads, ...)
        return x.transpose(1, 2).reshape(batch * blocks, heads, *x.shape[3:])

    attended, _ = attend_per_head(attention, fold(q), fold(k), fold(v), fold(mask))  # (batch * blocks, w, heads, d)
    attended = attended.view(batch, blocks, block, heads, dim).permute(0, 3, 1, 2, 4).reshape(batch, heads, -1, dim)
    out = torch.empty_like(query).scatter(2, order[..., :length, None].expand(-1, -1, -1, dim),
                                          attended[:, :, :length])
    return out.transpose(1, 2)


def attend_per_head(attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    keep: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`attention.attend` on keys/values already one per query head: ((batch, q, heads, d), weights or None)."""
    return per_head_keys(attention).attend(query, key, value, keep, need_weights=need_weights)


def centroid_statistics(vectors: torch.Tensor, centroids: torch.Tensor,
                        keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums (k, d) and counts (k,) of the real tokens' routing vectors by nearest centroid, over every routing head."""
    nearest = nearest_clusters(vectors, centroids).reshape(-1)
    weight = vectors.new_ones(vectors.shape[:3]) if keep is None else keep[:, None, :].expand(vectors.shape[:3])
    weight = weight.to(vectors.dtype).reshape(-1)
    flat = vectors.reshape(-1, vectors.shape[-1]) * weight[:, None]
    sums = vectors.new_zeros(centroids.shape).index_add(0, nearest, flat)
    counts = vectors.new_zeros(centroids.shape[0]).index_add(0, nearest, weight)
    return sums, counts


def moved_centroids(centroids: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, decay: float) -> torch.Tensor:
    """One EMA step of k-means: mu_c <- normalize(decay mu_c + (1 - decay) sums_c / counts_c) where counts_c > 0, with
    sums and counts first summed over the processes of torch.distributed (when initialised)."""
    if distributed():
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(counts)
    means = sums / counts.clamp(min=1)[:, None]
    moved = F.normalize(decay * centroids.float() + (1.0 - decay) * means, dim=-1)
    return torch.where(counts[:, None] > 0, moved, centroids.float()).to(centroids.dtype)
