"""Configuration of EfficientAxial (Ho et al., "Axial Attention in Multidimensional Transformers", arXiv 1912.12180)."""

from ...core.configuration import EfficientConfig

# backbone fields of token models that an image model can't honour: each must keep the value given here
SEQUENCE_ONLY = {
    "position_embedding_type": ("absolute", "positions are the learned axial embeddings (row + column + channel)"),
    "type_vocab_size": (0, "an image has no token types"),
    "embedding_norm": (False, "the summed embeddings enter the first block unnormalised"),
    "use_pooler": (False, "image classification mean-pools the encoder's sub-pixel states"),
    "use_cache": (False, "generation recomputes the full forward at every step (no cache)"),
    "tie_word_embeddings": (False, "the intensity embedding and the output layer are separate"),
    "pad_token_id": (None, "padding is given by attention_mask alone (every id is an intensity or bos)"),
}
BACKENDS = ("auto", "reference", "blocked")


class EfficientAxialConfig(EfficientConfig):
    """The package's backbone fields (widths, heads, MLP, norm type and position, dropouts, init, attention backend)
    plus the image fields. An image is num_channels channels of image_size = [H, W] intensities in [0, num_levels);
    the token sequence is its sub-pixels in raster order, t = (row * W + col) * num_channels + channel.

    image_size: [H, W] (an int means a square image).
    num_channels: C, 1 (grayscale) or 3 (RGB).
    num_levels: intensity levels per sub-pixel (256 for 8-bit images).
    vocab_size: num_levels + 1 (the levels and bos), set by the config; any other value is refused.
    bos_token_id: num_levels, the start-of-image token that begins every causal input; set by the config.
    num_classes: 0 = unconditional; > 0 adds a learned class embedding and `class_labels` (batch,) to every forward.
    num_channel_layers: layers of the causal decoder's channel stage (masked attention over a pixel's channels).
    is_causal: False = the bidirectional encoder (num_hidden_layers layers of row, column and channel attention);
        True = the paper's causal decoder (num_hidden_layers outer layers, num_hidden_layers inner layers, then the
        channel stage); see modeling_axial.py.

    Fields of token models that mean nothing here must keep the values of SEQUENCE_ONLY (a ValueError says why
    otherwise); max_position_embeddings, rope_parameters, embedding_size, pooler_act, classifier_pooling,
    masked_lm_transform, lm_head_bias and eos_token_id are carried by every package config and unused.
    """

    model_type = "efficient_axial"

    image_size: int | list[int] = 32
    num_channels: int = 3
    num_levels: int = 256
    num_classes: int = 0
    num_channel_layers: int = 1
    # the backbone's defaults that an image model changes (set by the config: see vocab_size, bos_token_id)
    vocab_size: int | None = None
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    intermediate_size: int = 1024
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    type_vocab_size: int = 0
    embedding_norm: bool = False
    use_pooler: bool = False
    tie_word_embeddings: bool = False
    use_cache: bool = False

    def __post_init__(self, **kwargs) -> None:
        levels = self.num_levels
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"num_levels={levels!r}: use an integer >= 2 (256 for 8-bit images).")
        if self.vocab_size is None:
            self.vocab_size = levels + 1
        if self.bos_token_id is None:
            self.bos_token_id = levels
        super().__post_init__(**kwargs)

    @property
    def grid(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        height, width = self.image_size
        return height, width, self.num_channels

    @property
    def num_subpixels(self) -> int:
        height, width, channels = self.grid
        return height * width * channels

    @property
    def attention_layer_types(self) -> list[str]:
        """The axis of every attention block, in the order of the model's `attentions` output."""
        channel = ["channel"] if self.num_channels > 1 else []
        if not self.is_causal:
            return ["row", "column", *channel] * self.num_hidden_layers
        stage = self.num_channel_layers if self.num_channels > 1 else 0
        return (["outer row", *(f"outer {c}" for c in channel), "outer masked column"] * self.num_hidden_layers
                + [*(f"inner {c}" for c in channel), "inner masked row"] * self.num_hidden_layers
                + ["masked channel"] * stage)

    def validate_mechanism(self) -> None:
        size = self.image_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = [size, size]
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in size)):
            raise ValueError(f"image_size={self.image_size!r}: use [height, width] (positive integers) or one int for "
                             "a square image.")
        self.image_size = list(size)
        if self.num_channels not in (1, 3):
            raise ValueError(f"num_channels={self.num_channels!r}: use 1 (grayscale) or 3 (RGB).")
        levels = self.num_levels
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"num_levels={levels!r}: use an integer >= 2 (256 for 8-bit images).")
        if self.vocab_size != levels + 1:
            raise ValueError(f"vocab_size={self.vocab_size!r}: an axial image model's vocabulary is the num_levels="
                             f"{levels} intensities and bos, so vocab_size must be {levels + 1}; leave it unset.")
        if self.bos_token_id != levels:
            raise ValueError(f"bos_token_id={self.bos_token_id!r}: the start-of-image token is num_levels={levels}; "
                             "leave it unset.")
        for field, least in (("num_classes", 0), ("num_channel_layers", 0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{field}={value!r}: use an integer >= {least}.")
        for field, (value, reason) in SEQUENCE_ONLY.items():
            if getattr(self, field) != value:
                raise ValueError(f"{field}={getattr(self, field)!r}: {reason}; use {field}={value!r}.")
        if self.attention_backend not in BACKENDS:
            raise ValueError(f"attention_backend={self.attention_backend!r}: axial attention is exact softmax along "
                             f"each axis (sdpa on every device); use one of {BACKENDS}.")

    def describe_attention(self) -> str:
        height, width, channels = self.grid
        shape = f"{height}x{width}x{channels} images, {self.num_levels} levels"
        rgb = channels > 1
        if self.is_causal:
            stage = f", {self.num_channel_layers} masked channel layer(s)" if rgb else ""
            return (f"Axial causal decoder ({shape}): {self.num_hidden_layers} outer layers (row, "
                    f"{'channel, ' * rgb}masked column attention over the image shifted down), "
                    f"{self.num_hidden_layers} inner layers ({'channel, ' * rgb}masked row attention, shifted "
                    f"right){stage}")
        return (f"Axial encoder ({shape}): {self.num_hidden_layers} layers of row, column"
                f"{' and channel' * rgb} attention")
