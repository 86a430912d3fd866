"""Pictures of the attention pattern a model really uses: its own attention weights (output_attentions=True, the
reference path), never a pattern drawn by hand. Black = a key the query attends to, white = a key it can't see."""

import struct
import zlib
from pathlib import Path

import torch
from transformers import AutoModel

from .auto import VARIANTS

# a small backbone: the pattern depends on the mechanism's knobs and the length, not on the width
SMALL = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=1000, num_hidden_layers=2,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def pattern_model(variant_or_path: str, length: int, **knobs) -> torch.nn.Module:
    """A converted model's folder, or a variant name (e.g. longformer) built small with its defaults and `knobs`."""
    model_type = variant_or_path if variant_or_path.startswith("efficient_") else f"efficient_{variant_or_path}"
    if model_type in VARIANTS:
        fields = {**SMALL, "max_position_embeddings": max(length, 512), **knobs}
        return VARIANTS[model_type].model(VARIANTS[model_type].config(**fields)).eval()
    if Path(variant_or_path).exists():
        return AutoModel.from_pretrained(variant_or_path, **knobs).eval()
    names = sorted(t.removeprefix("efficient_") for t in VARIANTS)
    raise ValueError(f"{variant_or_path!r} is neither a variant ({names}) nor a model folder.")


@torch.no_grad()
def attention_weights(model: torch.nn.Module, length: int, seed: int = 0, **inputs) -> torch.Tensor:
    """(layers, heads, length, length) weights of one forward on random token ids."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, model.config.vocab_size, (1, length), generator=generator)
    output = model(input_ids=input_ids, output_attentions=True, use_cache=False, **inputs)
    if output.attentions is None or any(weights is None for weights in output.attentions):
        raise ValueError(f"{type(model).__name__} returned no attention weights.")
    return torch.stack([weights[0].float() for weights in output.attentions])


def grid(weights: torch.Tensor, heads: list[int] | None = None, gap: int = 4) -> torch.Tensor:
    """Tile (layers, heads, q, k) weights into one image, a row per layer and a column per head, in [0, 1]
    (0 = attended): kept keys black."""
    layers, all_heads, queries, keys = weights.shape
    heads = heads if heads is not None else list(range(all_heads))
    image = torch.ones(layers * (queries + gap) - gap, len(heads) * (keys + gap) - gap)
    for layer in range(layers):
        for column, head in enumerate(heads):
            top, left = layer * (queries + gap), column * (keys + gap)
            image[top : top + queries, left : left + keys] = (weights[layer, head] <= 0).float()
    return image


def write_png(image: torch.Tensor, path: str | Path) -> None:
    """An 8-bit grayscale PNG of an (height, width) tensor in [0, 1]."""
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    height, width = pixels.shape
    raw = b"".join(b"\x00" + bytes(row.tolist()) for row in pixels)  # filter byte 0 per scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                           + chunk(b"IEND", b""))
