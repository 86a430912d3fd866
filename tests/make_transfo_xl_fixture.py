"""Random transformers-v4 `TransfoXLLMHeadModel` state dicts for the configs in tests/fixtures/transfo_xl/*/config.json.

transformers 4.x (which held TransfoXL) can't be installed beside 5.x, so the fixtures are made without it: the key
names and shapes below were read off v4's `modeling_transfo_xl.py` (`TransfoXLModel`,
`RelPartialLearnableMultiHeadAttn`, `PositionwiseFF`, `AdaptiveEmbedding`) and `modeling_transfo_xl_utilities.py`
(`ProjectedAdaptiveLogSoftmax`) at the 4.35 deprecation, and the values drawn from a generator seeded by the
fixture's name (so the tests regenerate the same tensors). Tied tensors (the output tables tied to the input tables,
the projections marked in tie_projs) are the same tensor, and are left out of the written file as v4's safetensors
save leaves them out, except with `keep_tied` (as a file converted from an old pytorch_model.bin holds them).

    python tests/make_transfo_xl_fixture.py OUT_FOLDER [adaptive|div_val_1|plain]
"""

import json
import shutil
import sys
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

FIXTURES = Path(__file__).parent / "fixtures" / "transfo_xl"


def v4_state(config: dict, seed: int) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The full state dict (tied tensors included) and the names of the tied copies."""
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape, mean=0.0, std=0.2):
        return torch.randn(*shape, generator=generator) * std + mean

    n_token, d_model, d_embed = config["vocab_size"], config["d_model"], config["d_embed"]
    heads, d_head, inner, div_val = config["n_head"], config["d_head"], config["d_inner"], config["div_val"]
    ends = [0, *config["cutoffs"], n_token]
    state, tied = {}, set()
    if div_val == 1:
        state["transformer.word_emb.emb_layers.0.weight"] = draw(n_token, d_embed, std=1.0)
        if d_model != d_embed:
            state["transformer.word_emb.emb_projs.0"] = draw(d_model, d_embed)
    else:
        for i in range(len(ends) - 1):
            dim = d_embed // div_val**i
            state[f"transformer.word_emb.emb_layers.{i}.weight"] = draw(ends[i + 1] - ends[i], dim, std=1.0)
            state[f"transformer.word_emb.emb_projs.{i}"] = draw(d_model, dim)
    state["transformer.pos_emb.inv_freq"] = 1 / (10000 ** (torch.arange(0.0, d_model, 2.0) / d_model))
    if not config["untie_r"]:
        state["transformer.r_w_bias"], state["transformer.r_r_bias"] = draw(heads, d_head), draw(heads, d_head)
    for layer in range(config["n_layer"]):
        p = f"transformer.layers.{layer}."
        if config["untie_r"]:
            state[p + "dec_attn.r_r_bias"], state[p + "dec_attn.r_w_bias"] = draw(heads, d_head), draw(heads, d_head)
        state[p + "dec_attn.qkv_net.weight"] = draw(3 * heads * d_head, d_model)
        state[p + "dec_attn.o_net.weight"] = draw(d_model, heads * d_head)
        state[p + "dec_attn.layer_norm.weight"] = draw(d_model, mean=1.0, std=0.1)
        state[p + "dec_attn.layer_norm.bias"] = draw(d_model, std=0.1)
        state[p + "dec_attn.r_net.weight"] = draw(heads * d_head, d_model)
        state[p + "pos_ff.CoreNet.0.weight"], state[p + "pos_ff.CoreNet.0.bias"] = draw(inner, d_model), draw(inner)
        state[p + "pos_ff.CoreNet.3.weight"], state[p + "pos_ff.CoreNet.3.bias"] = draw(d_model, inner), draw(d_model)
        state[p + "pos_ff.layer_norm.weight"] = draw(d_model, mean=1.0, std=0.1)
        state[p + "pos_ff.layer_norm.bias"] = draw(d_model, std=0.1)
    clusters = len(ends) - 2
    if clusters:
        state["crit.cluster_weight"], state["crit.cluster_bias"] = draw(clusters, d_embed), draw(clusters)
    for i in range(1 if div_val == 1 else len(ends) - 1):
        emb = state[f"transformer.word_emb.emb_layers.{i}.weight"]
        if config["tie_word_embeddings"]:
            state[f"crit.out_layers.{i}.weight"] = emb
            tied.add(f"crit.out_layers.{i}.weight")
        else:
            state[f"crit.out_layers.{i}.weight"] = draw(*emb.shape)
        state[f"crit.out_layers.{i}.bias"] = draw(emb.shape[0])
    for i, tie in enumerate(config["tie_projs"]):
        if div_val == 1 and d_model == d_embed:
            continue  # v4 keeps no projection then
        source = f"transformer.word_emb.emb_projs.{0 if div_val == 1 else i}"
        if tie:
            state[f"crit.out_projs.{i}"] = state[source]
            tied.add(f"crit.out_projs.{i}")
        else:
            state[f"crit.out_projs.{i}"] = draw(*state[source].shape)
    return state, tied


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


def write_fixture(name: str, out: Path, keep_tied: bool = False) -> Path:
    """config.json (copied) and model.safetensors in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / name / "config.json", out / "config.json")
    config = json.loads((out / "config.json").read_text())
    state, tied = v4_state(config, seed_of(name))
    written = {k: v.contiguous() for k, v in state.items() if keep_tied or k not in tied}
    save_file({k: v.clone() for k, v in written.items()}, out / "model.safetensors")
    return out


if __name__ == "__main__":
    write_fixture(sys.argv[2] if len(sys.argv) > 2 else "adaptive", Path(sys.argv[1]))
