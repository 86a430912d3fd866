"""Transformer-XL's own properties (Dai et al., arXiv 1901.02860), on random inputs in fp32: the relative shift, the
score formula against a per-pair loop, segment recurrence (memories equal the context they replace; no gradient into
them), same_length as an exact sliding window, clamp_len, the memory Cache (bounded, generate()), and the Trainer
that carries memories between steps."""

import pytest
import torch
from testers import TINY

from hf_efficient import (
    EfficientTransformerXLConfig,
    EfficientTransformerXLForCausalLM,
    EfficientTransformerXLModel,
)
from hf_efficient.attention.relative import relative_shift, relative_sinusoid
from hf_efficient.core.cache_argument import returned_cache
from hf_efficient.models.transformer_xl import TransformerXLMemoryCache

PAPER = dict(TINY, hidden_act="relu", layer_norm_eps=1e-5)  # position_embedding_type "none": the paper's model


def model_of(head=EfficientTransformerXLModel, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return head(EfficientTransformerXLConfig(**{**PAPER, **overrides})).eval()


def ids(length: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def run_segments(model, tokens: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    """The stream fed segment by segment with the memory carried; the outputs concatenated."""
    cache, outputs, start = None, [], 0
    for end in [*cuts, tokens.shape[1]]:
        out = model(input_ids=tokens[:, start:end], cache=cache, use_cache=True)
        cache, start = returned_cache(out), end
        outputs.append(out.last_hidden_state)
    return torch.cat(outputs, dim=1)


def test_relative_shift_aligns_every_distance():
    for queries, keys in ((1, 1), (5, 5), (4, 11), (7, 9)):
        raw = torch.randn(2, 3, queries, keys)  # column c: distance keys - 1 - c
        shifted = relative_shift(raw)
        for i in range(queries):
            for j in range(keys):
                distance = keys - queries + i - j
                if distance >= 0:
                    assert shifted[0, 0, i, j] == raw[0, 0, i, keys - 1 - distance]


@pytest.mark.parametrize("backend", ["reference", "blocked"])
def test_scores_follow_the_paper_formula(backend):
    """One layer, its memory given: every score (q_i + u) k_j + (q_i + v) W_r R_{clamp(m+i-j)}, looped pair by pair."""
    model = model_of(num_hidden_layers=1, mem_len=6, clamp_len=4, attention_backend=backend)
    attention = model.layers[0].self_attn
    hidden, memory = torch.randn(1, 5, 32), torch.randn(1, 6, 32)
    distances = torch.arange(10, -1, -1).clamp(max=4)
    relative = relative_sinusoid(distances, 32)
    with torch.no_grad():
        ours, _ = attention(hidden, memory=memory, relative=relative)
        context = torch.cat([memory, hidden], dim=1)
        heads, dim = 4, 8
        q = attention.q_proj(hidden).view(5, heads, dim)
        k, v = attention.k_proj(context).view(11, heads, dim), attention.v_proj(context).view(11, heads, dim)
        u, v_bias = attention.relative_bias.content, attention.relative_bias.position
        expected = torch.zeros(5, heads, dim)
        for h in range(heads):
            for i in range(5):
                scores = torch.full((11,), float("-inf"))
                for j in range(6 + i + 1):
                    r = attention.r_proj(relative_sinusoid(torch.tensor(min(6 + i - j, 4)), 32)).view(heads, dim)[h]
                    scores[j] = ((q[i, h] + u[h]) @ k[j, h] + (q[i, h] + v_bias[h]) @ r) / dim**0.5
                expected[i, h] = scores.softmax(-1) @ v[:, h]
        expected = attention.o_proj(expected.reshape(1, 5, heads * dim))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("style", [{}, {"norm_position": "pre"}, {"position_embedding_type": "rotary"}])
def test_memory_replaces_the_context_it_holds(style):
    """With mem_len >= the earlier tokens, segments with memory equal one pass over the whole stream."""
    model = model_of(mem_len=40, clamp_len=9, **style)
    tokens = ids(30)
    with torch.no_grad():
        whole = model(input_ids=tokens, use_cache=False).last_hidden_state
        segmented = run_segments(model, tokens, [7, 19, 20])
    torch.testing.assert_close(segmented, whole, rtol=1e-5, atol=1e-5)


def test_a_short_memory_forgets_what_it_dropped():
    """Without same_length, a memory shorter than the past changes the later outputs (the past beyond it is gone),
    and the first segment is unaffected."""
    model = model_of(mem_len=4)
    tokens = ids(24)
    with torch.no_grad():
        whole = model(input_ids=tokens, use_cache=False).last_hidden_state
        segmented = run_segments(model, tokens, [12])
    torch.testing.assert_close(segmented[:, :12], whole[:, :12], rtol=1e-5, atol=1e-5)
    assert (segmented[:, 12:] - whole[:, 12:]).abs().max() > 1e-3


@pytest.mark.parametrize("mem_len", [1, 5, 13])
def test_same_length_is_a_sliding_window_whatever_the_segments(mem_len):
    """same_length: every query sees mem_len keys, so cutting the stream anywhere (one token at a time included)
    gives the one-pass result, and a token more than mem_len back never matters."""
    model = model_of(mem_len=mem_len, same_length=True, clamp_len=3)
    tokens = ids(26)
    with torch.no_grad():
        whole = model(input_ids=tokens, use_cache=False).last_hidden_state
        for cuts in ([9], [3, 4, 17], list(range(1, 26))):
            torch.testing.assert_close(run_segments(model, tokens, cuts), whole, rtol=1e-5, atol=1e-5)
        changed = tokens.clone()
        changed[:, 0] = changed[:, 0] % (TINY["vocab_size"] - 1) + 1
        later = model(input_ids=changed, use_cache=False).last_hidden_state
    reach = 2 * (mem_len - 1)  # two layers, each looks mem_len - 1 back
    torch.testing.assert_close(later[:, reach + 1:], whole[:, reach + 1:], rtol=0, atol=1e-6)
    assert (later[:, 0] - whole[:, 0]).abs().max() > 1e-3


def test_clamp_len_makes_far_keys_share_one_position():
    """With clamp_len=1 every earlier key is at 'distance 1': one layer's last output can't tell their order."""
    tokens = ids(12, batch=1)
    reordered = torch.cat([tokens[:, :-1].flip(1), tokens[:, -1:]], dim=1)
    outputs = {}
    for clamp in (1, None):
        model = model_of(num_hidden_layers=1, clamp_len=clamp, initializer_range=0.3)  # position terms that matter
        with torch.no_grad():
            outputs[clamp] = [model(input_ids=t, use_cache=False).last_hidden_state[:, -1] for t in (tokens, reordered)]
    torch.testing.assert_close(outputs[1][0], outputs[1][1], rtol=1e-5, atol=1e-5)
    assert (outputs[None][0] - outputs[None][1]).abs().max() > 1e-3


def test_no_gradient_flows_into_the_memory():
    model = model_of(mem_len=8).train()
    first = model.get_input_embeddings()(ids(6)).detach().requires_grad_()
    out = model(inputs_embeds=first, use_cache=True)
    cache = returned_cache(out)
    assert all(not layer.memory.requires_grad for layer in cache.layers)
    model(input_ids=ids(5, seed=1), cache=cache).last_hidden_state.sum().backward()
    assert first.grad is None


def test_the_memory_stays_bounded_and_counts_every_token():
    """O(mem_len + n) per token: after 30 tokens one at a time, each layer holds mem_len states; positions go on."""
    model = model_of(mem_len=5)
    tokens = ids(30)
    cache = None
    with torch.no_grad():
        for position in range(30):
            cache = returned_cache(model(input_ids=tokens[:, position:position + 1], cache=cache, use_cache=True))
            assert all(layer.memory.shape == (2, min(position + 1, 5), 32) for layer in cache.layers)
            # inference keeps the memory's keys and values beside it (a step projects only the new token)
            assert all(layer.memory_keys.shape == (2, 4, min(position + 1, 5), 8) for layer in cache.layers)
    assert cache.get_seq_length() == 30
    with pytest.raises(ValueError, match="rolled back"):
        cache.crop(3)


def test_kept_keys_equal_keys_projected_again():
    """Decoding in inference (keys, values and W_r R kept in the cache) equals decoding under autograd (everything
    projected again from the stored hidden states at each step), with rotary positions and a short memory."""
    model = model_of(mem_len=5, position_embedding_type="rotary", norm_position="pre", clamp_len=3)
    tokens = ids(14)
    with torch.no_grad():
        kept = run_segments(model, tokens, list(range(4, 14)))
    again = run_segments(model, tokens, list(range(4, 14)))  # grad enabled: nothing is kept
    torch.testing.assert_close(kept, again.detach(), rtol=1e-5, atol=1e-5)


def test_generate_uses_the_memory_and_matches_full_passes():
    model = model_of(EfficientTransformerXLForCausalLM, mem_len=64)
    prompt = ids(6)
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
        greedy = prompt
        for _ in range(10):
            next_token = model(input_ids=greedy, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            greedy = torch.cat([greedy, next_token], dim=1)
    assert torch.equal(generated, greedy)


def test_explicit_memories_equal_carried_ones():
    """A cache built from the hidden states a model returned (each layer's inputs) is the memory it carries."""
    model = model_of(mem_len=7)
    first, second = ids(10), ids(6, seed=1)
    with torch.no_grad():
        out = model(input_ids=first, use_cache=True, output_hidden_states=True)
        carried = model(input_ids=second, cache=returned_cache(out)).last_hidden_state
        explicit = TransformerXLMemoryCache.from_memories([h[:, -7:] for h in out.hidden_states[:-1]], seen_tokens=10)
        given = model(input_ids=second, cache=explicit).last_hidden_state
    torch.testing.assert_close(given, carried, rtol=0, atol=0)


def test_padding_in_the_memory_is_never_attended():
    """A right-padded first segment: the second segment's outputs for that row equal those after the unpadded
    segment placed where the padding ends (the padding only shifts distances: with clamp_len=1 they don't matter)."""
    model = model_of(mem_len=20, clamp_len=1)
    first, second = ids(8, batch=1), ids(5, batch=1, seed=1)
    padded = torch.cat([first, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 3)], dim=1).long()
    with torch.no_grad():
        alone = model(input_ids=second, cache=returned_cache(model(input_ids=first, use_cache=True)))
        cache = returned_cache(model(input_ids=padded, attention_mask=mask, use_cache=True))
        after_padding = model(input_ids=second, cache=cache)
    torch.testing.assert_close(after_padding.last_hidden_state, alone.last_hidden_state, rtol=1e-5, atol=1e-5)


def test_bad_memory_use_raises():
    model = model_of(mem_len=4)
    cache = returned_cache(model(input_ids=ids(5), use_cache=True))
    with pytest.raises(ValueError, match="same streams"):
        model(input_ids=ids(5, batch=3), cache=cache)
    with pytest.raises(ValueError, match="use_cache=False"):
        model(input_ids=ids(5), cache=cache, use_cache=False)
    with pytest.raises(ValueError, match="shape"):
        model(input_ids=ids(5), cache=cache, attention_mask=torch.ones(2, 7))
    for bad in (dict(same_length=True, mem_len=0), dict(is_causal=False), dict(clamp_len=0),
                dict(adaptive_cutoffs=[200]), dict(adaptive_div_val=4), dict(adaptive_tie_projections=[True]),
                dict(adaptive_cutoffs=[20], adaptive_tie_projections=[True])):
        with pytest.raises(ValueError):
            EfficientTransformerXLConfig(**{**PAPER, **bad})


def test_trainer_carries_the_memory_between_steps(tmp_path):
    """Training over two consecutive segments (two streams, one SGD step between them): the second step's loss equals
    the loss of the second segments under the updated weights with the memory given explicitly, built from the first
    step's layer inputs under the weights before the update."""
    import copy

    from transformers import TrainingArguments

    from hf_efficient.segment_training import SegmentRecurrentTrainer, SegmentStreams

    data = SegmentStreams(ids(32, batch=1).flatten(), num_streams=2, segment_length=8)  # 2 streams x 2 segments
    model = model_of(EfficientTransformerXLForCausalLM, mem_len=8, initializer_range=0.2).train()
    reference = copy.deepcopy(model)
    losses = []

    class Recording(SegmentRecurrentTrainer):
        def compute_loss(self, *args, **kwargs):
            result = super().compute_loss(*args, **kwargs)
            losses.append((result[0] if isinstance(result, tuple) else result).detach().clone())
            return result

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, per_device_eval_batch_size=2,
                             num_train_epochs=1,
                             lr_scheduler_type="constant", max_grad_norm=0.0, report_to=[], save_strategy="no",
                             logging_strategy="no", use_cpu=True, dataloader_num_workers=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = Recording(model=model, args=args, train_dataset=data, optimizers=(optimizer, None))
    trainer.train()
    assert len(losses) == 2

    first = torch.stack([data[0]["input_ids"], data[1]["input_ids"]])
    second = torch.stack([data[2]["input_ids"], data[3]["input_ids"]])
    assert torch.equal(first[0, -1:], data.streams[0, 7:8]) and torch.equal(second[0, :1], data.streams[0, 8:9])
    out = reference(input_ids=first, labels=first, use_cache=False, output_hidden_states=True)
    out.loss.backward()
    torch.testing.assert_close(out.loss, losses[0], rtol=1e-6, atol=1e-6)
    memory = TransformerXLMemoryCache.from_memories([h[:, -8:] for h in out.hidden_states[:-1]])
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter -= 0.5 * parameter.grad
        with_memory = reference(input_ids=second, labels=second, cache=memory).loss
        without = reference(input_ids=second, labels=second, use_cache=False).loss
    torch.testing.assert_close(with_memory, losses[1], rtol=1e-6, atol=1e-6)
    assert (without - losses[1]).abs() > 1e-4, "the memory should matter"
    # evaluation reads the streams in order with a memory of its own (started empty), the cache left out of outputs
    metrics = trainer.evaluate(eval_dataset=data)
    torch.testing.assert_close(torch.tensor(metrics["eval_loss"]), torch.stack(losses[-2:]).mean(), rtol=1e-5,
                               atol=1e-5)


def test_trainer_refuses_streams_that_do_not_match_the_batch(tmp_path):
    from transformers import TrainingArguments

    from hf_efficient.segment_training import SegmentRecurrentTrainer, SegmentStreams

    data = SegmentStreams(ids(32, batch=1).flatten(), num_streams=2, segment_length=8)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3, report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="2 streams"):
        SegmentRecurrentTrainer(model=model_of(EfficientTransformerXLForCausalLM), args=args, train_dataset=data)
    with pytest.raises(ValueError, match="don't fill"):
        SegmentStreams(range(10), num_streams=2, segment_length=8)


@pytest.mark.parametrize(("div_val", "embedding_size", "tie"), [(2, 32, True), (1, 16, True), (1, 32, False)])
def test_adaptive_input_and_softmax_against_a_per_token_reference(div_val, embedding_size, tie):
    """Every token's embedding is its cluster's row projected to hidden_size; every log-probability is
    log p(cluster | h) + log p(token | cluster, h) with the head's softmax over [shortlist; one logit per tail];
    they sum to 1; tied output tables are the input's own tensors, saved once."""
    model = model_of(EfficientTransformerXLForCausalLM, adaptive_cutoffs=[20, 50], adaptive_div_val=div_val,
                     embedding_size=embedding_size, tie_word_embeddings=tie, pad_token_id=None, initializer_range=0.2)
    embed, head = model.model.embeddings.embed_tokens, model.lm_head
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if "bias" not in n), "every weight initialised"
    tokens = torch.tensor([[0, 19, 20, 49, 50, 96]])
    bounds = [(0, 20), (20, 50), (50, 97)]
    with torch.no_grad():
        embedded = embed(tokens)[0]
        hidden = torch.randn(3, 32)
        log_probs = head(hidden)
    for position, token in enumerate(tokens[0].tolist()):
        cluster = next(i for i, (start, end) in enumerate(bounds) if start <= token < end)
        row = embed.tables[cluster].weight[token - bounds[cluster][0]]
        expected = embed.projections[cluster](row) if embed.projections is not None else row
        torch.testing.assert_close(embedded[position], expected)
    weights = [head.weight(i) for i in range(3)]
    projections = [head.projection(i) if head.projection(i) is not None else torch.eye(32) for i in range(3)]
    for row in range(3):
        h = hidden[row]
        head_logits = torch.cat([(h @ projections[0]) @ weights[0].T + head.bias[:20],
                                 (h @ projections[0]) @ head.cluster_weight.T + head.cluster_bias])
        head_log_probs = head_logits.log_softmax(-1)
        for token in range(97):
            cluster = next(i for i, (start, end) in enumerate(bounds) if start <= token < end)
            if cluster == 0:
                expected = head_log_probs[token]
            else:
                start, end = bounds[cluster]
                tail = ((h @ projections[cluster]) @ weights[cluster].T + head.bias[start:end]).log_softmax(-1)
                expected = head_log_probs[20 + cluster - 1] + tail[token - start]
            torch.testing.assert_close(log_probs[row, token], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3), rtol=1e-5, atol=1e-5)
    saved = model.state_dict()
    assert not any(name.startswith("lm_head.weights") for name in saved) if tie else "lm_head.weights.0" in saved
    if tie:
        assert head.weight(1) is embed.tables[1].weight


def test_adaptive_model_trains_saves_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM

    model = model_of(EfficientTransformerXLForCausalLM, adaptive_cutoffs=[20, 50], adaptive_div_val=2,
                     pad_token_id=None, mem_len=4)
    tokens = ids(12)
    model.train()
    loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    assert model.model.embeddings.embed_tokens.tables[2].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=tokens, labels=tokens)
        # the loss of log-probabilities is their negative log-likelihood
        nll = -logits.logits[:, :-1].gather(-1, tokens[:, 1:, None]).mean()
        torch.testing.assert_close(logits.loss, nll)
        model.save_pretrained(tmp_path)
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(loaded(input_ids=tokens).logits, logits.logits, rtol=0, atol=0)
        assert model.generate(tokens[:, :3], max_new_tokens=4, do_sample=False, pad_token_id=0).shape == (2, 7)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_converted_decoder_reproduces_its_source_and_its_cache(kind, tmp_path):
    """GPT-2 / Llama -> Transformer-XL keeps the absolute / rotary positions and starts W_r, u and v at zero: the
    relative terms add nothing, so with memories off the model is its source (padded batch, real tokens); with a
    memory covering the whole stream, segments give the source's one pass (positions continue from the cache)."""
    from tiny_sources import VOCAB, save_tiny_source

    from hf_efficient.conversion import convert

    source = save_tiny_source(kind, tmp_path / kind).eval()
    model = convert(str(tmp_path / kind), "transformer_xl", out=None, max_length=128, eval_tokens=0, check=False,
                    mem_len=0).model.eval()
    assert model.config.position_embedding_type == ("absolute" if kind == "gpt2" else "rotary")
    for layer in model.model.layers:
        attention = layer.self_attn
        assert not attention.r_proj.weight.any() and not attention.relative_bias.content.any()
        assert not attention.relative_bias.position.any()
    tokens = torch.randint(1, VOCAB, (2, 40), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(tokens)
    mask[1, 25:] = 0
    real = mask.bool()
    with torch.no_grad():
        expected = source(input_ids=tokens, attention_mask=mask).logits
        ours = model(input_ids=tokens, attention_mask=mask).logits
        torch.testing.assert_close(ours[real], expected[real], rtol=1e-5, atol=1e-5)
        model.config.mem_len = 64
        whole = source(input_ids=tokens[:1]).logits
        cache, pieces = None, []
        for start, end in ((0, 11), (11, 12), (12, 40)):
            out = model(input_ids=tokens[:1, start:end], cache=cache, use_cache=True)
            cache = returned_cache(out)
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
def test_cuda_segments_and_gradients_equal_cpu():
    """The CUDA path (SDPA with the relative bias) over segments with memory, fp32: outputs and gradients as on CPU."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tokens = ids(40)
    results = []
    for device in ("cpu", "cuda"):
        model = model_of(EfficientTransformerXLForCausalLM, mem_len=12, clamp_len=9, head_dim=16).to(device).train()
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
