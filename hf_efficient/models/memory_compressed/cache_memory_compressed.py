"""The decoding cache of T-DMCA: what each layer kind needs of the past, not every key.

Per layer, after `seen_tokens` tokens:

* local layer: the raw keys/values of the current block, positions [floor(seen / b) b, seen): at most b - 1;
* compressed layer: the slots of the complete groups, (batch, kv_heads, floor(seen / c), d), plus the raw keys/values
  of the incomplete group, positions [floor(seen / c) c, seen): at most c - 1. The memory grows by one slot when a
  group completes, never before (its c keys are convolved then, padding zeroed).

So decoding holds O(b) per local layer and O(N / c) per compressed layer, and a new token costs O(b) or O(N / c).
`CompressedMemoryLayer` is a `StateCacheLayer` (core/state_cache.py): the `Cache` answers `get_seq_length()`,
beam search and batch selection; dropped keys can't be brought back, so `crop` raises.
"""

import torch

from ...core.state_cache import StateCache, StateCacheLayer


class CompressedMemoryLayer(StateCacheLayer):
    """One layer's decoding state: raw keys/values of positions [start, seen_tokens), and slots (compressed layers)."""

    # keys/values (batch, kv_heads, kept, d); slot_keys/slot_values (batch, kv_heads, slots, d) in compressed layers
    state_names = ("keys", "values", "slot_keys", "slot_values")
    crop_message = ("A T-DMCA cache keeps only the current block and compressed slots, so it can't be rolled back to "
                    "an earlier length.")

    def reset(self) -> None:
        super().reset()
        self.start = 0  # position of the first raw key kept

    def store(self, keys: torch.Tensor, values: torch.Tensor, start: int, seen_tokens: int,
              slot_keys: torch.Tensor | None = None, slot_values: torch.Tensor | None = None) -> None:
        self.keys, self.values, self.start, self.seen_tokens = keys, values, start, seen_tokens
        self.slot_keys, self.slot_values = slot_keys, slot_values
        self.device, self.is_initialized = keys.device, True


class CompressedMemoryCache(StateCache):
    """A `Cache` of one `CompressedMemoryLayer` per model layer."""

    layer_class = CompressedMemoryLayer
