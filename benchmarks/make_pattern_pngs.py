"""Regenerate the README's attention-pattern pictures (docs/patterns/*.png) with `hf-efficient show-pattern`, and
print the README table (markdown) that shows them.

Each picture is one forward of a small random model of the variant (patterns.SMALL) with output_attentions=True:
the weights the model really uses, not a drawing. Run from the repository root (CPU, a few seconds):

    python benchmarks/make_pattern_pngs.py [--out docs/patterns] [--markdown table.md]
"""

import argparse
import contextlib
import io
from pathlib import Path

from hf_efficient.cli import main as cli

# (file name, show-pattern arguments after the variant's name, what the picture shows)
PICTURES = [
    ("longformer", ["longformer", "--support", "--layer", "0", "--heads", "0", "attention_window=32",
                    "--global-tokens", "0", "100"],
     "sliding window of 32 (16 keys each side) plus global tokens 0 and 100 (their full rows and columns)"),
    ("bigbird", ["bigbird", "--support", "--layer", "0", "--heads", "0", "1", "block_size=16"],
     "blocks of 16: each query block sees its 3-block window, the first and last (global) blocks and 3 random "
     "blocks, drawn per head (heads 0 and 1)"),
    ("sparse_transformer_strided", ["sparse_transformer", "--support", "--causal", "--layer", "0", "--heads", "0",
                                    "pattern=strided", "local_size=16", "combination=merged"],
     "causal strided pattern, l = 16: the previous 16 positions (A1) and every 16th position before (A2)"),
    ("sparse_transformer_fixed", ["sparse_transformer", "--support", "--causal", "--layer", "0", "--heads", "0",
                                  "pattern=fixed", "local_size=32", "num_summary=4", "combination=merged"],
     "causal fixed pattern, l = 32, c = 4: the own block (A1) and the last 4 \"summary\" positions of every "
     "earlier block (A2)"),
    ("memory_compressed_local", ["memory_compressed", "--support", "--causal", "--layer", "0", "--heads", "0",
                                 "block_size=32", "compression_factor=4"],
     "T-DMCA local layer (layer 0), blocks of 32, causal; the 64 columns on the right are the compressed slots, "
     "unused by this layer kind"),
    ("memory_compressed_compressed", ["memory_compressed", "--support", "--causal", "--layer", "1", "--heads", "0",
                                      "block_size=32", "compression_factor=4"],
     "T-DMCA memory-compressed layer (layer 1), causal: the 256 raw key columns (only the query's own group of 4, "
     "up to itself) then the 64 slots (each pools 4 positions; seen once complete)"),
    ("reformer_lsh", ["reformer", "--support", "--layer", "1", "--heads", "0", "lsh_attn_chunk_length=32",
                      "num_buckets=8", "num_hashes=2"],
     "Reformer LSH layer (layer 1), bidirectional, 2 hash rounds of 8 buckets, chunks of 32: each query sees the "
     "tokens sharing its sorted chunk or the one before in either round (a content-based pattern; the diagonal is "
     "white: no attention to oneself)"),
    ("reformer_lsh_causal", ["reformer", "--support", "--causal", "--layer", "1", "--heads", "0",
                             "lsh_attn_chunk_length=32", "num_buckets=8", "num_hashes=2"],
     "Reformer LSH layer (layer 1), causal, 2 hash rounds of 8 buckets: each query sees the 32 most recent earlier "
     "tokens of its bucket in either round"),
    ("routing", ["routing", "--support", "--layer", "0", "--heads", "0", "2", "local_window=16", "num_clusters=4",
                 "routing_window=64"],
     "head 0 local (16 positions each side); head 2 routing, bidirectional: 4 centroids each take their 64 nearest "
     "tokens (balanced top-k), a token attends within every cluster that took it (itself alone if none)"),
    ("routing_causal", ["routing", "--support", "--causal", "--layer", "0", "--heads", "0", "2", "local_window=16",
                        "num_clusters=4", "routing_window=64"],
     "causal: head 0 local (the previous 16 positions); head 2 routing: each token in its nearest of 4 clusters, "
     "seeing the 64 most recent tokens of that cluster up to itself"),
    ("etc", ["etc", "--support", "--layer", "0", "--heads", "0", "local_radius=16"],
     "ETC, soft masks: the 16 global tokens first (one per block of 16 long tokens; g2g top left, every long token "
     "in their rows and columns), then the long tokens' band of radius 16"),
    ("etc_hard", ["etc", "--support", "--layer", "0", "--heads", "0", "local_radius=16", "use_hard_g2l_mask=true",
                  "use_hard_l2g_mask=true"],
     "ETC, hard g2l and l2g masks: a global token and the long tokens of its block see each other, no others"),
    ("linformer", ["linformer", "--layer", "0", "--heads", "0", "projected_length=64"],
     "intensity: 256 queries (rows) x the k = 64 projected keys (columns; each mixes every position, not a "
     "token): every pair has weight > 0"),
    ("performer", ["performer", "--layer", "0", "--heads", "0"],
     "intensity of the implied weights phi(q) phi(k)^T, row-normalised (FAVOR+, bidirectional): dense, every "
     "pair > 0, near uniform at initialisation"),
    ("linear_transformer", ["linear_transformer", "--causal", "--layer", "0", "--heads", "0"],
     "intensity of the implied weights (elu(q)+1)(elu(k)+1)^T, row-normalised, causal: every earlier key, no "
     "later one"),
    ("sinkhorn", ["sinkhorn", "--support", "--layer", "0", "--heads", "0", "1", "block_size=32"],
     "blocks of 32, eval (hard sort): each query block sees its own block and the block the sorting network "
     "pairs it with (a permutation of the 8 blocks), drawn per head (heads 0 and 1)"),
    ("sinkhorn_causal", ["sinkhorn", "--support", "--causal", "--layer", "0", "--heads", "0", "1", "block_size=32"],
     "causal, blocks of 32: each query block sees its own block up to itself and one earlier block chosen from "
     "what the block may see (block 0: none), per head"),
    ("transformer_xl_same_length", ["transformer_xl", "--support", "--causal", "--layer", "0", "--heads", "0",
                                    "mem_len=64", "same_length=true"],
     "Transformer-XL with same_length, mem_len = 64, one segment: every query sees itself and the 63 positions "
     "before it (with a memory the window reaches into the previous segments' hidden states)"),
    ("compressive", ["compressive", "--support", "--causal", "--layer", "0", "--heads", "0", "mem_len=64",
                     "cmem_len=32", "compression_rate=4"],
     "Compressive Transformer, mem_len = 64, cmem_len = 32, rate 4, the second segment of 256: every query sees "
     "the 32 compressed slots, the 64 memory states and the segment up to itself"),
    ("axial_encoder", ["axial", "--support", "--length", "192", "--heads", "0", "image_size=[8,8]",
                       "num_channels=3"],
     "Axial encoder on an 8 x 8 RGB image (192 sub-pixels in raster order (row, column, channel)), head 0 of each "
     "block: row attention (the query's image row, same channel), column attention (its column, same channel), "
     "channel attention (its pixel's 3 channels), twice"),
    ("axial_decoder", ["axial", "--support", "--causal", "--length", "192", "--heads", "0", "image_size=[8,8]",
                       "num_channels=3", "num_hidden_layers=1"],
     "Axial causal decoder, 8 x 8 RGB: outer row, channel and masked column blocks (over the image shifted down a "
     "row), inner channel and masked row blocks (shifted right a pixel), the masked channel block (shifted a "
     "channel); together each sub-pixel is predicted from exactly the sub-pixels before it"),
    ("image_transformer_1d", ["image_transformer", "--support", "--layer", "0", "--heads", "0", "image_size=16",
                              "num_channels=1", "attention_type=local_1d", "query_block_length=32",
                              "memory_length=32"],
     "Image Transformer local 1D on a 16 x 16 grayscale image (bos + 256 pixels, the first 256 positions): query "
     "blocks of 32 pixels (2 image rows), each seeing itself up to the query and the 32 pixels before it, and bos"),
    ("image_transformer_2d", ["image_transformer", "--support", "--layer", "0", "--heads", "0", "image_size=16",
                              "num_channels=1", "attention_type=local_2d", "query_shape=4", "memory_flange=4"],
     "Image Transformer local 2D, same image: query blocks of 4 x 4 pixels, memory the block with 4 rows above and "
     "4 columns left and right, causal in raster order (so a query's own block and flange appear as row segments "
     "of 12 pixels), and bos"),
    ("synthesizer", ["synthesizer", "--length", "128", "--layer", "0", "--heads", "0", "synthesizer_type=random"],
     "intensity, 128 tokens: the Random Synthesizer's softmax(R), the same for every input (no token-token "
     "dot products)"),
]
LENGTH = 256


def make(out: Path) -> list[tuple[str, str, str, int]]:
    """Write every picture into `out`; returns (file, command, description, bytes) per picture."""
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for name, arguments, description in PICTURES:
        path = out / f"{name}.png"
        length = [] if "--length" in arguments else ["--length", str(LENGTH)]
        argv = ["show-pattern", arguments[0], *length, *arguments[1:], "--out", str(path)]
        with contextlib.redirect_stdout(io.StringIO()):
            if cli(argv) != 0:
                raise SystemExit(f"show-pattern failed: {' '.join(argv)}")
        command = "hf-efficient " + " ".join(argv).replace(str(out), "docs/patterns")
        made.append((path.name, command, description, path.stat().st_size))
    return made


def markdown(made: list[tuple[str, str, str, int]]) -> str:
    rows = [f"| ![{file}](docs/patterns/{file}) | {description}<br>`{command}` |"
            for file, command, description, _ in made]
    return "\n".join(["| pattern | what it shows, and the command |", "|---|---|", *rows]) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/patterns"), help="folder of the PNGs")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    made = make(args.out)
    for file, _, _, size in made:
        print(f"{args.out / file}: {size:,} bytes")
    table = markdown(made)
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table)
