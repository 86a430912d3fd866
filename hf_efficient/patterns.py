"""Pictures of the attention pattern a model really uses: its own attention weights (output_attentions=True, the
reference path), never a pattern drawn by hand.

Two views of the weights, both white where a weight is exactly 0 (a key the query can't see):

* intensity (default): an attended key is shaded by its weight relative to the largest weight of its query's row, on
  a log scale in `SHADES` bands over `DECADES` decades: black for weights within a factor 10^(3/8) ~ 2.4 of the
  row's largest, lighter for smaller ones, light gray (`FAINTEST`) for 1/1000 of it and below, down to any weight
  > 0, so the support stays visible (a log scale, since trained attention spans orders of magnitude; bands, since
  the exact value of a shade means little and noise-free bands keep the PNG small);
* support: black where the weight is > 0.

The picture is a grid of tiles, a row per layer and a column per head, separated by gray bands; in a tile, row i is
query i and column j is key j (for most variants the key position; see `key_axis`). The PNG writer is our own (no
imaging dependency): 8-bit grayscale, with the caption in tEXt chunks.
"""

import math
import struct
import zlib
from pathlib import Path

import torch
from transformers import AutoModel

from .auto import VARIANTS, is_image_config

# a small backbone: the pattern depends on the mechanism's knobs and the length, not on the width
SMALL = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=1000, num_hidden_layers=2,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
FAINTEST = 0.85  # the lightest shade of an attended key in the intensity view (1.0, white, is weight == 0 only)
SHADES = 8  # gray bands of the intensity view
DECADES = 3  # weights from the row's largest down to 10^-DECADES of it get the bands; smaller ones the lightest
GAP_SHADE = 0.5  # the bands between tiles
GAP = 4  # their width in pixels


def pattern_model(variant_or_path: str, length: int, **knobs) -> torch.nn.Module:
    """A converted model's folder, or a variant name (e.g. longformer) built small with its defaults and `knobs`."""
    model_type = variant_or_path if variant_or_path.startswith("efficient_") else f"efficient_{variant_or_path}"
    if model_type in VARIANTS:
        fields = {**SMALL, "max_position_embeddings": max(length, 512), **knobs}
        if model_type == "efficient_axial":  # an image of `length` sub-pixels (its vocabulary is its levels + bos)
            rows = max(n for n in range(1, int(length**0.5) + 1) if length % n == 0)
            fields = {"image_size": [rows, length // rows], "num_channels": 1, **fields}
            fields.pop("vocab_size")
        elif is_image_config(VARIANTS[model_type].config):
            fields = {**image_fields(VARIANTS[model_type].config, length, knobs), **knobs}
        with torch.random.fork_rng(devices=[]):  # the same weights every time (content-based patterns depend on
            torch.manual_seed(0)  # them), without touching the caller's random state
            return VARIANTS[model_type].model(VARIANTS[model_type].config(**fields)).eval()
    if Path(variant_or_path).exists():
        return AutoModel.from_pretrained(variant_or_path, **knobs).eval()
    names = sorted(t.removeprefix("efficient_") for t in VARIANTS)
    raise ValueError(f"{variant_or_path!r} is neither a variant ({names}) nor a model folder.")


def image_fields(config_class: type, length: int, knobs: dict) -> dict:
    """SMALL for an image model: its vocabulary and positions come from the image, the smallest square image whose
    bos and sub-pixels hold `length` positions (unless the knobs set image_size)."""
    fields = {k: v for k, v in SMALL.items() if k != "vocab_size"}
    channels = knobs.get("num_channels", config_class.num_channels)
    return {**fields, "image_size": math.ceil(math.sqrt(max(length - 1, 1) / channels))}


@torch.no_grad()
def attention_weights(model: torch.nn.Module, length: int, seed: int = 0, **inputs) -> torch.Tensor:
    """(layers, heads, length, keys) weights of one forward on random token ids (keys = length for most variants)."""
    if model.main_input_name != "input_ids":
        raise ValueError(f"{model.config.model_type} reads {model.main_input_name}, not token ids: the picture draws "
                         "attention over token positions, and a set has none (ISAB's maps are dense: every element "
                         "sees every inducing point). Use output_attentions=True to read its maps.")
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, model.config.vocab_size, (1, length), generator=generator)
    if model.config.model_type == "efficient_axial":  # intensities, after bos for the causal model
        input_ids = input_ids % model.config.num_levels
        if model.config.is_causal:
            input_ids[:, 0] = model.config.bos_token_id
    elif is_image_config(type(model.config)):  # an image: bos, then intensity levels
        input_ids = torch.randint(0, model.config.num_levels, (1, length), generator=generator)
        input_ids[:, 0] = model.config.bos_token_id
    # a variant with inputs of its own (ETC's global input, the Compressive Transformer's memories) may set them
    extra = model.example_inputs(input_ids) if hasattr(model, "example_inputs") else {}
    output = model(input_ids=input_ids, output_attentions=True, **{"use_cache": False, **extra, **inputs})
    if output.attentions is None or any(weights is None for weights in output.attentions):
        raise ValueError(f"{type(model).__name__} returned no attention weights.")
    return torch.stack([weights[0].float() for weights in output.attentions])


def shade(weights: torch.Tensor, support: bool = False) -> torch.Tensor:
    """Gray levels in [0, 1] (0 = black) of (..., queries, keys) weights: 1 where a weight is 0; else 0 (support),
    or band b / (SHADES - 1) * FAINTEST with b = floor(log10(the row's largest / weight) * SHADES / DECADES), at
    most SHADES - 1 (intensity)."""
    attended = weights > 0
    if support:
        return (~attended).float()
    ratio = weights.amax(-1, keepdim=True) / weights.clamp_min(torch.finfo(weights.dtype).tiny)
    band = (ratio.log10() * SHADES / DECADES).floor().clamp(0, SHADES - 1)
    return torch.where(attended, band / (SHADES - 1) * FAINTEST, torch.ones_like(weights))


def check_selection(name: str, chosen: list[int] | None, count: int) -> list[int]:
    """The chosen indices (all when None), refused with a clear error when out of range."""
    if chosen is None:
        return list(range(count))
    wrong = [index for index in chosen if not 0 <= index < count]
    if wrong or not chosen:
        raise ValueError(f"{name} {wrong or chosen} out of range: the model has {count} (0 to {count - 1}).")
    return list(chosen)


def grid(weights: torch.Tensor, heads: list[int] | None = None, layers: list[int] | None = None,
         support: bool = False, gap: int = GAP) -> torch.Tensor:
    """Tile (layers, heads, queries, keys) weights into one (height, width) image in [0, 1]: a row of tiles per chosen
    layer, a column per chosen head, `gap` pixels of GAP_SHADE between them; each tile shaded by `shade`."""
    all_layers, all_heads, queries, keys = weights.shape
    layers = check_selection("layers", layers, all_layers)
    heads = check_selection("heads", heads, all_heads)
    image = torch.full((len(layers) * (queries + gap) - gap, len(heads) * (keys + gap) - gap), GAP_SHADE)
    for row, layer in enumerate(layers):
        for column, head in enumerate(heads):
            top, left = row * (queries + gap), column * (keys + gap)
            image[top : top + queries, left : left + keys] = shade(weights[layer, head], support)
    return image


def key_axis(config, length: int, keys: int) -> str:
    """What the columns of a tile are: key positions, or the keys a mechanism builds (Linformer, T-DMCA)."""
    if config.model_type == "efficient_linformer" and not config.identity_projection:
        return (f"column r = projected key r of k={keys} (row r of E applied to the keys: a mix of every position, "
                "not a token)")
    if config.model_type == "efficient_memory_compressed":
        factor = config.effective_compression_factor
        return (f"columns 0..{length - 1} = key positions, columns {length}..{keys - 1} = the {keys - length} "
                f"compressed slots (slot s pools positions s*{factor}..s*{factor}+{factor - 1})")
    if config.model_type == "efficient_etc":
        return ("rows and columns run over the stream [global ; long]: first the global tokens (one per block of 16 "
                "long tokens), then the long positions")
    if config.model_type == "efficient_compressive" and keys > length:
        memory = keys - length
        compressed = min((length - min(config.mem_len, length)) // config.compression_rate, config.cmem_len)
        return (f"columns 0..{compressed - 1} = the {compressed} compressed memory slots, {compressed}.."
                f"{memory - 1} = the {memory - compressed} memory states (both from the same tokens read once "
                f"before, as the previous segment), then column {memory} + j = key position j of the segment")
    if keys == length:
        return "column j = key position j (left = 0)"
    return f"{keys} key columns"


def caption(config, weights: torch.Tensor, layers: list[int], heads: list[int], support: bool,
            length: int | None = None) -> str:
    """What the picture shows, in ASCII (for the PNG's tEXt chunk and the command's output); `length` is the input's
    (default: the weights' rows; ETC's rows also hold its global tokens)."""
    rows, keys = weights.shape[-2:]
    length = rows if length is None else length
    kinds = getattr(config, "attention_layer_types", None)
    layer_names = [f"{layer} ({kinds[layer]})" if kinds else str(layer) for layer in layers]
    view = ("support view: black = weight > 0, white = weight == 0" if support else
            f"intensity view: {SHADES} gray bands on a log scale of weight / the row's largest weight, black = "
            f"within a factor 10^({DECADES}/{SHADES}), lightest gray = 10^-{DECADES} and below but > 0, white = "
            "weight == 0")
    return (f"{config.model_type}, {length} tokens; {view}. Tiles: rows = layers {', '.join(layer_names)}; "
            f"columns = heads {', '.join(map(str, heads))}. In a tile: row i = query position i (top = 0), "
            f"{key_axis(config, length, keys)}. Mechanism: {config.describe_attention()}.")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(image: torch.Tensor, path: str | Path, text: dict[str, str] | None = None) -> None:
    """An 8-bit grayscale PNG of an (height, width) tensor in [0, 1] (0 = black), with optional tEXt entries."""
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    height, width = pixels.shape
    raw = b"".join(b"\x00" + bytes(row.tolist()) for row in pixels)  # filter byte 0 (none) per scanline
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # bit depth 8, grayscale, no interlace
    notes = b"".join(png_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace"))
                     for key, value in (text or {}).items())
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + notes
                           + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))
