"""The Compressive Transformer's own properties (Rae et al., arXiv 1911.05507), on random inputs in fp32: the
compressed memory against f_c applied by hand, attention over [compressed memory; memory; segment] as Transformer-XL
over that span, the attention-reconstruction loss against a per-head reference and its gradient reaching only the
compression network, the language-model loss never reaching it, cmem_len = 0 as Transformer-XL exactly, bounded
memories, generate(), the segment Trainer, and conversion."""

import pytest
import torch
from testers import TINY

from hf_efficient import (
    EfficientCompressiveConfig,
    EfficientCompressiveForCausalLM,
    EfficientCompressiveModel,
    EfficientTransformerXLConfig,
    EfficientTransformerXLModel,
)
from hf_efficient.core.cache_argument import returned_cache
from hf_efficient.models.compressive import CompressiveMemoryCache
from hf_efficient.models.transformer_xl import TransformerXLMemoryCache

PAPER = dict(TINY, hidden_act="relu", layer_norm_eps=1e-5, initializer_range=0.2)


def model_of(head=EfficientCompressiveModel, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return head(EfficientCompressiveConfig(**{**PAPER, **overrides})).eval()


def ids(length: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def compress_by_hand(compression, states: torch.Tensor) -> torch.Tensor:
    """f_c over consecutive groups of c states, written out group by group."""
    rate, groups = compression.rate, []
    for start in range(0, states.shape[1], rate):
        group = states[:, start:start + rate]  # (b, c, hidden)
        if compression.kind == "conv":
            groups.append(torch.einsum("bti,oit->bo", group, compression.weight) + compression.bias)
        else:
            groups.append(group.mean(1) if compression.kind == "mean" else group.max(1).values)
    return torch.stack(groups, dim=1)


def randomise_compression(model) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".compression." in name:
                parameter.add_(torch.randn_like(parameter) * 0.2)


@pytest.mark.parametrize("kind", ["conv", "mean", "max"])
def test_compressed_memory_is_f_c_of_the_states_that_left_the_memory(kind):
    """mem_len 4, c 2, cmem_len 3, segments of 6: after the first, 2 states left (1 compressed slot); after the second,
    6 more (3 slots), of which the compressed memory keeps the last 3; each is f_c of its group, by hand."""
    model = model_of(mem_len=4, cmem_len=3, compression_rate=2, compression=kind)
    randomise_compression(model)
    first, second = ids(6), ids(6, seed=1)
    with torch.no_grad():
        out = model(input_ids=first, use_cache=True, output_hidden_states=True)
        cache = returned_cache(out)
        for layer, state, hidden in zip(model.layers, cache.layers, out.hidden_states[:-1], strict=True):
            assert state.compressed_length == 1 and state.memory.shape[1] == 5
            torch.testing.assert_close(state.memory, torch.cat([compress_by_hand(layer.compression, hidden[:, :2]),
                                                                hidden[:, 2:]], dim=1), rtol=1e-6, atol=1e-6)
        old = [state.memory for state in cache.layers]
        out = model(input_ids=second, cache=cache, output_hidden_states=True)
        for layer, state, before, hidden in zip(model.layers, cache.layers, old, out.hidden_states[:-1], strict=True):
            recent = torch.cat([before[:, 1:], hidden], dim=1)  # 4 memory states + 6 new
            compressed = torch.cat([before[:, :1], compress_by_hand(layer.compression, recent[:, :6])], dim=1)
            torch.testing.assert_close(state.memory, torch.cat([compressed[:, -3:], recent[:, 6:]], dim=1),
                                       rtol=1e-6, atol=1e-6)
            assert state.compressed_length == 3
    assert cache.get_seq_length() == 12


def test_attention_reads_both_memories_with_relative_positions_over_the_whole_span():
    """The segment after a compression equals Transformer-XL (same weights) given [compressed memory; memory] as its
    memory: the same relative encoding over cm + m + n slots; and it differs from Transformer-XL given the
    uncompressed memory alone (the compressed slots are read)."""
    model = model_of(mem_len=4, cmem_len=4, compression_rate=2, clamp_len=7, norm_position="pre")
    xl = EfficientTransformerXLModel(EfficientTransformerXLConfig(**{**PAPER, "mem_len": 8, "clamp_len": 7,
                                                                     "norm_position": "pre"})).eval()
    missing, unexpected = xl.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(".compression." in name for name in unexpected)
    first, second = ids(9), ids(5, seed=1)
    with torch.no_grad():
        cache = returned_cache(model(input_ids=first, use_cache=True))
        spans = [state.memory.clone() for state in cache.layers]
        assert [state.compressed_length for state in cache.layers] == [2, 2]
        ours = model(input_ids=second, cache=cache).last_hidden_state
        given = xl(input_ids=second, cache=TransformerXLMemoryCache.from_memories(spans, seen_tokens=9))
        without = xl(input_ids=second, cache=TransformerXLMemoryCache.from_memories([s[:, 2:] for s in spans], 9))
    torch.testing.assert_close(ours, given.last_hidden_state, rtol=1e-6, atol=1e-6)
    assert (ours - without.last_hidden_state).abs().max() > 1e-3


def test_no_compressed_memory_is_transformer_xl_exactly():
    """cmem_len = 0: segments (a short memory that drops states), one token at a time and gradients equal
    EfficientTransformerXL's with the same weights."""
    tokens = ids(20)
    results = []
    for config_class, model_class in ((EfficientCompressiveConfig, EfficientCompressiveModel),
                                      (EfficientTransformerXLConfig, EfficientTransformerXLModel)):
        torch.manual_seed(0)
        extra = {"cmem_len": 0} if config_class is EfficientCompressiveConfig else {}
        model = model_class(config_class(**{**PAPER, "mem_len": 5, "clamp_len": 6, **extra})).train()
        if results:
            model.load_state_dict(results[0][2], strict=False)
        cache, outputs = None, []
        for start, end in ((0, 7), (7, 8), (8, 20)):
            out = model(input_ids=tokens[:, start:end], cache=cache, use_cache=True)
            cache = returned_cache(out)
            outputs.append(out.last_hidden_state)
        torch.cat(outputs, dim=1).pow(2).mean().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if ".compression." not in n}
        results.append((torch.cat(outputs, dim=1).detach(), grads, model.state_dict()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[1][1].items():
        torch.testing.assert_close(results[0][1][name], grad, rtol=0, atol=0, msg=name)


def per_head_attention(attention, norm, queries, memory):
    """softmax(q k^T / sqrt(d)) v per head with the layer's weights, written head by head: (b, h, n, d)."""
    heads, dim = attention.num_heads, attention.head_dim
    queries, memory = norm(queries), norm(memory)
    q = attention.q_proj(queries).unflatten(-1, (heads, dim))
    k, v = attention.k_proj(memory).unflatten(-1, (heads, dim)), attention.v_proj(memory).unflatten(-1, (heads, dim))
    return torch.stack([(q[:, :, h] @ k[:, :, h].transpose(1, 2) / dim**0.5).softmax(-1) @ v[:, :, h]
                        for h in range(heads)], dim=1)


def test_reconstruction_loss_follows_the_paper_and_trains_only_the_compression():
    """L_attn = sum over layers of mean ||attn(h, old) - attn(h, f_c(old))||^2 (content attention, pre-norm weights),
    checked by hand; its backward moves only the compression parameters; the language-model loss (through memories
    and compressed memories) gives the compression network no gradient."""
    model = model_of(EfficientCompressiveForCausalLM, mem_len=4, cmem_len=4, compression_rate=2,
                     norm_position="pre").train()
    randomise_compression(model)
    first, second = ids(8), ids(4, seed=1)
    cache = returned_cache(model(input_ids=first, labels=first, use_cache=True))
    old = [state.memory[:, 2:].detach() for state in cache.layers]  # the 4 memory states; 4 leave next
    out = model(input_ids=second, labels=second, cache=cache, output_hidden_states=True)
    with torch.no_grad():
        expected = 0.0
        for block, states, hidden in zip(model.model.layers, old, out.hidden_states[:-1], strict=True):
            target = per_head_attention(block.self_attn, block.attention_norm, hidden, states)
            ours = per_head_attention(block.self_attn, block.attention_norm, hidden,
                                      compress_by_hand(block.compression, states))
            expected = expected + (ours - target).pow(2).mean()
    torch.testing.assert_close(out.reconstruction_loss, expected, rtol=1e-5, atol=1e-7)
    assert out.reconstruction_loss > 0
    torch.testing.assert_close(out.loss, lm_loss(model, out, second) + out.reconstruction_loss)

    model.zero_grad()
    out.reconstruction_loss.backward(retain_graph=True)
    moved = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert moved == {f"model.layers.{i}.compression.{p}" for i in range(2) for p in ("weight", "bias")}
    model.zero_grad()
    (out.loss - out.reconstruction_loss).backward()
    assert all(p.grad is None or not p.grad.any() for n, p in model.named_parameters() if ".compression." in n)
    assert model.model.layers[0].self_attn.q_proj.weight.grad.any()


def lm_loss(model, out, labels):
    """The next-token cross-entropy of the output's logits (computed again with return_logits)."""
    logits = model.lm_head(out.hidden_states[-1])
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())


def test_memories_stay_bounded_over_many_segments_and_generate_uses_them():
    """O(1) memory in the number of segments: one token at a time for 40 tokens, every layer holds at most
    cmem_len + mem_len + c - 1 states; generate() (with a memory that compresses) equals stepping the cache by hand."""
    model = model_of(EfficientCompressiveForCausalLM, mem_len=4, cmem_len=3, compression_rate=3)
    tokens = ids(40)
    cache, sizes = None, []
    with torch.no_grad():
        for position in range(40):
            cache = returned_cache(model(input_ids=tokens[:, position:position + 1], cache=cache, use_cache=True))
            sizes.append(cache.layers[0].memory.shape[1])
            assert all(state.compressed_length <= 3 for state in cache.layers)
    assert max(sizes) == 3 + 4 + 2 and cache.layers[0].compressed_length == 3
    assert cache.get_seq_length() == 40
    prompt = tokens[:, :6]
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
        out = model(input_ids=prompt, use_cache=True)
        stepped, cache = prompt, returned_cache(out)
        for _ in range(12):
            next_token = out.logits[:, -1].argmax(-1, keepdim=True)
            stepped = torch.cat([stepped, next_token], dim=1)
            out = model(input_ids=next_token, cache=cache, use_cache=True)
            cache = returned_cache(out)
    assert torch.equal(generated, stepped)


def test_padding_in_a_compressed_group_is_masked_out():
    """A group made only of padding gives a compressed slot that is never attended: the next segment's outputs of
    that row don't depend on what the padding tokens were."""
    model = model_of(mem_len=2, cmem_len=4, compression_rate=2)
    first = ids(6, batch=1)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    outputs = []
    with torch.no_grad():
        for pad in (0, 5):
            tokens = first.clone()
            tokens[:, :2] = pad
            cache = returned_cache(model(input_ids=tokens, attention_mask=mask, use_cache=True))
            assert cache.layers[0].keep.tolist() == [[False, True, True, True]]
            outputs.append(model(input_ids=ids(3, batch=1, seed=1), cache=cache).last_hidden_state)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_trainer_carries_both_memories_between_steps(tmp_path):
    """Two consecutive segments of two streams, one SGD step between: the second step's loss (language model plus
    reconstruction) equals the same tokens under the updated weights with the memories given explicitly, built by
    hand (f_c of the states that left, under the weights before the update)."""
    import copy

    from transformers import TrainingArguments

    from hf_efficient.segment_training import SegmentRecurrentTrainer, SegmentStreams

    data = SegmentStreams(ids(32, batch=1).flatten(), num_streams=2, segment_length=8)
    model = model_of(EfficientCompressiveForCausalLM, mem_len=4, cmem_len=4, compression_rate=2).train()
    randomise_compression(model)
    reference = copy.deepcopy(model)
    losses = []

    class Recording(SegmentRecurrentTrainer):
        def compute_loss(self, *args, **kwargs):
            result = super().compute_loss(*args, **kwargs)
            losses.append((result[0] if isinstance(result, tuple) else result).detach().clone())
            return result

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, num_train_epochs=1,
                             lr_scheduler_type="constant", max_grad_norm=0.0, report_to=[], save_strategy="no",
                             logging_strategy="no", use_cpu=True, dataloader_num_workers=0)
    trainer = Recording(model=model, args=args, train_dataset=data,
                        optimizers=(torch.optim.SGD(model.parameters(), lr=0.5), None))
    trainer.train()
    assert len(losses) == 2
    first = torch.stack([data[0]["input_ids"], data[1]["input_ids"]])
    second = torch.stack([data[2]["input_ids"], data[3]["input_ids"]])
    out = reference(input_ids=first, labels=first, use_cache=True, output_hidden_states=True)
    out.loss.backward()
    torch.testing.assert_close(out.loss, losses[0], rtol=1e-6, atol=1e-6)
    explicit = CompressiveMemoryCache(2)
    with torch.no_grad():
        for state, block, hidden in zip(explicit.layers, reference.model.layers, out.hidden_states[:-1], strict=True):
            memory = torch.cat([compress_by_hand(block.compression, hidden[:, :4]), hidden[:, 4:]], dim=1)
            state.store(memory, None, torch.tensor([1, 3, 4, 5, 6, 7]).expand(2, -1), 8)
            state.compressed_length = 2
        for parameter in reference.parameters():
            if parameter.grad is not None:
                parameter -= 0.5 * parameter.grad
    with_memory = reference(input_ids=second, labels=second, cache=explicit)
    torch.testing.assert_close(with_memory.loss, losses[1], rtol=1e-6, atol=1e-6)
    assert with_memory.reconstruction_loss > 0


def test_bad_settings_raise():
    for bad in (dict(cmem_len=-1), dict(compression_rate=0), dict(compression="dilated"),
                dict(reconstruction_loss_weight=float("nan")), dict(same_length=True, mem_len=4),
                dict(mem_len=0, cmem_len=4), dict(is_causal=False)):
        with pytest.raises(ValueError):
            EfficientCompressiveConfig(**{**PAPER, **bad})
    model = model_of(mem_len=4)
    xl_cache = returned_cache(EfficientTransformerXLModel(EfficientTransformerXLConfig(**PAPER)).eval()(
        input_ids=ids(5), use_cache=True))
    with pytest.raises(ValueError, match="Compressive"):
        model(input_ids=ids(5), cache=xl_cache)


def test_converted_gpt2_reproduces_its_source_with_compression_as_mean_pooling(tmp_path):
    """GPT-2 -> Compressive: Transformer-XL's recipe (relative terms zero, positions kept) reproduces the source with
    no memories; every compression convolution starts as mean pooling (weight 1/c on each channel's own taps)."""
    from tiny_sources import VOCAB, save_tiny_source

    from hf_efficient.conversion import convert

    source = save_tiny_source("gpt2", tmp_path / "gpt2").eval()
    model = convert(str(tmp_path / "gpt2"), "compressive", out=None, max_length=128, eval_tokens=0, check=False,
                    mem_len=0, cmem_len=0).model.eval()
    rate = model.config.compression_rate
    for block in model.model.layers:
        weight = block.compression.weight
        eye = torch.eye(weight.shape[0])[:, :, None].expand(-1, -1, rate) / rate
        assert torch.equal(weight, eye) and not block.compression.bias.any()
    tokens = torch.randint(1, VOCAB, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=tokens).logits, source(input_ids=tokens).logits, rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
def test_cuda_segments_with_compression_equal_cpu():
    """The CUDA path (SDPA with the relative bias, Transformer-XL's) over segments that compress, fp32: losses and
    gradients (reconstruction loss included) as on CPU."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tokens = ids(40)
    results = []
    for device in ("cpu", "cuda"):
        model = model_of(EfficientCompressiveForCausalLM, mem_len=6, cmem_len=4, compression_rate=2, clamp_len=9,
                         head_dim=16).to(device).train()
        randomise_compression(model)
        cache, total = None, 0.0
        for start, end in ((0, 15), (15, 28), (28, 40)):
            piece = tokens[:, start:end].to(device)
            out = model(input_ids=piece, labels=piece, cache=cache, use_cache=True)
            total = total + out.loss
            cache = returned_cache(out)
        total.backward()
        results.append((total.detach().cpu(), {n: p.grad.cpu() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_a_transfo_xl_checkpoint_becomes_compressive(tmp_path):
    """A v4 TransfoXL checkpoint (the fixture of tests/test_transfo_xl_conversion.py) loaded as Transformer-XL, then
    made Compressive: with cmem_len=0 segments give the same logits; with a compressed memory the convolution starts
    as mean pooling and the same weights read it."""
    from test_transfo_xl_conversion import write_fixture

    from hf_efficient.conversion import load_transfo_xl
    from hf_efficient.models.compressive import compressive_from_transformer_xl

    xl = load_transfo_xl(write_fixture("plain", tmp_path / "plain", keep_tied=True))
    same = compressive_from_transformer_xl(xl, cmem_len=0)
    tokens = torch.randint(0, xl.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    results = []
    with torch.no_grad():
        for model in (xl, same):
            cache, logits = None, []
            for start, end in ((0, 9), (9, 20)):
                out = model(input_ids=tokens[:, start:end], cache=cache, use_cache=True)
                cache = returned_cache(out)
                logits.append(out.logits)
            results.append(torch.cat(logits, dim=1))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)
    compressive = compressive_from_transformer_xl(xl, cmem_len=4, compression_rate=2)
    assert type(compressive).__name__ == "EfficientCompressiveForCausalLM"
    weight = compressive.model.layers[0].compression.weight
    assert torch.equal(weight, torch.eye(weight.shape[0])[:, :, None].expand(-1, -1, 2) / 2)
    with pytest.raises(ValueError, match="not an EfficientTransformerXL"):
        compressive_from_transformer_xl(compressive)
