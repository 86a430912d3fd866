"""EfficientTransformerXL: segment-level recurrence with a memory of hidden states and relative attention."""

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

from ...attention.relative import (
    allowed_keys,
    key_distances,
    relative_blocked,
    relative_reference,
    relative_sinusoid,
)
from ...core.attention import EfficientAttention, repeat_kv
from ...core.cache_argument import CACHE_FIELD, one_cache
from ...core.embeddings import apply_rotary
from ...core.heads import (
    EfficientForCausalLM,
    EfficientForQuestionAnswering,
    EfficientForSequenceClassification,
    EfficientForTokenClassification,
    EfficientHead,
)
from ...core.layers import EfficientBlock
from ...core.masks import validate_keep_mask
from ...core.modeling import EfficientModel, refuse_unknown_kwargs
from ...core.state_cache import refit_state_cache
from .adaptive import AdaptiveInput, AdaptiveSoftmax
from .cache_transformer_xl import TransformerXLMemoryCache, TransformerXLMemoryLayer
from .configuration_transformer_xl import EfficientTransformerXLConfig


class RelativeBiases(nn.Module):
    """The paper's u (`content`) and v (`position`): per-head vectors added to the query in the content and the
    position terms, (heads, head_dim)."""

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.content = nn.Parameter(torch.zeros(num_heads, head_dim))
        self.position = nn.Parameter(torch.zeros(num_heads, head_dim))


class EfficientTransformerXLAttention(EfficientAttention):
    """Relative multi-head attention over [memory; segment]: Dai et al., "Transformer-XL: Attentive Language Models
    Beyond a Fixed-Length Context" (arXiv 1901.02860).

    score_ij = (q_i + u) k_j + (q_i + v) W_r R_{i-j} over the m memory states and the n segment tokens, causal (and a
    window of mem_len keys under same_length); see attention/relative.py for the two paths. Time O(n (m + n) d),
    memory O(n (m + n)) per head. Parameters beyond the backbone's: `r_proj` (W_r, bias-free), `relative_bias.content`
    (u) and `relative_bias.position` (v), (heads, head_dim), one per layer (the paper's code can share them across
    layers; a shared checkpoint converts by copying). Rotary / absolute positions of the backbone may be kept beside the
    relative terms (a GPT-2 / Llama conversion: not the paper's model); with relative_attention=False the relative
    terms are skipped. In training the memory's keys and values are projected from its hidden states at every call,
    as in the paper (the projections are being trained); in inference (eval, no autograd) they stay in the cache
    beside the states, with W_r R, so a decoding step projects one token.
    """

    supports_bidirectional = False
    supports_cache = True

    def __init__(self, config: EfficientTransformerXLConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.r_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.relative_bias = RelativeBiases(self.num_heads, self.head_dim)

    @classmethod
    def lora_targets(cls, config: EfficientTransformerXLConfig) -> tuple[str, ...]:
        return ("q_proj", "k_proj", "v_proj", "o_proj", "r_proj")

    @classmethod
    def lora_trained_in_full(cls, config: EfficientTransformerXLConfig) -> tuple[str, ...]:
        """u and v (a converted model starts them at zero: they must train)."""
        return ("relative_bias",)

    def project_positions(self, relative: torch.Tensor) -> torch.Tensor:
        """(..., hidden) sinusoids -> (..., heads, head_dim) through W_r, repeated over key/value groups."""
        positional = self.r_proj(relative).view(*relative.shape[:-1], self.num_key_value_heads, self.head_dim)
        return positional.repeat_interleave(self.num_key_value_groups, dim=-2)

    def memoizing(self, state: TransformerXLMemoryLayer | None) -> bool:
        """Inference with a cache: keys, values and the positional table of the memory are kept for the next call
        (never in training or under autograd, where the weights or their gradients would make them stale)."""
        return state is not None and not self.training and not torch.is_grad_enabled()

    def keys_and_values(self, hidden_states: torch.Tensor, memory: torch.Tensor | None,
                        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
                        state: TransformerXLMemoryLayer | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of [memory; segment], (b, kv, m+n, d). In inference the memory's come from the cache
        (projected when they entered it) and only the segment's are projected here."""
        reuse = self.memoizing(state) and memory is not None and state.memory_keys is not None \
            and state.memory_keys.shape[2] == memory.shape[1]
        source = hidden_states if reuse or memory is None else torch.cat([memory, hidden_states], dim=1)
        key, value = self.split_heads(self.k_proj(source)), self.split_heads(self.v_proj(source))
        if position_embeddings is not None:
            key = apply_rotary(key, tuple(t[:, -key.shape[2]:] for t in position_embeddings))
        if reuse:
            key = torch.cat([state.memory_keys, key], dim=2)
            value = torch.cat([state.memory_values, value], dim=2)
        if self.memoizing(state):
            state.pending = (key, value)
        return key, value

    def positional_table(self, relative: torch.Tensor, state: TransformerXLMemoryLayer | None) -> torch.Tensor:
        """W_r R over the table's distances, (1, h, m+n, d); reused in inference while the key length repeats (once
        the memory is full, every decoding step has the same m + 1 distances)."""
        if self.memoizing(state) and state.positional is not None and state.positional[0] == relative.shape[0]:
            return state.positional[1]
        table = self.project_positions(relative).transpose(0, 1)[None]
        if self.memoizing(state):
            state.positional = (relative.shape[0], table)
        return table

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        memory: torch.Tensor | None = None,
        relative: torch.Tensor | None = None,
        output_attentions: bool = False,
        memory_state: TransformerXLMemoryLayer | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states (b, n, hidden) and memory (b, m, hidden) already normalised as the block does;
        attention_mask the keep-mask of the m + n keys; position_embeddings rotary tables of the m + n keys;
        relative the sinusoids of distances m + n - 1 .. 0 (clamped), (m + n, hidden)."""
        length = hidden_states.shape[1]
        query = self.split_heads(self.q_proj(hidden_states))  # (b, h, n, d)
        if position_embeddings is not None:
            query = apply_rotary(query, tuple(t[:, -length:] for t in position_embeddings))
        key, value = self.keys_and_values(hidden_states, memory, position_embeddings, memory_state)
        window = self.config.mem_len if self.config.same_length else None
        allowed = allowed_keys(length, key.shape[2], window, attention_mask, query.device)
        backend = self.choose_backend(hidden_states, output_attentions, gpu_backend=None)
        if backend not in ("reference", "blocked"):
            raise ValueError(f"attention_backend={backend!r}: Transformer-XL's path is scaled-dot-product attention "
                             "with the relative term as a bias, on any device; use 'auto', 'blocked' or 'reference'.")
        if not self.config.relative_attention:
            attended, weights = self.attend(query, key, value, allowed, need_weights=backend == "reference")
            return self.merge_heads(attended), (weights if output_attentions else None)
        key = repeat_kv(key, self.num_key_value_groups)
        value = repeat_kv(value, self.num_key_value_groups)
        u, v = self.relative_bias.content, self.relative_bias.position
        if backend == "reference":
            attended, weights = relative_reference(
                query, key, value, self.project_positions, u, v, allowed, self.scaling, self.config.clamp_len,
                self.config.hidden_size, self.dropout, self.training,
            )
        else:
            positional = self.positional_table(relative, memory_state)  # (1, h, m+n, d)
            attended = relative_blocked(query, key, value, positional, u, v, allowed, self.scaling, self.dropout)
            weights = None
        return self.merge_heads(attended), (weights if output_attentions else None)


class TransformerXLBlock(EfficientBlock):
    """The backbone's residual block with the layer's memory beside its input: the attention sees
    [norm(memory); norm(h)] under pre-norm (the norm is per position, so this is the norm of the concatenation, as
    in the paper's code), [memory; h] under post-norm."""

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor | None = None,
                **attention_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_norm:
            memory = None if memory is None else self.attention_norm(memory)
            attended, weights = self.self_attn(self.attention_norm(hidden), memory=memory, **attention_kwargs)
            hidden = hidden + self.dropout(attended)
            hidden = hidden + self.dropout(self.mlp(self.mlp_norm(hidden)))
        else:
            attended, weights = self.self_attn(hidden, memory=memory, **attention_kwargs)
            hidden = self.attention_norm(hidden + self.dropout(attended))
            hidden = self.mlp_norm(hidden + self.dropout(self.mlp(hidden)))
        return hidden, weights


def init_transformer_xl(module: nn.Module, config: EfficientTransformerXLConfig) -> None:
    """The parameters the backbone's init doesn't know: u and v, the adaptive softmax's own tables and cluster
    logits (normal with std initializer_range, biases zero); projections are nn.Linear, initialised as any."""
    std = config.initializer_range
    if isinstance(module, RelativeBiases):
        init.normal_(module.content, mean=0.0, std=std)
        init.normal_(module.position, mean=0.0, std=std)
    elif isinstance(module, AdaptiveSoftmax):
        for parameter in [module.cluster_weight, *(module.weights or [])]:
            init.normal_(parameter, mean=0.0, std=std)
        init.zeros_(module.cluster_bias)
        init.zeros_(module.bias)


def relative_terms_for_conversion(weights: dict[str, torch.Tensor], config: EfficientTransformerXLConfig) -> list[str]:
    """Conversion: W_r (`r_proj`), u and v (`relative_bias.content`, `.position`) of every layer start at zero, so the
    relative terms add nothing and the converted model computes its source's attention (with the source's absolute
    or rotary positions, which the converted config keeps) until fine-tuning with memory trains them."""
    added = []
    kv_dim = config.num_key_value_heads * config.head_dim
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.self_attn"
        for name, shape in (("r_proj.weight", (kv_dim, config.hidden_size)),
                            ("relative_bias.content", (config.num_attention_heads, config.head_dim)),
                            ("relative_bias.position", (config.num_attention_heads, config.head_dim))):
            if f"{prefix}.{name}" not in weights:
                weights[f"{prefix}.{name}"] = torch.zeros(shape)
                added.append(f"{prefix}.{name}")
    return added


class EfficientTransformerXLModel(EfficientModel):
    """The backbone with Transformer-XL blocks. Memories live in a `TransformerXLMemoryCache` (`cache=`): made in
    eval mode by default (use_cache=None) and whenever use_cache=True, updated in place with the last mem_len input
    hidden states of every layer (detached) and returned; pass it back with the next segment."""

    config_class = EfficientTransformerXLConfig
    attention_class = EfficientTransformerXLAttention
    block_class = TransformerXLBlock
    state_cache = TransformerXLMemoryCache
    state_cache_refusal = "Transformer-XL decoding, which keeps a memory of hidden states per layer"

    def __init__(self, config: EfficientTransformerXLConfig):
        super().__init__(config)
        self.relative_dropout = nn.Dropout(config.hidden_dropout_prob)
        if config.adaptive_cutoffs:
            self.embeddings.embed_tokens = AdaptiveInput(config)  # it projects each cluster to hidden_size itself
            self.embeddings.project = None
            self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        init_transformer_xl(module, self.config)

    def resolve_memory(self, cache: Cache | None, use_cache: bool | None) -> TransformerXLMemoryCache | None:
        if use_cache is False and cache is not None:
            raise ValueError("A memory cache was given with use_cache=False; drop one of them.")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if cache is None:
            return self.state_cache(self.config.num_hidden_layers) if use_cache else None
        return refit_state_cache(cache, self.state_cache, self.config.num_hidden_layers,
                                 self.state_cache_refusal)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndCrossAttentions | tuple:
        """A segment of (batch, n) tokens after the memory in `cache` (None: none, and a fresh memory in eval mode).
        `attention_mask` covers the segment (batch, n) or, as generate() passes it, everything absorbed plus the
        segment (batch, seen + n); the memory's own padding is remembered by the cache. `hidden_states` (with
        output_hidden_states) are each layer's inputs, the states the memory keeps, then the final output."""
        refuse_unknown_kwargs(self, kwargs)
        cache = one_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if global_attention_mask is not None:
            raise ValueError("global_attention_mask was given, but Transformer-XL has no global tokens; drop it.")
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        device = (input_ids if input_ids is not None else inputs_embeds).device
        if batch == 0 or length == 0:
            raise ValueError(f"The input has shape (batch, sequence) = ({batch}, {length}); pass at least one row of "
                             "at least one token.")
        cache = self.resolve_memory(cache, use_cache)
        states = cache.layers if cache is not None else [None] * config.num_hidden_layers
        past = cache.get_seq_length() if cache is not None else 0
        memory_length = states[0].memory_length if cache is not None else 0
        if memory_length and states[0].memory.shape[0] != batch:
            raise ValueError(f"The memory holds {states[0].memory.shape[0]} rows but the input has {batch}; pass a "
                             "batch of the same streams, or a fresh cache (cache.reset()).")
        if output_attentions and not torch.compiler.is_compiling():
            self._warn_attention_weights(batch, length, memory_length + length)
        mask_length = length
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] == past + length:
            mask_length = past + length  # generate()'s convention: the mask of everything absorbed so far
        keep = validate_keep_mask(attention_mask, batch, mask_length, "attention_mask")
        keep = None if keep is None else keep[:, -length:]
        if position_ids is None:
            position_ids = torch.arange(past, past + length, device=device).expand(batch, -1)
        self._check_positions(position_ids, past + length)
        memory_keep = states[0].keep if memory_length else None
        key_keep = None
        if keep is not None or memory_keep is not None:
            ones = torch.ones(batch, memory_length if memory_keep is None else length, dtype=torch.bool, device=device)
            key_keep = torch.cat([ones, keep] if memory_keep is None else [memory_keep, keep if keep is not None
                                                                           else ones], dim=1)
        key_positions = position_ids if not memory_length else torch.cat([states[0].positions, position_ids], dim=1)

        hidden = self.embeddings(input_ids, inputs_embeds, position_ids, token_type_ids)
        if config.embedding_multiplier != 1.0:
            hidden = hidden * config.embedding_multiplier
        position_embeddings = self.rotary(hidden, key_positions) if self.rotary is not None else None
        relative = None
        if config.relative_attention:
            distances = key_distances(memory_length + length, config.clamp_len, device)
            relative = self.relative_dropout(relative_sinusoid(distances, config.hidden_size).to(hidden.dtype))
        all_hidden, all_weights = [], []
        for layer, state in zip(self.layers, states, strict=True):
            if output_hidden_states:
                all_hidden.append(hidden)
            memory = state.memory if memory_length else None
            layer_input = hidden
            hidden, weights = layer(hidden, memory=memory, attention_mask=key_keep,
                                    position_embeddings=position_embeddings, relative=relative,
                                    output_attentions=output_attentions, memory_state=state)
            all_weights.append(weights)
            if state is not None:
                self.remember(state, memory, layer_input, key_keep, key_positions, past + length, layer)
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        output = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=hidden,
            pooler_output=self.pooler(hidden) if self.pooler is not None else None,
            **{CACHE_FIELD: cache},
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_weights) if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()

    def remember(self, state, memory: torch.Tensor | None, layer_input: torch.Tensor, key_keep: torch.Tensor | None,
                 key_positions: torch.Tensor, seen_tokens: int, layer: nn.Module | None = None) -> None:
        """The layer's new memory: the last mem_len of [memory; layer input], detached (no gradient flows into an
        earlier segment), with their keep-mask and positions (`layer`, the block that read them, is for subclasses
        that derive more from the states leaving the memory)."""
        keep_last = self.config.mem_len
        states = layer_input.detach() if memory is None else torch.cat([memory, layer_input.detach()], dim=1)
        start = states.shape[1] - min(keep_last, states.shape[1])
        keep = None if key_keep is None else key_keep[:, start:]
        keys, values = state.pending if state.pending is not None else (None, None)
        state.store(states[:, start:], keep, key_positions[:, start:], seen_tokens,
                    None if keys is None else keys[:, :, start:], None if values is None else values[:, :, start:])


class EfficientTransformerXLForCausalLM(EfficientForCausalLM):
    config_class = EfficientTransformerXLConfig
    model_class = EfficientTransformerXLModel

    def __init__(self, config: EfficientTransformerXLConfig):
        """The output layer: with adaptive_cutoffs the adaptive softmax (its logits are log-probabilities; tied to the
        adaptive input by reference, nothing for transformers to tie), else a linear layer (bias: lm_head_bias, the
        paper's softmax has one) tied to the embedding when tie_word_embeddings."""
        EfficientHead.__init__(self, config)  # the causal-LM head's checks and layer, with this output layer instead
        if config.adaptive_cutoffs:
            self._tied_weights_keys = {}
            tied = self.model.embeddings.embed_tokens if config.tie_word_embeddings else None
            self.lm_head = AdaptiveSoftmax(config, tied)
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.lm_head_bias)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        init_transformer_xl(module, self.config)

    def get_output_embeddings(self) -> nn.Module | None:
        return None if self.config.adaptive_cutoffs else self.lm_head


class EfficientTransformerXLForSequenceClassification(EfficientForSequenceClassification):
    config_class = EfficientTransformerXLConfig
    model_class = EfficientTransformerXLModel


class EfficientTransformerXLForTokenClassification(EfficientForTokenClassification):
    config_class = EfficientTransformerXLConfig
    model_class = EfficientTransformerXLModel


class EfficientTransformerXLForQuestionAnswering(EfficientForQuestionAnswering):
    config_class = EfficientTransformerXLConfig
    model_class = EfficientTransformerXLModel
