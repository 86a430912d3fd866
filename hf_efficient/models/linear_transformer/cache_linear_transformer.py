"""The decoding cache of linear attention: a fixed-size state (S, z) per layer instead of growing keys/values.

`LinearAttentionStateLayer` is a transformers `CacheLayerMixin`, so a `Cache` of them answers `get_seq_length()`
(the tokens absorbed, which the model and `GenerationMixin` read for positions), `reorder_cache` (beam search),
`batch_select_indices` / `batch_repeat_interleave` and `reset`. Per layer it holds, in float32,

    S (batch, kv_heads, d, d_v) = sum_j phi(k_j) v_j^T,    z (batch, kv_heads, d) = sum_j phi(k_j)

whose size does not grow with the number of tokens. A recurrent state can't be rolled back, so `crop` (assisted /
speculative decoding) raises, and there are no keys/values for `update` to return.
"""

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache


class LinearAttentionStateLayer(CacheLayerMixin):
    """One layer's linear-attention state (S, z) and the number of tokens it has absorbed."""

    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, **kwargs):
        super().__init__()
        self.state: torch.Tensor | None = None  # S, (batch, kv_heads, d, d_v), float32
        self.normaliser: torch.Tensor | None = None  # z, (batch, kv_heads, d), float32
        self.seen_tokens = 0
        self.device: torch.device | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to allocate ahead: the state arrives whole from the first forward."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        raise NotImplementedError("A linear-attention cache holds the states (S, z), not keys and values.")

    def current(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(S, z) of the tokens so far, or None before the first forward."""
        return None if self.state is None else (self.state, self.normaliser)

    def store(self, state: tuple[torch.Tensor, torch.Tensor], new_tokens: int) -> None:
        self.state, self.normaliser = state
        self.seen_tokens += new_tokens
        self.device, self.is_initialized = self.state.device, True

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def get_max_length(self) -> int:
        return -1  # no sequence dimension, no limit

    def _apply(self, function) -> None:
        if self.state is not None:
            self.state, self.normaliser = function(self.state), function(self.normaliser)

    def offload(self) -> None:
        self._apply(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        self._apply(lambda t: t.to(self.device, non_blocking=True))

    def reset(self) -> None:
        self.state, self.normaliser, self.seen_tokens, self.device, self.is_initialized = None, None, 0, None, False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda t: t[indices])

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError(
            "A linear-attention state can't be rolled back to an earlier length, so assisted/speculative decoding "
            "(which crops the cache) is not supported; generate without an assistant model."
        )


class LinearAttentionCache(Cache):
    """A `Cache` of one `LinearAttentionStateLayer` per model layer."""

    def __init__(self, num_layers: int):
        super().__init__(layers=[LinearAttentionStateLayer() for _ in range(num_layers)])


def as_linear_attention_cache(cache: Cache | None, num_layers: int) -> Cache | None:
    """The cache the layers write their states into.

    `generate()` hands the model a fresh `DynamicCache` (it has no other way to build a cache for a custom model):
    an empty one is refitted in place with state layers, so it works both when it is read back from the outputs
    (as `generate()` does) and when the caller keeps passing the same object. A cache that already holds keys/values,
    or any other kind of cache (e.g. a `StaticCache`), raises.
    """
    if cache is None or (cache.layers and all(isinstance(layer, LinearAttentionStateLayer) for layer in cache.layers)):
        return cache
    if isinstance(cache, DynamicCache) and cache.get_seq_length() == 0:
        cache.layers = [LinearAttentionStateLayer() for _ in range(num_layers)]
        cache.layer_class_to_replicate = None
        return cache
    raise ValueError(
        f"{type(cache).__name__} can't serve linear attention, whose cache is a fixed-size state per layer: pass "
        "past_key_values=None (a LinearAttentionCache is made for you), a LinearAttentionCache, or an empty "
        "DynamicCache; with generate() leave cache_implementation unset."
    )
