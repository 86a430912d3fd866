"""Configuration of EfficientImageTransformer (Parmar et al., "Image Transformer", arXiv 1802.05751)."""

from typing import Any

from ...core.configuration import EfficientConfig

KINDS = ("local_1d", "local_2d")

# backbone fields whose value an image decoder fixes: (allowed values, why)
IMAGE_FIXED = {
    "is_causal": ((True,), "the Image Transformer is an autoregressive decoder over sub-pixels"),
    "type_vocab_size": ((0,), "an image has no token types"),
    "position_embedding_type": (("none", "rotary"), "positions are the learned row, column and channel embeddings "
                                                    "('none' adds nothing else; 'rotary' adds rotary positions over "
                                                    "the raster index)"),
    "use_pooler": ((False,), "a decoder has no pooler"),
}
# the fields the image layout derives: None = derived; a given value must equal the derived one
DERIVED = {
    "vocab_size": ("num_levels + 1 (the intensity levels and the start-of-image token)",
                   lambda c: c.num_levels + 1),
    "bos_token_id": ("num_levels (the start-of-image token)", lambda c: c.num_levels),
    "max_position_embeddings": ("1 + H * W * num_channels (bos and every sub-pixel of image_size)",
                                lambda c: 1 + c.image_size[0] * c.image_size[1] * c.num_channels),
}


def _pair(value: Any, name: str, least: int) -> list[int]:
    """An int (square) or two ints -> [a, b], each >= least."""
    pair = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(pair, (list, tuple)) or len(pair) != 2 or any(
            isinstance(v, bool) or not isinstance(v, int) or v < least for v in pair):
        raise ValueError(f"{name}={value!r}: use an integer >= {least} or two of them [height, width].")
    return [int(v) for v in pair]


def _count(config, name: str, least: int, example: str) -> int:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name}={value!r}: use an integer >= {least} ({example}).")
    return value


class EfficientImageTransformerConfig(EfficientConfig):
    """The package's backbone fields plus the Image Transformer's. Defaults are the paper's CIFAR-10 decoder
    (tensor2tensor's imagetransformer_cifar10_base: 12 layers, hidden 512, filter 2048, 8 heads, local 1D with query
    blocks of 256 and a memory of 128 sub-pixels), with pre-norm blocks and ReLU feed-forward layers.

    image_size: [H, W] pixels (an int: square). num_channels: C (1 or 3). num_levels: intensity levels per
        sub-pixel (256 for 8-bit images); each sub-pixel is one token, a categorical over num_levels.
    vocab_size, bos_token_id, max_position_embeddings: derived (num_levels + 1, num_levels, 1 + H W C); a given
        value must equal the derived one. Sequences are [bos, sub-pixels in raster order], t = (row W + col) C + ch.
    num_classes: 0 = unconditional; > 0 adds a learned class embedding to every position, and forward takes
        `class_labels` (batch,).
    attention_type: "local_1d" (query blocks of `query_block_length` consecutive sub-pixels, each with a memory of
        the `memory_length` sub-pixels before it) or "local_2d" (query blocks of `query_shape` [h, w] pixels, memory
        the block extended by `memory_flange` [f_h, f_w]: f_h rows above, f_w columns left and right). See
        hf_efficient/attention/local_image.py (generation order: raster, in both modes).
    """

    model_type = "efficient_image_transformer"

    image_size: int | list[int] = 32
    num_channels: int = 3
    num_levels: int = 256
    num_classes: int = 0
    attention_type: str = "local_1d"
    query_block_length: int = 256
    memory_length: int = 128
    query_shape: int | list[int] = 8
    memory_flange: int | list[int] = 8
    # derived from the image layout (see DERIVED)
    vocab_size: int | None = None
    bos_token_id: int | None = None
    max_position_embeddings: int | None = None
    # the backbone's defaults that the paper's decoder changes
    hidden_size: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    hidden_act: str = "relu"
    norm_position: str = "pre"
    layer_norm_eps: float = 1e-6
    embedding_norm: bool = False
    type_vocab_size: int = 0
    position_embedding_type: str = "none"
    is_causal: bool | None = True
    use_pooler: bool = False
    masked_lm_transform: bool = False
    lm_head_bias: bool = False
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self.derive_layout()
        super().__post_init__(**kwargs)

    def derive_layout(self) -> None:
        """Check the image fields and fill the fields they determine (DERIVED), refusing given values that differ."""
        self.image_size = _pair(self.image_size, "image_size", 1)
        _count(self, "num_channels", 1, "1 for grayscale, 3 for RGB")
        _count(self, "num_levels", 2, "256 for 8-bit images")
        for name, (meaning, derive) in DERIVED.items():
            value, expected = getattr(self, name), derive(self)
            if value is None:
                setattr(self, name, expected)
            elif value != expected:
                raise ValueError(f"{name}={value!r}: an image model's {name} is {meaning} = {expected}; leave it "
                                 "unset (it is derived), or change image_size / num_channels / num_levels.")

    def validate_mechanism(self) -> None:
        self.derive_layout()
        for name, (allowed, why) in IMAGE_FIXED.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: {why}; use {name}={allowed[0]!r}.")
        if self.num_channels not in (1, 3):
            raise ValueError(f"num_channels={self.num_channels}: use 1 (grayscale) or 3 (RGB).")
        _count(self, "num_classes", 0, "0 = unconditional, else the number of classes")
        if self.attention_type not in KINDS:
            raise ValueError(f"attention_type={self.attention_type!r} is not supported; use one of {KINDS}.")
        _count(self, "query_block_length", 1, "the paper: 256")
        _count(self, "memory_length", 0, "the paper: 128")
        self.query_shape = _pair(self.query_shape, "query_shape", 1)
        self.memory_flange = _pair(self.memory_flange, "memory_flange", 0)
        if self.attention_backend not in ("auto", "reference", "blocked", "flex"):
            raise ValueError(f"attention_backend={self.attention_backend!r}: use 'auto', 'blocked', 'flex' or "
                             "'reference'.")

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """Local 1D with query_block_length >= the sequence is exact causal attention (tests/test_image_transformer.py
        proves it), but the model's coordinate and class embeddings have no twin in the token backbone: no token
        model converts into it, and the common suite's backbone comparison does not apply."""
        raise NotImplementedError("EfficientImageTransformerConfig: its full-attention setting is local_1d with "
                                  "query_block_length >= H * W * num_channels, but its image embeddings have no twin "
                                  "in the token backbone.")

    def describe_attention(self) -> str:
        if self.attention_type == "local_1d":
            return (f"Image Transformer local 1D: query blocks of {self.query_block_length} sub-pixels, memory "
                    f"{self.memory_length}")
        return (f"Image Transformer local 2D: query blocks of {self.query_shape[0]}x{self.query_shape[1]} pixels, "
                f"memory flange {self.memory_flange[0]} rows above, {self.memory_flange[1]} columns each side")
