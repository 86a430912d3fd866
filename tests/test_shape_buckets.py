"""Padded batches of any length run the compiled paths on a few shape buckets, with BlockMasks built by tile-level
tensor ops: real tokens' outputs equal the naive reference, and the number of compiled graphs stays at the number of
buckets touched (torch.compile with a counting backend on CPU; the kernels' tile tables checked by emulating them,
see block_mask_emulation.py). GPU tests (marked gpu) check gradients and graph counts with the real kernels."""

import contextlib
import math
import random
import shutil
import warnings

import pytest
import torch
from block_mask_emulation import emulate_flex_kernel, kernel_attention, kernel_keep, tile_tables
from torch._dynamo.testing import CompileCounter

from hf_efficient import (
    EfficientBigBirdConfig,
    EfficientBigBirdModel,
    EfficientLongformerConfig,
    EfficientLongformerModel,
    EfficientPerformerConfig,
    EfficientPerformerModel,
    EfficientRoutingConfig,
    EfficientRoutingModel,
    EfficientSparseTransformerConfig,
)
from hf_efficient.attention import block_sparse, compiled, factorized, sliding_window
from hf_efficient.attention.favor import (
    draw_random_features,
    favor_bidirectional_qkv,
    favor_causal_chunked,
    feature_map,
)
from hf_efficient.attention.flex import SMALLEST_BUCKET, bucket_keep, bucket_length, flex_attend, pad_length
from hf_efficient.core.attention import EfficientAttention
from hf_efficient.models.performer.modeling_performer import bucket_inputs

BASE = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=4096, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# name: (model class, config class, knobs, has global tokens). The Sparse Transformer's CUDA forms (the strided grid,
# the compact fixed pattern) build their masks per length and are not on shape buckets yet: not listed here.
VARIANTS = {
    "longformer": (EfficientLongformerModel, EfficientLongformerConfig,
                   dict(attention_window=32, global_first_token=True), True),
    "longformer_causal_dilated": (EfficientLongformerModel, EfficientLongformerConfig,
                                  dict(attention_window=16, attention_dilation=3, is_causal=True, use_cache=False),
                                  True),
    "bigbird": (EfficientBigBirdModel, EfficientBigBirdConfig, dict(block_size=16, num_random_blocks=2), True),
    # one local head (flex) and one routing head (batched sdpa over gathered clusters, unbucketed: no compile); fixed
    # centroids, since passes in training mode are compared (tests/test_routing.py runs the k-means step on GPU)
    "routing": (EfficientRoutingModel, EfficientRoutingConfig,
                dict(num_routing_heads=1, local_window=16, num_clusters=4, routing_window=32, centroid_decay=1.0),
                False),
    "routing_causal": (EfficientRoutingModel, EfficientRoutingConfig,
                       dict(num_routing_heads=1, local_window=16, num_clusters=4, routing_window=32, centroid_decay=1.0,
                            is_causal=True), False),
}


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FlexAttention's "unfused on CPU" notice
        yield


class ShapeOnlyCounter:
    """A torch.compile backend that counts the graphs dynamo builds and runs none: each returns zeros of its traced
    output shapes (enough for what follows; values are checked by the other tests). Dense FlexAttention math on CPU
    at 4096 tokens would take seconds per batch."""

    def __init__(self):
        self.frame_count = 0

    def __call__(self, graph_module, example_inputs):
        self.frame_count += 1
        outputs = [node.meta["example_value"] for node in graph_module.graph.find_nodes(op="output")[0].args[0]]
        return lambda *args: tuple(torch.zeros(out.shape, dtype=out.dtype) for out in outputs)


@contextlib.contextmanager
def counting_backend(monkeypatch, counter):
    """torch.compile inside the library uses `counter` (dynamo traces and guards as usual), for the block."""
    monkeypatch.setattr(compiled, "BACKEND", counter)
    compiled.compiled.cache_clear()
    torch._dynamo.reset()
    yield counter
    compiled.compiled.cache_clear()
    torch._dynamo.reset()


@pytest.fixture
def compile_counter(monkeypatch):
    """Counts the graphs dynamo builds for the library's compiled calls, and runs them eagerly."""
    with counting_backend(monkeypatch, CompileCounter()) as counter:
        yield counter


@pytest.fixture
def graph_counter(monkeypatch):
    """Counts the graphs dynamo builds for the library's compiled calls, running none (ShapeOnlyCounter)."""
    with counting_backend(monkeypatch, ShapeOnlyCounter()) as counter:
        yield counter


def model_of(name: str, layers: int = 2, heads: int = 2):
    model_class, config_class, knobs, _ = VARIANTS[name]
    torch.manual_seed(0)
    config = config_class(**{**BASE, "num_hidden_layers": layers, "num_attention_heads": heads, **knobs})
    return model_class(config).eval()


def padded_batch(length: int, generator: torch.Generator, globals_: bool) -> dict:
    """Three rows: whole, right-padded, left-padded (each at least one real token), random global tokens."""
    ids = torch.randint(1, 61, (3, length), generator=generator)
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, int(torch.randint(1, length + 1, (1,), generator=generator)):] = 0
    mask[2, :int(torch.randint(0, length, (1,), generator=generator))] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if globals_:
        marks = (torch.rand(3, length, generator=generator) < 0.02).long() * mask
        inputs["global_attention_mask"] = marks
    return inputs


def run(model, backend: str, inputs: dict) -> torch.Tensor:
    model.config.attention_backend = backend
    with torch.no_grad():
        return model(**inputs).last_hidden_state


# ---------------------------------------------------------------------------------------------- the bucket ladder
def test_bucket_ladder_is_few_and_wastes_little():
    lengths = list(range(1, 70_001))
    buckets = [bucket_length(n) for n in lengths]
    assert all(b >= n and b % SMALLEST_BUCKET == 0 for n, b in zip(lengths, buckets, strict=True))
    assert buckets == sorted(buckets)
    assert sorted(set(buckets[:4096])) == [256, 512, 1024, 2048, 4096]
    assert len(set(buckets[:65536])) == 5 + 4 * 4  # then four per doubling up to 64K
    assert all(b < 2 * n for n, b in zip(lengths[256:], buckets[256:], strict=True))
    assert all(b < 1.25 * n for n, b in zip(lengths[4096:], buckets[4096:], strict=True))


def test_bucket_keep_and_padding():
    keep = torch.tensor([[True, False, True]])
    assert bucket_keep(keep, 1, 3, 5, torch.device("cpu")).tolist() == [[True, False, True, False, False]]
    assert bucket_keep(None, 2, 3, 4, torch.device("cpu")).tolist() == [[True, True, True, False]] * 2
    x = torch.randn(2, 3, 5, 4)
    padded = pad_length(x, 8)
    assert padded.shape == (2, 3, 8, 4) and torch.equal(padded[:, :, :5], x) and not padded[:, :, 5:].any()


# ------------------------------------------------------------------- tile tables: the kernels' view is the pattern
def real_local_rows_equal(kernel: torch.Tensor, reference: torch.Tensor, rows: torch.Tensor) -> None:
    """kernel (B, H, bucket, bucket) vs reference keep (B, H, N, N) on the rows marked in `rows` (B, N): the same
    keys, and none past N."""
    length = reference.shape[-1]
    for b, h in ((b, h) for b in range(kernel.shape[0]) for h in range(kernel.shape[1])):
        got, want = kernel[b, h, :length][rows[b]], reference[b, min(h, reference.shape[1] - 1)][rows[b]]
        assert not got[:, length:].any(), "a padding key is kept"
        assert torch.equal(got[:, :length], want), f"row {b} head {h}: the kept keys differ from the pattern"


def assert_really_sparse(mask, some_full: bool = True) -> None:
    """Some tiles partial, some skipped, and some full where the pattern covers whole tiles."""
    partial, full = tile_tables(mask)
    assert partial.any() and not (partial | full).all()
    assert full.any() == some_full


@pytest.mark.parametrize(("one_sided", "dilation", "causal", "tile"), [
    (20, 1, False, 16), (70, 1, False, 64), (130, 1, True, 64), (8, 3, False, 64), (12, 2, True, 16)])
def test_longformer_tiles_and_mask_mod_keep_exactly_the_band(one_sided, dilation, causal, tile):
    generator = torch.Generator().manual_seed(one_sided + tile)
    length, heads, dim = 300, 2, 8
    bucket = bucket_length(length)
    inputs = padded_batch(length, generator, globals_=True)
    keep, is_global = inputs["attention_mask"].bool(), inputs["global_attention_mask"].bool()
    mask = sliding_window.flex_block_mask(bucket, one_sided, dilation, causal, bucket_keep(keep, 3, length, bucket,
                                          keep.device), pad_length(is_global, bucket, dim=1), keep.device, tile)
    assert mask.seq_lengths == (bucket, bucket)
    query, key, value = (torch.randn(3, heads, length, dim, generator=generator) for _ in range(3))
    _, weights = sliding_window.sliding_window_reference(query, key, value, query, key, value, keep, is_global,
                                                         one_sided, dilation, causal, dim**-0.5)
    real_local_rows_equal(kernel_keep(mask, heads), weights > 0, keep & ~is_global)
    assert_really_sparse(mask, some_full=dilation == 1 and one_sided >= (2 * tile if causal else tile) - 1)


@pytest.mark.parametrize(("pattern", "combination", "causal", "local_size", "tile"), [
    ("strided", "merged", False, 24, 16), ("strided", "heads", True, 32, 64), ("strided", "alternate", False, 16, 64),
    ("fixed", "merged", False, 24, 16), ("fixed", "heads", True, 40, 16), ("fixed", "merged", True, 8, 64),
    ("fixed", "merged", False, 128, 64)])
def test_sparse_transformer_tiles_and_mask_mod_keep_exactly_the_pattern(pattern, combination, causal, local_size,
                                                                        tile):
    generator = torch.Generator().manual_seed(local_size + tile)
    length, heads, dim, summary = 300, 4, 8, 4
    bucket = bucket_length(length)
    keep = padded_batch(length, generator, globals_=False)["attention_mask"].bool()
    config = EfficientSparseTransformerConfig(**{**BASE, "num_attention_heads": heads}, pattern=pattern,
                                              local_size=local_size, num_summary=summary, combination=combination,
                                              is_causal=causal)
    factors = factorized.head_factors(combination, 1, heads)
    mask = factorized.flex_block_mask(bucket, factors, pattern, local_size, summary, causal,
                                      bucket_keep(keep, 3, length, bucket, keep.device), keep.device, tile)
    query, key, value = (torch.randn(3, heads, length, dim, generator=generator) for _ in range(3))
    attention = EfficientAttention(config, 0)
    _, weights = factorized.factorized_reference(attention, query, key, value, keep, factors, pattern, local_size,
                                                 summary, causal)
    real_local_rows_equal(kernel_keep(mask, heads), weights > 0, keep)
    whole_tiles = local_size >= tile and (not causal or (pattern == "fixed" and local_size >= 2 * tile))
    assert_really_sparse(mask, some_full=whole_tiles)


@pytest.mark.parametrize("tile", [16, 64])
def test_bigbird_tiles_on_a_bucket_keep_exactly_the_unpadded_pattern(tile):
    generator = torch.Generator().manual_seed(tile)
    length, size, heads, kv_heads = 700, 16, 4, 2
    bucket = bucket_length(length)
    inputs = padded_batch(length, generator, globals_=True)
    keep, extra = inputs["attention_mask"].bool(), inputs["global_attention_mask"].bool()

    def pattern_of(layout):
        random = block_sparse.random_table(layout, kv_heads, 2, lambda blocks: block_sparse.draw_random_blocks(
            0, 0, blocks, kv_heads, 2, 2, 3))
        return block_sparse.block_table(layout, random, 3)

    real = block_sparse.block_layout(keep, extra, 3, length, size, 2, 8, keep.device)
    padded = block_sparse.block_layout(bucket_keep(keep, 3, length, bucket, keep.device),
                                       pad_length(extra, bucket, dim=1), 3, bucket, size, 2, 8, keep.device)
    mask = block_sparse.flex_block_mask(padded, pattern_of(padded), heads, keep.device, tile)
    reference = block_sparse.token_keep(real, pattern_of(real)).repeat_interleave(heads // kv_heads, dim=1)
    real_local_rows_equal(kernel_keep(mask, heads), reference, keep)
    assert_really_sparse(mask, some_full=tile <= size)  # wider tiles hold block pairs outside the window


NEEDS_COMPILER = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="torch.compile on CPU needs a C++ compiler")


@NEEDS_COMPILER
def test_the_emulation_reads_tiles_as_the_compiled_kernel_does():
    """Compiled FlexAttention on CPU (inductor's C++ kernel) skips unlisted tiles, keeps full tiles whole and applies
    mask_mod in partial ones, as block_mask_emulation assumes; the eager path applies mask_mod everywhere."""
    from torch.nn.attention.flex_attention import BlockMask

    counts = torch.tensor([[[1, 1]]], dtype=torch.int32)  # query tile 0: key tile 1 partial; tile 1: 1 partial, 0 full
    indices = torch.tensor([[[[1, 0], [1, 0]]]], dtype=torch.int32)
    full_counts = torch.tensor([[[0, 1]]], dtype=torch.int32)
    full_indices = torch.tensor([[[[0, 1], [0, 1]]]], dtype=torch.int32)

    def every_third(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).remainder(3) == 0

    mask = BlockMask.from_kv_blocks(counts, indices, full_counts, full_indices, BLOCK_SIZE=128, mask_mod=every_third,
                                    seq_lengths=(256, 256))
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 1, 256, 16, generator=generator) for _ in range(3))
    kernel = flex_attend(query, key, value, mask, 0.25)
    torch.testing.assert_close(kernel, kernel_attention(query, key, value, mask, 0.25).transpose(1, 2), rtol=1e-5,
                               atol=1e-5)
    assert (kernel - flex_attend(query, key, value, mask, 0.25, compiled=False)).abs().max() > 0.1


@NEEDS_COMPILER
def test_longformer_compiled_on_cpu_equals_the_reference_with_one_graph_per_bucket():
    """The real compiled kernel (inductor on CPU) over the bucketed BlockMask: two lengths of one bucket, padding and
    global tokens; real local rows equal the reference, and the second length compiles nothing."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # no graph of an earlier test counts
    generator = torch.Generator().manual_seed(0)
    heads, dim, one_sided = 2, 16, 20
    for length, new_graphs in ((300, 1), (450, 0)):
        bucket = bucket_length(length)
        inputs = padded_batch(length, generator, globals_=True)
        keep, is_global = inputs["attention_mask"].bool(), inputs["global_attention_mask"].bool()
        query, key, value = (torch.randn(3, heads, length, dim, generator=generator) for _ in range(3))
        mask = sliding_window.flex_block_mask(bucket, one_sided, 1, False, bucket_keep(keep, 3, length, bucket,
                                              keep.device), pad_length(is_global, bucket, dim=1), keep.device)
        before = counters["stats"]["unique_graphs"]
        kernel = flex_attend(query, key, value, mask, dim**-0.5)
        assert counters["stats"]["unique_graphs"] - before == new_graphs
        reference, _ = sliding_window.sliding_window_reference(query, key, value, query, key, value, keep, is_global,
                                                               one_sided, 1, False, dim**-0.5)
        rows = keep & ~is_global
        torch.testing.assert_close(kernel[rows], reference[rows], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------- whole models: flex on buckets equals the reference
@pytest.mark.parametrize("name", list(VARIANTS))
def test_flex_path_on_buckets_equals_the_reference(name, monkeypatch):
    """The model's flex path (tile tables + mask_mod as the kernels read them) on padded batches of lengths that
    fall into three buckets: real tokens' outputs equal the naive reference (fp32)."""
    masks = emulate_flex_kernel(monkeypatch)
    model = model_of(name)
    generator = torch.Generator().manual_seed(len(name))
    for length in (45, 300, 530):
        inputs = padded_batch(length, generator, globals_=VARIANTS[name][3])
        flex_out, reference = run(model, "flex", inputs), run(model, "reference", inputs)
        real = inputs["attention_mask"].bool()
        torch.testing.assert_close(flex_out[real], reference[real], rtol=1e-5, atol=1e-5)
        assert masks[-1].seq_lengths[0] == bucket_length(length)
        partial, full = tile_tables(masks[-1])
        assert not (partial | full).all(), "no tile is skipped"


# ----------------------------------------------------------------------------- compiled graphs: one per bucket
def log_uniform_lengths(count: int, longest: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [max(1, int(math.exp(rng.uniform(0, math.log(longest))))) for _ in range(count)]


@pytest.mark.parametrize(("name", "batches"), [("longformer", 60), ("bigbird", 20)])
def test_compiled_graphs_stay_at_the_buckets_touched(name, batches, graph_counter):
    """Padded batches of random lengths 1..4096 (log-uniform, so every bucket is hit): dynamo builds exactly one
    graph per bucket touched, whatever the lengths, padding and global tokens inside it."""
    model = model_of(name, layers=1, heads=1)
    model.config.attention_backend = "flex"
    generator = torch.Generator().manual_seed(batches)
    sliding_window.band_tiles.cache_clear()
    factorized.factor_tiles.cache_clear()
    buckets = set()
    for length in log_uniform_lengths(batches, 4096, seed=len(name)):
        inputs = padded_batch(length, generator, globals_=VARIANTS[name][3])
        inputs = {key: value[:2] for key, value in inputs.items()}  # batch 2: the shape stays the bucket's
        with torch.no_grad():
            model(**inputs)
        buckets.add(bucket_length(length))
        assert graph_counter.frame_count == len(buckets), f"a new graph inside a bucket at length {length}"
    assert len(buckets) >= 3
    structural = sliding_window.band_tiles.cache_info().misses + factorized.factor_tiles.cache_info().misses
    assert structural <= len(buckets)  # the pattern's own tiles: built once per bucket


# --------------------------------------------------------------------------------------- Performer's compile path
def favor_inputs(length: int, generator: torch.Generator, causal: bool):
    batch, kv_heads, groups, dim = 3, 2, 2, 16
    query = torch.randn(batch, kv_heads, groups, length, dim, generator=generator)
    key, value = (torch.randn(batch, kv_heads, 1, length, dim, generator=generator) for _ in range(2))
    keep = padded_batch(length, generator, globals_=False)["attention_mask"].bool()
    if causal:  # decoders pad on the left
        keep = keep[[0, 2, 2]]
    projection = draw_random_features(32, dim, torch.Generator().manual_seed(1))
    return query, key, value, keep, projection


def test_performer_bucketed_inputs_give_the_unpadded_outputs():
    """FAVOR+ on the bucket's padded q/k/v (the padding as padding keys): real tokens' outputs equal the unpadded
    computation, bidirectional and causal (with the state after the last real token)."""
    generator = torch.Generator().manual_seed(0)
    for length in (37, 300):
        query, key, value, keep, projection = favor_inputs(length, generator, causal=False)
        plain = favor_bidirectional_qkv(query, key, value, projection, "softmax", 16**-0.25, keep)
        padded_query, padded_key, padded_value, padded_keep = bucket_inputs(query, key, value, keep)
        padded = favor_bidirectional_qkv(padded_query, padded_key, padded_value, projection, "softmax", 16**-0.25,
                                         padded_keep)
        assert padded.shape[-2] == bucket_length(length)
        real = keep[:, None, None, :, None].expand_as(plain)
        torch.testing.assert_close(padded[..., :length, :][real], plain[real], rtol=1e-5, atol=1e-6)

        query, key, value, keep, projection = favor_inputs(length, generator, causal=True)

        def causal(q, k, v, real, projection=projection):
            q_features, _ = feature_map(q, projection, "softmax", 16**-0.25)
            k_features, k_scale = feature_map(k, projection, "softmax", 16**-0.25)
            return favor_causal_chunked(q_features, k_features, k_scale, v, real, chunk_size=64)

        plain, plain_state = causal(query, key, value, keep)
        padded, padded_state = causal(*bucket_inputs(query, key, value, keep))
        real = keep[:, None, None, :, None].expand_as(plain)
        torch.testing.assert_close(padded[..., :length, :][real], plain[real], rtol=1e-5, atol=1e-6)
        for got, want in zip(padded_state.tensors(), plain_state.tensors(), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_performer_compiled_graphs_stay_at_the_buckets_touched(compile_counter):
    generator = torch.Generator().manual_seed(1)
    buckets = set()
    for length in log_uniform_lengths(30, 4096, seed=3):
        query, key, value, keep, projection = favor_inputs(length, generator, causal=False)
        query, key, value, keep = bucket_inputs(query, key, value, keep)
        compiled.run_compiled(favor_bidirectional_qkv, query, key, value, projection, "softmax", 16**-0.25, keep)
        buckets.add(bucket_length(length))
        assert compile_counter.frame_count == len(buckets)



# ------------------------------------------------------------------------------------ GPU: gradients, real kernels
GPU_VARIANTS = {**VARIANTS, "performer": (EfficientPerformerModel, EfficientPerformerConfig, dict(nb_features=32),
                                          False)}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
@pytest.mark.parametrize("name", list(GPU_VARIANTS))
def test_gpu_padded_batches_match_blocked_and_compile_once_per_bucket(name):
    """Compiled kernels (FlexAttention; Performer's torch.compile) on padded batches: outputs and every gradient as
    close to the blocked path as fp32 rounding lets the naive reference come (tests/backend_agreement.py), then 16
    padded batches of random lengths 1..2048: a batch whose bucket was seen before compiles nothing."""
    from backend_agreement import assert_fast_path_within_rounding
    from torch._dynamo.utils import counters

    torch.backends.cuda.matmul.allow_tf32 = False
    model_class, config_class, knobs, globals_ = GPU_VARIANTS[name]
    torch.manual_seed(0)
    config = config_class(**{**BASE, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}, **knobs)
    model = model_class(config).cuda().train()
    fast = "compiled" if name == "performer" else "flex"
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for length in (300, 700):
        inputs = {k: v.cuda() for k, v in padded_batch(length, generator, globals_).items()}
        assert_fast_path_within_rounding(model, fast, inputs, inputs["attention_mask"].bool())
        seen.add(bucket_length(length))
    model.config.attention_backend = fast
    for length in log_uniform_lengths(16, 2048, seed=1):
        inputs = {k: v.cuda() for k, v in padded_batch(length, generator, globals_).items()}
        before = counters["stats"]["unique_graphs"]
        model(**inputs).last_hidden_state.square().mean().backward()
        compiled_now = counters["stats"]["unique_graphs"] - before
        if bucket_length(length) in seen:
            assert compiled_now == 0, f"length {length} recompiled inside bucket {bucket_length(length)}"
        seen.add(bucket_length(length))
    model.config.attention_backend = "auto"


# ------------------------------------------------------------------------------- SDPA on changing shapes (CUDA)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
def test_attend_keeps_sdpa_off_cudnn_on_cuda():
    """`EfficientAttention.attend` runs SDPA without its cuDNN kernel on CUDA (a plan per new shape), leaves the
    global setting as it was, and gives the math kernel's answer."""
    from hf_efficient.core.attention import shape_agnostic_sdpa

    query = torch.randn(2, 3, 40, 16, device="cuda")
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with shape_agnostic_sdpa(query):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with shape_agnostic_sdpa(query.cpu()):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
