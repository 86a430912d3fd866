"""The Compressive Transformer's memories as a transformers `Cache`: per layer, [compressed memory; memory] (see
attention/compressive.py), bounded by cmem_len + mem_len + compression_rate - 1 states whatever the stream length."""

from ..transformer_xl.cache_transformer_xl import TransformerXLMemoryCache, TransformerXLMemoryLayer


class CompressiveMemoryLayer(TransformerXLMemoryLayer):
    """Transformer-XL's memory layer whose `memory` (batch, cm + m, hidden) starts with `compressed_length` (cm)
    compressed states; `reconstruction` is the attention-reconstruction loss of the call that last filled it (None
    when nothing was compressed or no gradient was wanted)."""

    def reset(self) -> None:
        super().reset()
        self.compressed_length, self.reconstruction = 0, None


class CompressiveMemoryCache(TransformerXLMemoryCache):
    """A `Cache` of one `CompressiveMemoryLayer` per model layer; `reconstruction_loss` is the sum over layers of
    the last call's reconstruction losses (the causal-LM head takes it, leaving None)."""

    layer_class = CompressiveMemoryLayer
    reconstruction_loss = None
