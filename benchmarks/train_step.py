"""Train-step speed and peak GPU memory of every efficient-attention variant, transformers' anchors and PyPI peers.

One masked-LM train step of a full model at MiniLM sizes (hidden 384, 12 heads, intermediate 1536, vocab 30522,
6 layers), batch 1, dropout 0, bf16 weights (`model.to(torch.bfloat16)`, no autocast): forward, one cross-entropy
computed here for every model (labels on a random 15% of tokens), backward, AdamW step; at each length N
(default 1K ... 64K) for

* ours: every `Efficient<Name>ForMaskedLM` with the paper's settings at these sizes (`attention_backend="auto"`:
  the FlexAttention path on CUDA where the variant has one);
* anchors: transformers' BERT (SDPA), BigBird (block sparse), Longformer and Reformer (when installed);
* peers: performer-pytorch, linformer, pytorch-fast-transformers and flash-linear-attention, where installed
  (an import failure is a row 'not installed: <reason>').

Models run one after the other, each over the lengths in increasing order. The first step of each (model, length)
is timed apart (it includes torch.compile of FlexAttention and its block mask, Triton autotuning, cuBLAS setup),
then warm-up steps, then steps timed with CUDA events: tokens/s = N / median. Peak = torch.cuda.max_memory_allocated
over the timed steps. After an OOM, or when the model's time budget (--max-seconds) would be exceeded, its longer
lengths are recorded as skipped. Before our models are timed at their smallest length, their fast path is checked
against a second path on the same input: flex or compiled against blocked (the CPU path) where the fast path is one
of those, else blocked (also the GPU path) against the naive reference.

    python benchmarks/train_step.py --out benchmarks/results/                   # everything, on a GPU (~15 min)
    python benchmarks/train_step.py --models ours --out DIR                     # ours only (one device call)
    python benchmarks/train_step.py --models anchors,peers --append --out DIR   # the rest, added to DIR's CSV
    python benchmarks/train_step.py --device cpu --tiny --out /tmp/smoke        # CPU smoke test of every path
    python benchmarks/train_step.py --models longformer,bert_sdpa,hf_longformer --sizes base --batch 4 \
        --global-first-token --loss model --lengths 4k,16k --out DIR             # longformer-base-4096's shape

`--loss model` gives each model its labels and takes its own head's loss (what Trainer does; our heads then skip
the whole logits, core/lm_loss.py); peers without a masked-LM head keep the script's cross-entropy.
`--global-first-token` makes the first token global where the model has global attention (ours, transformers'
Longformer).

--causal makes it a causal-LM step (next-token cross-entropy on every position) of our variants that have a
causal form (`is_causal=True`), against transformers' Llama (SDPA, dense causal) at the same sizes and the causal
peers; --attention-backend forces our models' backend (rows named model@backend, e.g. to set
flash-linear-attention's kernels against the default path):

    python benchmarks/train_step.py --causal --models llama_sdpa,linear_transformer,performer,sparse_transformer \
        --lengths 16k,64k --out DIR
    python benchmarks/train_step.py --causal --models linear_transformer --attention-backend fla --lengths 16k,64k \
        --append --out DIR

--images makes it a causal-LM step over images: square RGB images of 256 levels (--image-sizes, default 32, 64,
128), each a sequence of 1 + 3 s^2 tokens ([bos, sub-pixels in raster order], vocabulary 257), for the image
variants (ours; others' rows say n.a.) against transformers' Llama (SDPA, dense causal) on the same token sequences:

    python benchmarks/train_step.py --images --models axial,llama_sdpa --out DIR
"""

import argparse
import csv
import dataclasses
import gc
import importlib
import importlib.metadata
import importlib.util
import inspect
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import hf_efficient  # noqa: E402
from hf_efficient.models.etc import build_global_input  # noqa: E402

MASKED_FRACTION = 0.15
CSV_NAME, REPORT_NAME = "train_step.csv", "train_step.md"
DEFAULT_LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
TINY_LENGTHS = [256, 512]
FIELDS = ["model", "group", "label", "length", "batch", "sizes", "loss", "status", "tokens_per_s", "step_ms",
          "peak_gib", "first_call_s", "warmup", "repeats", "backend", "check", "message", "layers", "dtype",
          "device_name", "torch", "transformers"]


@dataclass(frozen=True)
class Sizes:
    """Backbone sizes (MiniLM's) and layers."""

    hidden: int = 384
    heads: int = 12
    intermediate: int = 1536
    vocab: int = 30522
    layers: int = 6

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SIZES = {"minilm": Sizes(), "base": Sizes(hidden=768, heads=12, intermediate=3072, layers=12)}


@dataclass(frozen=True)
class Knobs:
    """Mechanism settings: the papers' at full size; scaled down in --tiny so that 256-512 tokens are still sparse."""

    window: int = 512  # Longformer window (ours and transformers')
    block: int = 64  # BigBird block size (ours and transformers'), 3 random blocks, 2 global blocks
    projected_length: int = 256  # Linformer k (ours and the linformer package)
    local_size: int = 128  # Sparse Transformer l (strided: local 128 + stride 128; fixed: blocks of 128)
    num_summary: int = 32  # Sparse Transformer c (fixed pattern)
    compressed_block: int = 256  # Memory-compressed local block (compression 3)
    reformer_chunk: int = 64  # Reformer local and LSH chunk length
    sinkhorn_block: int = 64  # Sparse Sinkhorn block size (own block + one sorted block per query block)
    routing_local: int = 256  # Routing Transformer local heads' reach (the paper's local blocks)
    routing_window: int = 512  # Routing Transformer cluster size w; N / w clusters (the paper's *_local_cluster*)
    etc_radius: int = 84  # ETC local radius (the paper's base models)
    etc_block: int = 32  # ETC's fixed-block global input: one global token per this many long tokens


PAPER_KNOBS = Knobs()
TINY_KNOBS = Knobs(window=64, block=16, projected_length=64, local_size=16, num_summary=4, compressed_block=64,
                   reformer_chunk=32, sinkhorn_block=16, routing_local=32, routing_window=64, etc_radius=16,
                   etc_block=16)


@dataclass(frozen=True)
class Setup:
    device: torch.device
    dtype: torch.dtype
    sizes: Sizes
    knobs: Knobs
    causal: bool = False  # a causal-LM step (next-token loss) instead of the masked-LM step
    images: bool = False  # the step is over RGB images of 256 levels: length = 1 + 3 s^2 for an s x s image


@dataclass(frozen=True)
class ModelSpec:
    """One row of the report: how to build the model at a length, and why it can't run (None = it can)."""

    name: str
    group: str  # "ours", "anchors" or "peers"
    label: Callable[[Knobs], str]
    build: Callable[[int, Setup], nn.Module]
    unavailable: Callable[[Setup], str | None] = lambda setup: None
    note: Callable[[], str | None] = lambda: None  # said in the report's messages for rows that ran
    modes: tuple[str, ...] = ("masked",)  # the steps it can run: "masked" (bidirectional), "causal"


# ---------------------------------------------------------------- ours


OUR_VARIANTS = {  # report name: (variant, knobs, label)
    "longformer": ("longformer", lambda k: {"attention_window": k.window}, "window {k.window}"),
    "bigbird": ("bigbird", lambda k: {"block_size": k.block, "num_random_blocks": 3, "num_global_blocks": 2,
                                      "num_sliding_blocks": 3}, "block {k.block}, 3 sliding + 3 random + 2 global"),
    "linformer": ("linformer", lambda k: {"projected_length": k.projected_length}, "k = {k.projected_length}"),
    "linear_transformer": ("linear_transformer", lambda k: {}, "elu+1"),
    "sparse_transformer": ("sparse_transformer", lambda k: {"pattern": "strided", "local_size": k.local_size,
                                                            "combination": "merged"},
                           "strided, local {k.local_size} + stride {k.local_size}, merged"),
    "sparse_transformer_fixed": ("sparse_transformer", lambda k: {"pattern": "fixed", "local_size": k.local_size,
                                                                  "num_summary": k.num_summary,
                                                                  "combination": "merged"},
                                 "fixed, l = {k.local_size}, c = {k.num_summary}, merged"),
    "performer": ("performer", lambda k: {}, "FAVOR+ softmax, m = d ln d"),
    "memory_compressed": ("memory_compressed", lambda k: {"block_size": k.compressed_block, "compression_factor": 3},
                          "L/M layers, block {k.compressed_block}, compression 3"),
    "synthesizer": ("synthesizer", lambda k: {"synthesizer_type": "factorized_random+vanilla"},
                    "factorized random + vanilla, n = N (quadratic)"),
    "sinkhorn": ("sinkhorn", lambda k: {"block_size": k.sinkhorn_block},
                 "blocks of {k.sinkhorn_block}, own + 1 sorted block, 7 Sinkhorn iterations, tau 0.75, Gumbel noise"),
    "sinkhorn_sortcut": ("sinkhorn", lambda k: {"block_size": k.sinkhorn_block, "sortcut_blocks": 2},
                         "SortCut: the first 2 sorted blocks of {k.sinkhorn_block}, 7 Sinkhorn iterations"),
    "reformer": ("reformer", lambda k: {"local_attn_chunk_length": k.reformer_chunk,
                                        "lsh_attn_chunk_length": k.reformer_chunk, "num_hashes": 2},
                 "local/LSH layers, chunk {k.reformer_chunk}, 2 hashes, b = 2N / chunk"),
    "reformer_reversible": ("reformer", lambda k: {"local_attn_chunk_length": k.reformer_chunk,
                                                   "lsh_attn_chunk_length": k.reformer_chunk, "num_hashes": 2,
                                                   "reversible": True, "norm_position": "pre",
                                                   "tie_word_embeddings": False},
                            "local/LSH layers, chunk {k.reformer_chunk}, 2 hashes, reversible residuals"),
    # knobs of (knobs, length): the number of clusters follows the length
    "routing": ("routing", lambda k, n: {"local_window": k.routing_local, "routing_window": k.routing_window,
                                         "num_clusters": max(1, n // k.routing_window)},
                "half the heads local over {k.routing_local}, half routing over clusters of {k.routing_window}, N / "
                "{k.routing_window} centroids"),
    # one segment of N tokens (no memory yet): relative attention over the whole segment, quadratic; its own flow
    # (segments with memory, generation) is benchmarks/transformer_xl_stream.py
    "transformer_xl": ("transformer_xl", lambda k: {"mem_len": 512},
                       "one segment of N, relative attention (quadratic)"),
    # one segment of N tokens (no memory yet): Transformer-XL's relative attention; the memories (mem_len 512, and 512
    # compressed at rate 3) start with the next segment
    "compressive": ("compressive", lambda k: {"mem_len": 512, "cmem_len": 512, "compression_rate": 3},
                    "one segment of N, relative attention (quadratic), compressed memory 512 at rate 3"),
    "etc": ("etc", lambda k: {"local_radius": k.etc_radius}, "radius {k.etc_radius}, one global token per "
            "{k.etc_block} tokens, soft masks"),
    # --images: an s x s RGB image of 256 levels per sequence of 1 + 3 s^2 tokens (the paper's decoder, 1 + 1 + 1
    # channel layer per outer/inner layer pair of the backbone's layers)
    "axial": ("axial", lambda k, n: {"image_size": image_side(n), "num_channels": 3, "num_levels": IMAGE_LEVELS},
              "causal decoder, outer + inner layers, row / column / channel attention"),
    "image_transformer_1d": ("image_transformer", lambda k, n: {
        "image_size": image_side(n), "num_channels": 3, "num_levels": IMAGE_LEVELS, "attention_type": "local_1d",
        "query_block_length": 256, "memory_length": 128}, "local 1D, query blocks of 256 sub-pixels, memory 128"),
    "image_transformer_2d": ("image_transformer", lambda k, n: {
        "image_size": image_side(n), "num_channels": 3, "num_levels": IMAGE_LEVELS, "attention_type": "local_2d",
        "query_shape": [8, 8], "memory_flange": [8, 8]}, "local 2D, query blocks of 8 x 8 pixels, flange 8 x 8"),
    "etc_hard": ("etc", lambda k: {"local_radius": k.etc_radius, "use_hard_g2l_mask": True, "use_hard_l2g_mask": True},
                 "radius {k.etc_radius}, one global token per {k.etc_block} tokens, hard g2l/l2g masks"),
}


IMAGE_LEVELS = 256  # --images: 8-bit intensities (vocabulary 257 with bos)
IMAGE_ROWS = ("axial", "image_transformer_1d", "image_transformer_2d")  # rows over images (--images), not text
DEFAULT_IMAGE_SIDES = [32, 64, 128]


def image_side(length: int) -> int:
    """The side s of the RGB image whose [bos, sub-pixels] sequence has `length` = 1 + 3 s^2 tokens."""
    side = math.isqrt(max(length - 1, 0) // 3)
    if 1 + 3 * side * side != length:
        raise ValueError(f"{length} tokens are no [bos, s x s x 3 sub-pixels] image sequence; run it with --images")
    return side


def our_config(name: str, length: int, setup: Setup, overrides: dict | None = None):
    """The config of our model `name` at these sizes, with the paper's knobs, causal when the setup is (and config
    `overrides`)."""
    variant, knobs, _ = OUR_VARIANTS[name]
    entry = hf_efficient.VARIANTS[f"efficient_{variant}"]
    causal = {"is_causal": True} if setup.causal else {}
    knob_values = knobs(setup.knobs, length) if len(inspect.signature(knobs).parameters) == 2 else knobs(setup.knobs)
    config = entry.config(**backbone(setup.sizes, length), use_pooler=False, **knob_values, **causal,
                          **(overrides or {}))
    config._attn_implementation = "sdpa"  # our blocked paths call transformers' attention interface
    return config


def our_label(name: str, knobs: Knobs, overrides: dict | None = None) -> str:
    variant, _, label = OUR_VARIANTS[name]
    backend = f", attention_backend={overrides['attention_backend']}" if "attention_backend" in (overrides or {}) \
        else ""
    return f"ours: {variant} ({label.format(k=knobs)}{backend})"


def our_spec(name: str, overrides: dict | None = None, suffix: str = "") -> ModelSpec:
    """Our model `name` with the paper's knobs (and config `overrides`): its masked-LM head, or its causal-LM head
    (same shape) when the setup or the overrides make it causal. `suffix` is added to the row's name."""
    variant = OUR_VARIANTS[name][0]
    model_type = f"efficient_{variant}"

    def build(length: int, setup: Setup) -> nn.Module:
        config = our_config(name, length, setup, overrides)
        return hf_efficient.VARIANTS[model_type].heads["causal_lm" if config.is_causal else "masked_lm"](config)

    def unavailable(setup: Setup) -> str | None:
        if model_type not in hf_efficient.VARIANTS:
            return f"n.a.: no variant {model_type} in hf_efficient"
        attention = hf_efficient.VARIANTS[model_type].model.attention_class
        if setup.causal and not attention.supports_causal:
            return f"n.a.: {variant} has no causal form"
        try:  # a setting the variant refuses in this mode (e.g. Sinkhorn's SortCut, encoders only)
            our_config(name, 1 + 3 * 32 * 32 if setup.images else 1024, setup, overrides)
        except ValueError as error:
            return f"n.a.: {describe(error)}"
        if not setup.causal and not attention.supports_bidirectional:
            return f"n.a.: {variant} is causal only (use --causal)"
        return None

    return ModelSpec(name + suffix, "ours", lambda k: our_label(name, k, overrides), build, unavailable,
                     modes=("masked", "causal"))


def backbone(sizes: Sizes, length: int) -> dict:
    """BERT-style fields shared by our configs and transformers' anchors."""
    return {"vocab_size": sizes.vocab, "hidden_size": sizes.hidden, "num_hidden_layers": sizes.layers,
            "num_attention_heads": sizes.heads, "intermediate_size": sizes.intermediate,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "max_position_embeddings": length}


# ---------------------------------------------------------------- transformers' anchors


def bert_config(length: int, setup: Setup, **fields) -> transformers.BertConfig:
    config = transformers.BertConfig(**backbone(setup.sizes, length), **fields)
    config._attn_implementation = "sdpa"
    return config


def hf_bigbird_config(length: int, setup: Setup, **fields) -> transformers.BigBirdConfig:
    return transformers.BigBirdConfig(**backbone(setup.sizes, length), attention_type="block_sparse",
                                      block_size=setup.knobs.block, num_random_blocks=3, **fields)


def hf_longformer_config(length: int, setup: Setup, **fields) -> transformers.LongformerConfig:
    sizes = backbone(setup.sizes, length) | {"max_position_embeddings": length + 2}  # RoBERTa positions: + 2
    return transformers.LongformerConfig(**sizes, attention_window=[setup.knobs.window] * setup.sizes.layers,
                                         **fields)


def build_bert(length: int, setup: Setup) -> nn.Module:
    return transformers.BertForMaskedLM(bert_config(length, setup))


def build_llama(length: int, setup: Setup) -> nn.Module:
    """transformers' Llama (SDPA: dense causal flash attention) at the same sizes: the dense causal anchor."""
    sizes = setup.sizes
    config = transformers.LlamaConfig(vocab_size=sizes.vocab, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
                                      num_attention_heads=sizes.heads, intermediate_size=sizes.intermediate,
                                      max_position_embeddings=length, attention_dropout=0.0)
    config._attn_implementation = "sdpa"
    return transformers.LlamaForCausalLM(config)


def build_hf_bigbird(length: int, setup: Setup) -> nn.Module:
    return transformers.BigBirdForMaskedLM(hf_bigbird_config(length, setup))


def build_hf_longformer(length: int, setup: Setup) -> nn.Module:
    return transformers.LongformerForMaskedLM(hf_longformer_config(length, setup))


def build_hf_reformer(length: int, setup: Setup) -> nn.Module:
    """Alternating local / LSH layers (transformers' default), bidirectional (one chunk before and after),
    2 hashes, reversible residuals; axial positions (128, N / 128) of widths 128 + 256."""
    sizes, chunk = setup.sizes, setup.knobs.reformer_chunk
    config = transformers.ReformerConfig(
        vocab_size=sizes.vocab, hidden_size=sizes.hidden, num_attention_heads=sizes.heads,
        attention_head_size=sizes.head_dim, feed_forward_size=sizes.intermediate, hidden_act="gelu",
        attn_layers=["local", "lsh"] * (sizes.layers // 2) + ["local"] * (sizes.layers % 2),
        max_position_embeddings=length, axial_pos_shape=(128, length // 128), axial_pos_embds_dim=(128, 256),
        local_attn_chunk_length=chunk, lsh_attn_chunk_length=chunk, local_num_chunks_after=1,
        lsh_num_chunks_after=1, num_hashes=2, is_decoder=False, hidden_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0)
    return transformers.ReformerForMaskedLM(config)


def reformer_unavailable(setup: Setup) -> str | None:
    if hasattr(transformers, "ReformerForMaskedLM"):
        return None
    return f"n.a.: transformers {transformers.__version__} has no Reformer (removed)"


# ---------------------------------------------------------------- PyPI peers


class PeerMaskedLM(nn.Module):
    """Token + learned position embeddings, a stack of a peer's layers, a final norm and a tied LM head: the shell
    around peers that ship layers but no masked-LM model (fast-transformers, flash-linear-attention)."""

    def __init__(self, encoder: nn.Module, sizes: Sizes, length: int):
        super().__init__()
        self.token_embedding = nn.Embedding(sizes.vocab, sizes.hidden)
        self.position_embedding = nn.Embedding(length, sizes.hidden)
        self.encoder = encoder
        self.norm = nn.LayerNorm(sizes.hidden)
        self.lm_head = nn.Linear(sizes.hidden, sizes.vocab, bias=False)
        self.lm_head.weight = self.token_embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.token_embedding(input_ids) + self.position_embedding(positions)
        return self.lm_head(self.norm(self.encoder(hidden)))


class PostNormBlock(nn.Module):
    """BERT's block around any token mixer: norm(x + mix(x)), then norm(x + mlp(x))."""

    def __init__(self, mixer: nn.Module, sizes: Sizes):
        super().__init__()
        self.mixer = mixer
        self.mlp = nn.Sequential(nn.Linear(sizes.hidden, sizes.intermediate), nn.GELU(),
                                 nn.Linear(sizes.intermediate, sizes.hidden))
        self.attention_norm, self.mlp_norm = nn.LayerNorm(sizes.hidden), nn.LayerNorm(sizes.hidden)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mixed = self.mixer(hidden)
        hidden = self.attention_norm(hidden + (mixed[0] if isinstance(mixed, tuple) else mixed))
        return self.mlp_norm(hidden + self.mlp(hidden))


def build_performer_pytorch(length: int, setup: Setup) -> nn.Module:
    import setuptools  # noqa: F401  (provides `distutils`, gone from Python 3.12, which performer-pytorch imports)
    from performer_pytorch import PerformerLM

    sizes = setup.sizes
    return PerformerLM(num_tokens=sizes.vocab, max_seq_len=length, dim=sizes.hidden, depth=sizes.layers,
                       heads=sizes.heads, dim_head=sizes.head_dim, ff_mult=sizes.intermediate // sizes.hidden,
                       nb_features=None, causal=False, rotary_position_emb=False, tie_embed=True)


def build_linformer_pytorch(length: int, setup: Setup) -> nn.Module:
    from linformer import LinformerLM

    sizes = setup.sizes
    return LinformerLM(num_tokens=sizes.vocab, dim=sizes.hidden, seq_len=length, depth=sizes.layers,
                       k=setup.knobs.projected_length, heads=sizes.heads, dim_head=sizes.head_dim, dropout=0.0)


FAST_TRANSFORMERS_EXTENSIONS = ["hashing.hash_cpu", "aggregate.aggregate_cpu", "clustering.hamming.cluster_cpu",
                                "sparse_product.sparse_product_cpu", "sparse_product.clustered_sparse_product_cpu",
                                "causal_product.causal_product_cpu", "local_product.local_product_cpu"]


STUBBED_EXTENSIONS: list[str] = []


def stub_unbuilt_fast_transformers_extensions() -> None:
    """fast-transformers imports its seven C++ CPU extensions on import, though its non-causal linear attention uses
    none of them (three einsums). Where the package was unpacked without building them (run_on_gpu.sh: they take
    minutes to compile, and its CUDA ones don't build with CUDA 13), put stand-ins that raise when called into
    sys.modules (named in STUBBED_EXTENSIONS)."""
    import types

    spec = importlib.util.find_spec("fast_transformers")
    if spec is None or not spec.submodule_search_locations:
        return
    root = Path(list(spec.submodule_search_locations)[0])
    for extension in FAST_TRANSFORMERS_EXTENSIONS:
        name = f"fast_transformers.{extension}"
        if name in sys.modules or list(root.glob(extension.replace(".", "/") + ".*.so")):
            continue
        stub = types.ModuleType(name)

        def unbuilt(attribute: str, name: str = name) -> Callable:
            def call(*args, **kwargs):
                raise RuntimeError(f"{name}.{attribute}: this C++ extension was not built (stub)")
            return call

        stub.__getattr__ = unbuilt
        sys.modules[name] = stub
        STUBBED_EXTENSIONS.append(extension.rsplit(".", 1)[-1])


def fast_transformers_note() -> str | None:
    if not STUBBED_EXTENSIONS:
        return None
    return (f"its C++ extensions were not built ({', '.join(STUBBED_EXTENSIONS)} stubbed): the linear attention "
            "measured here is pure PyTorch and calls none of them")


class FastTransformersEncoder(nn.Module):
    """fast-transformers' encoder, given a key-length mask in the run dtype: the one it makes itself is float32, and
    its linear attention's einsum refuses float32 keys (masked by it) against bf16 values."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        from fast_transformers.masking import LengthMask

        batch, length = hidden.shape[:2]
        full_length = LengthMask(torch.full((batch,), length, dtype=torch.long, device=hidden.device), length)
        full_length._float_matrix = full_length.bool_matrix.to(hidden.dtype)  # the mask's own cache, pre-filled
        return self.encoder(hidden, length_mask=full_length)


def build_fast_transformers(length: int, setup: Setup) -> nn.Module:
    stub_unbuilt_fast_transformers_extensions()
    from fast_transformers.builders import TransformerEncoderBuilder

    sizes = setup.sizes
    encoder = TransformerEncoderBuilder.from_kwargs(
        n_layers=sizes.layers, n_heads=sizes.heads, query_dimensions=sizes.head_dim,
        value_dimensions=sizes.head_dim, feed_forward_dimensions=sizes.intermediate, attention_type="linear",
        activation="gelu", dropout=0.0, attention_dropout=0.0, final_normalization=False).get()
    return PeerMaskedLM(FastTransformersEncoder(encoder), sizes, length)


def build_fla_linear_attention(length: int, setup: Setup) -> nn.Module:
    """fla's LinearAttention layer (elu+1 feature map, normalised, chunk kernel) in BERT blocks. fla's kernels are
    causal (it is a library for decoders), so this row is causal linear attention, not the encoder's."""
    from fla.layers import LinearAttention

    sizes = setup.sizes
    blocks = [PostNormBlock(LinearAttention(mode="chunk", hidden_size=sizes.hidden, num_heads=sizes.heads,
                                            feature_map="elu", do_feature_map_norm=True, output_norm="identity",
                                            layer_idx=layer), sizes)
              for layer in range(sizes.layers)]
    return PeerMaskedLM(nn.Sequential(*blocks), sizes, length)


def build_sinkhorn_transformer(length: int, setup: Setup) -> nn.Module:
    """lucidrains' sinkhorn-transformer LM: buckets of our Sinkhorn block size, 7 Sinkhorn iterations at temperature
    0.75. Bidirectional: the paper's simple sort net (a permutation: non_permutative=False); causal: its default
    attention sort net (the package's simple net serves fixed-length encoders only)."""
    from sinkhorn_transformer import SinkhornTransformerLM

    sizes, causal = setup.sizes, setup.causal
    return SinkhornTransformerLM(num_tokens=sizes.vocab, dim=sizes.hidden, max_seq_len=length, depth=sizes.layers,
                                 heads=sizes.heads, dim_head=sizes.head_dim, bucket_size=setup.knobs.sinkhorn_block,
                                 causal=causal, sinkhorn_iter=7, temperature=0.75, non_permutative=causal,
                                 use_simple_sort_net=not causal)


class RoutingTransformerPeer(nn.Module):
    """routing-transformer's LM returns (logits, commitment loss); the step takes the logits (its k-means means are
    updated by the package's own backward hook)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)[0]


def build_routing_transformer(length: int, setup: Setup) -> nn.Module:
    """lucidrains' RoutingTransformerLM with our row's split: half the heads local (reach routing_local), half
    routing over clusters of routing_window (it derives N / window clusters itself); causal in --causal runs."""
    from routing_transformer import RoutingTransformerLM

    sizes, knobs = setup.sizes, setup.knobs
    return RoutingTransformerPeer(RoutingTransformerLM(
        num_tokens=sizes.vocab, dim=sizes.hidden, depth=sizes.layers, max_seq_len=length, heads=sizes.heads,
        dim_head=sizes.head_dim, window_size=knobs.routing_window, local_attn_window_size=knobs.routing_local,
        causal=setup.causal, ff_mult=sizes.intermediate // sizes.hidden, n_local_attn_heads=sizes.heads // 2))


def import_failure(module: str, needs_cuda: bool = False) -> Callable[[Setup], str | None]:
    """The reason a peer can't run here ('not installed: ...'), or None."""

    def check(setup: Setup) -> str | None:
        if needs_cuda and setup.device.type != "cuda":
            return "n.a.: needs CUDA (Triton kernels)"
        try:
            if module == "performer_pytorch":
                import setuptools  # noqa: F401  (distutils for Python >= 3.12)
            if module.startswith("fast_transformers"):
                stub_unbuilt_fast_transformers_extensions()
            importlib.import_module(module)
        except Exception as error:  # ImportError, or OSError from a compiled extension built for another torch
            return f"not installed: {describe(error)}"
        return None

    return check


SPECS = {spec.name: spec for spec in [
    *(our_spec(name) for name in OUR_VARIANTS),
    ModelSpec("bert_sdpa", "anchors", lambda k: "transformers BERT (SDPA, dense)", build_bert),
    ModelSpec("llama_sdpa", "anchors", lambda k: "transformers Llama (SDPA, dense causal)", build_llama,
              modes=("causal",)),
    ModelSpec("hf_bigbird", "anchors", lambda k: f"transformers BigBird (block sparse, block {k.block}, 3 random)",
              build_hf_bigbird),
    ModelSpec("hf_longformer", "anchors", lambda k: f"transformers Longformer (window {k.window})",
              build_hf_longformer),
    ModelSpec("hf_reformer", "anchors",
              lambda k: f"transformers Reformer (local/LSH, chunk {k.reformer_chunk}, 2 hashes)", build_hf_reformer,
              reformer_unavailable),
    ModelSpec("performer_pytorch", "peers", lambda k: "performer-pytorch PerformerLM (m = d ln d)",
              build_performer_pytorch, import_failure("performer_pytorch")),
    ModelSpec("linformer_pytorch", "peers", lambda k: f"linformer LinformerLM (k = {k.projected_length})",
              build_linformer_pytorch, import_failure("linformer")),
    ModelSpec("fast_transformers", "peers", lambda k: "fast-transformers linear attention encoder",
              build_fast_transformers, import_failure("fast_transformers.builders"), fast_transformers_note),
    ModelSpec("routing_transformer", "peers",
              lambda k: f"routing-transformer RoutingTransformerLM (half the heads local, clusters of "
                        f"{k.routing_window})", build_routing_transformer, import_failure("routing_transformer"),
              modes=("masked", "causal")),
    ModelSpec("fla_linear_attention", "peers", lambda k: "fla LinearAttention (causal, chunk kernel)",
              build_fla_linear_attention, import_failure("fla.layers", needs_cuda=True), modes=("masked", "causal")),
    ModelSpec("sinkhorn_transformer", "peers",
              lambda k: f"sinkhorn-transformer SinkhornTransformerLM (buckets of {k.sinkhorn_block}, 7 iterations)",
              build_sinkhorn_transformer, import_failure("sinkhorn_transformer"), modes=("masked", "causal")),
]}
GROUPS = {group: [name for name, spec in SPECS.items() if spec.group == group]
          for group in ("ours", "anchors", "peers")}
PEER_PACKAGES = ["performer-pytorch", "linformer", "pytorch-fast-transformers", "flash-linear-attention", "fla-core",
                 "local-attention", "einops", "sinkhorn-transformer", "routing-transformer"]


# ---------------------------------------------------------------- one step, one case


def make_batch(length: int, vocab: int, device: torch.device, batch: int = 1, global_first: bool = False,
               images: bool = False) -> dict:
    """Random ids (no special ids) and labels on a random 15% of them (-100 elsewhere); with `global_first`, a
    global-attention mask on the first token of each row; with `images`, bos (id IMAGE_LEVELS) then random levels."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, vocab, (batch, length), generator=generator)
    if images:
        input_ids = torch.randint(0, IMAGE_LEVELS, (batch, length), generator=generator)
        input_ids[:, 0] = IMAGE_LEVELS
    labels = input_ids.masked_fill(torch.rand(batch, length, generator=generator) >= MASKED_FRACTION, -100)
    result = {"input_ids": input_ids.to(device), "labels": labels.to(device)}
    if global_first:
        result["global_attention_mask"] = torch.zeros_like(result["input_ids"]).index_fill_(1, torch.tensor([0],
                                                                                            device=device), 1)
    return result


def takes_global_tokens(model: nn.Module) -> bool:
    """Whether the model has global attention (ours with a global-token mechanism, transformers' Longformer)."""
    if not isinstance(model, transformers.PreTrainedModel):
        return False
    if "global_attention_mask" not in inspect.signature(model.forward).parameters:
        return False
    attention = getattr(type(model.base_model), "attention_class", None)
    return attention is None or attention.supports_global_attention


def model_inputs(model: nn.Module, batch: dict, with_labels: bool) -> dict:
    inputs = {"input_ids": batch["input_ids"]}
    inputs.update(batch.get("etc_global", {}))  # ETC's global input (run_case builds it)
    if "global_attention_mask" in batch and takes_global_tokens(model):
        inputs["global_attention_mask"] = batch["global_attention_mask"]
    if with_labels:
        inputs["labels"] = batch["labels"]
    return inputs


def masked_lm_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    if not isinstance(model, transformers.PreTrainedModel):
        return model(batch["input_ids"])
    output = model(**model_inputs(model, batch, with_labels=False))
    return output.logits if hasattr(output, "logits") else output


def lm_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """The same loss for every model (not each head's own): cross-entropy over the labelled 15% (masked-LM batches)
    or over every next token (causal batches), in the logits' dtype."""
    if batch.get("causal"):
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten())
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)


def masked_lm_loss(model: nn.Module, batch: dict, own_loss: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`lm_loss` of the model's logits, the same for every model (logits in the run dtype), and the logits; or with
    `own_loss` the model head's own loss (labels given to the model; logits None where the head skips them)."""
    if own_loss and isinstance(model, transformers.PreTrainedModel):
        output = model(**model_inputs(model, batch, with_labels=True))
        return output.loss, output.logits
    logits = masked_lm_logits(model, batch)
    return lm_loss(logits, batch), logits


def timed_call(step: Callable[[], None], device: torch.device) -> float:
    """Seconds for one call: CUDA events around it on the GPU, a synchronized host clock elsewhere."""
    if device.type != "cuda":
        start = time.perf_counter()
        step()
        return time.perf_counter() - start
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    step()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) / 1000


def attention_backend_in_use(model: nn.Module, device: torch.device) -> str:
    """The path our first layer's attention takes under the model's config on this device."""
    layer = model.base_model.layers[0]
    attention = layer.self_attn if hasattr(layer, "self_attn") else layer.blocks[0].self_attn  # axial: blocks per layer
    probe = torch.empty(0, device=device)
    if hasattr(attention, "backend"):  # the variants with a FlexAttention or compiled path
        return attention.backend(probe, output_attentions=False)
    return attention.choose_backend(probe, output_attentions=False, gpu_backend=None)


MAX_REFERENCE_LENGTH = 16384  # the naive reference's (N, N) scores: 12 heads x 16K^2 x 2 B = 6 GiB a layer


def check_backends(model: nn.Module, batch: dict, device: torch.device) -> str:
    """Same weights, same input: the loss (and logits) of our fast path against a second path (flex or compiled
    against blocked; blocked, when it is the fast path, against the naive reference). In eval mode (dropout is 0
    anyway), where models that redraw randomness per training step (the Reformer's hash rotations) are fixed."""
    fast = attention_backend_in_use(model, device)
    other = "blocked" if fast != "blocked" else "reference"
    length = batch["input_ids"].shape[-1]
    if other == "reference" and length > MAX_REFERENCE_LENGTH:
        return (f"not compared: the second path would be the naive O(N^2) reference, run up to "
                f"{MAX_REFERENCE_LENGTH} tokens (this length: {length})")
    forced = model.config.attention_backend
    results = {}
    training = model.training
    model.eval()
    # both passes from the same buffers: a training forward may move running statistics (routing centroids)
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    try:  # the forced backend comes back even when a pass fails (else the timed steps would run the other path)
        with torch.no_grad():
            for backend in (fast, other):
                for name, buffer in model.named_buffers():
                    buffer.copy_(buffers[name])
                model.config.attention_backend = backend
                torch.manual_seed(0)  # the same draws for both paths (Sinkhorn's Gumbel noise in training)
                logits = masked_lm_logits(model, batch).float()  # the loss again in fp32, off these logits
                loss = lm_loss(logits, batch).item()
                results[backend] = (loss, logits)
    finally:
        model.config.attention_backend = forced
        model.train(training)
    (fast_loss, fast_logits), (other_loss, other_logits) = results[fast], results[other]
    finite = other_logits.isfinite()  # an image model's bos logit is -inf in both
    fast_logits, other_logits = fast_logits[finite], other_logits[finite]
    relative = ((fast_logits - other_logits).norm() / other_logits.norm()).item()
    tolerance = 1e-2 if model.dtype == torch.bfloat16 else 1e-4  # relative; logits get 2x (layers of rounding)
    passed = abs(fast_loss - other_loss) <= tolerance * abs(other_loss) and relative <= 2 * tolerance
    return (f"loss {fast}={fast_loss:.6f} {other}={other_loss:.6f} (diff {fast_loss - other_loss:+.2e}, rel. tol "
            f"{tolerance:g}), logits rel. diff {relative:.2e} (tol {2 * tolerance:g}): {'PASS' if passed else 'FAIL'}")


def run_case(spec: ModelSpec, length: int, setup: Setup, args: argparse.Namespace, check: bool) -> dict:
    """Build, first call, warm-up, (backend check), timed steps. Everything it allocates dies with its frame."""
    device = setup.device
    torch.manual_seed(0)
    model = spec.build(length, setup).to(device, setup.dtype).train()
    batch = make_batch(length, setup.sizes.vocab, device, args.batch, args.global_first_token, setup.images)
    batch["causal"] = setup.causal
    if "global_input_ids" in getattr(model, "backbone_inputs", ()):  # ETC: a fixed-block global input, made once
        batch["etc_global"] = build_global_input(batch["input_ids"], block_size=setup.knobs.etc_block)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        masked_lm_loss(model, batch, own_loss=args.loss == "model")[0].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    record = {"first_call_s": timed_call(step, device)}
    last = record["first_call_s"]
    for _ in range(args.warmup - 1):
        last = timed_call(step, device)
    if spec.group == "ours":
        record["backend"] = attention_backend_in_use(model, device)
        if check:
            try:
                record["check"] = check_backends(model, batch, device)
            except Exception as error:  # the timing goes on; the check's failure is the verdict
                record["check"] = f"FAIL: could not compare ({describe(error)})"
    repeats = args.repeats if length <= 8192 else max(1, args.repeats // 2)
    repeats = max(args.min_repeats, min(repeats, int(args.case_seconds / max(last, 1e-6))))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()  # after warm-up: weights, optimizer state and one step's activations
    median = statistics.median(timed_call(step, device) for _ in range(repeats))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else math.nan
    return record | {"status": "ok", "step_ms": 1000 * median, "tokens_per_s": args.batch * length / median,
                     "peak_gib": peak,
                     "warmup": args.warmup, "repeats": repeats}


def describe(error: BaseException) -> str:
    """The error's type and the first line of its message, short enough for a CSV cell."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ---------------------------------------------------------------- the run


def environment_fields(device: torch.device, dtype: torch.dtype, layers: int) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    return {"layers": layers, "dtype": str(dtype).removeprefix("torch."), "device_name": name,
            "torch": f"{torch.__version__} (CUDA {torch.version.cuda})", "transformers": transformers.__version__}


def package_versions() -> str:
    """Installed peer packages; an unpacked fast-transformers (no metadata) is read off its __version__."""
    versions = []
    for package in PEER_PACKAGES:
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "-"
            if package == "pytorch-fast-transformers" and importlib.util.find_spec("fast_transformers"):
                version = f"{importlib.import_module('fast_transformers').__version__} (unpacked, not built)"
        versions.append(f"{package} {version}")
    return ", ".join(versions)


def run_model(spec: ModelSpec, lengths: list[int], setup: Setup, args, run_deadline: float, write) -> None:
    """Every length of one model, in increasing order, within its time budget; each record is written at once."""
    unavailable = spec.unavailable(setup)
    spent, last_steady, last_first, skip_reason = 0.0, 0.0, 0.0, None
    for length in lengths:
        record = {"model": spec.name, "group": spec.group, "label": spec.label(setup.knobs), "length": length,
                  "batch": args.batch, "sizes": args.sizes, "loss": args.loss}
        projected = last_first + 2 * last_steady  # the next length: compile again, steps up to twice as long
        mode = "causal" if setup.causal else "masked"
        if mode not in spec.modes:
            record |= {"status": "n.a.", "message": f"this row has no {mode}-LM step"}
        elif unavailable:
            status, _, reason = unavailable.partition(": ")
            record |= {"status": status, "message": reason}
        elif skip_reason:
            record["status"] = skip_reason
        elif spent and spent + projected > args.max_seconds:
            skip_reason = record["status"] = "skipped: time budget"
            record["message"] = f"{spent:.0f}s spent, next length projected {projected:.0f}s > --max-seconds"
        elif time.perf_counter() + projected > run_deadline:
            skip_reason = record["status"] = "skipped: run budget"
            record["message"] = "--max-total-seconds reached"
        else:
            start = time.perf_counter()
            try:
                record |= run_case(spec, length, setup, args, check=length == lengths[0])
                if spec.note():
                    record["message"] = spec.note()
            except Exception as error:  # keep the run going; the message is kept in the CSV
                out_of_memory = is_out_of_memory(error)
                record["status"] = "OOM" if out_of_memory else "error"
                record["message"] = describe(error)
                if out_of_memory:
                    skip_reason = "skipped after OOM"
            free_memory(setup.device)
            elapsed = time.perf_counter() - start
            spent += elapsed
            last_first = record.get("first_call_s", 0.0)
            last_steady = elapsed - last_first
        print(f"{spec.name:24} {length:6}  {summary(record)}", flush=True)
        write(record)


def summary(record: dict) -> str:
    if record["status"] != "ok":
        return f"{record['status']} {record.get('message', '')}".strip()
    parts = [f"first call {record['first_call_s']:.1f}s",
             f"step {record['step_ms']:.1f} ms (median of {record['repeats']})",
             f"{record['tokens_per_s']:,.0f} tok/s"]
    if not math.isnan(record["peak_gib"]):
        parts.append(f"peak {record['peak_gib']:.2f} GiB")
    parts += [f"backend {record['backend']}"] if record.get("backend") else []
    parts += [f"check: {record['check']}"] if record.get("check") else []
    return ", ".join(parts)


# ---------------------------------------------------------------- the report


def length_label(length: int) -> str:
    return f"{length // 1024}K" if length % 1024 == 0 else str(length)


def cell(row: dict | None) -> str:
    if row is None:
        return "-"
    status = row["status"]
    if status == "ok":
        peak = float(row["peak_gib"])
        return f"{float(row['tokens_per_s']):,.0f} / " + ("-" if math.isnan(peak) else f"{peak:.2f}")
    return {"skipped after OOM": "skipped (OOM)", "skipped: time budget": "skipped (time)",
            "skipped: run budget": "not run"}.get(status, status)


def markdown_report(rows: list[dict], versions: str, causal: bool = False) -> str:
    """Rows = models (in run order), columns = lengths; environment, backend checks, first calls and messages."""
    latest = {(row["model"], int(row["length"])): row for row in rows}  # a re-run (--append) replaces a cell
    models = list(dict.fromkeys(row["model"] for row in rows))
    lengths = sorted({length for _, length in latest})
    labels = {row["model"]: row["label"] for row in rows}
    header = "| model | " + " | ".join(length_label(n) for n in lengths) + " |"
    rule = "|---|" + "---|" * len(lengths)
    table = [header, rule] + [
        f"| {labels[m]} | " + " | ".join(cell(latest.get((m, n))) for n in lengths) + " |" for m in models]
    first_calls = [header, rule] + [
        f"| {labels[m]} | " + " | ".join(
            f"{float(latest[m, n]['first_call_s']):.1f}" if latest.get((m, n), {}).get("first_call_s") else "-"
            for n in lengths) + " |" for m in models]
    shapes = sorted({f"batch {row.get('batch') or 1}, {row.get('sizes') or 'minilm'} sizes" for row in rows})
    shape = "; ".join(shapes) + " (minilm: hidden 384, 12 heads, intermediate 1536; base: 768, 12, 3072; vocab 30522)"
    losses = {row.get("loss") or "harness" for row in rows}
    loss = "; ".join(sorted({"harness": "the same cross-entropy for every model, computed by the script",
                             "model": "each model head's own loss from its labels"}[name] for name in losses))
    environments = sorted({f"{row['device_name']}; torch {row['torch']}; transformers {row['transformers']}; "
                           f"{row['dtype']} weights; {row['layers']} layers" for row in rows})
    checks = [f"- {labels[row['model']]} at {length_label(int(row['length']))}, backend {row['backend']}: "
              f"{row['check']}" for row in latest.values() if row.get("check")]
    said = {}  # (model, status, message) -> lengths, so that a message repeated at every length is listed once
    for (model, length), row in latest.items():
        if row.get("message"):
            said.setdefault((model, row["status"], row["message"]), []).append(length_label(length))
    messages = [f"- {labels[model]} ({', '.join(at)}): {status}: {message}"
                for (model, status, message), at in said.items()]
    return "\n".join([
        "# Train step: tokens/s and peak GPU memory", "",
        *[f"- environment: {line}" for line in environments],
        f"- peers installed: {versions}",
        f"- one {'causal' if causal else 'masked'}-LM train step, {shape}, dropout 0, weights cast to the dtype (no "
        f"autocast); loss: {loss} " + ("on every next token" if causal else f"on a random {MASKED_FRACTION:.0%} of "
                                       "tokens") + ", backward, AdamW step",
        "- tokens/s = N / median step time (CUDA events, after warm-up); GiB = torch.cuda.max_memory_allocated over "
        "the timed steps (weights, AdamW state, one step's activations); first call timed apart (below)",
        "", "## tokens/s / peak GiB", "", *table, "",
        "Cells: `tok/s / GiB`; OOM = out of memory; skipped (OOM) = a shorter length ran out of memory; skipped "
        "(time) = the model's time budget (--max-seconds); n.a. / not installed / error: see the messages.",
        "", "## Backend check (ours, smallest length: fast path against a second path, same weights and input)", "",
        *(checks or ["- none run"]),
        "", "## First call, seconds (compile, autotuning, allocator warm-up; not in tokens/s)", "", *first_calls,
        "", "## Messages", "", *(messages or ["- none"]), ""])


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def parse_lengths(text: str) -> list[int]:
    """'1k,2k,4096' -> [1024, 2048, 4096]."""
    lengths = []
    for item in text.replace(" ", "").split(","):
        lengths.append(int(item[:-1]) * 1024 if item.lower().endswith("k") else int(item))
    return sorted(set(lengths))


def parse_models(text: str) -> list[str]:
    """Model names and group names ('ours', 'anchors', 'peers', 'all'), comma-separated, in the given order."""
    names = []
    for item in text.replace(" ", "").split(","):
        if item == "all":
            names += list(SPECS)
        elif item in GROUPS:
            names += GROUPS[item]
        elif item in SPECS:
            names.append(item)
        else:
            raise SystemExit(f"--models: unknown {item!r}; use all, {', '.join(GROUPS)} or {', '.join(SPECS)}")
    return list(dict.fromkeys(names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all", help="comma list of names or groups (ours, anchors, peers, all)")
    parser.add_argument("--lengths", help="comma list, e.g. 1k,2k,4096 (default 1K ... 64K; --tiny: 256,512)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--append", action="store_true", help="add to --out's CSV; the report covers both runs")
    parser.add_argument("--report-only", action="store_true", help="rewrite the markdown from --out's CSV, run nothing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 2 layers, 256/512 tokens, scaled-down knobs")
    parser.add_argument("--causal", action="store_true", help="causal-LM steps (ours causal, Llama as dense anchor)")
    parser.add_argument("--images", action="store_true",
                        help="causal-LM steps over s x s RGB images of 256 levels (1 + 3 s^2 tokens, vocab 257)")
    parser.add_argument("--image-sizes", help="--images: comma list of sides s (default 32,64,128)")
    parser.add_argument("--attention-backend", help="force our models' attention_backend (rows named model@backend)")
    parser.add_argument("--layers", type=int, help="layers of every model (the sizes' own; --tiny 2)")
    parser.add_argument("--sizes", choices=sorted(SIZES), default="minilm",
                        help="minilm: 6 x 384, 12 heads; base: 12 x 768, 12 heads (BERT-base, longformer-base)")
    parser.add_argument("--batch", type=int, default=1, help="sequences per step (tokens/s counts all of them)")
    parser.add_argument("--global-first-token", action="store_true",
                        help="the first token of each row global, where the model has global attention")
    parser.add_argument("--loss", choices=["harness", "model"], default="harness",
                        help="harness: the script's cross-entropy on full logits; model: each head's own loss")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps (halved above 8192 tokens)")
    parser.add_argument("--min-repeats", type=int, default=3, help="timed steps at least, whatever --case-seconds")
    parser.add_argument("--case-seconds", type=float, default=5.0, help="cap on the timed steps' total time")
    parser.add_argument("--warmup", type=int, help="untimed steps per case, first call included (cuda 3, cpu 1)")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="time budget per model, all lengths")
    parser.add_argument("--max-total-seconds", type=float, default=math.inf, help="stop starting cases after this")
    args = parser.parse_args()

    csv_path, report_path = args.out / CSV_NAME, args.out / REPORT_NAME
    if args.report_only:
        report_path.write_text(markdown_report(read_rows(csv_path), package_versions(), args.causal))
        print(report_path.read_text())
        return
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if on_gpu else torch.float32)
    args.warmup = args.warmup or (3 if on_gpu else 1)
    base_sizes = SIZES[args.sizes]
    sizes = dataclasses.replace(base_sizes, layers=args.layers or (2 if args.tiny else base_sizes.layers))
    if args.images:  # image sequences: causal, the vocabulary of 256 levels and bos, lengths from the sides
        if args.lengths:
            raise SystemExit("--images takes --image-sizes (sides of the RGB images), not --lengths")
        args.causal = True
        sizes = dataclasses.replace(sizes, vocab=IMAGE_LEVELS + 1)
        sides = [int(side) for side in (args.image_sizes or ",".join(map(str, DEFAULT_IMAGE_SIDES))).split(",")]
        args.lengths = ",".join(str(1 + 3 * side * side) for side in sides)
    elif args.image_sizes:
        raise SystemExit("--image-sizes needs --images")
    setup = Setup(device, dtype, sizes, TINY_KNOBS if args.tiny else PAPER_KNOBS, args.causal, args.images)
    lengths = parse_lengths(args.lengths) if args.lengths else (TINY_LENGTHS if args.tiny else DEFAULT_LENGTHS)
    models = parse_models(args.models)
    if args.attention_backend:  # our rows with the backend forced, under their own names
        for name in [m for m in models if SPECS[m].group == "ours"]:
            forced = our_spec(name, {"attention_backend": args.attention_backend}, f"@{args.attention_backend}")
            SPECS[forced.name] = forced
            models[models.index(name)] = forced.name
    for name, limit in (("recompile_limit", 256), ("cache_size_limit", 256), ("accumulated_recompile_limit", 4096)):
        if hasattr(torch._dynamo.config, name):  # flex is compiled with static shapes: one graph per length and mask
            setattr(torch._dynamo.config, name, limit)
    environment = environment_fields(device, dtype, sizes.layers)
    versions = package_versions()
    print(f"{environment}\npeers: {versions}\nmodels: {', '.join(models)}\nlengths: {lengths}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    rows = read_rows(csv_path) if args.append else []
    with open(csv_path, "a" if args.append and rows else "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
        if not (args.append and rows):
            writer.writeheader()

        def write(record: dict) -> None:
            record = environment | record
            writer.writerow(record)
            handle.flush()
            rows.append({key: "" if record.get(key) is None else str(record.get(key, "")) for key in FIELDS})

        run_deadline = time.perf_counter() + args.max_total_seconds
        for name in models:
            run_model(SPECS[name], lengths, setup, args, run_deadline, write)
            report_path.write_text(markdown_report(rows, versions, args.causal))  # current if a model is cut off
    report = markdown_report(rows, versions, args.causal)
    report_path.write_text(report)
    print(f"\nwritten {csv_path} and {report_path}\n\n{report}")


if __name__ == "__main__":
    main()
