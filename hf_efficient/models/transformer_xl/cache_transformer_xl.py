"""Transformer-XL's memory as a transformers `Cache`: per layer, the last mem_len input hidden states (detached).

`generate()`, beam search and batch selection see an ordinary `Cache` (a `StateCache`, core/state_cache.py);
`get_seq_length()` is the number of tokens absorbed (positions continue from it), while the memory itself never
holds more than mem_len states, so a new token costs O(mem_len + n). Dropped states can't come back: `crop` raises.
`reset()` empties every layer (a new document or stream).
"""

import torch

from ...core.state_cache import StateCache, StateCacheLayer


class TransformerXLMemoryLayer(StateCacheLayer):
    """One layer's memory: hidden states (batch, m, hidden), their keep-mask (batch, m) or None (all real), their
    position ids (batch, m) (read by rotary / absolute-position models), and in inference (eval mode, no gradient)
    the keys and values (batch, kv_heads, m, d) the attention projected from them, so that decoding projects only
    the new tokens; None whenever they may be stale (made in training, or given as hidden states only)."""

    state_names = ("memory", "keep", "positions", "memory_keys", "memory_values")
    crop_message = "A Transformer-XL memory keeps only the last mem_len hidden states, so it can't be rolled back."

    def reset(self) -> None:
        super().reset()
        self.pending = None  # this call's keys/values of [memory; segment], set by the attention in inference
        self.positional = None  # (key length, W_r R over its distances), reused while the key length repeats

    def store(self, memory: torch.Tensor, keep: torch.Tensor | None, positions: torch.Tensor, seen_tokens: int,
              memory_keys: torch.Tensor | None = None, memory_values: torch.Tensor | None = None) -> None:
        self.memory, self.keep, self.positions, self.seen_tokens = memory, keep, positions, seen_tokens
        self.memory_keys, self.memory_values, self.pending = memory_keys, memory_values, None
        self.device, self.is_initialized = memory.device, True

    @property
    def memory_length(self) -> int:
        return 0 if self.memory is None else self.memory.shape[1]


class TransformerXLMemoryCache(StateCache):
    """A `Cache` of one `TransformerXLMemoryLayer` per model layer."""

    layer_class = TransformerXLMemoryLayer

    @classmethod
    def from_memories(cls, memories: list[torch.Tensor], seen_tokens: int | None = None,
                      keep: torch.Tensor | None = None) -> "TransformerXLMemoryCache":
        """A cache holding given memories, one (batch, m, hidden) tensor per layer (e.g. the `hidden_states` a model
        returned for an earlier segment, last m positions), as if the model had absorbed `seen_tokens` (default m)
        tokens; `keep` (batch, m) marks their padding."""
        cache = cls(len(memories))
        length = memories[0].shape[1]
        seen = length if seen_tokens is None else seen_tokens
        positions = torch.arange(seen - length, seen, device=memories[0].device).expand(memories[0].shape[0], -1)
        for layer, memory in zip(cache.layers, memories, strict=True):
            if memory.shape[:2] != memories[0].shape[:2]:
                raise ValueError("Every layer's memory must have the same (batch, length).")
            layer.store(memory.detach(), None if keep is None else keep.bool(), positions, seen)
        return cache
