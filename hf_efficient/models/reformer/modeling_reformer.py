"""EfficientReformer: local and LSH attention layers, optionally in a reversible residual stack with chunked
feed-forward."""

import copy

import torch
from torch import nn
from transformers import initialization as init

from ...attention.lsh import (
    hash_buckets,
    local_blocked,
    local_dense,
    local_multiplicity,
    lsh_blocked,
    lsh_causal_allowed,
    lsh_dense,
    lsh_multiplicity,
    normalize_keys,
)
from ...core.attention import EfficientAttention, repeat_kv
from ...core.embeddings import EfficientEmbeddings, EfficientRotaryEmbedding, apply_rotary
from ...core.heads import (
    EfficientForCausalLM,
    EfficientForMaskedLM,
    EfficientForQuestionAnswering,
    EfficientForSequenceClassification,
    EfficientForTokenClassification,
    EfficientMaskedLMHead,
)
from ...core.layers import EfficientBlock, EfficientMLP, build_norm
from ...core.masks import refuse_left_padding, right_alignment
from ...core.modeling import EfficientModel, EfficientPooler, EfficientPreTrainedModel
from .cache_reformer import ReformerCache, ReformerCacheLayer
from .configuration_reformer import EfficientReformerConfig

LAYER_SEED_STRIDE = 100003


def layer_seed(config: EfficientReformerConfig, layer_idx: int) -> int:
    return config.hash_seed * LAYER_SEED_STRIDE + layer_idx


class EfficientReformerAttention(EfficientAttention):
    """The Reformer's attention layers: Kitaev et al., "Reformer: The Efficient Transformer" (arXiv 2001.04451).

    A layer is "lsh" or "local" (config.attn_layers); the math, complexity and deviations are in attention/lsh.py.
    LSH layers: q_proj is the shared query-key projection (there is no k_proj); the random rotations (heads, d,
    num_hashes, num_buckets / 2) are a persistent buffer drawn from the layer's seed, used in eval, in generate()
    and, with resample_rotations=False, in training; with resample_rotations=True each training forward draws new
    ones from the layer's own generator (the global RNG is never seeded). A forward hashes each layer once and keeps
    the buckets for the whole forward (shared_state), so recomputation (reversible backward, activation
    checkpointing) attends exactly as the forward did. Local layers: q_proj, k_proj, v_proj as any layer.
    Grouped KV heads are repeated to every head. Cached decoding keeps every earlier key (ReformerCache).
    Left padding: a full pass aligns local layers' chunks to each row's first real token (exact, as LSH, whose
    sorting ignores padding); cached decoding after a left-padded prefix raises a ValueError. Padding rows of the
    output are zero.
    """

    supports_cache = True
    supports_left_padding = False  # exact in full passes; cached decoding refuses it (see the docstring)

    def __init__(self, config: EfficientReformerConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.kind = config.attn_layers[layer_idx]
        if self.kind == "lsh":
            del self.k_proj
            self.chunk = config.lsh_attn_chunk_length
            self.before, self.after = config.lsh_num_chunks_before, config.lsh_num_chunks_after
            self.register_buffer("rotations", self.draw_rotations(), persistent=True)
            self.rotation_generator = torch.Generator().manual_seed(layer_seed(config, layer_idx) + 1)
        else:
            self.chunk = config.local_attn_chunk_length
            self.before, self.after = config.local_num_chunks_before, config.local_num_chunks_after

    @classmethod
    def lora_targets(cls, config: EfficientReformerConfig) -> tuple[str, ...]:
        """q/k/v/o, without k_proj when every layer is LSH (LSH layers have none; PEFT matches the local ones)."""
        return ("q_proj", "v_proj", "o_proj") if "local" not in config.attn_layers else super().lora_targets(config)

    def draw_rotations(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """(heads, head_dim, num_hashes, num_buckets / 2) normal draws; from the layer's seed unless a generator is
        given (the same numbers as torch.manual_seed(seed); torch.randn(shape), transformers' hash_seed draw)."""
        config = self.config
        generator = generator or torch.Generator().manual_seed(layer_seed(config, self.layer_idx))
        shape = (self.num_heads, self.head_dim, config.num_hashes, config.num_buckets // 2)
        return torch.randn(shape, generator=generator)

    def buckets(self, shared: torch.Tensor, keep: torch.Tensor | None, shared_state: dict | None) -> torch.Tensor:
        """This forward's buckets (B, H, R, N): hashed once per forward and layer, then reused by recomputation."""
        key = ("reformer_buckets", self.layer_idx)
        if shared_state is not None and key in shared_state:
            return shared_state[key]
        rotations = self.rotations
        if self.training and self.config.resample_rotations:
            rotations = self.draw_rotations(self.rotation_generator).to(shared.device)
        buckets = hash_buckets(shared, rotations, keep)
        if shared_state is not None:
            shared_state[key] = buckets
        return buckets

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values=None,
        output_attentions: bool = False,
        shared_state: dict | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        keys, values, query = self.project_kind(hidden_states, position_embeddings)
        state = None
        if past_key_values is not None:
            state = past_key_values.layers[self.layer_idx]
            if not isinstance(state, ReformerCacheLayer):
                raise ValueError(f"EfficientReformer decodes with a ReformerCache, got "
                                 f"{type(past_key_values).__name__}.")
            if state.seen_tokens:
                return self.decode_step(query, keys, values, attention_mask, state, output_attentions)
        backend = self.choose_backend(hidden_states, output_attentions, gpu_backend=None)
        if backend not in ("reference", "blocked"):
            raise ValueError(f"attention_backend={backend!r}: use 'auto', 'blocked' or 'reference'.")
        length = hidden_states.shape[1]
        positions = torch.arange(length, device=hidden_states.device)
        weights = None
        buckets = None
        if self.kind == "lsh":
            normalized = normalize_keys(keys)
            buckets = self.buckets(keys, attention_mask, shared_state)
            if backend == "reference":
                if self.is_causal:
                    reach = lsh_causal_allowed(buckets, buckets, positions, attention_mask, self.chunk * self.before)
                else:
                    reach = lsh_multiplicity(buckets, attention_mask, self.chunk, self.before, self.after)
                attended, weights = lsh_dense(query, normalized, values, reach, positions, attention_mask,
                                              self.dropout, self.training)
            else:
                attended = lsh_blocked(query, normalized, values, buckets, attention_mask, self.chunk, self.before,
                                       self.after, self.is_causal, self.dropout, self.training)
        else:
            alignment = right_alignment(attention_mask, shared_state)  # chunks start at each row's first token
            keep, aligned = attention_mask, (query, keys, values)
            if alignment is not None:
                aligned, keep = tuple(alignment.align(states, 2) for states in aligned), alignment.keep
            if backend == "reference":
                counts = local_multiplicity(positions, length, keep, self.chunk, self.before, self.after,
                                            self.is_causal)
                attended, weights = local_dense(*aligned, counts, keep, self.scaling, self.dropout, self.training)
            else:
                attended = local_blocked(*aligned, keep, self.chunk, self.before, self.after, self.is_causal,
                                         self.scaling, self.dropout, self.training)
            if alignment is not None:
                attended = alignment.restore(attended, 2)
                if weights is not None:
                    weights = alignment.restore(alignment.restore(weights, 2), 3)
        if state is not None:
            state.store(keys, values, buckets)
        return self.finish(attended, attention_mask, length, weights, output_attentions)

    def project_kind(self, hidden_states, position_embeddings):
        """(keys, values, queries) as (B, H, N, d), keys and values repeated to every head; in LSH layers the keys
        are the shared query-key vectors themselves (normalised later)."""
        if self.kind == "lsh":
            shared = self.split_heads(self.q_proj(hidden_states))
            if position_embeddings is not None:
                shared = apply_rotary(shared, position_embeddings)
            values = repeat_kv(self.split_heads(self.v_proj(hidden_states)), self.num_key_value_groups)
            return shared, values, shared
        query, key, value = self.project(hidden_states, position_embeddings)
        groups = self.num_key_value_groups
        return repeat_kv(key, groups), repeat_kv(value, groups), query

    def finish(self, attended, attention_mask, length, weights, output_attentions):
        """(B, H, N, d) -> the layer output (B, N, hidden); padding rows zero."""
        attended = attended.transpose(1, 2).to(self.o_proj.weight.dtype)
        if attention_mask is not None:
            attended = attended * attention_mask[:, -length:, None, None].to(attended.dtype)
        if weights is not None:
            weights = weights.to(attended.dtype)
        return self.merge_heads(attended), (weights if output_attentions else None)

    def decode_step(self, query, keys, values, attention_mask, state: ReformerCacheLayer, output_attentions):
        """New tokens against every cached key, with the mask of a full pass (attention/lsh.py)."""
        refuse_left_padding(attention_mask, "Cached decoding of EfficientReformer",
                            "A forward pass without the cache (use_cache=False) is exact with left padding.")
        past = state.seen_tokens
        length = query.shape[2]
        total = past + length
        keep = None if attention_mask is None else attention_mask[:, :total]
        positions = torch.arange(past, total, device=query.device)
        all_keys, all_values = torch.cat([state.keys, keys], dim=2), torch.cat([state.values, values], dim=2)
        buckets = None
        if self.kind == "lsh":
            new_keep = None if keep is None else keep[:, past:]
            buckets = torch.cat([state.buckets, hash_buckets(keys, self.rotations, new_keep)], dim=-1)
            reach = lsh_causal_allowed(buckets[..., past:], buckets, positions, keep, self.chunk * self.before)
            attended, weights = lsh_dense(query, normalize_keys(all_keys), all_values, reach, positions, keep)
        else:
            counts = local_multiplicity(positions, total, keep, self.chunk, self.before, 0, True)
            attended, weights = local_dense(query, all_keys, all_values, counts, keep, self.scaling)
        state.store(all_keys, all_values, buckets)
        return self.finish(attended, attention_mask, length, weights, output_attentions)


class ChunkedMLP(EfficientMLP):
    """The backbone's feed-forward, applied to `chunk_size_feed_forward` positions at a time (0: all at once; the
    last chunk may be shorter, so any length works)."""

    def __init__(self, config: EfficientReformerConfig):
        super().__init__(config)
        self.chunk_size = config.chunk_size_feed_forward

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.chunk_size or hidden.shape[1] <= self.chunk_size:
            return super().forward(hidden)
        return torch.cat([super(ChunkedMLP, self).forward(piece) for piece in hidden.split(self.chunk_size, 1)], 1)


class EfficientReformerBlock(EfficientBlock):
    """The backbone's residual block (post- or pre-norm) with the chunked feed-forward."""

    def __init__(self, config: EfficientReformerConfig, layer_idx: int, attention_class: type[nn.Module]):
        super().__init__(config, layer_idx, attention_class)
        self.mlp = ChunkedMLP(config)


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class ReversibleFunction(torch.autograd.Function):
    """One reversible layer whose backward recomputes its inputs from its outputs (Gomez et al., RevNet) instead of
    keeping activations: x2 = y2 - ffn(y1), x1 = y1 - attn(x2). The RNG state before each branch is saved and
    restored for the recomputation (the same dropout masks; the global RNG's own stream is left as it was), and the
    buckets come from the forward's shared_state. Layers hand their outputs down through `chain` (a dict of this
    forward): only the last layer's output is kept; the backward of layer l leaves layer l's inputs there for layer
    l - 1. So backward runs once per forward (no retain_graph)."""

    @staticmethod
    def forward(ctx, hidden, block, kwargs, chain, *parameters):
        ctx.block, ctx.kwargs, ctx.chain, ctx.device = block, kwargs, chain, hidden.device
        first, second = hidden.chunk(2, dim=-1)
        ctx.attention_rng = _rng_state(hidden.device)
        attended = first + block.attention_branch(second, kwargs)[0]
        ctx.ffn_rng = _rng_state(hidden.device)
        output = torch.cat([attended, second + block.ffn_branch(attended)], dim=-1)
        chain.pop(block.layer_idx - 1, None)
        chain[block.layer_idx] = output.detach()
        return output

    @staticmethod
    def backward(ctx, grad):
        block, layer = ctx.block, ctx.block.layer_idx
        attended, updated = ctx.chain.pop(layer).chunk(2, dim=-1)
        grad_attended, grad_updated = grad.chunk(2, dim=-1)
        parameters = [p for p in block.parameters() if p.requires_grad]
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            attended = attended.detach().requires_grad_()
            _set_rng_state(ctx.ffn_rng, ctx.device)
            ffn = block.ffn_branch(attended)
            grads_ffn = torch.autograd.grad(ffn, [attended, *parameters], grad_updated, allow_unused=True)
            second = (updated - ffn.detach()).requires_grad_()
            grad_attended = grad_attended + grads_ffn[0]
            _set_rng_state(ctx.attention_rng, ctx.device)
            attn = block.attention_branch(second, ctx.kwargs)[0]
            grads_attn = torch.autograd.grad(attn, [second, *parameters], grad_attended, allow_unused=True)
        if layer > 0:
            ctx.chain[layer - 1] = torch.cat([attended.detach() - attn.detach(), second.detach()], dim=-1)
        grad_input = torch.cat([grad_attended, grad_updated + grads_attn[0]], dim=-1)
        parameter_grads = [a if b is None else b if a is None else a + b
                           for a, b in zip(grads_ffn[1:], grads_attn[1:], strict=True)]
        return (grad_input, None, None, None, *parameter_grads)


class EfficientReformerReversibleBlock(nn.Module):
    """A reversible layer on the two streams (batch, seq, 2 * hidden) = [x1, x2]: y1 = x1 + drop(attn(norm(x2))),
    y2 = x2 + drop(ffn(norm(y1))); returns [y1, y2]. In training (reversible_backward, no attention weights asked)
    it runs as a ReversibleFunction; activation checkpointing does not apply (the layer already recomputes)."""

    def __init__(self, config: EfficientReformerConfig, layer_idx: int, attention_class: type[nn.Module]):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.attention_norm = build_norm(config)
        self.self_attn = attention_class(config, layer_idx)
        self.mlp_norm = build_norm(config)
        self.mlp = ChunkedMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def attention_branch(self, second: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.self_attn(self.attention_norm(second), **kwargs)
        return self.dropout(attended), weights

    def ffn_branch(self, attended: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.mlp(self.mlp_norm(attended)))

    def forward(self, hidden: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        shared_state = kwargs.get("shared_state")
        if (self.training and torch.is_grad_enabled() and self.config.reversible_backward
                and not kwargs.get("output_attentions") and shared_state is not None):
            chain = shared_state.setdefault("reversible_chain", {})
            parameters = [p for p in self.parameters() if p.requires_grad]
            return ReversibleFunction.apply(hidden, self, kwargs, chain, *parameters), None
        first, second = hidden.chunk(2, dim=-1)
        attended, weights = self.attention_branch(second, kwargs)
        attended = first + attended
        return torch.cat([attended, second + self.ffn_branch(attended)], dim=-1), weights


class ReversibleEmbeddings(EfficientEmbeddings):
    """The backbone's embeddings, twice side by side: the two streams of the reversible stack start equal."""

    def forward(self, *args, **kwargs) -> torch.Tensor:
        hidden = super().forward(*args, **kwargs)
        return torch.cat([hidden, hidden], dim=-1)


def widened(config: EfficientReformerConfig) -> EfficientReformerConfig:
    """A copy of the config whose hidden_size is the last hidden state's width (for building heads and pooler)."""
    wide = copy.copy(config)
    wide.hidden_size = config.output_size
    return wide


class EfficientReformerModel(EfficientModel):
    config_class = EfficientReformerConfig
    attention_class = EfficientReformerAttention
    state_cache = ReformerCache
    state_cache_refusal = "EfficientReformer decoding, which keeps every key and its LSH buckets per layer"
    seeded_tensors = ("self_attn.rotations",)
    _no_split_modules = ["EfficientReformerBlock", "EfficientReformerReversibleBlock"]

    def __init__(self, config: EfficientReformerConfig):
        config.validate_backbone()
        config.validate_mechanism()
        EfficientPreTrainedModel.__init__(self, config)
        self.embeddings = (ReversibleEmbeddings if config.reversible else EfficientEmbeddings)(config)
        self.rotary = EfficientRotaryEmbedding(config) if config.position_embedding_type == "rotary" else None
        block = EfficientReformerReversibleBlock if config.reversible else EfficientReformerBlock
        self.layers = nn.ModuleList(block(config, i, self.attention_class) for i in range(config.num_hidden_layers))
        self.final_norm = None
        if config.reversible or config.norm_position == "pre":
            self.final_norm = build_norm(config, config.output_size)
        self.pooler = EfficientPooler(widened(config)) if config.use_pooler else None
        self.gradient_checkpointing = False
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, EfficientReformerAttention) and module.kind == "lsh":
            init.copy_(module.rotations, module.draw_rotations())


def shared_query_key_for_conversion(weights: dict[str, torch.Tensor], config: EfficientReformerConfig) -> list[str]:
    """Conversion adds nothing. Local layers keep the source's q/k/v/o projections. An LSH layer has one shared
    query-key projection: it starts as the source's W_q (and its bias), and the source's W_k of that layer is dropped,
    so a converted LSH layer is not its source layer (fine-tune it; an all-local conversion with chunks covering the
    input is exact). The hash rotations are buffers drawn from hash_seed, not trained parameters."""
    for layer, kind in enumerate(config.attn_layers):
        if kind == "lsh":
            for name in ("weight", "bias"):
                weights.pop(f"model.layers.{layer}.self_attn.k_proj.{name}", None)
    return []


class ReversibleHead:
    """A head over the reversible stack reads its 2 * hidden_size features: `wide_layer(config)` gives the output
    layer to rebuild at that width, (attribute name, module), initialised by post_init."""

    def __init__(self, config: EfficientReformerConfig):
        super().__init__(config)
        if config.reversible:
            name, layer = self.wide_layer(config)
            setattr(self, name, layer)
            self.post_init()


class EfficientReformerForMaskedLM(ReversibleHead, EfficientForMaskedLM):
    config_class = EfficientReformerConfig
    model_class = EfficientReformerModel

    def wide_layer(self, config):
        return "lm_head", EfficientMaskedLMHead(widened(config))


class EfficientReformerForCausalLM(ReversibleHead, EfficientForCausalLM):
    config_class = EfficientReformerConfig
    model_class = EfficientReformerModel

    def wide_layer(self, config):
        return "lm_head", nn.Linear(config.output_size, config.vocab_size, bias=config.lm_head_bias)


class EfficientReformerForSequenceClassification(ReversibleHead, EfficientForSequenceClassification):
    config_class = EfficientReformerConfig
    model_class = EfficientReformerModel

    def wide_layer(self, config):
        return "classifier", nn.Linear(config.output_size, config.num_labels)


class EfficientReformerForTokenClassification(ReversibleHead, EfficientForTokenClassification):
    config_class = EfficientReformerConfig
    model_class = EfficientReformerModel

    def wide_layer(self, config):
        return "classifier", nn.Linear(config.output_size, config.num_labels)


class EfficientReformerForQuestionAnswering(ReversibleHead, EfficientForQuestionAnswering):
    config_class = EfficientReformerConfig
    model_class = EfficientReformerModel

    def wide_layer(self, config):
        return "qa_outputs", nn.Linear(config.output_size, 2)
