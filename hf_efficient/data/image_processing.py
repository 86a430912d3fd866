"""Images <-> the token sequences of the image variants (`efficient_axial`, `efficient_image_transformer`).

An image is C channels of H x W intensities in [0, 255]. It becomes `num_levels` intensity levels,
level = floor(value * num_levels / 256), read as one token per sub-pixel in raster order,
t = (row * W + col) * C + channel, after a start-of-image token `bos = num_levels`: input_ids (batch, 1 + H*W*C),
vocabulary num_levels + 1. Back: a level becomes the middle value of its bin, floor((level + 0.5) * 256 / num_levels)
(moved into the bin where rounding would leave it), so images -> input_ids -> images is exact at num_levels=256 and
input_ids -> images -> input_ids is exact at every num_levels.
"""

from collections.abc import Sequence

import numpy as np
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import ImagesKwargs


class EfficientImagesKwargs(ImagesKwargs, total=False):
    num_levels: int
    num_channels: int
    image_size: list[int] | None


def image_size_pair(image_size, name: str = "image_size") -> list[int] | None:
    """[H, W] from an int (square) or a pair; None stays None."""
    if image_size is None:
        return None
    pair = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{name}={image_size!r}: give a positive int (square) or [height, width].")
    return pair


class EfficientImageProcessor(BaseImageProcessor):
    """Maps images (PIL, numpy or torch; HWC, CHW or HW) to the image variants' `input_ids` and back.

    Args:
        num_levels: intensity levels per sub-pixel (2..256); the model's vocab_size is num_levels + 1.
        num_channels: 1 (grayscale) or 3 (RGB).
        image_size: [H, W] (an int means square) images are resized to (PIL, `resample`); None keeps the input size
            (then every image of a batch must have the same size).
    """

    valid_kwargs = EfficientImagesKwargs
    model_input_names = ["input_ids"]

    def __init__(self, num_levels: int = 256, num_channels: int = 3, image_size=None, do_resize: bool = True,
                 resample: int = 2, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_levels, int) or not 2 <= num_levels <= 256:
            raise ValueError(f"num_levels={num_levels!r}: give an int in [2, 256] (levels of 8-bit intensities).")
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels={num_channels!r}: give 1 (grayscale) or 3 (RGB).")
        self.num_levels = num_levels
        self.num_channels = num_channels
        self.image_size = image_size_pair(image_size)
        self.do_resize = do_resize
        self.resample = int(resample)  # PIL.Image.Resampling (2 = bilinear)

    @property
    def bos_token_id(self) -> int:
        return self.num_levels

    @property
    def vocab_size(self) -> int:
        return self.num_levels + 1

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """8-bit intensities -> levels (int64)."""
        return values.astype(np.int64) * self.num_levels // 256

    def dequantize(self, levels: np.ndarray) -> np.ndarray:
        """Levels -> uint8 intensities: the middle of each level's bin, kept inside the bin."""
        levels = np.asarray(levels, dtype=np.int64)
        low = -(-levels * 256 // self.num_levels)  # ceil: the bin's first value
        high = -(-(levels + 1) * 256 // self.num_levels) - 1
        return np.clip((2 * levels + 1) * 128 // self.num_levels, low, high).astype(np.uint8)

    def to_array(self, image, input_data_format=None) -> np.ndarray:
        """One image -> (H, W, C) int64 intensities, with its layout and values checked."""
        if hasattr(image, "mode") and hasattr(image, "getdata"):  # PIL
            wanted = {1: ("L",), 3: ("RGB",)}[self.num_channels]
            if image.mode not in wanted:
                raise ValueError(f"a PIL image of mode {image.mode!r}, but this processor takes {self.num_channels} "
                                 f"channel(s): convert it first, e.g. image.convert({wanted[0]!r}).")
            array, input_data_format = np.asarray(image), "channels_last"
        else:
            array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if array.ndim == 2:
            array = array[..., None]
        elif array.ndim == 3:
            array = self.channels_last(array, input_data_format)
        else:
            raise ValueError(f"an image of shape {array.shape}: give (H, W), (H, W, C) or (C, H, W).")
        if array.shape[-1] != self.num_channels:
            raise ValueError(f"an image of {array.shape[-1]} channel(s) (shape {array.shape}), but this processor "
                             f"takes num_channels={self.num_channels}.")
        if array.dtype == bool or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise ValueError(f"pixel values of dtype {array.dtype}: give integer intensities in [0, 255].")
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array) & (array == np.round(array))):
            raise ValueError("pixel values must be integer intensities in [0, 255]; got non-integral floats (images "
                             "scaled to [0, 1]? multiply by 255 and round).")
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"pixel values in [{array.min()}, {array.max()}]; give intensities in [0, 255].")
        return array.astype(np.int64)

    def channels_last(self, array: np.ndarray, input_data_format=None) -> np.ndarray:
        layout = getattr(input_data_format, "value", input_data_format)
        if layout not in (None, "channels_first", "channels_last"):
            raise ValueError(f"input_data_format={input_data_format!r}: give 'channels_first' or 'channels_last'.")
        if layout is None:
            first, last = array.shape[0] == self.num_channels, array.shape[-1] == self.num_channels
            if first and last:
                raise ValueError(f"an image of shape {array.shape} could be (C, H, W) or (H, W, C): pass "
                                 "input_data_format='channels_first' or 'channels_last'.")
            layout = "channels_first" if first else "channels_last"
        return np.moveaxis(array, 0, -1) if layout == "channels_first" else array

    def resized(self, array: np.ndarray, size: list[int] | None, do_resize: bool) -> np.ndarray:
        if size is None or list(array.shape[:2]) == size:
            return array
        if not do_resize:
            raise ValueError(f"an image of size {list(array.shape[:2])}, but image_size={size} and do_resize=False.")
        from PIL import Image

        image = Image.fromarray(array.astype(np.uint8)[..., 0] if self.num_channels == 1 else array.astype(np.uint8))
        return self.to_array(image.resize((size[1], size[0]), resample=self.resample))

    def preprocess(self, images, return_tensors="pt", input_data_format=None, image_size=None, do_resize=None,
                   **kwargs) -> BatchFeature:
        """images (one, a list, or a (batch, ...) array/tensor) -> BatchFeature with `input_ids` (batch, 1 + H*W*C)
        (bos first, raster order) and `pixel_values` (batch, C, H, W) float: the (resized) intensities / 255."""
        if kwargs:
            raise ValueError(f"{type(self).__name__} takes no options {sorted(kwargs)}; its options are "
                             "return_tensors, input_data_format, image_size and do_resize.")
        size = image_size_pair(image_size) if image_size is not None else self.image_size
        do_resize = self.do_resize if do_resize is None else do_resize
        if isinstance(images, np.ndarray | torch.Tensor) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, list | tuple):
            images = [images]
        if not images:
            raise ValueError("no images given.")
        arrays = [self.resized(self.to_array(image, input_data_format), size, do_resize) for image in images]
        shapes = {array.shape for array in arrays}
        if len(shapes) > 1:
            raise ValueError(f"images of different sizes {sorted(shapes)}: set image_size=[H, W] to resize them.")
        values = np.stack(arrays)  # (batch, H, W, C)
        bos = np.full((len(arrays), 1), self.bos_token_id, dtype=np.int64)
        input_ids = np.concatenate([bos, self.quantize(values).reshape(len(arrays), -1)], axis=1)
        pixel_values = values.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return BatchFeature({"input_ids": input_ids, "pixel_values": pixel_values}, tensor_type=return_tensors)

    def levels(self, input_ids, image_size=None) -> np.ndarray:
        """input_ids (batch, [bos +] H*W*C) -> levels (batch, H, W, C); a leading bos is dropped."""
        ids = input_ids.detach().cpu().numpy() if isinstance(input_ids, torch.Tensor) else np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        size = image_size_pair(image_size) if image_size is not None else self.image_size
        if size is None:
            raise ValueError("this processor has no image_size: pass image_size=[H, W] to read tokens as images.")
        count = size[0] * size[1] * self.num_channels
        if ids.ndim != 2 or ids.shape[1] not in (count, count + 1):
            raise ValueError(f"input_ids of shape {tuple(ids.shape)}; {size} images of {self.num_channels} channel(s) "
                             f"are (batch, {count}) tokens, or (batch, {count + 1}) with the bos first.")
        if ids.shape[1] == count + 1:
            if not np.all(ids[:, 0] == self.bos_token_id):
                raise ValueError(f"input_ids of length {count + 1} must start with bos={self.bos_token_id}.")
            ids = ids[:, 1:]
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_levels):
            raise ValueError(f"tokens in [{ids.min()}, {ids.max()}] are not levels in [0, {self.num_levels}) "
                             "(a bos inside the image?).")
        return ids.reshape(len(ids), size[0], size[1], self.num_channels)

    def postprocess(self, input_ids, image_size=None, output_type: str = "pil"):
        """input_ids -> a list of PIL images ("pil") or a uint8 array (batch, H, W, C) ("np")."""
        if output_type not in ("pil", "np"):
            raise ValueError(f"output_type={output_type!r}: give 'pil' or 'np'.")
        values = self.dequantize(self.levels(input_ids, image_size))
        if output_type == "np":
            return values
        from PIL import Image

        return [Image.fromarray(v[..., 0] if self.num_channels == 1 else v) for v in values]


def image_grid(images: Sequence, columns: int | None = None, scale: int = 1, padding: int = 1):
    """PIL images of one size -> one PIL image: rows of `columns` images, each scaled `scale` times (nearest),
    `padding` white pixels between them."""
    from PIL import Image

    if not images:
        raise ValueError("no images to draw.")
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = -(-len(images) // columns)
    width, height = images[0].size
    cell_w, cell_h = width * scale, height * scale
    grid = Image.new("RGB", (columns * cell_w + (columns + 1) * padding, rows * cell_h + (rows + 1) * padding),
                     "white")
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        tile = image.convert("RGB").resize((cell_w, cell_h), resample=Image.Resampling.NEAREST)
        grid.paste(tile, (padding + column * (cell_w + padding), padding + row * (cell_h + padding)))
    return grid


def sample_images(model, processor: EfficientImageProcessor, count: int, class_labels=None, **generate_kwargs):
    """`count` images drawn by model.generate(do_sample=True) from the bos, in raster order. The bos token is never
    sampled (bad_words_ids) and the image is never cut short (min_new_tokens). `class_labels` (count,) goes to
    conditional models through generate's model kwargs."""
    config = model.config
    if config.vocab_size != processor.vocab_size:
        raise ValueError(f"the model's vocab_size {config.vocab_size} is not the processor's num_levels + 1 "
                         f"= {processor.vocab_size}: load the processor saved with this model.")
    size = processor.image_size or image_size_pair(getattr(config, "image_size", None))
    if size is None:
        raise ValueError("neither the processor nor the model config has an image_size.")
    tokens = size[0] * size[1] * processor.num_channels
    device = next(model.parameters()).device
    input_ids = torch.full((count, 1), processor.bos_token_id, dtype=torch.long, device=device)
    extra = {}
    if class_labels is not None:
        extra["class_labels"] = torch.as_tensor(class_labels, dtype=torch.long, device=device)
    generate_kwargs = {"do_sample": True, "top_k": 0, **generate_kwargs}
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=tokens,
                             min_new_tokens=tokens, bad_words_ids=[[processor.bos_token_id]],
                             pad_token_id=processor.bos_token_id, **extra, **generate_kwargs)
    return processor.postprocess(out, image_size=size)
