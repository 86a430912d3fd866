"""Configuration of EfficientMemoryCompressed (Liu et al., "Generating Wikipedia by Summarizing Long Sequences",
arXiv 1801.10198: the T-DMCA decoder)."""

from ...core.configuration import EfficientConfig

LAYER_KINDS = ("local", "compressed")
COMPRESSION_INITS = ("average_pooling", "random")


def alternating_layer_types(num_layers: int) -> list[str]:
    """The paper's alternation, local first: L, M, L, M, L for five layers (L = local, M = memory-compressed)."""
    return [LAYER_KINDS[layer % 2] for layer in range(num_layers)]


class EfficientMemoryCompressedConfig(EfficientConfig):
    """Backbone fields plus T-DMCA's knobs (defaults: the paper's).

    attention_layer_types: one entry per layer, "local" or "compressed" (a single string: every layer); None (the
        default) alternates local and compressed starting with local, the paper's "L, M, L, M, L" (an even number of
        layers ends on a compressed layer; one layer is local only). Named `attention_layer_types`, not
        `layer_types`: transformers reads `layer_types` itself (its own kinds, such as "sliding_attention", in config
        validation on save and in the caches `generate()` builds), which our kinds would break.
    block_size: b, the local layers' block length (the paper: 256). A block longer than the input is the input.
        Compressed layers of a causal model also process their queries in blocks of b (rounded up to a multiple of c)
        -- a memory trade-off only, the result does not depend on it.
    compression_factor: c, the kernel size and stride of the convolutions that pool keys and values in the
        compressed layers (the paper: 3). Any input length works: the sequence is padded to a multiple of c inside.
    compression_init: how the convolutions start, in a fresh model and in conversion: "average_pooling" (each slot is
        the mean of its c keys / values, channel by channel: the identity across channels, divided by c; zero bias)
        or "random" (normal with std initializer_range, zero bias, as any other weight of the model).
    identity_compression: True skips the convolutions (every key is its own slot, c = 1): compressed layers then
        attend to every key (every earlier key when causal) exactly. The convolutions still exist, unused, so one
        checkpoint loads in both settings; with block_size >= the length this is the full-attention setting.
    """

    model_type = "efficient_memory_compressed"

    attention_layer_types: list[str] | str | None = None
    block_size: int = 256
    compression_factor: int = 3
    compression_init: str = "average_pooling"
    identity_compression: bool = False

    def validate_mechanism(self) -> None:
        layer_types = self.attention_layer_types
        if layer_types is None:
            layer_types = alternating_layer_types(self.num_hidden_layers)
        elif isinstance(layer_types, str):
            layer_types = [layer_types] * self.num_hidden_layers
        layer_types = list(layer_types)
        if len(layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"attention_layer_types has {len(layer_types)} entries but the model has num_hidden_layers="
                f"{self.num_hidden_layers}; give one of {LAYER_KINDS} per layer, a single kind, or None (alternate)."
            )
        for layer, kind in enumerate(layer_types):
            if kind not in LAYER_KINDS:
                raise ValueError(f"attention_layer_types[{layer}]={kind!r} is not a layer kind; use one of "
                                 f"{LAYER_KINDS} (the paper alternates them: local, compressed, local, ...).")
        self.attention_layer_types = layer_types
        for name, paper in (("block_size", 256), ("compression_factor", 3)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: use a positive integer (the paper: {paper}).")
        if self.compression_init not in COMPRESSION_INITS:
            raise ValueError(f"compression_init={self.compression_init!r} is not supported; use one of "
                             f"{COMPRESSION_INITS}.")
        if not isinstance(self.identity_compression, bool):
            raise ValueError(f"identity_compression must be True or False, got {self.identity_compression!r}.")

    @property
    def effective_compression_factor(self) -> int:
        """The factor the compressed layers apply: 1 under identity_compression, else compression_factor."""
        return 1 if self.identity_compression else self.compression_factor

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """Local blocks covering the input (one block: full attention, causal or not) and the identity in place of
        the convolutions (every key its own slot: full attention). The layer kinds and every parameter stay, so a
        checkpoint loads strictly into this setting."""
        return {"block_size": length, "identity_compression": True}

    def describe_attention(self) -> str:
        pattern = "".join("L" if kind == "local" else "M" for kind in self.attention_layer_types)
        if self.identity_compression:
            compressed = "memory-compressed layers without compression (identity: every key its own slot)"
        else:
            compressed = (f"memory-compressed layers with keys and values pooled by stride-{self.compression_factor} "
                          f"convolutions (kernel {self.compression_factor}, initialised by {self.compression_init})")
        return (f"T-DMCA local / memory-compressed attention, layers {pattern}: local blocks of {self.block_size} "
                f"tokens, {compressed}" + (" (causal)" if self.is_causal else " (bidirectional)"))
