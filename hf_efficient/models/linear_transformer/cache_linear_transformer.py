"""The decoding cache of linear attention: a fixed-size state (S, z) per layer instead of growing keys/values.

Per layer, in float32,

    S (batch, kv_heads, d, d_v) = sum_j phi(k_j) v_j^T,    z (batch, kv_heads, d) = sum_j phi(k_j)

whose size does not grow with the number of tokens (the shared machinery: core/state_cache.py).
"""

import torch

from ...core.state_cache import StateCache, StateCacheLayer


class LinearAttentionStateLayer(StateCacheLayer):
    """One layer's linear-attention state (S, z) and the number of tokens it has absorbed."""

    state_names = ("state", "normaliser")  # S (batch, kv_heads, d, d_v), z (batch, kv_heads, d), float32
    crop_message = "A linear-attention state can't be rolled back to an earlier length."

    def current(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(S, z) of the tokens so far, or None before the first forward."""
        return None if self.state is None else (self.state, self.normaliser)

    def store(self, state: tuple[torch.Tensor, torch.Tensor], new_tokens: int) -> None:
        self.state, self.normaliser = state
        self.seen_tokens += new_tokens
        self.device, self.is_initialized = self.state.device, True


class LinearAttentionCache(StateCache):
    """A `Cache` of one `LinearAttentionStateLayer` per model layer."""

    layer_class = LinearAttentionStateLayer
