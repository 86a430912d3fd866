"""The decoding cache of EfficientReformer: per layer the keys and values of every earlier token (LSH layers: the
shared query-key vectors and their buckets per hash round), so that a new token attends exactly as in a full pass:
a local layer to its chunk and the ones before it, an LSH layer to the most recent earlier tokens of its bucket.
`ReformerCacheLayer` is a `StateCacheLayer` (core/state_cache.py): beam search and batch selection work."""

import torch

from ...core.state_cache import StateCache, StateCacheLayer


class ReformerCacheLayer(StateCacheLayer):
    """keys / values (batch, heads, seen, d); buckets (batch, heads, rounds, seen) in LSH layers, else None."""

    state_names = ("keys", "values", "buckets")
    crop_message = "A Reformer cache keeps LSH buckets drawn for the whole prefix."

    def store(self, keys: torch.Tensor, values: torch.Tensor, buckets: torch.Tensor | None) -> None:
        self.keys, self.values, self.buckets = keys, values, buckets
        self.seen_tokens, self.device, self.is_initialized = keys.shape[2], keys.device, True


class ReformerCache(StateCache):
    """A `Cache` of one `ReformerCacheLayer` per model layer."""

    layer_class = ReformerCacheLayer
