"""EfficientReformer: LSH attention against naive loops written here, the rotations' seeding, the reversible
backward against ordinary autograd, weight parity with transformers' Reformer, and conversion."""

import copy

import pytest
import torch
import transformers
from test_common import build
from tiny_sources import CAUSAL_SOURCES, VOCAB, one_thread, save_tiny_source, tiny_source  # noqa: F401 (a fixture)

from hf_efficient import (
    EfficientReformerConfig,
    EfficientReformerForCausalLM,
    EfficientReformerForMaskedLM,
    EfficientReformerModel,
)
from hf_efficient.attention.lsh import (
    MASKED,
    SELF,
    hash_buckets,
    local_blocked,
    lsh_blocked,
    normalize_keys,
)
from hf_efficient.conversion import convert
from hf_efficient.models.reformer.transformers_layout import (
    align_transformers_hashes,
    from_transformers_reformer,
    to_transformers_reformer,
)

TINY = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            local_attn_chunk_length=8, lsh_attn_chunk_length=8, num_buckets=4, num_hashes=2)
REVERSIBLE = dict(norm_position="pre", reversible=True, tie_word_embeddings=False, type_vocab_size=0,
                  embedding_norm=False, use_pooler=False, masked_lm_transform=False)


# ----------------------------------------------------------------------------- naive references (loops)

def naive_softmax_attention(query, keys, values, scores_of):
    """One query: softmax over a list of (key index, score) pairs (duplicates allowed); returns (output, lse)."""
    scores = torch.stack([score for _, score in scores_of])
    lse = torch.logsumexp(scores, 0)
    weights = torch.exp(scores - lse)
    return sum(w * values[j] for w, (j, _) in zip(weights, scores_of, strict=True)), lse


def naive_lsh(shared, values, buckets, keep, chunk, before, after, causal):
    """The rule of attention/lsh.py with Python loops, one (batch, head) at a time: per round, sort by (bucket,
    position), cut into chunks; bidirectional: each chunk sees its neighbours cyclically over the rounds' real chunks;
    causal: each query sees the chunk * before most recent earlier tokens of its bucket. Self scores SELF, padding
    keys MASKED; rounds merged by softmax of their lse."""
    batch, heads, length, dim = shared.shape
    rounds = buckets.shape[2]
    keys = normalize_keys(shared)
    out = torch.zeros(batch, heads, length, dim)
    for b in range(batch):
        real = torch.ones(length, dtype=torch.bool) if keep is None else keep[b]
        real_count = int(real.sum())
        real_chunks = max(1, -(-real_count // chunk))
        for h in range(heads):
            orders = [sorted(range(length), key=lambda i, r=r: (int(buckets[b, h, r, i]), i)) for r in range(rounds)]
            per_round = []
            for r in range(rounds):
                order = orders[r]
                outputs, lses = torch.zeros(length, dim), torch.zeros(length)
                for rank, i in enumerate(order):
                    if causal:
                        same = [j for j in order[:rank + 1] if buckets[b, h, r, j] == buckets[b, h, r, i] and real[j]]
                        seen = same[-(chunk * before + 1):]
                        if i not in seen:
                            seen.append(i)
                    else:
                        own = min(rank // chunk, real_chunks - 1)
                        seen = []
                        for offset in range(-before, after + 1):
                            target = (r * real_chunks + own + offset) % (rounds * real_chunks)
                            target_round, target_chunk = divmod(target, real_chunks)
                            seen += orders[target_round][target_chunk * chunk:(target_chunk + 1) * chunk]
                    pairs = []
                    for j in seen:
                        score = shared[b, h, i] @ keys[b, h, j] if real[j] else torch.tensor(MASKED)
                        pairs.append((j, torch.tensor(SELF) if j == i else score))
                    outputs[i], lses[i] = naive_softmax_attention(shared[b, h, i], keys[b, h], values[b, h], pairs)
                per_round.append((outputs, lses))
            lse = torch.stack([lses for _, lses in per_round])  # (R, N)
            weights = torch.softmax(lse, 0)
            out[b, h] = sum(weights[r][:, None] * per_round[r][0] for r in range(rounds))
    return out


def random_lsh_inputs(seed: int, length: int = 21, rounds: int = 2, num_buckets: int = 4, padded: bool = True):
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(2, 2, length, 4, generator=generator)
    values = torch.randn(2, 2, length, 4, generator=generator)
    rotations = torch.randn(2, 4, rounds, num_buckets // 2, generator=generator)
    keep = None
    if padded:
        keep = torch.ones(2, length, dtype=torch.bool)
        keep[1, length - 6:] = False
    return shared, values, rotations, keep


# ----------------------------------------------------------------------------- the mechanism

@pytest.mark.parametrize(("causal", "chunk", "before", "after"), [
    (False, 4, 1, 0), (False, 5, 2, 1), (False, 8, 0, 1), (False, 32, 1, 0),  # 32: one chunk covers the input
    (True, 4, 1, 0), (True, 5, 2, 0), (True, 8, 0, 0), (True, 32, 1, 0),  # causal: no chunk ahead
])
def test_lsh_chunks_equal_naive_loops(causal, chunk, before, after):
    shared, values, rotations, keep = random_lsh_inputs(seed=chunk + before)
    buckets = hash_buckets(shared, rotations, keep)
    ours = lsh_blocked(shared, normalize_keys(shared), values, buckets, keep, chunk, before, after, causal)
    expected = naive_lsh(shared, values, buckets, keep, chunk, before, after, causal)
    real = keep[:, None, :, None].expand_as(ours)
    torch.testing.assert_close(ours[real], expected[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_are_the_derivatives(causal):
    """gradcheck (float64, finite differences) of both chunked attentions: the hashes are fixed (piecewise constant)
    and the paths' softmax with its log-normaliser differentiates exactly."""
    shared, values, rotations, keep = random_lsh_inputs(seed=5, length=13)
    buckets = hash_buckets(shared, rotations, keep)
    shared, values = shared.double().requires_grad_(), values.double().requires_grad_()

    def lsh(shared, values):
        return lsh_blocked(shared, normalize_keys(shared), values, buckets, keep, 4, 1, 0, causal)

    def local(query, values):
        return local_blocked(query, values.flip(2), values, keep, 4, 1, 0, causal, 0.5)

    assert torch.autograd.gradcheck(lsh, (shared, values))
    assert torch.autograd.gradcheck(local, (shared, values))


def test_hash_is_the_argmax_of_the_rotated_vector_and_its_negation():
    shared, _, rotations, keep = random_lsh_inputs(seed=3)
    buckets = hash_buckets(shared, rotations, keep)
    for b, h, r, i in [(0, 0, 0, 0), (0, 1, 1, 5), (1, 0, 1, 3), (1, 1, 0, 14)]:
        rotated = shared[b, h, i] @ rotations[h, :, r]
        assert buckets[b, h, r, i] == torch.cat([rotated, -rotated]).argmax()
    assert (buckets[1, :, :, -6:] == 4).all(), "padding gets the extra bucket"
    assert (buckets[keep[:, None, None, :].expand_as(buckets)] < 4).all()
    torch.testing.assert_close(hash_buckets(3.0 * shared, rotations, keep), buckets, rtol=0, atol=0)  # angular


def test_one_chunk_covering_the_input_is_full_shared_qk_attention():
    """Every token in one chunk (the degenerate setting of an LSH layer): softmax over all real keys with the shared
    query-key scores, the query's own key at -1e5, whatever the buckets and the number of rounds."""
    shared, values, rotations, keep = random_lsh_inputs(seed=4, rounds=3)
    keys = normalize_keys(shared)
    ours = lsh_blocked(shared, keys, values, hash_buckets(shared, rotations, keep), keep, 32, 1, 0, False)
    scores = shared @ keys.transpose(-1, -2)
    scores = scores.masked_fill(~keep[:, None, None, :], MASKED)
    scores = scores.masked_fill(torch.eye(shared.shape[2], dtype=torch.bool), SELF)
    expected = torch.softmax(scores, -1) @ values
    real = keep[:, None, :, None].expand_as(ours)
    torch.testing.assert_close(ours[real], expected[real], rtol=1e-5, atol=1e-5)


def test_a_query_attends_to_itself_only_when_alone():
    model = build("efficient_reformer", "model", "gpt2", attn_layers="lsh").eval()
    ids = torch.randint(1, model.config.vocab_size, (1, 37))
    with torch.no_grad():
        weights = model(input_ids=ids, output_attentions=True, use_cache=False).attentions[0]  # (1, H, N, N)
    diagonal = weights[0].diagonal(dim1=-2, dim2=-1)
    alone = (weights[0] > 0).sum(-1) == (diagonal > 0).long()  # no other key has weight
    assert torch.allclose(diagonal[alone], torch.ones(())), "alone: all weight on itself"
    assert alone[:, 0].all(), "the first token has nothing else"
    assert (diagonal[~alone] < 1e-6).all(), "with another key there, the own key gets (next to) nothing"
    assert 0 < alone.float().mean() < 0.5, "most queries do share a bucket with earlier tokens"


def test_local_layers_attend_within_their_chunk_and_the_one_before():
    model = build("efficient_reformer", "model", "bert", attn_layers="local")
    ids = torch.randint(1, model.config.vocab_size, (1, 40))
    with torch.no_grad():
        weights = model(input_ids=ids, output_attentions=True).attentions[0][0]
    query_chunk, key_chunk = torch.arange(40)[:, None] // 8, torch.arange(40)[None, :] // 8
    allowed = (key_chunk == query_chunk) | (key_chunk == (query_chunk - 1) % 5)  # chunk 0 looks back at the last
    assert torch.equal(weights.sum(0) > 0, allowed.expand(40, 40))
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 4, generator=generator) for _ in range(3))
    causal = local_blocked(q, k, v, None, 4, 1, 0, True, 0.5)
    scores = (q @ k.transpose(-1, -2) * 0.5).masked_fill(
        ~((torch.arange(16)[None] <= torch.arange(16)[:, None]) & (torch.arange(16)[None] // 4 >=
                                                                    torch.arange(16)[:, None] // 4 - 1)), MASKED)
    torch.testing.assert_close(causal, torch.softmax(scores, -1) @ v, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- rotations

def test_rotations_are_seeded_buffers_in_eval_and_resampled_in_training_without_the_global_rng():
    config = EfficientReformerConfig(**TINY, attn_layers="lsh", hash_seed=7)
    model = EfficientReformerModel(config)
    layer = model.layers[1].self_attn
    expected = torch.randn(4, 8, 2, 2, generator=torch.Generator().manual_seed(7 * 100003 + 1))
    torch.testing.assert_close(layer.rotations, expected, rtol=0, atol=0)
    assert "layers.1.self_attn.rotations" in model.state_dict()
    ids = torch.randint(1, VOCAB, (2, 40))
    model.eval()
    with torch.no_grad():
        first, second = model(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model.train()
    twin = copy.deepcopy(model)
    state = torch.get_rng_state()
    with torch.no_grad():
        steps = [model(input_ids=ids).last_hidden_state for _ in range(2)]
        twin_steps = [twin(input_ids=ids).last_hidden_state for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state), "dropout 0: nothing drew from the global RNG"
    assert (steps[0] - steps[1]).abs().max() > 1e-3, "each training step hashes with new rotations"
    assert (steps[0] - first).abs().max() > 1e-3
    for ours, theirs in zip(steps, twin_steps, strict=True):  # the generator is the model's: reproducible
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    fixed = EfficientReformerModel(EfficientReformerConfig(**TINY, attn_layers="lsh", hash_seed=7,
                                                           resample_rotations=False))
    fixed.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fixed.train()(input_ids=ids).last_hidden_state, first, rtol=0, atol=0)


# ----------------------------------------------------------------------------- reversible layers

@pytest.mark.parametrize("causal", [False, True])
def test_reversible_backward_equals_autograd_with_dropout_and_fresh_hashes(causal):
    """The memory-saving backward recomputes each layer from its outputs: the same hashes (resampled this step) and
    the same dropout masks as the forward, so its gradients are those of ordinary autograd on the same stack."""
    config = EfficientReformerConfig(**{**TINY, **REVERSIBLE, "hidden_dropout_prob": 0.1,
                                        "attention_probs_dropout_prob": 0.1, "num_hidden_layers": 3,
                                        "is_causal": causal, "chunk_size_feed_forward": 16})
    torch.manual_seed(0)
    head = EfficientReformerForCausalLM if causal else EfficientReformerForMaskedLM
    model = head(config).train()
    plain = copy.deepcopy(model)
    plain.config = copy.deepcopy(config)
    plain.config.reversible_backward = False
    for module in plain.modules():
        if hasattr(module, "config"):
            module.config = plain.config
    ids = torch.randint(1, VOCAB, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    results = []
    for candidate in (model, plain):
        torch.manual_seed(1)
        out = candidate(input_ids=ids, attention_mask=mask, labels=labels, return_logits=True)
        out.loss.backward()
        results.append((out.logits.detach(), {n: p.grad.clone() for n, p in candidate.named_parameters()},
                        torch.rand(3)))
    (logits, grads, after), (plain_logits, plain_grads, plain_after) = results
    torch.testing.assert_close(logits, plain_logits, rtol=0, atol=0)
    torch.testing.assert_close(after, plain_after, rtol=0, atol=0)  # the global stream continues alike
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert grads["model.layers.0.self_attn.q_proj.weight"].abs().max() > 0


def test_reversible_model_is_the_two_stream_stack():
    config = EfficientReformerConfig(**TINY, **REVERSIBLE, attn_layers="local")
    model = EfficientReformerModel(config).eval()
    ids = torch.randint(1, VOCAB, (1, 20))
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        hidden = model.embeddings.embed_tokens(ids) + model.embeddings.embed_positions(torch.arange(20))
        first = second = hidden
        for layer in model.layers:
            first = first + layer.self_attn(layer.attention_norm(second))[0]
            second = second + layer.mlp(layer.mlp_norm(first))
    assert out.last_hidden_state.shape == (1, 20, 64)
    torch.testing.assert_close(out.last_hidden_state, model.final_norm(torch.cat([first, second], -1)))


def test_reversible_causal_model_decodes_with_its_cache():
    config = EfficientReformerConfig(**TINY, **REVERSIBLE, is_causal=True)
    model = EfficientReformerForCausalLM(config).eval()
    ids = torch.randint(1, VOCAB, (2, 30))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        step = model(input_ids=ids[:, :9], use_cache=True)
        cache = step.past_key_values
        for position in range(9, 30):
            step = model(input_ids=ids[:, position:position + 1], past_key_values=cache, use_cache=True)
            cache = step.past_key_values
            torch.testing.assert_close(step.logits[:, 0], full[:, position], rtol=1e-5, atol=1e-5)


def test_chunked_feed_forward_is_the_same_function():
    ids = torch.randint(1, VOCAB, (2, 40))
    outputs = []
    for chunk in (0, 7):
        torch.manual_seed(0)
        model = EfficientReformerModel(EfficientReformerConfig(**TINY, chunk_size_feed_forward=chunk)).eval()
        with torch.no_grad():
            outputs.append(model(input_ids=ids).last_hidden_state)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(reversible=True), "norm_position='pre'"),
    (dict(reversible=True, norm_position="pre"), "tie_word_embeddings=False"),
    (dict(is_causal=True, lsh_num_chunks_after=1), "lsh_num_chunks_after=0"),
    (dict(num_buckets=6, attn_layers=["lsh", "local", "lsh"]), "num_hidden_layers=2"),
    (dict(attention_backend="flex"), "'blocked'"),
])
def test_bad_settings_say_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        EfficientReformerConfig(**{**TINY, **overrides})


# ----------------------------------------------------------------------------- transformers' Reformer

def transformers_reformer(class_name: str, causal: bool, axial: bool, lsh_chunk: int = 8, **knobs):
    fields = dict(
        vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, attention_head_size=16, num_hidden_layers=4,
        attn_layers=["local", "lsh", "lsh", "local"], feed_forward_size=64, axial_pos_embds=axial,
        axial_pos_shape=[4, 16], axial_pos_embds_dim=[12, 20], max_position_embeddings=64, is_decoder=causal,
        lsh_attn_chunk_length=lsh_chunk, local_attn_chunk_length=8, num_buckets=4, num_hashes=2,
        hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0)
    config = transformers.ReformerConfig(**{**fields, **knobs})
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(config).eval()
    with torch.no_grad():  # random weights of a useful size (transformers' init leaves the LayerNorms at 1 / 0)
        for name, parameter in model.named_parameters():
            parameter.add_(0.1 * torch.randn_like(parameter)) if "norm" in name else parameter.mul_(3)
    return model


def output_of(out) -> torch.Tensor:
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


@pytest.mark.parametrize("axial", [False, True])
@pytest.mark.parametrize("class_name", ["ReformerModel", "ReformerForMaskedLM"])
def test_bidirectional_parity_with_transformers_both_ways(class_name, axial):
    hf_model = transformers_reformer(class_name, causal=False, axial=axial)
    ours = from_transformers_reformer(hf_model, hash_seed=3)
    align_transformers_hashes(hf_model, ours.config)
    ids = torch.randint(1, VOCAB, (2, 48))
    with torch.no_grad():
        expected, actual = output_of(hf_model(input_ids=ids)), output_of(ours(input_ids=ids))
        back = to_transformers_reformer(ours)
        returned = output_of(back(input_ids=ids))
        unaligned = EfficientReformerModel(EfficientReformerConfig(**{**ours.config.to_dict(), "hash_seed": 4}))
        unaligned.load_state_dict({k: v for k, v in ours.base_model.state_dict().items()
                                   if not k.endswith("rotations")}, strict=False)
        other = unaligned.eval()(input_ids=ids).last_hidden_state
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(returned, actual, rtol=1e-5, atol=1e-5)
    assert not hasattr(back.config, "axial_pos_embds") or back.config.axial_pos_embds is False
    assert (other - output_of(ours.base_model(input_ids=ids))).abs().max() > 1e-3, "other hashes, other output"


@pytest.mark.parametrize(("before", "after", "hashes"), [(1, 1, 1), (2, 0, 3), (0, 1, 2)])
def test_bidirectional_parity_with_other_neighbours_and_rounds(before, after, hashes):
    hf_model = transformers_reformer("ReformerModel", causal=False, axial=False, num_hashes=hashes,
                                     lsh_num_chunks_before=before, lsh_num_chunks_after=after,
                                     local_num_chunks_before=before, local_num_chunks_after=after)
    ours = from_transformers_reformer(hf_model)
    align_transformers_hashes(hf_model, ours.config)
    ids = torch.randint(1, VOCAB, (2, 48))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).last_hidden_state, hf_model(input_ids=ids).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("class_name", ["ReformerModel", "ReformerModelWithLMHead"])
def test_causal_parity_with_transformers_where_both_see_every_earlier_token(class_name):
    """transformers' short-input path (length <= its LSH chunk) is full causal shared-QK attention; ours is that
    with one bucket and a window covering the input. Local layers chunk as usual."""
    hf_model = transformers_reformer(class_name, causal=True, axial=True, lsh_chunk=64)
    ours = from_transformers_reformer(hf_model, num_buckets=1)
    ids = torch.randint(1, VOCAB, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(output_of(ours(input_ids=ids, use_cache=False)),
                                   output_of(hf_model(input_ids=ids)), rtol=1e-5, atol=1e-5)


def test_what_transformers_cant_express_is_refused():
    model = EfficientReformerModel(EfficientReformerConfig(**TINY))
    with pytest.raises(Exception, match="reversible=False"):
        to_transformers_reformer(model)


# ----------------------------------------------------------------------------- conversion

@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kind", ["bert", *CAUSAL_SOURCES])
def test_all_local_conversion_with_chunks_covering_the_input_is_exact(kind, tmp_path):
    save_tiny_source(kind, tmp_path / kind)
    source = tiny_source(kind).eval()
    exact = convert(str(tmp_path / kind), "reformer", out=None, max_length=64, eval_tokens=0, attn_layers="local",
                    local_attn_chunk_length=64)
    mixed = convert(str(tmp_path / kind), "reformer", out=None, max_length=64, eval_tokens=0,
                    local_attn_chunk_length=64, lsh_attn_chunk_length=8, num_buckets=4)
    ids = torch.randint(1, VOCAB, (2, 40))
    with torch.no_grad():
        expected = source(input_ids=ids).logits
        torch.testing.assert_close(exact.model(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
        assert (mixed.model(input_ids=ids).logits - expected).abs().max() > 1e-3
    lsh = mixed.model.model.layers[1].self_attn
    assert not hasattr(lsh, "k_proj") and hasattr(mixed.model.model.layers[0].self_attn, "k_proj")
    assert "W_q" in mixed.new_parameters_recipe and mixed.new_parameters == []


def saved_bytes(model, ids) -> int:
    """Bytes autograd keeps for the backward of one training forward (tensors saved by its nodes)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids).last_hidden_state.sum()
    return total


def test_reversible_backward_keeps_no_activations_per_layer():
    ids = torch.randint(1, VOCAB, (1, 64))
    kept = {}
    for layers in (2, 4):
        for recompute in (True, False):
            config = EfficientReformerConfig(**{**TINY, **REVERSIBLE, "num_hidden_layers": layers,
                                                "reversible_backward": recompute})
            kept[layers, recompute] = saved_bytes(EfficientReformerModel(config).train(), ids)
    assert kept[2, True] == kept[4, True], "the recomputing stack keeps the same whatever its depth"
    assert kept[4, False] > kept[2, False] > 10 * kept[2, True]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_path_equals_cpu_path_and_reversible_backward_restores_cuda_dropout(causal):
    """The blocked path on CUDA against the CPU (fp32: outputs and gradients, no dropout); then, on CUDA with dropout,
    the recomputing backward against ordinary autograd (the CUDA RNG state is restored for the recomputation)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    config = EfficientReformerConfig(**{**TINY, **REVERSIBLE, "num_hidden_layers": 4, "is_causal": causal,
                                        "head_dim": 16, "resample_rotations": False})
    torch.manual_seed(0)
    head = EfficientReformerForCausalLM if causal else EfficientReformerForMaskedLM
    cpu = head(config).train()
    gpu = copy.deepcopy(cpu).cuda()
    ids = torch.randint(1, VOCAB, (2, 100))
    mask = torch.ones_like(ids)
    mask[1, 70:] = 0
    results = []
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=ids.to(device),
                    return_logits=True)
        out.loss.backward()
        results.append((out.logits.cpu(), {n: p.grad.cpu() for n, p in model.named_parameters()}))
    real = mask.bool()
    torch.testing.assert_close(results[1][0][real], results[0][0][real], rtol=1e-4, atol=1e-4)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-3, atol=1e-5, msg=name)

    config = EfficientReformerConfig(**{**config.to_dict(), "hidden_dropout_prob": 0.1,
                                        "attention_probs_dropout_prob": 0.1, "resample_rotations": True})
    torch.manual_seed(0)
    model = head(config).cuda().train()
    plain = copy.deepcopy(model)
    plain.config.reversible_backward = False
    grads = []
    for candidate in (model, plain):
        torch.manual_seed(1)
        candidate(input_ids=ids.cuda(), labels=ids.cuda()).loss.backward()
        grads.append({n: p.grad for n, p in candidate.named_parameters()})
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[0][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("head", [EfficientReformerForCausalLM, EfficientReformerForMaskedLM])
def test_reversible_heads_read_both_streams_and_round_trip(head, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    causal = head is EfficientReformerForCausalLM
    config = EfficientReformerConfig(**TINY, **REVERSIBLE, is_causal=causal, lm_head_bias=True)
    torch.manual_seed(0)
    model = head(config).eval()
    decoder = model.lm_head if causal else model.lm_head.decoder
    assert decoder.weight.shape == (VOCAB, 64) and decoder.weight.std() > 0.01  # initialised, 2 * hidden wide
    model.save_pretrained(tmp_path)
    loaded = (AutoModelForCausalLM if causal else AutoModelForMaskedLM).from_pretrained(tmp_path).eval()
    assert type(loaded) is head
    ids = torch.randint(1, VOCAB, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_causal_lsh_by_sorted_chunks_would_let_later_tokens_change_earlier_outputs():
    """Why causal LSH attends by bucket window here (attention/lsh.py): with transformers' sorted chunks, a changed
    later token moves the chunk grid, and earlier outputs change; ours keep them."""
    hf_model = transformers_reformer("ReformerModel", causal=True, axial=False)
    ours = from_transformers_reformer(hf_model)
    align_transformers_hashes(hf_model, ours.config)
    ids = torch.randint(1, VOCAB, (1, 64), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 40:] = torch.randint(1, VOCAB, (24,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = [hf_model(input_ids=x).last_hidden_state[:, :40] for x in (ids, changed)]
        mine = [ours(input_ids=x, use_cache=False).last_hidden_state[:, :40] for x in (ids, changed)]
    assert (theirs[0] - theirs[1]).abs().max() > 1e-3
    torch.testing.assert_close(mine[0], mine[1], rtol=0, atol=1e-6)
