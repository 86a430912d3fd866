"""The decoding cache of T-DMCA: what each layer kind needs of the past, not every key.

Per layer, after `seen_tokens` tokens:

* local layer: the raw keys/values of the current block, positions [floor(seen / b) b, seen): at most b - 1;
* compressed layer: the slots of the complete groups, (batch, kv_heads, floor(seen / c), d), plus the raw keys/values
  of the incomplete group, positions [floor(seen / c) c, seen): at most c - 1. The memory grows by one slot when a
  group completes, never before (its c keys are convolved then, padding zeroed).

So decoding holds O(b) per local layer and O(N / c) per compressed layer, and a new token costs O(b) or O(N / c).
`CompressedMemoryLayer` is a transformers `CacheLayerMixin`, so the `Cache` answers `get_seq_length()`,
`reorder_cache` (beam search), `batch_select_indices` / `batch_repeat_interleave` and `reset`. Dropped keys can't be
brought back, so `crop` (assisted / speculative decoding) raises.
"""

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache


class CompressedMemoryLayer(CacheLayerMixin):
    """One layer's decoding state: raw keys/values of positions [start, seen_tokens), and slots (compressed layers)."""

    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, **kwargs):
        super().__init__()
        self.slot_keys: torch.Tensor | None = None  # (batch, kv_heads, slots, d)
        self.slot_values: torch.Tensor | None = None
        self.start = 0  # position of the first raw key kept
        self.seen_tokens = 0
        self.device: torch.device | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to allocate ahead: the state arrives from the first forward."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        raise NotImplementedError("A T-DMCA cache keeps a block / a group of raw keys and compressed slots; the "
                                  "attention layer stores them with `store`.")

    def store(self, keys: torch.Tensor, values: torch.Tensor, start: int, seen_tokens: int,
              slot_keys: torch.Tensor | None = None, slot_values: torch.Tensor | None = None) -> None:
        self.keys, self.values, self.start, self.seen_tokens = keys, values, start, seen_tokens
        self.slot_keys, self.slot_values = slot_keys, slot_values
        self.device, self.is_initialized = keys.device, True

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def get_max_length(self) -> int:
        return -1  # no limit

    def _apply(self, function) -> None:
        for name in ("keys", "values", "slot_keys", "slot_values"):
            if getattr(self, name) is not None:
                setattr(self, name, function(getattr(self, name)))

    def offload(self) -> None:
        self._apply(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        self._apply(lambda t: t.to(self.device, non_blocking=True))

    def reset(self) -> None:
        self.keys = self.values = self.slot_keys = self.slot_values = self.device = None
        self.start, self.seen_tokens, self.is_initialized = 0, 0, False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda t: t[indices])

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError(
            "A T-DMCA cache keeps only the current block and compressed slots, so it can't be rolled back to an "
            "earlier length: assisted/speculative decoding (which crops the cache) is not supported; generate without "
            "an assistant model."
        )


class CompressedMemoryCache(Cache):
    """A `Cache` of one `CompressedMemoryLayer` per model layer."""

    def __init__(self, num_layers: int):
        super().__init__(layers=[CompressedMemoryLayer() for _ in range(num_layers)])


def as_compressed_memory_cache(cache: Cache | None, num_layers: int) -> Cache | None:
    """The cache the layers store their state in. `generate()` hands the model a fresh `DynamicCache`: an empty one is
    refitted in place with `CompressedMemoryLayer`s (so it serves whether the caller keeps it or reads it back from the
    outputs). A cache that already holds keys/values, or another kind of cache, raises."""
    if cache is None or (cache.layers and all(isinstance(layer, CompressedMemoryLayer) for layer in cache.layers)):
        return cache
    if isinstance(cache, DynamicCache) and cache.get_seq_length() == 0:
        cache.layers = [CompressedMemoryLayer() for _ in range(num_layers)]
        cache.layer_class_to_replicate = None
        return cache
    raise ValueError(
        f"{type(cache).__name__} can't serve T-DMCA decoding, which keeps blocks and compressed slots per layer: pass "
        "past_key_values=None (a CompressedMemoryCache is made for you), a CompressedMemoryCache, or an empty "
        "DynamicCache; with generate() leave cache_implementation unset."
    )
