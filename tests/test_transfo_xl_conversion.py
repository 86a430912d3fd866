"""Loading transformers-v4 Transformer-XL checkpoints: the converted model gives the logits of a naive
re-implementation of v4's TransfoXLLMHeadModel forward, segment after segment with its memory.

The fixtures: the v4-format config.json files in tests/fixtures/transfo_xl/ (written by hand from v4's
TransfoXLConfig fields) and random weights under v4's key names and shapes, drawn by tests/make_transfo_xl_fixture.py
into a temporary folder (as safetensors, tied tensors left out as v4's safetensors save does, or kept for the
"plain" fixture as an old pickle-era file holds them). `naive_v4` below is written from the paper and v4's documented
behaviour (adaptive embedding scaled by sqrt(d_model), sinusoids over distances klen-1..0 clamped at clamp_len, the
same_length mask as v4 builds it from mask_len = klen - mem_len, post-norm blocks, memory = each layer's input,
the adaptive log-softmax), with explicit distances instead of the relative shift.
"""

import json
import math

import pytest
import torch
from make_transfo_xl_fixture import FIXTURES, seed_of, v4_state, write_fixture

from hf_efficient.conversion.transfo_xl import load_transfo_xl
from hf_efficient.core.cache_argument import returned_cache

NAMES = ("adaptive", "div_val_1", "plain")


def naive_v4(state: dict, config: dict, ids: torch.Tensor, mems: list | None):
    """v4's eval forward, batch-first: (log-probabilities (b, n, vocab), new mems)."""
    d_model, heads, d_head = config["d_model"], config["n_head"], config["d_head"]
    vocab, div_val, mem_len = config["vocab_size"], config["div_val"], config["mem_len"]
    ends = [0, *config["cutoffs"], vocab]
    cluster_of = [max(i for i in range(len(ends) - 1) if ends[i] <= t) for t in range(vocab)]

    def embed(token: int) -> torch.Tensor:
        if div_val == 1:
            row = state["transformer.word_emb.emb_layers.0.weight"][token]
            projection = state.get("transformer.word_emb.emb_projs.0")
        else:
            i = cluster_of[token]
            row = state[f"transformer.word_emb.emb_layers.{i}.weight"][token - ends[i]]
            projection = state[f"transformer.word_emb.emb_projs.{i}"]
        return (projection @ row if projection is not None else row) * math.sqrt(d_model)

    batch, length = ids.shape
    hidden = torch.stack([torch.stack([embed(t) for t in row]) for row in ids.tolist()])
    memory_length = 0 if mems is None else mems[0].shape[1]
    keys = memory_length + length
    mask_len = keys - mem_len
    shift = length - mask_len if mask_len > 0 else length
    i, j = torch.arange(length)[:, None], torch.arange(keys)
    masked = j > i + memory_length
    if config["same_length"]:
        masked = masked | (j <= i - shift)
    clamp = config["clamp_len"]
    distance_of_row = torch.arange(keys - 1, -1, -1).float()
    if clamp > 0:
        distance_of_row = distance_of_row.clamp(max=clamp)
    inv_freq = 1 / (10000 ** (torch.arange(0.0, d_model, 2.0) / d_model))
    angles = distance_of_row[:, None] * inv_freq
    table = torch.cat([angles.sin(), angles.cos()], dim=-1)  # row c: distance keys - 1 - c
    row_index = (keys - 1 - (memory_length + i - j)).clamp(0, keys - 1)  # the table row of each (i, j) distance
    layer_inputs = []
    for layer in range(config["n_layer"]):
        p = f"transformer.layers.{layer}."
        layer_inputs.append(hidden)
        context = hidden if mems is None else torch.cat([mems[layer], hidden], dim=1)
        q, k, v = (context @ state[p + "dec_attn.qkv_net.weight"].T).chunk(3, dim=-1)
        q = q[:, -length:].view(batch, length, heads, d_head)
        k, v = k.view(batch, keys, heads, d_head), v.view(batch, keys, heads, d_head)
        r = (table @ state[p + "dec_attn.r_net.weight"].T).view(keys, heads, d_head)
        u = state.get(p + "dec_attn.r_w_bias", state.get("transformer.r_w_bias"))
        vb = state.get(p + "dec_attn.r_r_bias", state.get("transformer.r_r_bias"))
        content = torch.einsum("bihd,bjhd->bhij", q + u, k)
        position = torch.einsum("bihd,ijhd->bhij", q + vb, r[row_index])
        scores = ((content + position) / math.sqrt(d_head)).masked_fill(masked, float("-inf"))
        attended = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).reshape(batch, length, heads * d_head)
        norm = torch.nn.functional.layer_norm
        hidden = norm(hidden + attended @ state[p + "dec_attn.o_net.weight"].T, (d_model,),
                      state[p + "dec_attn.layer_norm.weight"], state[p + "dec_attn.layer_norm.bias"], 1e-5)
        inner = torch.relu(hidden @ state[p + "pos_ff.CoreNet.0.weight"].T + state[p + "pos_ff.CoreNet.0.bias"])
        hidden = norm(hidden + inner @ state[p + "pos_ff.CoreNet.3.weight"].T + state[p + "pos_ff.CoreNet.3.bias"],
                      (d_model,), state[p + "pos_ff.layer_norm.weight"], state[p + "pos_ff.layer_norm.bias"], 1e-5)
    new_mems = [(x if mems is None else torch.cat([mems[n], x], dim=1))[:, -mem_len:] for n, x in
                enumerate(layer_inputs)]

    def cluster_logits(i: int, extra: bool) -> torch.Tensor:
        if div_val == 1:
            weight = state["crit.out_layers.0.weight"][ends[i]:ends[i + 1]]
            bias = state["crit.out_layers.0.bias"][ends[i]:ends[i + 1]]
        else:
            weight, bias = state[f"crit.out_layers.{i}.weight"], state[f"crit.out_layers.{i}.bias"]
        if extra:
            weight = torch.cat([weight, state["crit.cluster_weight"]])
            bias = torch.cat([bias, state["crit.cluster_bias"]])
        projection = state.get(f"crit.out_projs.{i}")
        projected = hidden @ projection if projection is not None else hidden
        return projected @ weight.T + bias

    clusters = len(ends) - 2
    if not clusters:
        return cluster_logits(0, False).log_softmax(-1), new_mems
    head = cluster_logits(0, True).log_softmax(-1)
    pieces = [head[..., :ends[1]]]
    for i in range(1, clusters + 1):
        pieces.append(head[..., ends[1] + i - 1, None] + cluster_logits(i, False).log_softmax(-1))
    return torch.cat(pieces, dim=-1), new_mems


@pytest.mark.parametrize("name", NAMES)
def test_converted_checkpoint_gives_v4_logits_segment_after_segment(name, tmp_path):
    folder = write_fixture(name, tmp_path / name, keep_tied=name == "plain")
    config = json.loads((FIXTURES / name / "config.json").read_text())
    state, _ = v4_state(config, seed_of(name))
    model = load_transfo_xl(folder)
    assert model.config.mem_len == config["mem_len"] and model.config.same_length == config["same_length"]
    segments = torch.randint(0, config["vocab_size"], (2, 23), generator=torch.Generator().manual_seed(1))
    cache, mems = None, None
    with torch.no_grad():
        for start, end in ((0, 9), (9, 16), (16, 17), (17, 23)):
            ours = model(input_ids=segments[:, start:end], cache=cache, use_cache=True)
            expected, mems = naive_v4(state, config, segments[:, start:end], mems)
            # v4 returns log-probabilities; ours: logits (plain softmax) or log-probabilities (adaptive)
            torch.testing.assert_close(ours.logits.log_softmax(-1), expected, rtol=1e-4, atol=1e-4,
                                       msg=f"tokens {start}:{end}")
            cache = returned_cache(ours)


def test_pickle_only_folders_are_refused_unopened(tmp_path):
    folder = write_fixture("plain", tmp_path / "plain")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")  # any bytes: it must not be read
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle: never opened")
    with pytest.raises(ValueError, match="never opened"):
        load_transfo_xl(folder)


def test_bad_checkpoints_raise(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = write_fixture("adaptive", tmp_path / "adaptive")
    weights = load_file(folder / "model.safetensors")
    save_file({**weights, "transformer.extra": torch.zeros(1)}, folder / "model.safetensors")
    with pytest.raises(ValueError, match="Unused checkpoint tensors"):
        load_transfo_xl(folder)
    del weights["crit.cluster_bias"]
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(ValueError, match="lacks 'crit.cluster_bias'"):
        load_transfo_xl(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "pre_lnorm": True}))
    with pytest.raises(ValueError, match="pre_lnorm"):
        load_transfo_xl(folder)


def test_a_bare_transfo_xl_model_loads_as_the_bare_model(tmp_path):
    """A TransfoXLModel checkpoint (no `crit`, no "transformer." prefix) becomes EfficientTransformerXLModel, equal
    to the backbone of the LM-head checkpoint it was cut from."""
    from safetensors.torch import load_file, save_file

    from hf_efficient import EfficientTransformerXLModel

    folder = write_fixture("adaptive", tmp_path / "lm")
    full = load_transfo_xl(folder)
    weights = load_file(folder / "model.safetensors")
    bare = {k.removeprefix("transformer."): v for k, v in weights.items() if not k.startswith("crit.")}
    save_file(bare, folder / "model.safetensors")
    model = load_transfo_xl(folder)
    assert type(model) is EfficientTransformerXLModel
    tokens = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=tokens).last_hidden_state,
                                   full.model(input_ids=tokens).last_hidden_state, rtol=0, atol=0)
