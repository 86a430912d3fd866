"""Axial attention (Ho et al., arXiv 1912.12180): the axial fast path equals dense attention under the equivalent
mask, the causal decoder is exactly raster-order causal over sub-pixels, and the image heads, generation, class
conditioning and refusals work, on random inputs (fp32)."""

import math

import pytest
import torch
from testers import TESTERS

import hf_efficient
from hf_efficient.attention.axial import axial_attention_reference, dense_axial_keep
from hf_efficient.models.axial.modeling_axial import EfficientAxialAttention

TESTER = TESTERS["efficient_axial"]
SMALL_IMAGE = dict(image_size=[2, 3], num_channels=3)  # 18 sub-pixels: generation runs a forward per sub-pixel


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is faster than a thread pool (much faster on a busy 2-core CI machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(style: str = "gpt2", **overrides):
    return TESTER.config(style, **overrides)


def image_ids(cfg, batch: int = 2, seed: int = 0, bos: bool = True) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.num_levels, (batch, cfg.num_subpixels), generator=generator)
    return torch.cat([torch.full((batch, 1), cfg.bos_token_id), ids], 1) if bos else ids


def per_line_attention(q, k, v, axis: str, causal: bool, scaling: float) -> torch.Tensor:
    """Attention computed line by line with explicit loops: (batch, heads, H, W, C, d) -> same shape."""
    dim = {"column": 2, "row": 3, "channel": 4}[axis]
    q, k, v = (t.movedim(dim, -2) for t in (q, k, v))  # the line last but one
    out = torch.empty_like(q)
    for index in torch.cartesian_prod(*(torch.arange(n) for n in q.shape[:-2])):
        index = tuple(index.tolist())
        scores = q[index] @ k[index].T * scaling
        if causal:
            scores = scores.masked_fill(~torch.ones_like(scores, dtype=torch.bool).tril(), float("-inf"))
        out[index] = scores.softmax(-1) @ v[index]
    return out.movedim(-2, dim)


@pytest.mark.parametrize("axis", ["row", "column", "channel"])
def test_dense_reference_equals_attention_line_by_line(axis):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 3, 4, 3, 8) for _ in range(3))
    for causal in (False, True):
        dense, _ = axial_attention_reference(q, k, v, axis, causal, None, 8**-0.5)
        lines = per_line_attention(q, k, v, axis, causal, 8**-0.5)
        torch.testing.assert_close(dense.movedim(-2, 1), lines, rtol=1e-5, atol=1e-6)


def test_dense_mask_is_the_axis_and_raster_order():
    keep = dense_axial_keep((2, 3, 2), "row", True, None, torch.device("cpu"))[0, 0]
    # query (row 1, col 2, channel 1) = 11 sees (1, 0, 1), (1, 1, 1), (1, 2, 1) = 7, 9, 11
    assert keep[11].nonzero().flatten().tolist() == [7, 9, 11]
    column = dense_axial_keep((2, 3, 2), "column", False, None, torch.device("cpu"))[0, 0]
    assert column[2].nonzero().flatten().tolist() == [2, 8]


@pytest.mark.parametrize("lines_per_call", [None, 5])
@pytest.mark.parametrize("axis", ["row", "column", "channel"])
def test_fast_path_equals_dense_reference_outputs_and_gradients(axis, lines_per_call, monkeypatch):
    """The sdpa path over lines (padding keep-mask included) equals dense attention over the flattened grid, also
    when the lines go in several calls (as past CUDA's grid limit; here 5 per call, the last call shorter)."""
    if lines_per_call:
        import hf_efficient.models.axial.modeling_axial as modeling_axial

        monkeypatch.setattr(modeling_axial, "LINES_PER_CALL", lines_per_call)
    cfg = config("llama")  # grouped KV heads
    torch.manual_seed(1)
    keep = torch.rand(2, 4, 4, 3) > 0.3
    for causal, mask in ((False, keep), (True, None), (False, None)):
        attention = EfficientAxialAttention(cfg, 0, axis=axis, causal=causal)
        hidden = torch.randn(2, 4, 4, 3, cfg.hidden_size, requires_grad=True)
        results = []
        for backend in ("reference", "blocked"):
            cfg.attention_backend = backend
            attention.zero_grad()
            hidden.grad = None
            out, _ = attention(hidden, attention_mask=mask)
            out.pow(2).sum().backward()
            results.append((out.detach(), hidden.grad.clone(), attention.q_proj.weight.grad.clone()))
        cfg.attention_backend = "auto"
        for reference, fast in zip(results[0], results[1], strict=True):
            torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("image_size", "channels"), [(4, 3), ([3, 5], 1)])
def test_decoder_is_exactly_raster_order_causal(image_size, channels):
    """Changing sub-pixel t changes no logit at positions <= t (those predicting sub-pixels 0..t) and changes every
    logit after it: the dependency set of each prediction is exactly the sub-pixels before it."""
    cfg = config("gpt2", image_size=image_size, num_channels=channels)
    torch.manual_seed(0)
    model = hf_efficient.EfficientAxialForCausalLM(cfg).eval()
    ids = image_ids(cfg, batch=1)
    total = cfg.num_subpixels
    changed = ids.repeat(total, 1)
    positions = torch.arange(total)
    changed[positions, positions + 1] = (changed[positions, positions + 1] + 1) % cfg.num_levels
    with torch.no_grad():
        before = model(ids).logits[..., : cfg.num_levels]
        after = model(changed).logits[..., : cfg.num_levels]
    difference = (after - before).abs().amax(-1)  # (changed sub-pixel t, position)
    earlier = positions[None, :] <= positions[:, None]  # positions 0..t
    later = (positions[None, :] > positions[:, None]) & (positions[None, :] < total)
    assert difference[:, :total][earlier].max() <= 1e-6
    assert difference[:, :total][later].min() > 1e-6, "every later prediction should see sub-pixel t"


def test_loss_is_nats_per_subpixel_and_bos_is_never_predicted():
    cfg = config("gpt2")
    torch.manual_seed(0)
    model = hf_efficient.EfficientAxialForCausalLM(cfg).eval()
    ids = image_ids(cfg)
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, cfg.num_subpixels + 1, cfg.vocab_size)
    assert torch.isneginf(out.logits[..., cfg.bos_token_id]).all()
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(out.loss, manual)
    assert 0 < out.loss / math.log(2) < 2 * math.log2(cfg.num_levels)  # bits/dim of a random model


def test_generate_equals_the_greedy_loop_and_makes_a_whole_image():
    cfg = config("llama", **SMALL_IMAGE)
    torch.manual_seed(0)
    model = hf_efficient.EfficientAxialForCausalLM(cfg).eval()
    start = torch.full((2, 1), cfg.bos_token_id)
    with torch.no_grad():
        generated = model.generate(start, max_new_tokens=cfg.num_subpixels, do_sample=False)
        greedy = start
        for _ in range(cfg.num_subpixels):
            greedy = torch.cat([greedy, model(greedy).logits[:, -1].argmax(-1, keepdim=True)], 1)
        torch.manual_seed(3)
        sampled = model.generate(start, max_new_tokens=cfg.num_subpixels, do_sample=True, top_k=0)
    assert torch.equal(generated, greedy)
    assert sampled.shape == (2, cfg.num_subpixels + 1)
    assert (sampled[:, 1:] < cfg.num_levels).all(), "bos must never be sampled"


def test_class_conditioning_changes_outputs_and_reaches_generate(tmp_path):
    cfg = config("gpt2", num_classes=3, **SMALL_IMAGE)
    torch.manual_seed(0)
    model = hf_efficient.EfficientAxialForCausalLM(cfg).eval()
    ids = image_ids(cfg)
    with torch.no_grad():
        first = model(ids, class_labels=torch.tensor([0, 0])).logits
        second = model(ids, class_labels=torch.tensor([2, 2])).logits
        assert (first - second)[..., : cfg.num_levels].abs().amax() > 1e-3
        start = torch.full((1, 1), cfg.bos_token_id)
        for label in (0, 2):
            generated = model.generate(start, max_new_tokens=cfg.num_subpixels, do_sample=False,
                                       class_labels=torch.tensor([label]))
            greedy = start
            for _ in range(cfg.num_subpixels):
                step = model(greedy, class_labels=torch.tensor([label])).logits[:, -1].argmax(-1, keepdim=True)
                greedy = torch.cat([greedy, step], 1)
            assert torch.equal(generated, greedy)
    model.save_pretrained(tmp_path)
    loaded = hf_efficient.EfficientAxialForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, class_labels=torch.tensor([0, 0])).logits, first, rtol=0, atol=0)
    with pytest.raises(ValueError, match="class-conditional"):
        model(ids)
    with pytest.raises(ValueError, match="num_classes"):
        model(ids, class_labels=torch.tensor([0, 3]))


def test_classifier_pools_only_real_subpixels():
    cfg = config("bert", num_labels=4)
    torch.manual_seed(0)
    model = hf_efficient.EfficientAxialForImageClassification(cfg).eval()
    ids = image_ids(cfg, batch=1, bos=False)
    mask = torch.ones_like(ids)
    mask[:, 30:] = 0
    noisy = ids.clone()
    noisy[:, 30:] = (noisy[:, 30:] + 1) % cfg.num_levels
    with torch.no_grad():
        prefix = model(ids[:, :30]).logits
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, prefix, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(noisy, attention_mask=mask).logits, prefix, rtol=1e-5, atol=1e-6)
        assert (model(ids).logits - prefix).abs().max() > 1e-4
    out = model(ids, labels=torch.tensor([2]))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_refusals_say_what_to_change():
    cfg = config("gpt2")
    model = hf_efficient.EfficientAxialForCausalLM(cfg).eval()
    ids = image_ids(cfg)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    cases = [
        (dict(input_ids=torch.cat([ids, ids[:, -1:]], 1)), "image_size"),
        (dict(input_ids=ids, attention_mask=mask), "left"),
        (dict(input_ids=ids[:, 1:]), "bos_token_id"),
        (dict(input_ids=torch.cat([ids[:, :5], ids[:, :1]], 1)), "num_levels"),
        (dict(input_ids=ids, labels=ids.clamp(min=cfg.bos_token_id)), "labels"),
        (dict(input_ids=ids, class_labels=torch.tensor([0, 1])), "unconditional"),
    ]
    for inputs, message in cases:
        with pytest.raises(ValueError, match=message):
            model(**inputs)
    for overrides, message in ((dict(vocab_size=300), "vocab_size"), (dict(bos_token_id=0), "bos_token_id"),
                               (dict(image_size=[4]), "image_size"), (dict(num_channels=4), "num_channels"),
                               (dict(position_embedding_type="rotary"), "position_embedding_type"),
                               (dict(attention_backend="flex"), "attention_backend")):
        with pytest.raises(ValueError, match=message):
            config("gpt2", **overrides)
    with pytest.raises(ValueError, match="is_causal=False"):
        hf_efficient.EfficientAxialForImageClassification(cfg)
    with pytest.raises(ValueError, match="is_causal=True"):
        hf_efficient.EfficientAxialForCausalLM(config("bert"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
@pytest.mark.parametrize("style", ["bert", "gpt2"])
def test_cuda_path_equals_cpu_path(style):
    """The same model on CUDA (sdpa's fused kernels over the lines) and on CPU: outputs and gradients, fp32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = config(style, head_dim=16, num_labels=3)
    causal = style != "bert"
    head = hf_efficient.EfficientAxialForCausalLM if causal else hf_efficient.EfficientAxialForImageClassification
    torch.manual_seed(0)
    cpu = head(cfg).train()
    cuda = head(cfg).train().cuda()
    cuda.load_state_dict(cpu.state_dict())
    inputs = TESTER.inputs(cfg, seed=2)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100) if causal else torch.tensor([0, 1, 2])
    results = []
    for model, device in ((cpu, "cpu"), (cuda, "cuda")):
        extra = {"return_logits": True} if causal else {}
        out = model(**{k: v.to(device) for k, v in inputs.items()}, labels=labels.to(device), **extra)
        out.loss.backward()
        results.append((out.logits.detach().cpu(), {n: p.grad.cpu() for n, p in model.named_parameters()}))
    real = inputs["attention_mask"].bool() if causal else slice(None)
    torch.testing.assert_close(results[1][0][real], results[0][0][real], rtol=1e-4, atol=1e-5)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)
