"""Loading transformers-v4 Transformer-XL checkpoints (`TransfoXLLMHeadModel` / `TransfoXLModel`, model_type
"transfo-xl", removed from transformers in 5.0) into EfficientTransformerXL, safely: config.json and safetensors
weights only. A pickled pytorch_model.bin is refused, never opened; convert it to safetensors first where you trust
the file (e.g. with transformers 4.x: `TransfoXLLMHeadModel.from_pretrained(...).save_pretrained(out,
safe_serialization=True)`).

Every source tensor is used and every target tensor filled (a leftover or missing key raises). Mapping: qkv_net ->
q/k/v_proj (split in that order), o_net -> o_proj, r_net -> r_proj, r_w_bias -> u (relative_bias.content), r_r_bias ->
v (relative_bias.position) (shared biases, untie_r=False, are copied into every layer), the attention and FFN layer
norms -> attention_norm / mlp_norm (post-norm), CoreNet.0 / CoreNet.3 -> mlp.up_proj / down_proj, the adaptive
embedding and softmax -> AdaptiveInput / AdaptiveSoftmax (div_val 1: the single table split at the cutoffs, its one
projection copied per cluster); the embedding scale sqrt(d_model) becomes embedding_multiplier; clamp_len <= 0 (v4's
"no clamping") becomes None. Tied tensors a checkpoint still holds must equal their source. The paper's dropout
inside the FFN (between its two layers) and on the final output is not reproduced (training only).
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..models.transformer_xl import (
    EfficientTransformerXLConfig,
    EfficientTransformerXLForCausalLM,
    EfficientTransformerXLModel,
)
from ..models.transformer_xl.adaptive import cluster_bounds, has_projections, tied_projections

PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5")


def config_from_transfo_xl(source: dict, **overrides) -> EfficientTransformerXLConfig:
    """Our config for a v4 TransfoXLConfig dict (config.json); `overrides` are fields of ours (e.g. mem_len)."""
    if source.get("model_type") != "transfo-xl":
        raise ValueError(f"model_type={source.get('model_type')!r}: this loads transformers-v4 Transformer-XL "
                         "checkpoints (model_type 'transfo-xl').")
    if source.get("attn_type", 0) != 0:
        raise ValueError(f"attn_type={source['attn_type']}: only attn_type 0 (the paper's relative attention) exists "
                         "in v4 checkpoints.")
    if source.get("sample_softmax", -1) > 0:
        raise ValueError("sample_softmax > 0 (a sampled softmax) is not supported; v4 never implemented it either.")
    if source.get("pre_lnorm", False):
        raise ValueError("pre_lnorm=True checkpoints (no final norm) are not supported; the released ones are "
                         "post-norm.")
    d_model = source.get("d_model", 1024)
    d_embed = source.get("d_embed", d_model)
    cutoffs = list(source.get("cutoffs", [20000, 40000, 200000]))
    if not cutoffs and d_embed != d_model:
        raise ValueError(f"d_embed={d_embed} != d_model={d_model} without cutoffs is not supported; give the "
                         "checkpoint's cutoffs.")
    clamp = source.get("clamp_len", 1000)
    fields = dict(
        vocab_size=source.get("vocab_size", 267735), hidden_size=d_model, embedding_size=d_embed,
        num_attention_heads=source.get("n_head", 16), head_dim=source.get("d_head", 64),
        intermediate_size=source.get("d_inner", 4096), num_hidden_layers=source.get("n_layer", 18),
        mem_len=source.get("mem_len", 1600), clamp_len=clamp if clamp > 0 else None,
        same_length=source.get("same_length", True), hidden_dropout_prob=source.get("dropout", 0.1),
        attention_probs_dropout_prob=source.get("dropatt", 0.0), layer_norm_eps=source.get("layer_norm_epsilon", 1e-5),
        initializer_range=source.get("init_std", 0.02), embedding_multiplier=d_model**0.5, lm_head_bias=True,
        tie_word_embeddings=source.get("tie_word_embeddings", True), pad_token_id=None,
        eos_token_id=source.get("eos_token_id", 0), adaptive_cutoffs=cutoffs or None,
        adaptive_div_val=source.get("div_val", 4) if cutoffs else 1,
        adaptive_tie_projections=[bool(t) for t in source["tie_projs"]] if cutoffs and "tie_projs" in source else None,
    )
    return EfficientTransformerXLConfig(**{**fields, **overrides})


class _Source:
    """The v4 state dict, consumed key by key."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = dict(state)

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise ValueError(f"The checkpoint lacks {key!r}, which its config implies.")
        return self.state.pop(key)

    def tied(self, key: str, expected: torch.Tensor) -> None:
        """A tied tensor: absent (saved once) or equal to its source."""
        value = self.state.pop(key, None)
        if value is not None and not torch.equal(value, expected):
            raise ValueError(f"{key!r} is tied to another tensor by the config but holds other values.")


def weights_from_transfo_xl(state: dict[str, torch.Tensor], config: EfficientTransformerXLConfig
                            ) -> dict[str, torch.Tensor]:
    """Our state dict (head-level names when the source has the `crit` softmax, else the bare model's) for a v4
    state dict. Raises on any key left over or missing."""
    source = _Source(state)
    head = any(key.startswith("crit.") for key in state)
    p = "transformer." if head else ""
    out: dict[str, torch.Tensor] = {}
    embed = "model.embeddings.embed_tokens"
    bounds = cluster_bounds(config) if config.adaptive_cutoffs else None
    div_one = config.adaptive_div_val == 1
    if bounds is None:
        out[f"{embed}.weight"] = source.take(f"{p}word_emb.emb_layers.0.weight")
    else:
        full = source.take(f"{p}word_emb.emb_layers.0.weight") if div_one else None
        shared = source.take(f"{p}word_emb.emb_projs.0") if div_one and has_projections(config) else None
        for i, (start, end) in enumerate(bounds):
            out[f"{embed}.tables.{i}.weight"] = full[start:end] if div_one else source.take(
                f"{p}word_emb.emb_layers.{i}.weight")
            if has_projections(config):
                out[f"{embed}.projections.{i}.weight"] = shared if div_one else source.take(
                    f"{p}word_emb.emb_projs.{i}")
    shared_u, shared_v = source.state.pop(f"{p}r_w_bias", None), source.state.pop(f"{p}r_r_bias", None)
    for layer in range(config.num_hidden_layers):
        src, dst = f"{p}layers.{layer}.", f"model.layers.{layer}."
        query, key, value = source.take(f"{src}dec_attn.qkv_net.weight").chunk(3, dim=0)
        attention = {"q_proj.weight": query, "k_proj.weight": key, "v_proj.weight": value,
                     "o_proj.weight": source.take(f"{src}dec_attn.o_net.weight"),
                     "r_proj.weight": source.take(f"{src}dec_attn.r_net.weight")}
        for ours, theirs, fallback in (("content", "r_w_bias", shared_u), ("position", "r_r_bias", shared_v)):
            bias = source.state.pop(f"{src}dec_attn.{theirs}", None)
            if bias is None and fallback is None:
                raise ValueError(f"The checkpoint has no {theirs} for layer {layer} (per layer or shared).")
            attention[f"relative_bias.{ours}"] = (bias if bias is not None else fallback).clone()
        out.update({f"{dst}self_attn.{name}": tensor for name, tensor in attention.items()})
        for ours, theirs in (("attention_norm", "dec_attn.layer_norm"), ("mlp_norm", "pos_ff.layer_norm"),
                             ("mlp.up_proj", "pos_ff.CoreNet.0"), ("mlp.down_proj", "pos_ff.CoreNet.3")):
            for kind in ("weight", "bias"):
                out[f"{dst}{ours}.{kind}"] = source.take(f"{src}{theirs}.{kind}")
    inv_freq = source.state.pop(f"{p}pos_emb.inv_freq", None)
    expected = 1.0 / (10000 ** (torch.arange(0, config.hidden_size, 2, dtype=torch.float32) / config.hidden_size))
    if inv_freq is not None and not torch.allclose(inv_freq.float(), expected):
        raise ValueError("pos_emb.inv_freq differs from the paper's sinusoid frequencies 10000^(-2k/d_model).")
    if head:
        out.update(_softmax_weights(source, config, out))
    else:
        out = {name.removeprefix("model."): tensor for name, tensor in out.items()}
    if source.state:
        raise ValueError(f"Unused checkpoint tensors: {sorted(source.state)[:8]}; this is not a v4 Transformer-XL "
                         "state dict of this config.")
    return out


def _softmax_weights(source: _Source, config: EfficientTransformerXLConfig, out: dict) -> dict[str, torch.Tensor]:
    embed = "model.embeddings.embed_tokens"
    tie = config.tie_word_embeddings
    if config.adaptive_cutoffs is None:
        weights = {"lm_head.bias": source.take("crit.out_layers.0.bias")}
        if tie:
            source.tied("crit.out_layers.0.weight", out[f"{embed}.weight"])
            weights["lm_head.weight"] = out[f"{embed}.weight"]
        else:
            weights["lm_head.weight"] = source.take("crit.out_layers.0.weight")
        return weights
    bounds, div_one = cluster_bounds(config), config.adaptive_div_val == 1
    weights = {"lm_head.cluster_weight": source.take("crit.cluster_weight"),
               "lm_head.cluster_bias": source.take("crit.cluster_bias")}
    if div_one:
        weights["lm_head.bias"] = source.take("crit.out_layers.0.bias")
        full = torch.cat([out[f"{embed}.tables.{i}.weight"] for i in range(len(bounds))])
        if tie:
            source.tied("crit.out_layers.0.weight", full)
        else:
            table = source.take("crit.out_layers.0.weight")
            weights.update({f"lm_head.weights.{i}": table[start:end] for i, (start, end) in enumerate(bounds)})
    else:
        weights["lm_head.bias"] = torch.cat([source.take(f"crit.out_layers.{i}.bias") for i in range(len(bounds))])
        for i in range(len(bounds)):
            if tie:
                source.tied(f"crit.out_layers.{i}.weight", out[f"{embed}.tables.{i}.weight"])
            else:
                weights[f"lm_head.weights.{i}"] = source.take(f"crit.out_layers.{i}.weight")
    tied = tied_projections(config) if tie else [False] * len(bounds)
    for i in range(len(bounds)):
        if not has_projections(config):
            continue
        if tied[i]:
            source.tied(f"crit.out_projs.{i}", out[f"{embed}.projections.{i}.weight"])
        else:
            weights[f"lm_head.projections.{i}.weight"] = source.take(f"crit.out_projs.{i}")
    return weights


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's safetensors weights (one file or an index of shards); a pickle-only folder raises."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_file(folder / shard))
        return state
    if (folder / "model.safetensors").exists():
        return load_file(folder / "model.safetensors")
    pickled = [name for name in PICKLE_FILES if (folder / name).exists()]
    raise ValueError(f"{folder} has no model.safetensors" + (f", only {pickled}, which would need unpickling: it is "
                     "never opened here. Convert it to safetensors first where you trust the file (transformers 4.x: "
                     "from_pretrained then save_pretrained(out, safe_serialization=True))." if pickled else "."))


def load_transfo_xl(folder: str | Path, **overrides):
    """An EfficientTransformerXLForCausalLM (or the bare model, for a TransfoXLModel checkpoint) from a v4 folder:
    config.json + safetensors. `overrides` are config fields of ours (mem_len, same_length, ...)."""
    folder = Path(folder)
    config = config_from_transfo_xl(json.loads((folder / "config.json").read_text()), **overrides)
    state = read_safetensors(folder)
    weights = weights_from_transfo_xl(state, config)
    model_class = EfficientTransformerXLForCausalLM if any(k.startswith("crit.") for k in state) else \
        EfficientTransformerXLModel
    model = model_class(config)
    expected = set(model.state_dict())
    if set(weights) != expected:
        raise ValueError(f"Conversion left {sorted(expected - set(weights))[:8]} unfilled and made "
                         f"{sorted(set(weights) - expected)[:8]} the model lacks.")
    model.load_state_dict(weights, strict=True)
    return model.eval()
