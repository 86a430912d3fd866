"""The decoding cache of causal routing attention: every past key and value, and each routing head's past clusters.

A new token's routing heads see the w most recent tokens of its cluster, which may lie anywhere in the past, so
the keys/values of every past token are kept (as a KV cache: O(N) per layer), with the cluster id of each past token
in each routing head (padding: id k), computed once with the eval-mode centroids. A new token costs O(N d) per head
(the local heads' O(local_window) keys are sliced from the same keys). `RoutingCacheLayer` is a `StateCacheLayer`
(core/state_cache.py): the `Cache` answers `get_seq_length()`, beam search and batch selection; `crop` raises.
"""

import torch

from ...core.state_cache import StateCache, StateCacheLayer


class RoutingCacheLayer(StateCacheLayer):
    """One layer's decoding state: keys/values (batch, kv_heads, seen, d) and clusters (batch, routing heads, seen)."""

    state_names = ("keys", "values", "clusters")
    crop_message = "A routing-attention cache keeps each past token's cluster with its key, and is not cropped."

    def store(self, keys: torch.Tensor, values: torch.Tensor, clusters: torch.Tensor) -> None:
        self.keys, self.values, self.clusters = keys, values, clusters
        self.seen_tokens = keys.shape[2]
        self.device, self.is_initialized = keys.device, True


class RoutingCache(StateCache):
    """A `Cache` of one `RoutingCacheLayer` per model layer."""

    layer_class = RoutingCacheLayer
