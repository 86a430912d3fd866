"""The Image Transformer's properties (Parmar et al., arXiv 1802.05751), on random inputs in fp32: local 1D and 2D
patterns as defined pixel by pixel, every path equal to the dense masked reference, a covering block equal to full
causal attention, causality in raster order, cached generate() equal to a greedy loop, class conditioning, refusals."""

import itertools

import pytest
import torch
from block_mask_emulation import kernel_keep
from transformers import AutoModelForCausalLM

import hf_efficient
from hf_efficient.attention.full import FullAttention
from hf_efficient.attention.local_image import LocalImagePattern, flex_block_mask
from hf_efficient.models.image_transformer.modeling_image_transformer import EfficientImageTransformerModel

TINY = dict(num_levels=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# 4 x 5 RGB (61 positions): 2D blocks of 2 x 2 pixels cut by the right edge, a flange of 1 row, 1 column
SETTINGS = {
    "1d": dict(attention_type="local_1d", query_block_length=7, memory_length=5),
    "2d": dict(attention_type="local_2d", query_shape=[2, 2], memory_flange=[1, 1]),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is faster than a thread pool (much faster on a busy 2-core CI machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def image_config(setting: str, **overrides):
    return hf_efficient.EfficientImageTransformerConfig(
        **{**TINY, "image_size": [4, 5], "num_channels": 3, **SETTINGS[setting], **overrides})


def build(setting: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(image_config(setting, **overrides)).eval()


def images(config, batch: int = 2, length: int | None = None, seed: int = 0) -> torch.Tensor:
    length = length or config.max_position_embeddings
    ids = torch.randint(0, config.num_levels, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = config.bos_token_id
    return ids


def defined_keep(kind: str, height: int, width: int, channels: int, knobs: dict) -> torch.Tensor:
    """The pattern written out from the paper's description, pixel by pixel (independent of the library's rule)."""
    total = 1 + height * width * channels
    keep = torch.zeros(total, total, dtype=torch.bool)
    keep[:, 0] = True  # bos
    coordinates = [(r, c, ch) for r in range(height) for c in range(width) for ch in range(channels)]
    for (s, (r, c, _)), (k, (kr, kc, _)) in itertools.product(enumerate(coordinates, 1), repeat=2):
        if k > s:
            continue
        if kind == "local_1d":
            block = (s - 1) // knobs["query_block_length"]
            keep[s, k] = k - 1 >= block * knobs["query_block_length"] - knobs["memory_length"]
        else:
            (h, w), (fh, fw) = knobs["query_shape"], knobs["memory_flange"]
            top, left = (r // h) * h, (c // w) * w
            keep[s, k] = top - fh <= kr < top + h and left - fw <= kc < left + w + fw
    return keep


@pytest.mark.parametrize("setting", ["1d", "2d"])
def test_pattern_is_the_papers_local_block_with_its_memory(setting):
    knobs = LocalImagePattern.of(image_config(setting))
    positions = torch.arange(knobs.total)
    rule = knobs.keep(positions[:, None], positions[None, :])
    expected = defined_keep(knobs.kind, 4, 5, 3, dict(query_block_length=7, memory_length=5,
                                                      query_shape=(2, 2), memory_flange=(1, 1)))
    assert torch.equal(rule, expected)
    assert not torch.equal(rule, torch.ones_like(rule).tril()), "the tiny pattern should really be local"


@pytest.mark.parametrize("setting", ["1d", "2d"])
def test_every_path_equals_the_dense_reference(setting):
    """blocked (and FlexAttention's forward, which runs on CPU) against the reference: logits and every gradient,
    padded rows and a prefix shorter than the image, grouped KV heads."""
    model = build(setting, num_key_value_heads=2).train()
    ids = images(model.config, batch=3, length=50)
    mask = torch.ones_like(ids)
    mask[1, 33:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    results = {}
    for backend in ("reference", "blocked"):
        model.config.attention_backend = backend
        model.zero_grad()
        output = model(input_ids=ids, attention_mask=mask, labels=labels, return_logits=True)
        output.loss.backward()
        results[backend] = output.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    real = mask.bool()
    torch.testing.assert_close(results["blocked"][0][real], results["reference"][0][real], rtol=1e-5, atol=2e-5)
    for name, grad in results["reference"][1].items():
        torch.testing.assert_close(results["blocked"][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)
    model.eval().config.attention_backend = "flex"
    with torch.no_grad():
        flex = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(flex[real], results["reference"][0][real], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize(("setting", "tile"), [("1d", 16), ("2d", 16), ("2d", 32)])
def test_flex_tile_tables_keep_exactly_the_pattern(setting, tile):
    """The GPU kernels visit only the listed tiles: expanded as they read them (block_mask_emulation), the BlockMask
    keeps exactly the pattern's pairs among the real tokens, on an 8 x 8 RGB image (193 positions, a 256 bucket)."""
    pattern = LocalImagePattern(**{"kind": "local_1d", "height": 8, "width": 8, "channels": 3, "query_block_length": 20,
                                   "memory_length": 9} if setting == "1d" else
                                {"kind": "local_2d", "height": 8, "width": 8, "channels": 3, "query_shape": (2, 4),
                                 "memory_flange": (2, 1)})
    bucket, length = 256, pattern.total
    keep = torch.zeros(2, bucket, dtype=torch.bool)
    keep[0, :length], keep[1, :150] = True, True
    kernel = kernel_keep(flex_block_mask(pattern, bucket, keep, torch.device("cpu"), tile), heads=1)[:, 0]
    positions = torch.arange(bucket)
    expected = pattern.keep(positions[:, None], positions[None, :]) & keep[:, None, :]
    for row in range(2):
        real = keep[row]
        assert torch.equal(kernel[row][real][:, real], expected[row][real][:, real]), f"row {row}"


@pytest.mark.parametrize("setting", ["1d", "2d"])
def test_a_covering_block_is_full_causal_attention(setting):
    """query_block_length >= H W C (1D) or one query block of the whole image (2D): the model equals the same
    weights under dense causal attention; the tiny setting does not."""
    covering = dict(query_block_length=60, memory_length=0) if setting == "1d" else dict(query_shape=[4, 5],
                                                                                        memory_flange=[0, 0])
    local = build(setting).model
    config = image_config(setting, **covering)
    wide = EfficientImageTransformerModel(config).eval()
    wide.load_state_dict(local.state_dict())

    class DenseImageModel(EfficientImageTransformerModel):
        attention_class = FullAttention

    dense = DenseImageModel(config).eval()
    dense.load_state_dict(local.state_dict())
    ids = images(config)
    with torch.no_grad():
        exact = dense(input_ids=ids).last_hidden_state
        torch.testing.assert_close(wide(input_ids=ids).last_hidden_state, exact, rtol=1e-5, atol=1e-5)
        assert (local(input_ids=ids).last_hidden_state - exact).abs().max() > 1e-3


@pytest.mark.parametrize("setting", ["1d", "2d"])
def test_causal_in_raster_order(setting):
    """Changing sub-pixel s changes the logits at s and leaves every earlier position's exactly as they were."""
    model = build(setting)
    ids = images(model.config, batch=1)
    with torch.no_grad():
        before = model(input_ids=ids).logits[..., :-1]
        for position in (1, 9, 26, 47, 60):
            changed = ids.clone()
            changed[0, position] = (changed[0, position] + 5) % model.config.num_levels
            after = model(input_ids=changed).logits[..., :-1]
            torch.testing.assert_close(after[:, :position], before[:, :position], rtol=0, atol=1e-6)
            assert (after[:, position] - before[:, position]).abs().max() > 1e-4


@pytest.mark.parametrize("setting", ["1d", "2d"])
def test_cached_generate_equals_the_greedy_loop_over_full_passes(setting):
    model = build(setting, num_classes=3, image_size=3)  # 27 sub-pixels: 2D blocks cut by both edges
    config = model.config
    labels = torch.tensor([2, 0])
    start = torch.full((2, 1), config.bos_token_id)
    steps = config.max_position_embeddings - 1
    with torch.no_grad():
        generated = model.generate(start, max_new_tokens=steps, do_sample=False, class_labels=labels)
        greedy = start
        for _ in range(steps):
            logits = model(input_ids=greedy, class_labels=labels, use_cache=False).logits[:, -1]
            greedy = torch.cat([greedy, logits.argmax(-1, keepdim=True)], dim=1)
        sampled = model.generate(start, max_new_tokens=steps, do_sample=True, class_labels=labels)
    assert torch.equal(generated, greedy)
    assert sampled.shape == (2, config.max_position_embeddings)
    assert (sampled[:, 1:] < config.num_levels).all(), "bos is never drawn"
    with pytest.raises(ValueError, match="image_size"):
        model(input_ids=torch.cat([greedy, greedy[:, 1:2]], dim=1), class_labels=labels)


def test_class_labels_condition_every_position_and_are_checked():
    model = build("1d", num_classes=4)
    ids = images(model.config, batch=1).expand(2, -1)
    with torch.no_grad():
        logits = model(input_ids=ids, class_labels=torch.tensor([0, 3])).logits[..., :-1]
    assert ((logits[0] - logits[1]).abs().amax(-1) > 1e-4).all(), "the class reaches every position"
    for labels, message in ((None, "class-conditional"), (torch.tensor([0, 4]), "num_classes"),
                            (torch.tensor([[0], [1]]), "shape")):
        with pytest.raises(ValueError, match=message):
            model(input_ids=ids, class_labels=labels)


def test_loss_scores_every_sub_pixel_and_bos_is_never_predicted():
    model = build("2d")
    ids = images(model.config)
    output = model(input_ids=ids, labels=ids, return_logits=True)
    assert torch.isinf(output.logits[..., model.config.bos_token_id]).all()
    expected = torch.nn.functional.cross_entropy(output.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(output.loss, expected)


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(vocab_size=300), "vocab_size"),
    (dict(bos_token_id=0), "bos_token_id"),
    (dict(max_position_embeddings=10), "max_position_embeddings"),
    (dict(image_size=[4, 5, 6]), "image_size"),
    (dict(query_shape=[2]), "query_shape"),
    (dict(memory_flange="wide"), "memory_flange"),
    (dict(is_causal=False), "is_causal"),
    (dict(position_embedding_type="absolute"), "position_embedding_type"),
    (dict(num_channels=4), "num_channels"),
])
def test_bad_configs_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        image_config("2d", **overrides)


def test_conversion_from_a_token_model_is_refused():
    assert "not text" in hf_efficient.VARIANTS["efficient_image_transformer"].conversion_refusal


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
@pytest.mark.parametrize("setting", ["1d", "2d"])
def test_gpu_flex_path_equals_the_reference(setting):
    """On CUDA "auto" takes FlexAttention (head_dim >= 16): logits and gradients equal the reference, fp32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = build(setting, head_dim=16, image_size=[8, 8]).cuda().train()
    ids = images(model.config, batch=2, length=150).cuda()
    mask = torch.ones_like(ids)
    mask[1, 100:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    results = {}
    for backend in ("reference", "auto", "blocked"):
        model.config.attention_backend = backend
        model.zero_grad()
        output = model(input_ids=ids, attention_mask=mask, labels=labels, return_logits=True)
        output.loss.backward()
        results[backend] = output.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    model.config.attention_backend = "auto"
    assert model.model.layers[0].self_attn.choose_backend(torch.zeros(1, device="cuda"), False, "flex", 16) == "flex"
    real = mask.bool()
    for backend in ("auto", "blocked"):
        torch.testing.assert_close(results[backend][0][real], results["reference"][0][real], rtol=1e-5, atol=2e-5)
        for name, grad in results["reference"][1].items():
            torch.testing.assert_close(results[backend][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)
