"""Decoding caches that keep a state per layer instead of growing keys and values.

Linear attention and FAVOR+ keep running sums whose size never grows; Memory-Compressed attention keeps its current
block and compressed slots. Each is a transformers `Cache` of `StateCacheLayer`s, so it answers
`get_seq_length()` (the tokens absorbed, read for positions by the model and `GenerationMixin`), `reorder_cache`
(beam search), `batch_select_indices` / `batch_repeat_interleave`, `offload` / `prefetch` and `reset`. A state
can't be rolled back, so `crop` (assisted / speculative decoding) raises, and `update` has no keys/values to return:
the attention layer stores its state itself.
"""

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache


class StateCacheLayer(CacheLayerMixin):
    """One layer's decoding state: the tensors named in `state_names` (None before the first forward) and the number
    of tokens absorbed. Subclasses name their tensors, store them, and say why they can't be cropped."""

    is_compileable = False
    is_croppable = False
    supports_early_init = False
    state_names: tuple[str, ...] = ()
    crop_message = "This decoding state can't be rolled back to an earlier length."

    def __init__(self, **kwargs):
        super().__init__()
        self.reset()

    def reset(self) -> None:
        for name in self.state_names:
            setattr(self, name, None)
        self.seen_tokens, self.device, self.is_initialized = 0, None, False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to allocate ahead: the state arrives whole from the first forward."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} holds a decoding state, not keys and values; the attention "
                                  "layer stores it.")

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def get_max_length(self) -> int:
        return -1  # no sequence dimension to fill

    def _apply(self, function) -> None:
        for name in self.state_names:
            if getattr(self, name) is not None:
                setattr(self, name, function(getattr(self, name)))

    def offload(self) -> None:
        self._apply(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        self._apply(lambda t: t.to(self.device, non_blocking=True))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda t: t[indices])

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError(f"{self.crop_message} Assisted/speculative decoding (which crops the cache) is not "
                         "supported; generate without an assistant model.")


class StateCache(Cache):
    """A `Cache` of one `layer_class` state per model layer."""

    layer_class: type[StateCacheLayer] = StateCacheLayer

    def __init__(self, num_layers: int):
        super().__init__(layers=[self.layer_class() for _ in range(num_layers)])


def refit_state_cache(cache: Cache | None, cache_class: type[StateCache], num_layers: int,
                      refusal: str) -> Cache | None:
    """The cache the layers store their states in. `generate()` hands the model a fresh `DynamicCache` (it has no
    other way to build a cache for a custom model): an empty one is refitted in place with state layers, so it
    serves whether the caller reads it back from the outputs (as `generate()` does) or keeps passing the same
    object. A cache that already holds keys/values, or another kind (e.g. a `StaticCache`), raises with `refusal`."""
    layer_class = cache_class.layer_class
    if cache is None or (len(cache.layers) == num_layers and all(isinstance(layer, layer_class)
                                                                 for layer in cache.layers)):
        return cache
    if isinstance(cache, DynamicCache) and cache.get_seq_length() == 0:
        cache.layers, cache.layer_class_to_replicate = [layer_class() for _ in range(num_layers)], None
        return cache
    raise ValueError(
        f"{type(cache).__name__} can't serve {refusal}: pass past_key_values=None (a {cache_class.__name__} is made "
        f"for you), the past_key_values it returned, a {cache_class.__name__}, or an empty DynamicCache; with "
        "generate() leave cache_implementation unset."
    )
