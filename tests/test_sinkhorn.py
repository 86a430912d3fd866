"""EfficientSinkhorn specifics: log-space Sinkhorn balancing against the plain (probability-space) algorithm, the
causal balancing without leakage, the hard sort (a permutation; greedy as written out here), the attention over each
block and its sorted partner (or the first k sorted blocks, SortCut) against a naive per-block loop written here, in
training (soft sort, Gumbel noise) and eval (hard sort), the blocked path against the dense reference (outputs and
gradients), Gumbel noise (training only, from the default generator, never reseeding it, replayed by activation
checkpointing), causality, padding, config errors and the conversion recipe."""

import itertools
import math

import pytest
import torch
from backend_agreement import lm_logits_and_gradients
from testers import TESTERS, enable_activation_checkpointing
from tiny_sources import one_thread, tiny_source  # noqa: F401 (a fixture)

from hf_efficient import (
    EfficientSinkhornConfig,
    EfficientSinkhornForCausalLM,
    EfficientSinkhornForMaskedLM,
    EfficientSinkhornModel,
)
from hf_efficient.attention.sinkhorn import (
    MASKED,
    allowed_pairs,
    greedy_permutation,
    sinkhorn,
    sinkhorn_blocked,
    sinkhorn_reference,
)
from hf_efficient.conversion import convert_model, family_of

pytestmark = pytest.mark.usefixtures("one_thread")
TESTER = TESTERS["efficient_sinkhorn"]
STYLES = {"bert": False, "gpt2": True, "llama": True}  # style -> causal


def config(style: str = "bert", **overrides) -> EfficientSinkhornConfig:
    return TESTER.config(style, **overrides)


def sharpened(model: torch.nn.Module, scale: float = 40.0) -> torch.nn.Module:
    """The model with its sorting networks' weights scaled up: at the init scale (0.02) the block scores are nearly
    equal, the sort barely depends on the input and a leak through it would hide below any tolerance."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".sort_net." in name and name.endswith("weight"):
                parameter.mul_(scale)
    return model


# --- the balancing ----------------------------------------------------------------------------------------------


def plain_sinkhorn(scores: torch.Tensor, iterations: int) -> torch.Tensor:
    """The textbook algorithm in probability space (float64): alternately divide by the row and column sums."""
    matrix = scores.double().exp()
    for _ in range(iterations):
        matrix = matrix / matrix.sum(-1, keepdim=True)
        matrix = matrix / matrix.sum(-2, keepdim=True)
    return matrix


def test_log_space_balancing_equals_the_plain_algorithm_and_becomes_doubly_stochastic():
    scores = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    allowed = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    for iterations in (1, 7):
        torch.testing.assert_close(sinkhorn(scores, allowed, iterations, causal=False).exp().double(),
                                   plain_sinkhorn(scores, iterations), rtol=1e-5, atol=1e-6)
    balanced = sinkhorn(scores, allowed, 200, causal=False).exp()
    torch.testing.assert_close(balanced.sum(-1), torch.ones(2, 3, 6), rtol=0, atol=1e-5)
    torch.testing.assert_close(balanced.sum(-2), torch.ones(2, 3, 6), rtol=0, atol=1e-5)
    # large scores stay finite in log space (the plain algorithm overflows at exp(100))
    assert torch.isfinite(sinkhorn(scores * 200, allowed, 7, causal=False)).all()


def test_padding_blocks_take_no_part_in_the_balancing():
    scores = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    keep_blocks = torch.ones(1, 6, 4, dtype=torch.bool)
    keep_blocks[0, 4:] = False  # blocks 4 and 5 are padding
    allowed = allowed_pairs(keep_blocks, 1, 6, causal=False, device=torch.device("cpu"))
    balanced = sinkhorn(scores, allowed, 7, causal=False).exp()
    assert (balanced[..., 4:, :] == 0).all() and (balanced[..., :, 4:] == 0).all()
    torch.testing.assert_close(balanced[..., :4, :4].double(), plain_sinkhorn(scores[..., :4, :4], 7), rtol=1e-5,
                               atol=1e-6)


def test_causal_sort_is_a_softmax_over_the_earlier_blocks():
    scores = torch.randn(2, 2, 7, 7, generator=torch.Generator().manual_seed(2))
    allowed = allowed_pairs(None, 2, 7, causal=True, device=torch.device("cpu"))
    balanced = sinkhorn(scores, allowed, 7, causal=True).exp()
    assert (balanced.triu() == 0).all(), "block i is paired with blocks j < i only; block 0 with none"
    for row in range(1, 7):  # row i reads row i only
        torch.testing.assert_close(balanced[..., row, :row], scores[..., row, :row].softmax(-1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("training", [False, True])
def test_causal_partners_follow_the_input(training):
    """Each block's partner depends on the keys (a causal column balancing would give every column's first row all
    its mass: each block paired with the one before it, whatever the input)."""
    torch.manual_seed(0)
    attention = sharpened(EfficientSinkhornModel(config("gpt2", block_size=4))).layers[0].self_attn.train(training)
    keys = torch.randn(64, attention.num_key_value_heads, 40, attention.head_dim)
    matrix = attention.sort(keys, None).matrix()  # (64, kv_heads, 10, 10)
    assert (matrix.triu() == 0).all()
    for block in range(2, 10):
        favourite = matrix[:, :, block, :block].argmax(-1)
        assert len(favourite.unique()) > 1, f"block {block} takes the same partner for every input"
        assert (favourite != block - 1).any()


def naive_greedy(scores: torch.Tensor) -> list[int]:
    """Written out: take the largest entry among unused rows and columns, row by row of the result."""
    scores, choice = scores.clone(), [None] * scores.shape[0]
    for _ in range(scores.shape[0]):
        row, column = divmod(int(scores.argmax()), scores.shape[1])
        choice[row] = column
        scores[row, :], scores[:, column] = -math.inf, -math.inf
    return choice


def test_hard_sort_is_a_permutation_and_the_greedy_matching():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(3, 2, 8, 8, generator=generator)
    allowed = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    choice = greedy_permutation(scores, allowed)
    for b, h in itertools.product(range(3), range(2)):
        assert sorted(choice[b, h].tolist()) == list(range(8))
        assert choice[b, h].tolist() == naive_greedy(scores[b, h])
    # a clear permutation in the scores is found exactly
    target = torch.randperm(8, generator=generator)
    peaked = torch.randn(8, 8, generator=generator) + 10 * torch.eye(8)[target]
    assert torch.equal(greedy_permutation(peaked[None, None], allowed)[0, 0], target)
    # with padding blocks, real blocks are matched among themselves
    keep_blocks = torch.ones(1, 8, 2, dtype=torch.bool)
    keep_blocks[0, 5:] = False
    allowed = allowed_pairs(keep_blocks, 1, 8, causal=False, device=torch.device("cpu"))
    choice = greedy_permutation(scores[:1], allowed)
    assert (choice[..., :5] < 5).all() and sorted(choice[0, 0, :5].tolist()) == list(range(5))


# --- the attention, against a naive loop ------------------------------------------------------------------------


def naive_attention(q, k, v, keep, matrix, block_size, causal, sortcut):
    """Loops over batch, head and query: the keys are its block's (causal: up to itself) and the sorted partner
    block sum_j S_ij [K_j, V_j] (padding keys zeroed; a sorted position counts when some weighted block has a real
    token there), or the first k sorted blocks (SortCut)."""
    batch, heads, length, dim = q.shape
    groups = heads // k.shape[1]
    blocks = math.ceil(length / block_size)
    padded = blocks * block_size
    keep = torch.ones(batch, length, dtype=torch.bool) if keep is None else keep
    keep = torch.nn.functional.pad(keep, (0, padded - length))
    k = torch.nn.functional.pad(k, (0, 0, 0, padded - length)) * keep[:, None, :, None]
    v = torch.nn.functional.pad(v, (0, 0, 0, padded - length)) * keep[:, None, :, None]
    out = torch.zeros(batch, length, heads, dim, dtype=torch.float64)
    for b, h in itertools.product(range(batch), range(heads)):
        g = h // groups
        kb, vb = k[b, g].view(blocks, block_size, dim).double(), v[b, g].view(blocks, block_size, dim).double()
        mb = keep[b].view(blocks, block_size)
        s = matrix[b, g].double()
        sorted_k, sorted_v = torch.einsum("ij,jtd->itd", s, kb), torch.einsum("ij,jtd->itd", s, vb)
        sorted_m = torch.einsum("ij,jt->it", s, mb.double()) > 0
        for i in range(length):
            block = i // block_size
            if sortcut is None:
                own = [t for t in range(block_size) if mb[block, t] and (not causal or t <= i % block_size)]
                own = sorted(set(own) | {i % block_size})
                keys = [kb[block, t] for t in own] + [sorted_k[block, t] for t in range(block_size)
                                                      if sorted_m[block, t]]
                values = [vb[block, t] for t in own] + [sorted_v[block, t] for t in range(block_size)
                                                        if sorted_m[block, t]]
            else:
                pairs = [(r, t) for r in range(min(sortcut, blocks)) for t in range(block_size) if sorted_m[r, t]]
                keys, values = [sorted_k[r, t] for r, t in pairs], [sorted_v[r, t] for r, t in pairs]
            logits = torch.stack(keys) @ q[b, h, i].double() / math.sqrt(dim)
            out[b, i, h] = logits.softmax(0) @ torch.stack(values)
    return out


def attention_inputs(style: str, training: bool, length: int = 29, padded: bool = True, **overrides):
    """An attention layer (blocks of 6: 5 blocks, the last partial at 29 tokens) in train or eval mode, random q/k/v,
    a keep-mask with a padded row (or None), and its sort."""
    torch.manual_seed(0)
    model = EfficientSinkhornModel(config(style, block_size=6, **overrides)).train(training)
    attention = model.layers[0].self_attn
    hidden = torch.randn(3, length, model.config.hidden_size)
    keep = None
    if padded:
        keep = torch.ones(3, length, dtype=torch.bool)
        keep[1, length - 10:] = False
    query, key, value = attention.project(hidden, None)
    torch.manual_seed(1)
    sort = attention.sort(key, keep)
    return attention, (query, key, value, keep), sort


CASES = [pytest.param(style, training, sortcut, id=f"{style}-{'train' if training else 'eval'}-sortcut{sortcut}")
         for style in STYLES for training in (True, False) for sortcut in (None, 2)
         if not (sortcut and STYLES[style])]


@pytest.mark.parametrize("length", [29, 30])
@pytest.mark.parametrize(("style", "training", "sortcut"), CASES)
def test_each_block_attends_its_own_block_and_its_sorted_partner(style, training, sortcut, length):
    """29 tokens with a padded row; 30 (whole blocks) without a mask."""
    attention, (query, key, value, keep), sort = attention_inputs(style, training, length, padded=length == 29,
                                                                  sortcut_blocks=sortcut, gumbel_noise=True)
    causal = STYLES[style]
    assert (sort.soft is not None) == training
    expected = naive_attention(query, key, value, keep, sort.matrix(), 6, causal, sortcut)
    with torch.no_grad():
        blocked = sinkhorn_blocked(attention, query, key, value, keep, sort, 6, causal, sortcut)
        reference, weights = sinkhorn_reference(attention, query, key, value, keep, sort, 6, causal, sortcut)
    keep = torch.ones(3, length, dtype=torch.bool) if keep is None else keep
    real = keep[:, :, None, None]
    torch.testing.assert_close((blocked * real).double(), expected * real, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((reference * real).double(), expected * real, rtol=1e-5, atol=1e-6)
    # the weights the reference returns are over the original values and reproduce its output
    values = (value * keep[:, None, :, None]).repeat_interleave(attention.num_key_value_groups, 1)
    torch.testing.assert_close((weights @ values).transpose(1, 2) * real, reference * real, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("style", STYLES)
def test_an_input_shorter_than_a_block_runs_as_one_block_of_its_own_length(style, training):
    """11 tokens under block_size=32: the model runs one 11-token block (the sort of a single block is the identity),
    equal to the reference padded to the whole block, with and without a padded row."""
    torch.manual_seed(0)
    model = EfficientSinkhornModel(config(style, block_size=32, gumbel_noise=True)).train(training)
    attention, causal = model.layers[0].self_attn, STYLES[style]
    assert (attention.block_size_for(11), attention.block_size_for(40)) == (11, 32)
    query, key, value = attention.project(torch.randn(3, 11, model.config.hidden_size), None)
    keep = torch.ones(3, 11, dtype=torch.bool)
    keep[1, 7:] = False
    with torch.no_grad():
        for mask in (None, keep):
            sort_padded, sort_short = attention.sort(key, mask, 32), attention.sort(key, mask, 11)
            padded, _ = sinkhorn_reference(attention, query, key, value, mask, sort_padded, 32, causal, None)
            short = sinkhorn_blocked(attention, query, key, value, mask, sort_short, 11, causal, None)
            real = keep[:, :, None, None] if mask is not None else torch.ones(3, 11, 1, 1, dtype=torch.bool)
            assert padded.abs().max() > 1e-2  # real outputs, not zeros
            torch.testing.assert_close(short * real, padded * real, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("style", STYLES)
def test_eval_sort_is_hard_and_the_weights_cover_exactly_the_two_blocks(style):
    attention, (query, key, value, keep), sort = attention_inputs(style, training=False)
    causal = STYLES[style]
    assert sort.soft is None
    if not causal:  # a permutation of each row's real blocks (5, and 4 in the padded row)
        for b, real_blocks in zip(range(3), (5, 4, 5), strict=True):
            assert sorted(sort.choice[b, 0, :real_blocks].tolist()) == list(range(real_blocks))
    else:  # block i takes one earlier block; block 0 none, nor the padding block 4 of row 1
        real_blocks = torch.nn.functional.pad(keep, (0, 1)).view(3, 5, 6)  # 29 tokens in blocks of 6
        expected = real_blocks.any(-1)[:, None].expand_as(sort.valid).clone()
        expected[..., 0] = False
        assert torch.equal(sort.valid, expected) and not expected[1, :, 4].any()
        assert (sort.choice[..., 1:] < torch.arange(1, 5)).all()
    with torch.no_grad():
        _, weights = sinkhorn_reference(attention, query, key, value, keep, sort, 6, causal, None)
    positions = torch.arange(29)
    for b, h in itertools.product(range(3), range(attention.num_heads)):
        g = h // attention.num_key_value_groups
        for i in positions[keep[b]].tolist():
            partner = sort.choice[b, g, i // 6] if sort.valid[b, g, i // 6] else -1
            own = (positions // 6 == i // 6) & ((positions <= i) if causal else True)
            visible = own | (positions // 6 == partner)
            assert ((weights[b, h, i] > 0) == (visible & keep[b])).all(), (b, h, i)


def test_blocked_path_equals_the_reference_with_gradients_under_noise():
    for style, sortcut in (("bert", None), ("bert", 2), ("llama", None)):
        model = EfficientSinkhornForMaskedLM if not STYLES[style] else EfficientSinkhornForCausalLM
        torch.manual_seed(0)
        net = model(config(style, gumbel_noise=True, sortcut_blocks=sortcut)).train()
        inputs = TESTER.inputs(net.config, seed=2)
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        results = []
        for backend in ("reference", "blocked"):
            net.config.attention_backend = backend
            net.zero_grad()
            torch.manual_seed(5)  # the same Gumbel noise for both paths
            out = net(**inputs, labels=labels, return_logits=True)
            out.loss.backward()
            results.append((out.logits.detach(), {n: p.grad.clone() for n, p in net.named_parameters()
                                                  if p.grad is not None}))
        real = inputs["attention_mask"].bool()
        torch.testing.assert_close(results[1][0][real], results[0][0][real], rtol=1e-5, atol=2e-5)
        assert any(n.endswith("sort_net.first.weight") and g.abs().max() > 0 for n, g in results[1][1].items())
        for name, grad in results[0][1].items():
            torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-5, msg=f"{style} {name}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
@pytest.mark.parametrize(("style", "sortcut"), [("bert", None), ("bert", 2), ("llama", None)])
@pytest.mark.parametrize("training", [False, True])
def test_gpu_blocked_path_equals_the_reference_and_the_cpu(style, sortcut, training):
    """On CUDA (fp32, no TF32), 300 tokens in blocks of 32 (a partial last block) with a padded row: the blocked path
    (gathered or mixed blocks through sdpa, the path "auto" takes on CUDA) equals the dense reference on CUDA, outputs
    and gradients; training draws the same Gumbel noise for both (one seed). In training without noise (the soft sort,
    continuous in the scores) it also equals the blocked path on CPU; eval's hard sort is left out of that comparison,
    since a near-tie in the scores could pick another block on another device."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    head = EfficientSinkhornForCausalLM if STYLES[style] else EfficientSinkhornForMaskedLM
    model = sharpened(head(config(style, block_size=32, head_dim=16, max_position_embeddings=512,
                                  sortcut_blocks=sortcut))).train(training)
    ids = torch.randint(1, 97, (2, 300), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 250:] = 0
    ids[mask == 0] = 0

    def run(device: str, backend: str, noise: bool):
        model.to(device)
        model.config.gumbel_noise = noise
        torch.manual_seed(2)
        logits, grads = lm_logits_and_gradients(model, backend, ids.to(device), mask.to(device))
        model.config.attention_backend = "auto"
        return logits[mask.bool().to(device)].cpu(), {name: grad.cpu() for name, grad in grads.items()}

    pairs = [(("cuda", "blocked", training), ("cuda", "reference", training))]
    if training:
        pairs.append((("cuda", "blocked", False), ("cpu", "blocked", False)))
    for first, second in pairs:
        (base_logits, base_grads), (logits, grads) = run(*first), run(*second)
        torch.testing.assert_close(logits, base_logits, rtol=1e-4, atol=1e-4, msg=f"{second} logits")
        for name, grad in base_grads.items():
            scale = grad.abs().max().item()
            torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-5 * max(scale, 1e-3),
                                       msg=f"{second} {name}")


# --- randomness ---------------------------------------------------------------------------------------------------


def test_gumbel_noise_in_training_only_from_the_default_generator_never_reseeded():
    torch.manual_seed(0)
    model = EfficientSinkhornModel(config("bert", gumbel_noise=True))
    inputs = TESTER.inputs(model.config)
    quiet = EfficientSinkhornModel(config("bert", gumbel_noise=False))
    quiet.load_state_dict(model.state_dict())
    model.eval(), quiet.eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        first, second = model(**inputs).last_hidden_state, model(**inputs).last_hidden_state
        assert torch.equal(first, second) and torch.equal(first, quiet(**inputs).last_hidden_state)
    assert torch.equal(torch.get_rng_state(), state), "eval draws nothing from the generator"

    model.train(), quiet.train()
    with torch.no_grad():
        runs = {}
        for seed in (1, 1, 2):
            torch.manual_seed(seed)
            runs.setdefault(seed, []).append(model(**inputs).last_hidden_state)
        quiet_train = quiet(**inputs).last_hidden_state
    assert torch.equal(runs[1][0], runs[1][1]), "the same seed gives the same noise"
    assert (runs[1][0] - runs[2][0]).abs().max() > 1e-4, "another seed gives other noise (nothing reseeds)"
    assert (runs[1][0] - quiet_train).abs().max() > 1e-4, "training adds noise"
    torch.manual_seed(1)
    expected_next = (torch.rand(1), torch.rand(1))
    torch.manual_seed(1)
    with torch.no_grad():
        model(**inputs)
    assert not torch.equal(torch.rand(1), expected_next[0]), "the noise is drawn from the default generator"


def test_activation_checkpointing_replays_the_noise():
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = EfficientSinkhornModel(config("bert", gumbel_noise=True)).train()
        if checkpointing:
            enable_activation_checkpointing(model)
        inputs = TESTER.inputs(model.config)
        torch.manual_seed(3)
        model(**inputs).last_hidden_state.pow(2).mean().backward()
        gradients.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


# --- causality and padding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize("training", [False, True])
def test_a_later_token_changes_no_earlier_output(style, training):
    torch.manual_seed(0)
    model = sharpened(EfficientSinkhornModel(config(style, gumbel_noise=True))).train(training)
    input_ids = TESTER.inputs(model.config, batch=2, padded=False)["input_ids"]
    for position in (8, 13, 16, 25, 30, 33, 36):  # first tokens of blocks (they change the block's summary) and others
        changed = input_ids.clone()
        changed[:, position] = changed[:, position] % (model.config.vocab_size - 1) + 1
        with torch.no_grad():
            torch.manual_seed(4)
            before = model(input_ids=input_ids).last_hidden_state
            torch.manual_seed(4)
            after = model(input_ids=changed).last_hidden_state
        torch.testing.assert_close(after[:, :position], before[:, :position], rtol=0, atol=1e-6,
                                   msg=f"position {position}")
        assert (after[:, position] - before[:, position]).abs().max() > 1e-3


@pytest.mark.parametrize(("style", "sortcut"), [("bert", None), ("bert", 2), ("bert", 9), ("gpt2", None)])
@pytest.mark.parametrize("training", [False, True])
def test_a_padded_batch_gives_each_sequence_its_own_outputs(style, sortcut, training):
    """Soft (training, noise off) and hard (eval) sorts; SortCut with k below and above the number of blocks."""
    torch.manual_seed(0)
    model = sharpened(EfficientSinkhornModel(config(style, sortcut_blocks=sortcut))).train(training)
    rows = [torch.randint(1, 97, (n,), generator=torch.Generator().manual_seed(n)) for n in (37, 30, 12)]
    ids = torch.zeros(3, 46, dtype=torch.long)
    mask = torch.zeros(3, 46, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, :len(row)], mask[b, :len(row)] = row, 1
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).last_hidden_state
        for b, row in enumerate(rows):
            alone = model(input_ids=row[None]).last_hidden_state[0]
            torch.testing.assert_close(batched[b, :len(row)], alone, rtol=1e-5, atol=1e-5, msg=f"row {b}")


def test_sortcut_one_block_covering_the_input_is_full_attention():
    from test_common import full_attention_twin

    torch.manual_seed(0)
    model = EfficientSinkhornModel(config("bert", sortcut_blocks=1)).eval()
    inputs = TESTER.inputs(model.config)
    degenerate, backbone = full_attention_twin(model, 37)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        exact = backbone(**inputs).last_hidden_state[real]
        torch.testing.assert_close(degenerate(**inputs).last_hidden_state[real], exact, rtol=1e-5, atol=1e-5)
        assert (model(**inputs).last_hidden_state[real] - exact).abs().max() > 1e-3
        degenerate.train()  # the soft sort of one block is the identity too, noise or not
        degenerate.config.gumbel_noise = True
        torch.testing.assert_close(degenerate(**inputs).last_hidden_state[real], exact, rtol=1e-5, atol=1e-5)


# --- configuration and conversion ---------------------------------------------------------------------------------


def test_config_errors_say_what_to_change():
    with pytest.raises(ValueError, match="serves encoders only"):
        config("gpt2", sortcut_blocks=2)
    with pytest.raises(ValueError, match="'auto', 'blocked' or 'reference'"):
        config("bert", attention_backend="flex")
    with pytest.raises(ValueError, match="sinkhorn_temperature"):
        config("bert", sinkhorn_temperature=-1.0)
    assert config("bert", block_size=8, max_position_embeddings=100).max_num_blocks == 13
    model = EfficientSinkhornModel(config("llama", block_size=8, max_position_embeddings=16))  # rotary: no table
    with pytest.raises(ValueError, match="max_num_blocks=2"):
        model(input_ids=torch.ones(1, 17, dtype=torch.long))


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_conversion_initialises_the_sorting_network_as_documented(kind):
    source = tiny_source(kind)
    family = family_of(source.config)
    head = "masked_lm" if kind == "bert" else "causal_lm"
    result = convert_model(source, family, "sinkhorn", head, max_length=128, block_size=8)
    layers = result.model.config.num_hidden_layers
    assert sorted(result.new_parameters) == sorted(f"model.layers.{i}.self_attn.sort_net.{n}.{p}" for i in
                                                   range(layers) for n in ("first", "second") for p in
                                                   ("weight", "bias"))
    state = result.model.state_dict()
    weights = torch.cat([state[n].flatten() for n in result.new_parameters if n.endswith("weight")])
    biases = torch.cat([state[n].flatten() for n in result.new_parameters if n.endswith("bias")])
    assert (biases == 0).all() and abs(weights.std().item() - result.model.config.initializer_range) < 0.005
    assert state["model.layers.0.self_attn.sort_net.second.weight"].shape[0] == 128 // 8
    assert MASKED < -1e8  # excluded pairs sit far below any score
