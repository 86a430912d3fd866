"""`hf-efficient show-pattern`: for every registered variant the command writes a valid PNG (decoded here, chunk by
chunk) whose pixels are the model's own attention weights, and for the structured mechanisms the picture's support
equals the mechanism's rule, computed here independently, pixel for pixel."""

import math
import struct
import zlib
from pathlib import Path

import pytest
import torch

from hf_efficient.auto import VARIANTS
from hf_efficient.cli import main
from hf_efficient.patterns import attention_weights, pattern_model

LENGTH = 64
GAP = 4  # pixels between tiles
GAP_LEVEL = 128  # their gray
HEADS, LAYERS = 4, 2  # patterns.SMALL
# knobs that make each pattern visible at 64 tokens (a new variant runs with its defaults)
KNOBS = {
    "longformer": ["attention_window=8"],
    "bigbird": ["block_size=4"],  # 16 blocks: more than the g + w + 2r = 11 below which BigBird is full attention
    "sparse_transformer": ["local_size=8", "num_summary=2"],
    "linformer": ["projected_length=16"],
    "memory_compressed": ["block_size=16", "compression_factor=4"],
    "routing": ["local_window=4", "num_clusters=4", "routing_window=12"],
    "etc": ["local_radius=4"],
    "compressive": ["mem_len=16", "cmem_len=8", "compression_rate=4"],
    "image_transformer": ["query_block_length=8", "memory_length=8"],
}
CAUSAL_VARIANTS = sorted(name.removeprefix("efficient_") for name, v in VARIANTS.items()
                         if v.model.attention_class.supports_causal)
QUERY = torch.arange(LENGTH)[:, None]  # query positions, as a column
KEY = torch.arange(LENGTH)[None, :]  # key positions, as a row


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is faster than a thread pool (much faster on a busy 2-core CI machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_png(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    """Decode our PNGs: signature, CRC-checked chunks, IHDR (8-bit grayscale), zlib IDAT, unfiltered scanlines.
    Returns the (height, width) uint8 pixels and the tEXt entries."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "PNG signature"
    chunks, offset = [], 8
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + size]
        (crc,) = struct.unpack(">I", data[offset + 8 + size : offset + 12 + size])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"CRC of {kind}"
        chunks.append((kind, body))
        offset += 12 + size
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, color, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color, compression, filtering, interlace) == (8, 0, 0, 0, 0), "8-bit grayscale, not interlaced"
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (width + 1)
    scanlines = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(height, width + 1)
    assert (scanlines[:, 0] == 0).all(), "filter type 0 on every scanline"
    text = dict(body.decode("latin-1").split("\0", 1) for kind, body in chunks if kind == b"tEXt")
    return scanlines[:, 1:], text


def show(tmp_path: Path, variant: str, *options: str, layers: int = LAYERS, heads: int = HEADS,
         keys: int = LENGTH, length: int = LENGTH, rows: int | None = None) -> tuple[torch.Tensor, dict[str, str]]:
    """Run the command (knobs after the options, as a user types them), check the picture's geometry and its gray
    bands, and return its tiles (layers, heads, rows (default: length), keys) of pixel values and the PNG's text."""
    out = tmp_path / f"{variant.replace('/', '_')}.png"
    argv = ["show-pattern", variant, "--length", str(length), "--out", str(out), *options]
    assert main(argv) == 0
    pixels, text = read_png(out)
    length = length if rows is None else rows
    assert tuple(pixels.shape) == (layers * (length + GAP) - GAP, heads * (keys + GAP) - GAP), "IHDR size"
    tiles = torch.empty(layers, heads, length, keys, dtype=torch.uint8)
    bands = torch.ones_like(pixels, dtype=torch.bool)
    for layer in range(layers):
        for head in range(heads):
            top, left = layer * (length + GAP), head * (keys + GAP)
            tiles[layer, head] = pixels[top : top + length, left : left + keys]
            bands[top : top + length, left : left + keys] = False
    assert (pixels[bands] == GAP_LEVEL).all(), "the bands between tiles"
    return tiles, text


def lit(tiles: torch.Tensor) -> torch.Tensor:
    """The support of a picture: pixels that aren't white (black in the support view, a gray band in intensity)."""
    return tiles != 255


def expected_keys(variant: str, length: int) -> int:
    if variant == "linformer":
        return 16  # projected_length
    if variant == "memory_compressed":
        return length + math.ceil(length / 4)  # raw keys, then one slot per 4 positions
    if variant == "etc":
        return length + math.ceil(length / 16)  # the stream [global ; long], one global token per 16 long tokens
    if variant == "compressive":
        return 8 + 16 + length  # memories of the same tokens read before: 8 compressed slots, 16 states
    return length


# ------------------------------------------------------------------------------------------ every variant


@pytest.mark.parametrize("variant", sorted(name.removeprefix("efficient_") for name, v in VARIANTS.items()
                                            if v.model.main_input_name == "input_ids"))  # sets: refused, see below
def test_every_variant_draws_its_own_weights(tmp_path, variant):
    """Both views of every variant: a valid PNG of the right size whose support is the support of the model's
    own weights (output_attentions, same model and input), every query row attends somewhere, and the intensity
    shades follow the weights: the row's largest weight is black, a larger weight never gets a lighter shade."""
    knobs = KNOBS.get(variant, [])
    keys = expected_keys(variant, LENGTH)
    rows = keys if variant == "etc" else LENGTH  # ETC's rows are its stream too
    layers = 4 if variant == "axial" else LAYERS  # axial: a tile row per block, row and column attention per layer
    support, text = show(tmp_path, variant, "--support", *knobs, keys=keys, rows=rows, layers=layers)
    intensity, _ = show(tmp_path, variant, *knobs, keys=keys, rows=rows, layers=layers)
    model = pattern_model(variant, LENGTH, **{k: int(v) for k, v in (knob.split("=") for knob in knobs)})
    weights = attention_weights(model, LENGTH)
    assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-4), "real weights: each row sums to one"
    assert torch.equal(lit(support), weights > 0) and torch.equal(lit(intensity), weights > 0)
    assert set(support.unique().tolist()) <= {0, 255}, "support view: black and white only"
    assert lit(support).any(-1).all(), "every query attends to some key"
    order = weights.sort(dim=-1, descending=True, stable=True).indices
    shades = intensity.gather(-1, order).int()
    assert (shades[..., 0] == 0).all(), "each row's largest weight is black"
    assert (shades.diff(dim=-1) >= 0).all(), "smaller weights get lighter (or equal) shades"
    assert text["Description"].startswith(f"efficient_{variant}, {LENGTH} tokens; support view")


# ------------------------------------------------------------------------------- pixel-for-pixel rules


def test_longformer_window_dilation_and_global_tokens(tmp_path):
    """Layer 0: window 8 (4 each side); layer 1: window 12 with dilation 2 (every 2nd key up to 12 away); tokens 0
    and 37 global: their rows and columns are lit."""
    tiles, _ = show(tmp_path, "longformer", "--support", "--global-tokens", "0", "37", "--set",
                    "attention_window=[8, 12]", "--set", "attention_dilation=[1, 2]")
    is_global = torch.zeros(LENGTH, dtype=torch.bool)
    is_global[[0, 37]] = True
    global_rows_and_columns = is_global[:, None] | is_global[None, :]
    first = ((QUERY - KEY).abs() <= 4) | global_rows_and_columns
    second = ((QUERY - KEY).abs() <= 12) & ((QUERY - KEY) % 2 == 0) | global_rows_and_columns
    assert torch.equal(lit(tiles[0]), first.expand(HEADS, -1, -1))
    assert torch.equal(lit(tiles[1]), second.expand(HEADS, -1, -1))


def test_longformer_causal(tmp_path):
    """Causal: the earlier half of the window, a global token sees and is seen by earlier tokens only: nothing lit
    above the diagonal."""
    tiles, _ = show(tmp_path, "longformer", "--support", "attention_window=8", "--causal", "--global-tokens", "37")
    rule = ((QUERY - KEY >= 0) & (QUERY - KEY <= 4)) | (((QUERY == 37) | (KEY == 37)) & (KEY <= QUERY))
    assert torch.equal(lit(tiles), rule.expand(LAYERS, HEADS, -1, -1))
    assert not lit(tiles).triu(1).any()


def sparse_factor(pattern: str, factor: str, local: int, summary: int, causal: bool) -> torch.Tensor:
    """Child et al.'s factors (A1, A2) with the package's bidirectional extension and own key."""
    if pattern == "strided":
        keep = (QUERY - KEY).abs() < local if factor == "A1" else (QUERY - KEY) % local == 0
    else:
        keep = QUERY // local == KEY // local if factor == "A1" else KEY % local >= local - summary
    if causal:
        keep = keep & (KEY <= QUERY)
    return keep | (QUERY == KEY)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("pattern", ["strided", "fixed"])
def test_sparse_transformer_factors(tmp_path, pattern, causal):
    """combination=heads: heads 0, 1 draw A1 and heads 2, 3 draw A2, in both layers."""
    options = ["--causal"] if causal else []
    tiles, _ = show(tmp_path, "sparse_transformer", "--support", *options, f"pattern={pattern}", "local_size=8",
                    "num_summary=2", "combination=heads")
    first, second = (sparse_factor(pattern, factor, 8, 2, causal) for factor in ("A1", "A2"))
    assert torch.equal(lit(tiles), torch.stack([first, first, second, second]).expand(LAYERS, -1, -1, -1))


def test_sparse_transformer_merged_is_the_union(tmp_path):
    tiles, _ = show(tmp_path, "sparse_transformer", "--support", "--causal", "pattern=fixed", "local_size=16",
                    "num_summary=4", "combination=merged")
    union = sparse_factor("fixed", "A1", 16, 4, True) | sparse_factor("fixed", "A2", 16, 4, True)
    assert torch.equal(lit(tiles), union.expand(LAYERS, HEADS, -1, -1))


def test_bigbird_blocks(tmp_path):
    """Blocks of 4 (16 blocks): the picture is made of whole blocks; the first and last blocks' rows and columns are
    lit, and every block's 3-block window; each other query block has exactly r = 3 more key blocks, different per
    head, which are the model's seeded random blocks."""
    tiles, _ = show(tmp_path, "bigbird", "--support", "block_size=4")
    blocks = lit(tiles).view(LAYERS, HEADS, 16, 4, 16, 4)
    block_lit = blocks[:, :, :, 0, :, 0]
    assert torch.equal(blocks, block_lit[:, :, :, None, :, None].expand_as(blocks)), "whole blocks"
    row, column = torch.arange(16)[:, None], torch.arange(16)[None, :]
    is_global = (row == 0) | (row == 15) | (column == 0) | (column == 15)
    fixed = is_global | ((row - column).abs() <= 1)
    assert block_lit[:, :, fixed].all(), "window and global blocks"
    random = block_lit & ~fixed
    assert (random[:, :, 1:15].sum(-1) == 3).all(), "three random blocks per non-global query block"
    model = pattern_model("bigbird", LENGTH, block_size=4)
    for layer, block in enumerate(model.layers):
        drawn = block.self_attn.random_blocks(16)  # (kv_heads, blocks, r)
        for head in range(HEADS):
            for query_block in range(1, 15):
                chosen = random[layer, head, query_block].nonzero().flatten().tolist()
                assert chosen == sorted(drawn[head, query_block].tolist())
    assert not torch.equal(random[0, 0], random[0, 1]), "heads draw their own random blocks"


@pytest.mark.parametrize("causal", [False, True])
def test_axial_blocks_light_their_axis(tmp_path, causal):
    """An 8 x 8 grayscale image (64 tokens, raster order): a row block lights the query's own row (up to the query
    when masked), a column block its own column (up to the query's row when masked)."""
    tiles, _ = show(tmp_path, "axial", "--support", *(["--causal"] if causal else []), layers=6 if causal else 4)
    row, column = QUERY // 8, QUERY % 8
    key_row, key_column = KEY // 8, KEY % 8
    rules = {"row": row == key_row, "masked row": (row == key_row) & (key_column <= column),
             "column": column == key_column, "masked column": (column == key_column) & (key_row <= row)}
    kinds = (["row", "masked column"] * 2 + ["masked row"] * 2) if causal else ["row", "column"] * 2
    for layer, kind in enumerate(kinds):
        assert torch.equal(lit(tiles[layer]), rules[kind].expand(HEADS, -1, -1)), (layer, kind)


@pytest.mark.parametrize("variant", sorted(set(CAUSAL_VARIANTS) - {"longformer", "sparse_transformer",
                                                                    "memory_compressed", "reformer", "routing",
                                                                    "compressive", "axial"}))
def test_causal_dense_variants_light_exactly_the_lower_triangle(tmp_path, variant):
    """Kernel methods (implied weights phi(q) phi(k)^T, normalised) and the other dense causal mechanisms: every
    earlier key has weight > 0, no later one."""
    tiles, _ = show(tmp_path, variant, "--support", "--causal")
    assert torch.equal(lit(tiles), (KEY <= QUERY).expand(LAYERS, HEADS, -1, -1))


def test_compressive_reads_both_memories_then_the_segment_causally(tmp_path):
    """[8 compressed slots | 16 memory states | 64 segment keys]: every query sees both memories whole, and the
    segment up to itself."""
    tiles, text = show(tmp_path, "compressive", "--support", *KNOBS["compressive"], keys=88)
    expected = torch.cat([torch.ones(LENGTH, 24, dtype=torch.bool), KEY <= QUERY], dim=1)
    assert torch.equal(lit(tiles), expected.expand(LAYERS, HEADS, -1, -1))
    assert "columns 0..7 = the 8 compressed memory slots, 8..23 = the 16 memory states" in text["Description"]


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_memory_compressed_local_and_compressed_layers(tmp_path, causal):
    """Layer 0 local (blocks of 16), layer 1 memory-compressed (slots of 4 positions), over [64 keys | 16 slots]."""
    options = ["--causal"] if causal else []
    slots = LENGTH // 4
    tiles, text = show(tmp_path, "memory_compressed", "--support", *options, "block_size=16",
                       "compression_factor=4", keys=LENGTH + slots)
    S = torch.arange(slots)[None, :]
    earlier = KEY <= QUERY if causal else torch.ones(LENGTH, LENGTH, dtype=torch.bool)
    local = torch.cat([(QUERY // 16 == KEY // 16) & earlier, torch.zeros(LENGTH, slots, dtype=torch.bool)], dim=1)
    if causal:  # complete earlier groups through their slots, the own group's earlier keys raw
        compressed = torch.cat([(QUERY // 4 == KEY // 4) & earlier, S < QUERY // 4], dim=1)
    else:
        compressed = torch.cat([torch.zeros(LENGTH, LENGTH, dtype=torch.bool), (S >= 0).expand(LENGTH, -1)], dim=1)
    assert torch.equal(lit(tiles[0]), local.expand(HEADS, -1, -1))
    assert torch.equal(lit(tiles[1]), compressed.expand(HEADS, -1, -1))
    assert "layers 0 (local), 1 (compressed)" in text["Description"]
    assert f"columns {LENGTH}..{LENGTH + slots - 1} = the {slots} compressed slots" in text["Description"]


def test_linformer_draws_queries_against_projected_keys(tmp_path):
    tiles, text = show(tmp_path, "linformer", "--support", "projected_length=16", keys=16)
    assert lit(tiles).all(), "softmax over the k projected keys: no zero"
    assert "projected key r of k=16" in text["Description"]


# ---------------------------------------------------------------------------------------- the command


def test_layer_and_head_selection_crops_the_full_picture(tmp_path):
    knobs = ["local_size=8", "num_summary=2", "combination=alternate"]
    everything, _ = show(tmp_path, "sparse_transformer", *knobs)
    # knobs right after a list option (--heads 3 0 ...) are knobs, not heads
    chosen, text = show(tmp_path, "sparse_transformer", "--layer", "1", "--heads", "3", "0", *knobs, layers=1, heads=2)
    assert torch.equal(chosen[0], everything[1, [3, 0]])
    assert "rows = layers 1; columns = heads 3, 0." in text["Description"]


def test_a_saved_model_folder_with_sharp_attention(tmp_path):
    """A folder (e.g. a converted checkpoint) is drawn with its own config and weights: a window of 6, and q/k
    projections scaled so that softmax is sharp; in-window weights down to ~1e-23 are still drawn, in both views."""
    model = pattern_model("longformer", LENGTH, attention_window=6)
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    model.save_pretrained(tmp_path / "model")
    weights = attention_weights(model, LENGTH)
    band = ((QUERY - KEY).abs() <= 3).expand(LAYERS, HEADS, -1, -1)
    assert torch.equal(weights > 0, band) and weights[band].min() < 1e-15, "the setting: tiny but nonzero weights"
    support, _ = show(tmp_path, str(tmp_path / "model"), "--support")
    intensity, _ = show(tmp_path, str(tmp_path / "model"))
    assert torch.equal(lit(support), band) and torch.equal(lit(intensity), band)
    faintest = round(0.85 * 255)  # patterns.FAINTEST
    assert (intensity[band] <= faintest).all() and (intensity[band] == faintest).any(), "tiny weights: light gray"
    assert len(intensity[band].unique()) >= 4, "sharp rows use several shades"


@pytest.mark.parametrize("options, message", [
    (["bigbird", "--causal"], "set is_causal=False"),
    (["linformer", "--heads", "4"], "heads [4] out of range"),
    (["longformer", "--layer", "2"], "layers [2] out of range"),
    (["longformer", "window"], "not a knob"),
    (["no_such_variant"], "neither a variant"),
    (["set_transformer"], "efficient_set_transformer reads input_features, not token ids"),
])
def test_errors_are_messages_without_a_picture(tmp_path, capsys, options, message):
    out = tmp_path / "never.png"
    assert main(["show-pattern", *options, "--length", "32", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["local_1d", "local_2d"])
def test_image_transformer_local_blocks(tmp_path, kind):
    """A 5 x 5 RGB image (76 positions), its first 64: bos seen by all; 1D: blocks of 12 sub-pixels with a memory of
    6; 2D: blocks of 2 x 2 pixels with a flange of 1 row above and 1 column each side, causal in raster order."""
    knobs = ["query_block_length=12", "memory_length=6"] if kind == "local_1d" else ["query_shape=2",
                                                                                        "memory_flange=1"]
    tiles, _ = show(tmp_path, "image_transformer", "--support", f"attention_type={kind}", *knobs)
    if kind == "local_1d":
        local = KEY - 1 >= (QUERY - 1) // 12 * 12 - 6
    else:
        row, col = (QUERY - 1).clamp(min=0) // 3 // 5, (QUERY - 1).clamp(min=0) // 3 % 5
        key_row, key_col = (KEY - 1).clamp(min=0) // 3 // 5, (KEY - 1).clamp(min=0) // 3 % 5
        local = (key_row >= row // 2 * 2 - 1) & (key_col >= col // 2 * 2 - 1) & (key_col < col // 2 * 2 + 3)
    rule = (KEY <= QUERY) & (local | (KEY == 0))
    assert torch.equal(lit(tiles), rule.expand(LAYERS, HEADS, -1, -1))
