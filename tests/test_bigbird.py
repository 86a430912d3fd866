"""EfficientBigBird specifics: config errors, the exact pattern, the random blocks (legal, seeded, resampled), the
fast paths against the reference, the stateless short-input fallback, conversion from BERT, parity with
transformers' BigBird."""

import dataclasses
import string
import warnings

import pytest
import torch
import transformers
from backend_agreement import assert_fast_path_within_rounding
from testers import enable_activation_checkpointing
from transformers import AutoModel, AutoModelForCausalLM, BertConfig, BertModel, BertTokenizerFast

import hf_efficient
from hf_efficient import (
    EfficientBigBirdConfig,
    EfficientBigBirdForMaskedLM,
    EfficientBigBirdForTokenClassification,
    EfficientBigBirdModel,
)
from hf_efficient.attention.block_sparse import (
    block_layout,
    block_sparse_flex,
    block_sparse_reference,
    block_table,
    draw_random_blocks,
    flex_block_mask,
    random_table,
    tile_table,
    token_keep,
)
from hf_efficient.conversion import ConversionError, convert
from hf_efficient.core import EfficientConfig, EfficientModel
from hf_efficient.core.attention import repeat_kv
from hf_efficient.models.bigbird import VARIANT
from hf_efficient.models.bigbird.transformers_layout import (
    from_transformers_bigbird,
    to_transformers_bigbird,
    transformers_random_blocks,
)

SMALL = dict(vocab_size=61, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
SPARSE = dict(block_size=4, num_random_blocks=1)  # rows of 8+ blocks (29+ tokens) are sparse
TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, and spares a shared machine intra-op oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model_of(seed: int = 0, **overrides) -> EfficientBigBirdModel:
    torch.manual_seed(seed)
    return EfficientBigBirdModel(EfficientBigBirdConfig(**{**SMALL, **SPARSE, **overrides})).eval()


def run(model, ids, backend: str | None = None, **inputs) -> torch.Tensor:
    if backend is not None:
        model.config.attention_backend = backend
    with torch.no_grad():
        return model(input_ids=ids, **inputs).last_hidden_state


def full_attention_twin(model: torch.nn.Module) -> EfficientModel:
    """The plain backbone (exact softmax attention) with the same weights."""
    fields = {f.name for f in dataclasses.fields(EfficientConfig)}
    twin = EfficientModel(EfficientConfig(**{k: v for k, v in model.config.to_dict().items() if k in fields}))
    twin.load_state_dict(model.state_dict())
    return twin.eval()


# ------------------------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(block_size=0), "block_size=0"),
        (dict(num_sliding_blocks=2), "must be odd"),
        (dict(num_sliding_blocks=0), "num_sliding_blocks=0"),
        (dict(num_random_blocks=-1), "num_random_blocks=-1"),
        (dict(num_global_blocks=-2), "num_global_blocks=-2"),
        (dict(block_size=4.0), "block_size=4.0"),
        (dict(seed="x"), "seed"),
        (dict(is_causal=True), "is_causal=False"),
    ],
)
def test_bad_config_says_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        EfficientBigBirdConfig(**{**SMALL, **overrides})


def test_encoder_only():
    assert "causal_lm" not in VARIANT.heads
    assert not EfficientBigBirdModel.attention_class.supports_causal
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModelForCausalLM.from_config(EfficientBigBirdConfig(**SMALL))
    config = EfficientBigBirdConfig(**SMALL)
    config.is_causal = True  # set after the config exists: building the model checks again
    with pytest.raises(ValueError, match="set is_causal=False"):
        EfficientBigBirdModel(config)


def test_paper_defaults_and_fallback_threshold():
    config = EfficientBigBirdConfig()
    assert (config.block_size, config.num_sliding_blocks, config.num_random_blocks, config.num_global_blocks) == (
        64, 3, 3, 2)
    assert config.min_sparse_blocks == 12  # transformers: sparse above (5 + 2r) * 64 = 704 tokens
    assert EfficientBigBirdConfig.full_attention_overrides(300) == {"block_size": 300}


# ------------------------------------------------------------------------------------------------ the pattern
def test_random_blocks_are_legal_deterministic_and_seeded():
    """r distinct blocks per head and query block, never in the window or the global blocks; a pure function of
    (seed, layer, blocks); different for another seed or layer."""
    for blocks in range(8, 30):
        drawn = draw_random_blocks(0, 0, blocks, 3, 2, 2, 3)  # (heads, blocks, r)
        assert drawn.shape == (3, blocks, 2)
        for row in range(1, blocks - 1):  # 0 and blocks - 1 are the global blocks
            for head in range(3):
                chosen = set(drawn[head, row].tolist())
                assert len(chosen) == 2 and not chosen & {0, blocks - 1, row - 1, row, row + 1}
        assert torch.equal(drawn, draw_random_blocks(0, 0, blocks, 3, 2, 2, 3))
    assert not torch.equal(draw_random_blocks(0, 0, 20, 3, 2, 2, 3), draw_random_blocks(1, 0, 20, 3, 2, 2, 3))
    assert not torch.equal(draw_random_blocks(0, 0, 20, 3, 2, 2, 3), draw_random_blocks(0, 1, 20, 3, 2, 2, 3))
    with pytest.raises(ValueError, match="full attention"):
        model_of().layers[0].self_attn.random_blocks(7)


def test_weights_show_the_exact_pattern():
    """Blocks of 2, 12 blocks: the global blocks 0 and 11 see everything and are seen by all; block 5 sees blocks
    4, 5, 6 (window), 0, 11 (global) and its head's random block, nothing else."""
    model = model_of(block_size=2)
    ids = torch.randint(1, 61, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        weights = model(input_ids=ids, output_attentions=True).attentions[0][0]  # (heads, N, N)
    random = model.layers[0].self_attn.random_blocks(12)  # (heads, 12, 1)
    seen = weights > 0
    for head in range(2):
        assert seen[head, :2].all() and seen[head, -2:].all(), "global blocks attend everywhere"
        assert seen[head, :, :2].all() and seen[head, :, -2:].all(), "every block attends to the global blocks"
        blocks = sorted({0, 4, 5, 6, 11, int(random[head, 5, 0])})
        expected = [2 * block + offset for block in blocks for offset in (0, 1)]
        assert seen[head, 10].nonzero().flatten().tolist() == expected
        assert seen[head, 11].nonzero().flatten().tolist() == expected
    assert not torch.equal(random[0], random[1]), "random blocks differ per head"
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 24))


# ------------------------------------------------------------------------------------------------ fast paths
@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("length", [1, 5, 28, 29, 37, 48, 61])
def test_blocked_matches_the_reference_at_any_length(length, kv_heads):
    """Padding, extra global tokens, short and sparse rows in one batch; grouped KV heads."""
    model = model_of(seed=length, num_key_value_heads=kv_heads, num_random_blocks=2)
    generator = torch.Generator().manual_seed(length)
    ids = torch.randint(1, 61, (3, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, (2 * length) // 3 + 1:] = 0
    mask[2, length // 4 + 1:] = 0
    marks = torch.zeros_like(ids)
    marks[0, length // 2] = 1
    marks[1, 0] = 1
    inputs = dict(attention_mask=mask, global_attention_mask=marks)
    reference, blocked = run(model, ids, "reference", **inputs), run(model, ids, "blocked", **inputs)
    assert (blocked - reference)[mask.bool()].abs().max() <= TOLERANCE


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_flex_block_mask_matches_the_reference_on_cpu(kv_heads):
    """FlexAttention runs forward on CPU (unfused): the block mask encodes exactly the reference pattern."""
    generator = torch.Generator().manual_seed(kv_heads)
    batch, heads, length, dim, size = 3, 2, 45, 8, 4
    query = torch.randn(batch, heads, length, dim, generator=generator)
    key, value = (torch.randn(batch, kv_heads, length, dim, generator=generator) for _ in range(2))
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[1, 33:] = False
    keep[2, 10:] = False  # a short row: full attention
    extra = torch.zeros(batch, length, dtype=torch.bool)
    extra[0, [5, 30]] = True
    layout = block_layout(keep, extra, batch, length, size, 2, 8, query.device)
    random = random_table(layout, kv_heads, 1, lambda blocks: draw_random_blocks(0, 0, blocks, kv_heads, 1, 2, 3))
    table = block_table(layout, random, 3)
    groups = heads // kv_heads
    reference, _ = block_sparse_reference(query, repeat_kv(key, groups), repeat_kv(value, groups),
                                          repeat_kv(token_keep(layout, table), groups), dim**-0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flex = block_sparse_flex(query, key, value, flex_block_mask(layout, table, heads, query.device), dim**-0.5,
                                 compiled=False)
    torch.testing.assert_close(flex[keep], reference[keep], rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.parametrize(("length", "size", "tile"), [(600, 16, 128), (700, 48, 128), (1000, 64, 128),
                                                     (1100, 128, 128), (900, 200, 128), (1000, 64, 64), (700, 48, 64)])
def test_tile_table_covers_the_pattern_and_full_tiles_are_full(length, size, tile):
    """The BlockMask is derived from the block table (not from every token pair): each tile x tile tile holding a
    kept pair of a real query is listed (rows of padding queries are not computed), a tile listed as full keeps every
    pair, and flex over it equals the reference."""
    generator = torch.Generator().manual_seed(length)
    batch, heads, kv_heads, dim = 2, 4, 2, 8
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[1, length - 150:] = False
    extra = torch.zeros(batch, length, dtype=torch.bool)
    extra[0, [3, length // 2]] = True
    layout = block_layout(keep, extra, batch, length, size, 2, 1, torch.device("cpu"))
    random = random_table(layout, kv_heads, 2, lambda blocks: draw_random_blocks(0, 0, blocks, kv_heads, 2, 2, 3))
    table = block_table(layout, random, 3)
    partial, full = tile_table(layout, table, tile)
    tokens = token_keep(layout, table)  # (batch, kv_heads, N, N)
    tiles = -(-length // tile)
    padded = torch.nn.functional.pad(tokens, (0, tiles * tile - length, 0, tiles * tile - length))
    per_tile = padded.view(batch, kv_heads, tiles, tile, tiles, tile)
    real_rows = torch.nn.functional.pad(tokens & keep[:, None, :, None], (0, tiles * tile - length, 0,
                                                                          tiles * tile - length))
    truth_any = real_rows.view(batch, kv_heads, tiles, tile, tiles, tile).any(5).any(3)
    in_range = torch.zeros(tiles * tile, dtype=torch.bool)
    in_range[:length] = True
    truth_all = (per_tile | ~in_range.view(tiles, tile)[None, None, :, :, None, None]
                 | ~in_range.view(tiles, tile)[None, None, None, None]).all(5).all(3)
    assert not (partial & full).any()
    assert (truth_any <= (partial | full)).all(), "a tile holding a kept pair is missing"
    assert (full <= truth_all).all(), "a tile marked full has a dropped pair"
    assert partial.any() and not (partial | full).all()  # the case is really sparse
    assert full.any() or size < 64  # blocks of 64 and up cover whole diagonal tiles
    query = torch.randn(batch, heads, length, dim, generator=generator)
    key, value = (torch.randn(batch, kv_heads, length, dim, generator=generator) for _ in range(2))
    groups = heads // kv_heads
    reference, _ = block_sparse_reference(query, repeat_kv(key, groups), repeat_kv(value, groups),
                                          repeat_kv(tokens, groups), dim**-0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flex = block_sparse_flex(query, key, value, flex_block_mask(layout, table, heads, query.device, tile),
                                 dim**-0.5, compiled=False)
    torch.testing.assert_close(flex[keep], reference[keep], rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.parametrize("size", [64, 128])
def test_tiles_of_the_block_size_are_all_whole(size):
    """With BigBird's block as the tile (64 where the kernels take it, see flex_tile), an unpadded input without
    extra global tokens has no partial tile: the kernel computes exactly the (w + r + g) blocks of each query block,
    nothing masked; with 128-token tiles over 64-token blocks most kept tiles are partial."""
    length, kv_heads = 64 * 40, 2
    layout = block_layout(None, None, 1, length, size, 2, 8, torch.device("cpu"))
    random = random_table(layout, kv_heads, 3, lambda blocks: draw_random_blocks(0, 0, blocks, kv_heads, 3, 2, 3))
    table = block_table(layout, random, 3)
    partial, full = tile_table(layout, table, size)
    assert not partial.any()
    assert torch.equal(full, table)
    if size == 64:
        partial, full = tile_table(layout, table, 128)
        assert partial.sum() > full.sum()


# ------------------------------------------------------------------------------------------------ fallback, padding
def test_short_inputs_fall_back_to_full_attention_without_state():
    model = model_of()
    exact = full_attention_twin(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attributes = {name: dict(vars(module)) for name, module in model.named_modules()}
    short = torch.randint(1, 61, (2, 28), generator=torch.Generator().manual_seed(0))  # 7 blocks < 8
    long = torch.randint(1, 61, (2, 48), generator=torch.Generator().manual_seed(1))
    for backend in ("blocked", "reference"):
        assert (run(model, short, backend) - run(exact, short)).abs().max() <= TOLERANCE
        assert (run(model, long, backend) - run(exact, long)).abs().max() > 1e-3, "a later long input is sparse"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert attributes == {name: dict(vars(module)) for name, module in model.named_modules()}


@pytest.mark.parametrize("backend", ["blocked", "reference"])
def test_each_row_is_laid_out_on_its_own_real_tokens(backend):
    """A batch of rows of different real lengths (sparse 13 and 9 blocks, short 4) equals each row run alone: the
    last global block and the random blocks follow each row's length, padding never changes real tokens."""
    model = model_of(seed=3, num_random_blocks=2)
    lengths = (50, 35, 14)
    ids = torch.randint(1, 61, (3, 50), generator=torch.Generator().manual_seed(2))
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    batched = run(model, ids, backend, attention_mask=mask)
    for row, length in enumerate(lengths):
        alone = run(model, ids[row : row + 1, :length], backend)
        assert (batched[row, :length] - alone[0]).abs().max() <= TOLERANCE


# ------------------------------------------------------------------------------------------------ randomness
def test_random_pattern_survives_save_load_and_resampling_is_explicit(tmp_path):
    model = model_of()
    ids = torch.randint(1, 61, (2, 45), generator=torch.Generator().manual_seed(0))
    original = run(model, ids)
    assert torch.equal(run(model_of(), ids), original), "the same config draws the same pattern"
    model.save_pretrained(tmp_path / "a")
    assert torch.equal(run(AutoModel.from_pretrained(tmp_path / "a").eval(), ids), original)

    assert model.resample_random_blocks(seed=7) == 7 and model.config.seed == 7
    redrawn = run(model, ids)
    assert (redrawn - original).abs().max() > 1e-4
    model.save_pretrained(tmp_path / "b")
    loaded = AutoModel.from_pretrained(tmp_path / "b").eval()
    assert loaded.config.seed == 7 and torch.equal(run(loaded, ids), redrawn)


def test_resampling_in_training_is_seeded_like_dropout():
    model = model_of(resample_random_blocks_in_training=True).train()
    ids = torch.randint(1, 61, (2, 45), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    first, second = run(model, ids), run(model, ids)
    assert (first - second).abs().max() > 1e-4, "a fresh pattern per training forward"
    torch.manual_seed(0)
    assert torch.equal(run(model, ids), first), "reproducible under torch.manual_seed"
    model.eval()
    assert torch.equal(run(model, ids), run(model_of(), ids)), "eval always uses the seed's pattern"

    model.train()
    gradients = []
    for checkpointing in (False, True):
        if checkpointing:
            enable_activation_checkpointing(model)
        model.zero_grad()
        torch.manual_seed(1)
        model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name, grad in gradients[0].items():  # checkpointing replays the same draw
        torch.testing.assert_close(gradients[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------------ conversion
def save_tiny_bert(folder):
    folder.mkdir(parents=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, "the", "of", "and", "to"]
    tokens += [f"##{c}" for c in string.ascii_lowercase] + [f"word{i}" for i in range(99 - len(tokens) - 26)]
    (folder / "vocab.txt").write_text("\n".join(tokens))
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).eval().save_pretrained(folder)


def test_converts_from_bert(tmp_path):
    save_tiny_bert(tmp_path / "bert")
    result = convert(str(tmp_path / "bert"), "bigbird", out=tmp_path / "out", max_length=128, **SPARSE)
    assert result.new_parameters == [] and "adds no parameters" in result.new_parameters_recipe
    fidelity = result.fidelity
    assert fidelity.tokens == 64 and fidelity.degenerate_overrides == {"block_size": 64}
    assert fidelity.degenerate_max_abs_diff <= TOLERANCE
    assert fidelity.as_converted_max_abs_diff > 1e-3, "16 blocks of 4 on the check text are really sparse"
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert type(model) is EfficientBigBirdModel and model.config.block_size == 4
    with torch.no_grad():
        assert model(input_ids=torch.randint(1, 99, (1, 128))).last_hidden_state.shape == (1, 128, 32)


def test_causal_sources_are_refused(tmp_path):
    transformers.GPT2Model(transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=1, n_head=4,
                                                   n_positions=64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ConversionError, match="is_causal=False"):
        convert(str(tmp_path / "gpt2"), "bigbird", max_length=64, check=False)


# ------------------------------------------------------------------------------------------------ transformers
HF_SIZES = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=128, block_size=4,
                num_random_blocks=2)
THEIRS = {"model": transformers.BigBirdModel, "masked_lm": transformers.BigBirdForMaskedLM,
          "token_classification": transformers.BigBirdForTokenClassification}
OURS = {"model": EfficientBigBirdModel, "masked_lm": EfficientBigBirdForMaskedLM,
        "token_classification": EfficientBigBirdForTokenClassification}


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights far from the init (matrices ~ N(0, 0.3), peaked attention): a wrong key block shows far above 1e-4."""
    generator = torch.Generator().manual_seed(seed)
    norm_scales = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1 + 0.1 * noise if id(parameter) in norm_scales else noise * (
                0.3 if parameter.dim() > 1 else 0.1))
    return model.eval()


def main_output(model, ids) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


def align_random_blocks(ours, theirs, length: int, monkeypatch) -> None:
    """Give our layers transformers' (training-mode) random blocks for inputs of `length` tokens."""
    patterns = transformers_random_blocks(theirs, length)
    for layer, pattern in zip(ours.base_model.layers, patterns, strict=True):
        monkeypatch.setattr(layer.self_attn, "random_blocks", lambda blocks, draw=None, pattern=pattern: pattern)


@pytest.mark.parametrize("length", [56, 53])  # 14 blocks; 53 is padded to 56 by transformers, cut into 14 by ours
@pytest.mark.parametrize("head", list(THEIRS))
def test_transformers_to_ours_with_aligned_random_blocks(head, length, monkeypatch):
    """transformers in training mode (dropout 0: deterministic, its random blocks drawn from numpy seeded with the
    layer index) against ours given the same random blocks: every backend equal to <= 1e-4."""
    config = transformers.BigBirdConfig(**HF_SIZES, sep_token_id=None, num_labels=3)
    theirs = randomize(THEIRS[head](config))
    ours = from_transformers_bigbird(theirs)
    assert type(ours) is OURS[head]
    align_random_blocks(ours, theirs, length, monkeypatch)
    ids = torch.randint(1, 100, (2, length), generator=torch.Generator().manual_seed(length))
    expected = main_output(theirs.train(), ids)
    assert theirs.base_model.attention_type == "block_sparse"
    for backend in ("blocked", "reference"):
        ours.config.attention_backend = backend
        assert (main_output(ours, ids) - expected).abs().max() <= 1e-4, backend


def test_ours_to_transformers_and_back(monkeypatch):
    ours = randomize(EfficientBigBirdForMaskedLM(EfficientBigBirdConfig(**{**SMALL, **HF_SIZES})))
    theirs = to_transformers_bigbird(ours)
    assert type(theirs) is transformers.BigBirdForMaskedLM and theirs.config.attention_type == "block_sparse"
    back = from_transformers_bigbird(theirs)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())
    align_random_blocks(ours, theirs, 60, monkeypatch)
    ids = torch.randint(1, 61, (2, 60), generator=torch.Generator().manual_seed(0))
    assert (main_output(ours, ids) - main_output(theirs.train(), ids)).abs().max() <= 1e-4


def test_short_inputs_match_transformers_full_attention():
    """At <= (5 + 2r) blocks both use full attention (transformers switches itself; ours keeps no state)."""
    theirs = randomize(transformers.BigBirdModel(transformers.BigBirdConfig(**HF_SIZES, sep_token_id=None)))
    ours = from_transformers_bigbird(theirs)
    ids = torch.randint(1, 100, (2, 36), generator=torch.Generator().manual_seed(0))  # 9 blocks <= 5 + 2 * 2
    assert (main_output(ours, ids) - main_output(theirs, ids)).abs().max() <= 1e-4
    assert theirs.attention_type == "original_full"


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (dict(num_sliding_blocks=5), "num_sliding_blocks"),
        (dict(num_global_blocks=1), "num_global_blocks"),
        (dict(num_random_blocks=0), "num_random_blocks=0"),
        (dict(num_key_value_heads=1), "grouped KV heads"),
        (dict(norm_position="pre"), "norm_position"),
    ],
)
def test_unexpressible_models_raise(overrides, name):
    with pytest.raises(ConversionError, match=name):
        to_transformers_bigbird(EfficientBigBirdModel(EfficientBigBirdConfig(**{**SMALL, **overrides})))


def test_package_exports():
    assert hf_efficient.EfficientBigBirdModel is EfficientBigBirdModel


def test_cached_flex_mask_of_unpadded_inputs_equals_the_one_built_per_forward():
    """The flex path caches the BlockMask of unpadded inputs per layer and shape; it must be the mask the forward
    would build from the layer's own seeded random blocks (and differ between layers and seeds)."""
    config = EfficientBigBirdConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=64, max_position_embeddings=2048,
                                    block_size=32)
    model = EfficientBigBirdModel(config)
    length = 1000
    layout = block_layout(None, None, 1, length, config.block_size, config.num_global_blocks,
                          config.min_sparse_blocks, torch.device("cpu"))
    dense = []
    for layer in model.layers:
        attention = layer.self_attn
        random = random_table(layout, 2, config.num_random_blocks, attention.random_blocks)
        built = flex_block_mask(layout, block_table(layout, random, config.num_sliding_blocks), 4, torch.device("cpu"))
        cached = attention.structural_flex_mask(1, length, torch.device("cpu"), 128)
        for field in ("kv_num_blocks", "full_kv_num_blocks"):
            assert torch.equal(getattr(cached, field), getattr(built, field)), field
        assert torch.equal(cached.to_dense(), built.to_dense())
        dense.append(cached.to_dense())
    assert not torch.equal(dense[0], dense[1])  # layers draw their own random blocks
    model.config.seed = config.seed + 1
    reseeded = model.layers[0].self_attn.structural_flex_mask(1, length, torch.device("cpu"), 128)
    assert not torch.equal(reseeded.to_dense(), dense[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
@pytest.mark.parametrize("tile", [64, 128])
def test_gpu_flex_with_either_tile_equals_blocked(tile, monkeypatch):
    """Blocks of 64 at MiniLM's head_dim 32, fp32: compiled flex over 64- or 128-token tiles equals the blocked
    path (outputs to 1e-5; outputs and gradients as close as fp32 rounding lets the naive reference come, see
    tests/backend_agreement.py), for an unpadded batch (the cached mask) and a padded one with extra globals."""
    from hf_efficient.attention.flex import small_tiles_compile
    from hf_efficient.models.bigbird import modeling_bigbird

    torch.backends.cuda.matmul.allow_tf32 = False
    if tile == 64 and not small_tiles_compile(32, torch.float32, "cuda:0"):
        pytest.skip("FlexAttention does not compile 64-token tiles at head_dim 32 on this GPU")
    monkeypatch.setattr(modeling_bigbird, "flex_tile", lambda block_size, query: tile)
    config = EfficientBigBirdConfig(**{**SMALL, "hidden_size": 128, "num_attention_heads": 4, "block_size": 64,
                                       "max_position_embeddings": 2048})
    torch.manual_seed(0)
    model = EfficientBigBirdModel(config).cuda().train()
    ids = torch.randint(1, 61, (2, 64 * 20 + 17), device="cuda")
    padding = torch.ones_like(ids)
    padding[1, 1100:] = 0
    marks = torch.zeros_like(ids)
    marks[0, 700] = 1
    for inputs in ({}, {"attention_mask": padding, "global_attention_mask": marks}):
        real = inputs.get("attention_mask", torch.ones_like(ids)).bool()
        assert_fast_path_within_rounding(model, "flex", {"input_ids": ids, **inputs}, real)
