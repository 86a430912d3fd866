"""EfficientRouting: the routing pattern against a naive per-cluster loop, balanced top-k membership, causality
(through the k-means step too), the k-means EMA step (value, training only, once under gradient checkpointing, equal
on every path, all-reduced across two gloo processes), saved centroids, and the exact degenerate settings."""

import pytest
import torch
import torch.nn.functional as F
from ranks import run_ranks
from testers import TESTERS, enable_activation_checkpointing

from hf_efficient import EfficientRoutingConfig, EfficientRoutingForCausalLM, EfficientRoutingModel
from hf_efficient.attention.routing import (
    causal_clusters,
    routing_blocked,
    routing_reference,
    routing_vectors,
    top_k_members,
)
from hf_efficient.core.cache_argument import returned_cache
from hf_efficient.models.routing.modeling_routing import EfficientRoutingAttention

TESTER = TESTERS["efficient_routing"]


def config(style: str = "bert", **overrides) -> EfficientRoutingConfig:
    return TESTER.config(style, **overrides)


def random_qkv(batch=2, heads=3, length=23, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, dim, generator=generator) for _ in range(3)]


def padding_keep(batch: int, length: int) -> torch.Tensor:
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[-1, length - 6:] = False  # right padding
    if batch > 2:
        keep[1, :4] = False  # left padding
    return keep


def naive_routing(query, key, value, centroids, keep, window, causal, scaling):
    """Token by token from the rule (loops, no shared code): bidirectional, cluster c takes the w real tokens with the
    largest r . mu_c and a token averages the softmax of the clusters holding it (itself alone if none); causal, token
    i joins argmax_c r_i . mu_c and sees the w most recent real tokens of its cluster up to itself."""
    batch, heads, length, dim = query.shape
    mixed = F.layer_norm(query, (dim,)) + F.layer_norm(key, (dim,))
    vectors = F.normalize(mixed, dim=-1)
    out = torch.zeros(batch, length, heads, dim)
    for b in range(batch):
        real = [i for i in range(length) if keep is None or keep[b, i]]
        for h in range(heads):
            scores = vectors[b, h] @ centroids.T  # (N, k)

            def attend(i, keys, b=b, h=h):
                logits = torch.stack([query[b, h, i] @ key[b, h, j] * scaling for j in keys])
                return (logits.softmax(0)[:, None] * value[b, h, keys]).sum(0)

            if causal:
                cluster = scores.argmax(-1)
                for i in real:
                    mates = [j for j in real if j <= i and cluster[j] == cluster[i]]
                    out[b, i, h] = attend(i, mates[-window:])
                continue
            taken = []
            for c in range(centroids.shape[0]):
                ranked = sorted(real, key=lambda j: -scores[j, c].item())
                taken.append(set(ranked[:min(window, length)]))
            for i in real:
                holding = [members for members in taken if i in members]
                if not holding:
                    out[b, i, h] = value[b, h, i]
                    continue
                out[b, i, h] = sum(attend(i, sorted(members)) for members in holding) / len(holding)
    return out


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("groups", [1, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("window", [4, 7, 40])
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_reference_and_blocked_paths_equal_the_naive_rule(causal, groups, window, padded):
    """Random q/k/v and centroids, padding on both sides (or no mask), clusters larger and smaller than the window;
    the blocked path runs through the attention interface (grouped-query attention: keys one per query head)."""
    torch.manual_seed(0)
    query, key, value = random_qkv(batch=3, heads=4, length=23, dim=8)
    keep = padding_keep(3, 23) if padded else None
    centroids = F.normalize(torch.randn(3, 8), dim=-1)
    scaling = 8**-0.5
    vectors = routing_vectors(query, key)
    routing = causal_clusters(vectors, centroids, keep) if causal else top_k_members(vectors, centroids, keep, window)
    expected = naive_routing(query, key, value, centroids, keep, window, causal, scaling)
    reference, weights = routing_reference(query, key, value, routing, keep, window, causal, scaling, 3)
    attention = EfficientRoutingAttention(config("gpt2" if causal else "bert", num_key_value_heads=4 // groups,
                                                 attention_backend="blocked"), 0)
    assert attention.num_key_value_groups == groups
    blocked = routing_blocked(attention, query, key, value, routing, keep, window, causal)
    keep = torch.ones(3, 23, dtype=torch.bool) if keep is None else keep
    real = keep[:, :, None, None]
    torch.testing.assert_close(reference * real, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(blocked * real, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights @ value, reference.transpose(1, 2), rtol=1e-5, atol=1e-6)
    rows = weights.sum(-1)[keep[:, None].expand(-1, 4, -1)]
    torch.testing.assert_close(rows, torch.ones_like(rows))
    if causal:
        assert not weights.triu(1).any(), "no weight on a later key"
    if window < 23:
        assert (weights[keep[:, None].expand(-1, 4, -1)] == 0).any(), "the pattern is sparse"


def test_top_k_membership_is_balanced_and_nearest_first():
    """Each centroid takes exactly w distinct tokens, the w real tokens with the largest r . mu (padding only when
    fewer real tokens than w), in position order."""
    torch.manual_seed(1)
    vectors = F.normalize(torch.randn(2, 3, 30, 8), dim=-1)
    centroids = F.normalize(torch.randn(5, 8), dim=-1)
    keep = padding_keep(2, 30)
    members = top_k_members(vectors, centroids, keep, 9)
    assert members.shape == (2, 3, 5, 9)
    assert (members.diff(dim=-1) > 0).all(), "distinct, in position order"
    scores = (vectors @ centroids.T).transpose(-1, -2).masked_fill(~keep[:, None, None], float("-inf"))
    expected = scores.topk(9, dim=-1).indices.sort(-1).values
    assert torch.equal(members, expected)
    assert keep[:, None, None].expand(-1, 3, 5, -1).gather(-1, members).all(), "never a padding token"
    # more slots than real tokens: every real token is taken, padding fills the rest
    short = top_k_members(vectors, centroids, keep, 28)
    assert (short[1, ..., :24] == torch.arange(24)).all()


def changed_later_token(input_ids: torch.Tensor, cut: int, vocab: int) -> torch.Tensor:
    changed = input_ids.clone()
    changed[:, cut:] = (changed[:, cut:] + 7) % (vocab - 1) + 1
    return changed


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_causal_no_leak_from_the_future_in_training_with_the_kmeans_step(style):
    """Training mode, k-means step on: changing later tokens changes no earlier output (routing, windows and the
    centroids the pass uses), while the centroids after the pass do see them."""
    torch.manual_seed(0)
    model = EfficientRoutingModel(config(style, centroid_decay=0.5)).train()
    start = {name: buffer.clone() for name, buffer in model.named_buffers() if name.endswith("centroids")}
    input_ids = TESTER.inputs(model.config, batch=2, padded=False)["input_ids"]
    cut = 20
    outputs, centroids = [], []
    for ids in (input_ids, changed_later_token(input_ids, cut, model.config.vocab_size)):
        model.load_state_dict(start, strict=False)
        outputs.append(model(input_ids=ids).last_hidden_state)
        centroids.append(torch.cat([layer.self_attn.centroids for layer in model.layers]))
    torch.testing.assert_close(outputs[1][:, :cut], outputs[0][:, :cut], rtol=0, atol=1e-6)
    assert (outputs[1][:, cut:] - outputs[0][:, cut:]).abs().max() > 1e-3
    assert not torch.equal(centroids[0], centroids[1]), "the k-means step saw the later tokens"
    assert not torch.equal(centroids[0], torch.cat(list(start.values()))), "the centroids moved"


def layer_inputs(model) -> dict:
    """Capture each routing layer's input hidden states (forward pre-hooks; removed by the caller)."""
    captured, handles = {}, []
    for index, layer in enumerate(model.layers):
        def hook(module, args, kwargs, index=index):
            captured[index] = (kwargs.get("hidden_states", args[0] if args else None).detach(),
                               kwargs.get("position_embeddings"), kwargs.get("attention_mask"))
        handles.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    return captured, handles


def expected_step(attention, hidden, position_embeddings, keep, centroids, decay):
    """mu_c <- normalize(decay mu_c + (1 - decay) mean of the real routing vectors nearest mu_c), token by token."""
    with torch.no_grad():
        query, key, _ = attention.project(hidden, position_embeddings)
        groups = attention.num_key_value_groups
        local = attention.num_local_heads
        key = key.repeat_interleave(groups, dim=1)
        mixed = F.layer_norm(query[:, local:], (query.shape[-1],)) + F.layer_norm(key[:, local:], (key.shape[-1],))
        vectors = F.normalize(mixed, dim=-1)
    sums, counts = torch.zeros_like(centroids), torch.zeros(centroids.shape[0])
    batch, heads, length, _ = vectors.shape
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                if keep is None or keep[b, i]:
                    c = int((vectors[b, h, i] @ centroids.T).argmax())
                    sums[c] += vectors[b, h, i]
                    counts[c] += 1
    moved = centroids.clone()
    for c in range(centroids.shape[0]):
        if counts[c]:
            moved[c] = F.normalize(decay * centroids[c] + (1 - decay) * sums[c] / counts[c], dim=0)
    return moved


@pytest.mark.parametrize("style", ["bert", "llama"])
def test_kmeans_step_moves_centroids_by_the_ema_of_nearest_means(style):
    torch.manual_seed(0)
    model = EfficientRoutingModel(config(style, centroid_decay=0.9)).train()
    before = [layer.self_attn.centroids.clone() for layer in model.layers]
    inputs = TESTER.inputs(model.config)
    captured, handles = layer_inputs(model)
    model(**inputs)
    for handle in handles:
        handle.remove()
    for index, layer in enumerate(model.layers):
        hidden, position_embeddings, keep = captured[index]
        expected = expected_step(layer.self_attn, hidden, position_embeddings, keep, before[index], 0.9)
        torch.testing.assert_close(layer.self_attn.centroids, expected, rtol=1e-5, atol=1e-6)
        assert not torch.equal(layer.self_attn.centroids, before[index])
        torch.testing.assert_close(layer.self_attn.centroids.norm(dim=-1), torch.ones(3))


def test_centroids_move_only_in_training_with_decay_below_one():
    torch.manual_seed(0)
    inputs = TESTER.inputs(config())
    for mode, decay, moves in (("eval", 0.9, False), ("train", 1.0, False), ("train", 0.9, True)):
        model = EfficientRoutingModel(config(centroid_decay=decay))
        model.train(mode == "train")
        before = model.layers[0].self_attn.centroids.clone()
        model(**inputs)
        assert torch.equal(model.layers[0].self_attn.centroids, before) != moves, (mode, decay)


def test_gradient_checkpointing_routes_with_the_first_pass_centroids_and_moves_them_once():
    """k-means step on: a training step with checkpointing (the layers recomputed in backward) gives the gradients
    and the centroids of the step without it, from the same start."""
    torch.manual_seed(0)
    model = EfficientRoutingModel(config("gpt2", centroid_decay=0.5)).train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = TESTER.inputs(model.config)
    results = []
    for checkpointing in (False, True):
        model.load_state_dict(start)
        if checkpointing:
            enable_activation_checkpointing(model)
        model.zero_grad()
        model(**inputs).last_hidden_state.pow(2).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((grads, [layer.self_attn.centroids.clone() for layer in model.layers]))
    for name, grad in results[0][0].items():
        torch.testing.assert_close(results[1][0][name], grad, rtol=1e-5, atol=1e-6, msg=name)
    for moved, once in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(moved, once, rtol=0, atol=0)


@pytest.mark.parametrize("style", ["bert", "gpt2"])
def test_blocked_path_equals_reference_in_training_with_the_kmeans_step(style):
    torch.manual_seed(0)
    head = EfficientRoutingForCausalLM if style == "gpt2" else None
    model = (head or EfficientRoutingModel)(config(style, centroid_decay=0.5)).train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = TESTER.inputs(model.config)
    results = {}
    for backend in ("reference", "blocked"):
        model.load_state_dict(start)
        model.config.attention_backend = backend
        model.zero_grad()
        output = model(**inputs)
        main = output.logits if head else output.last_hidden_state
        main.pow(2).mean().backward()
        centroids = [m.centroids.clone() for m in model.modules() if isinstance(m, EfficientRoutingAttention)]
        results[backend] = (main.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                               if p.grad is not None}, centroids)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(results["blocked"][0][real], results["reference"][0][real], rtol=1e-5, atol=1e-5)
    for name, grad in results["reference"][1].items():
        torch.testing.assert_close(results["blocked"][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)
    for ours, reference in zip(results["blocked"][2], results["reference"][2], strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def test_moved_centroids_are_saved_and_loaded(tmp_path):
    torch.manual_seed(0)
    model = EfficientRoutingModel(config(centroid_decay=0.5)).train()
    fresh = [layer.self_attn.centroids.clone() for layer in model.layers]
    model(**TESTER.inputs(model.config))
    model.save_pretrained(tmp_path)
    loaded = EfficientRoutingModel.from_pretrained(tmp_path)
    for ours, theirs, drawn in zip(model.layers, loaded.layers, fresh, strict=True):
        assert torch.equal(theirs.self_attn.centroids, ours.self_attn.centroids)
        assert not torch.equal(theirs.self_attn.centroids, drawn), "trained centroids, not a fresh draw"


# ------------------------------------------------------------------------------- torch.distributed (gloo, 2 CPUs)


def distributed_worker(rank: int, world: int, out: str) -> None:
    torch.manual_seed(0)  # the same model in both processes
    model = EfficientRoutingModel(config(centroid_decay=0.5)).train()
    inputs = TESTER.inputs(model.config, seed=10 + rank)  # different data
    model(**inputs)
    torch.save([layer.self_attn.centroids for layer in model.layers], f"{out}/rank{rank}.pt")


def test_kmeans_step_is_all_reduced_across_processes(tmp_path):
    """Two gloo processes with different batches end with the same centroids: those of one process given both
    batches (the all-reduced sums and counts), which differ from either process's own."""
    run_ranks(distributed_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    torch.manual_seed(0)
    alone = EfficientRoutingModel(config(centroid_decay=0.5)).train()
    start = {k: v.clone() for k, v in alone.state_dict().items()}
    both = [TESTER.inputs(alone.config, seed=10 + rank) for rank in range(2)]
    alone(**{name: torch.cat([batch[name] for batch in both]) for name in both[0]})
    together = [layer.self_attn.centroids.clone() for layer in alone.layers]
    alone.load_state_dict(start)
    alone(**both[0])
    own = [layer.self_attn.centroids.clone() for layer in alone.layers]
    for layer in range(len(together)):
        torch.testing.assert_close(ranks[0][layer], together[layer], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ranks[1][layer], together[layer], rtol=1e-5, atol=1e-6)
    assert any((own[layer] - together[layer]).abs().max() > 1e-4 for layer in range(len(together)))


# ----------------------------------------------------------------------------------- exact degenerate settings


@pytest.mark.parametrize("style", ["bert", "gpt2", "llama"])
def test_one_cluster_covering_the_input_is_full_attention(style):
    """num_clusters=1 with routing_window and local_window covering the input: every head (routing ones included)
    is exact softmax attention, causal or not, so the model equals the backbone in its all-local setting."""
    torch.manual_seed(0)
    inputs = TESTER.inputs(config(style))
    length = inputs["input_ids"].shape[1]
    one_cluster = EfficientRoutingModel(config(style, num_clusters=1, routing_window=length,
                                               local_window=length)).eval()
    all_local = EfficientRoutingModel(config(style, num_clusters=1, num_routing_heads=0, local_window=length)).eval()
    all_local.load_state_dict(one_cluster.state_dict())
    sparse = EfficientRoutingModel(config(style)).eval()
    sparse.load_state_dict({k: v for k, v in one_cluster.state_dict().items() if not k.endswith("centroids")},
                           strict=False)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        ours, exact = one_cluster(**inputs).last_hidden_state, all_local(**inputs).last_hidden_state
        routed = sparse(**inputs).last_hidden_state
    torch.testing.assert_close(ours[real], exact[real], rtol=1e-5, atol=1e-5)
    assert (routed[real] - exact[real]).abs().max() > 1e-3


@pytest.mark.parametrize("routing_heads", [1, 3])
def test_a_split_inside_a_key_value_group_is_exact_in_every_path(routing_heads):
    """Llama style, 2 query heads per key/value head: 1 or 3 routing heads split a group. The blocked path equals the
    reference, and cached decoding equals the full pass."""
    torch.manual_seed(0)
    model = EfficientRoutingForCausalLM(config("llama", num_routing_heads=routing_heads)).eval()
    inputs = TESTER.inputs(model.config)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        outputs = {}
        for backend in ("reference", "blocked"):
            model.config.attention_backend = backend
            outputs[backend] = model(**inputs, use_cache=False).logits
        torch.testing.assert_close(outputs["blocked"][real], outputs["reference"][real], rtol=1e-5, atol=1e-5)
        ids = inputs["input_ids"][:1]
        step = model(input_ids=ids[:, :6], use_cache=True)
        cache, logits = returned_cache(step), [step.logits]
        for position in range(6, ids.shape[1]):
            step = model(input_ids=ids[:, position:position + 1], cache=cache, use_cache=True)
            cache = returned_cache(step)
            logits.append(step.logits)
        torch.testing.assert_close(torch.cat(logits, dim=1), outputs["blocked"][:1], rtol=1e-5, atol=1e-5)


def test_config_refuses_bad_head_counts():
    with pytest.raises(ValueError, match="one value per layer"):
        config(num_routing_heads=[2, 2, 2])
    with pytest.raises(ValueError, match=r"num_routing_heads\[1\]=9"):
        config(num_routing_heads=[2, 9])
    per_layer = config(num_routing_heads=[0, 4])
    model = EfficientRoutingModel(per_layer).eval()
    assert [layer.self_attn.num_routing_heads for layer in model.layers] == [0, 4]
    assert model(**TESTER.inputs(per_layer)).last_hidden_state.isfinite().all()
    assert config(num_routing_heads=None).num_routing_heads == [2, 2], "default: half the heads"


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_conversion_with_one_cluster_covering_the_input_reproduces_the_source(kind, tmp_path):
    """A second exact setting besides all-local heads: half the heads routing, through one centroid whose cluster
    (and the local heads' reach) covers the input; as converted with the tester's knobs it really differs."""
    from test_every_target import output, padded_batch
    from tiny_sources import save_tiny_source

    from hf_efficient.conversion import convert

    source = save_tiny_source(kind, tmp_path / kind)
    covering = dict(num_clusters=1, routing_window=128, local_window=128)
    exact = convert(str(tmp_path / kind), "routing", out=None, max_length=128, eval_tokens=0, **covering).model
    sparse = convert(str(tmp_path / kind), "routing", out=None, max_length=128, eval_tokens=0,
                     **TESTER.mechanism).model
    assert exact.config.num_routing_heads == [2, 2]
    inputs = padded_batch(source.config.pad_token_id)
    real = inputs["attention_mask"].bool()
    reference_model = source.base_model if kind == "electra" else source
    with torch.no_grad():
        expected, ours, routed = (output(m, inputs)[real] for m in (reference_model, exact, sparse))
    assert (ours - expected).abs().max() <= 1e-5
    assert (routed - expected).abs().max() > 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
@pytest.mark.parametrize("style", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("length", [37, 300])
def test_gpu_paths_equal_the_reference_with_the_kmeans_step(style, length):
    """On CUDA, "auto" takes FlexAttention for the local heads and batched sdpa over the gathered clusters for the
    routing heads; it and the blocked path equal the naive reference, k-means step on: outputs, every gradient and
    the centroids after the step (fp32, padded batches)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    head = AutoModelForCausalLM if style != "bert" else AutoModelForMaskedLM
    model = head.from_config(config(style, head_dim=16, centroid_decay=0.5, max_position_embeddings=512,
                                    use_pooler=False)).cuda().train()
    hidden = torch.zeros(1, length, model.config.hidden_size, device="cuda")
    assert model.model.layers[0].self_attn.backend(hidden, False) == "flex"
    start = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = {k: v.cuda() for k, v in TESTER.inputs(model.config, length=length, seed=3).items()}
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    results = {}
    for backend in ("reference", "blocked", "auto"):
        model.load_state_dict(start)
        model.config.attention_backend = backend
        model.zero_grad()
        output = model(**inputs, labels=labels, return_logits=True)
        output.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        centroids = torch.cat([layer.self_attn.centroids.clone() for layer in model.model.layers])
        results[backend] = (output.logits.detach(), grads, centroids)
    model.config.attention_backend = "auto"
    real = inputs["attention_mask"].bool()
    logits, grads, centroids = results["reference"]
    for backend in ("blocked", "auto"):
        torch.testing.assert_close(results[backend][0][real], logits[real], rtol=1e-5, atol=2e-5, msg=backend)
        for name, grad in grads.items():
            torch.testing.assert_close(results[backend][1][name], grad, rtol=1e-4, atol=1e-5, msg=f"{backend} {name}")
        torch.testing.assert_close(results[backend][2], centroids, rtol=1e-5, atol=1e-5, msg=backend)


def test_centroids_stay_float32_in_a_bfloat16_model(tmp_path):
    """A step of (1 - 0.999) = 1e-3 is below bfloat16's resolution: the centroids stay float32 under .to(bf16) and
    from_pretrained(dtype=bf16), so a bf16 model's k-means step really moves them."""
    torch.manual_seed(0)
    model = EfficientRoutingModel(config(centroid_decay=0.999)).to(torch.bfloat16).train()
    assert model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert model.layers[0].self_attn.centroids.dtype == torch.float32
    before = model.layers[0].self_attn.centroids.clone()
    model(**TESTER.inputs(model.config))
    assert (model.layers[0].self_attn.centroids - before).abs().max() > 1e-4
    model.save_pretrained(tmp_path)
    loaded = EfficientRoutingModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.layers[0].self_attn.centroids.dtype == torch.float32
    assert torch.equal(loaded.layers[0].self_attn.centroids, model.layers[0].self_attn.centroids)


def test_a_decoding_step_returns_the_full_pass_weights():
    """output_attentions in a cached step (the local heads read only the keys within their reach): the weights of the
    full pass's row, over every key."""
    torch.manual_seed(0)
    model = EfficientRoutingForCausalLM(config("gpt2")).eval()
    ids = TESTER.inputs(model.config, batch=1, padded=False)["input_ids"]
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False, output_attentions=True).attentions
        step = model(input_ids=ids[:, :20], use_cache=True)
        step = model(input_ids=ids[:, 20:21], cache=returned_cache(step), use_cache=True, output_attentions=True)
    for ours, reference in zip(step.attentions, full, strict=True):
        torch.testing.assert_close(ours[:, :, 0], reference[:, :, 20, :21], rtol=1e-5, atol=1e-6)
        assert (reference[:, 0, 20, :21] == 0).any(), "the local head's reach (5) leaves earlier keys out"
