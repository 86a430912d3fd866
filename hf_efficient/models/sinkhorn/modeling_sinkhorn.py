"""EfficientSinkhorn: the backbone with Sparse Sinkhorn attention (learned block sorting) in every layer."""

import torch

from ...attention.sinkhorn import (
    SortNet,
    padded_keep,
    sinkhorn_blocked,
    sinkhorn_reference,
    sort_blocks,
    to_blocks,
)
from ...core.attention import EfficientAttention
from ...core.heads import (
    EfficientForCausalLM,
    EfficientForMaskedLM,
    EfficientForQuestionAnswering,
    EfficientForSequenceClassification,
    EfficientForTokenClassification,
)
from ...core.masks import RightAlignment, leading_padding, right_alignment
from ...core.modeling import EfficientModel
from .configuration_sinkhorn import EfficientSinkhornConfig


class EfficientSinkhornAttention(EfficientAttention):
    """Sparse Sinkhorn attention: Tay, Bahri, Yang, Metzler & Juan, "Sparse Sinkhorn Attention" (arXiv 2002.11296).

    out_i = softmax(Q_i [K_i ; (S K)_i]^T / sqrt(d)) [V_i ; (S V)_i] per block i of b tokens, S the Sinkhorn-balanced
    sort of the blocks from a learned sorting network (soft in training, hard in eval); SortCut attends to the first
    k sorted blocks instead. Time O(N b d) plus O(nb^2) for the sort (O(N nb d) for the soft mixture in training),
    memory O(N b). Every deviation from the paper is listed in hf_efficient/attention/sinkhorn.py. One path serves
    CPU and GPU: the sorted blocks are gathered (eval) or mixed (training) and attended through sdpa in one batched
    call ("blocked"); "reference" is the dense O(N^2) formulation kept for tests and weights.
    Cached decoding (causal, eval): each new token attends to its block so far and its block's partner, chosen from
    the cached keys exactly as the full pass chooses it. Left padding: blocks count from each row's first real token
    (`masks.right_alignment`), in full passes and in decoding.
    """

    supports_cache = True
    is_stochastic = True  # Gumbel noise in training

    def __init__(self, config: EfficientSinkhornConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.sort_net = SortNet(self.head_dim, config.sort_hidden_size or self.head_dim, config.max_num_blocks)

    @classmethod
    def lora_trained_in_full(cls, config: EfficientSinkhornConfig) -> tuple[str, ...]:
        return ("sort_net",)

    def block_size_for(self, length: int) -> int:
        """The config's block size, or the input's length when the input is shorter than one block: a single block
        sorts to itself either way, and padding it to `block_size` would only add masked work (a 512-token input to
        a model whose one block spans 8192 positions)."""
        return max(1, min(self.config.block_size, length))

    def sort(self, key: torch.Tensor, keep: torch.Tensor | None, block_size: int | None = None):
        """The block sort of keys (batch, kv_heads, N, d) under the keep-mask (batch, N), in blocks of `block_size`
        (default: the config's)."""
        config = self.config
        block_size = block_size or config.block_size
        keep_padded, blocks = padded_keep(keep, key.shape[0], key.shape[2], block_size, key.device)
        keep_blocks = None if keep_padded is None else keep_padded.view(key.shape[0], blocks, block_size)
        if keep_blocks is not None:
            key = key * keep_padded[:, None, : key.shape[2], None].to(key.dtype)
        return sort_blocks(self.sort_net, to_blocks(key, blocks, block_size), keep_blocks, self.is_causal,
                           config.sinkhorn_iterations, config.sinkhorn_temperature,
                           noise=self.training and config.gumbel_noise, hard=not self.training)

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
        shared_state = {} if shared_state is None else shared_state
        query, key, value = self.project(hidden_states, position_embeddings)
        if past_key_values is not None:
            past_length = past_key_values.get_seq_length(self.layer_idx)
            key, value = past_key_values.update(key, value, self.layer_idx)
            if past_length:
                return self.decode_step(query, key, value, attention_mask, past_length, output_attentions)
        alignment = right_alignment(attention_mask, shared_state)  # blocks start at each row's first real token
        if alignment is not None:
            query, key, value = (alignment.align(states, 2) for states in (query, key, value))
            attention_mask = alignment.keep
        backend = self.choose_backend(hidden_states, output_attentions, gpu_backend=None)
        block_size = self.block_size_for(key.shape[2])
        sort = self.sort(key, attention_mask, block_size)
        settings = (block_size, self.is_causal, self.config.sortcut_blocks)
        weights = None
        if backend == "reference":
            attended, weights = sinkhorn_reference(self, query, key, value, attention_mask, sort, *settings)
        elif backend == "blocked":
            attended = sinkhorn_blocked(self, query, key, value, attention_mask, sort, *settings)
        else:
            raise ValueError(f"Unknown attention_backend {backend!r}; use auto, reference or blocked.")
        if attention_mask is not None:  # padding rows are zero
            attended = attended * attention_mask[:, :, None, None]
            weights = None if weights is None else weights * attention_mask[:, None, :, None]
        if alignment is not None:
            attended = alignment.restore(attended, 1)
            weights = None if weights is None else alignment.restore(alignment.restore(weights, 2), 3)
        return self.merge_heads(attended), weights

    def decode_step(self, query, keys, values, attention_mask, past_length, output_attentions):
        """New queries at positions past_length.. against the cached keys: each sees its own block up to itself and
        its block's partner, sorted from the cached keys as the full pass sorts them (eval: the hard choice)."""
        if self.training:
            raise ValueError("Cached decoding follows the eval-mode (hard) sort; call model.eval() first, or pass "
                             "use_cache=False.")
        batch, total, block_size = query.shape[0], keys.shape[2], self.config.block_size
        device = query.device
        alignment, start = None, torch.zeros(batch, dtype=torch.long, device=device)
        if attention_mask is not None:
            start = leading_padding(attention_mask)
            alignment = RightAlignment(attention_mask, start)
            keys, values, attention_mask = alignment.align(keys, 2), alignment.align(values, 2), alignment.keep
        sort = self.sort(keys, attention_mask, block_size)
        query_positions = torch.arange(past_length, total, device=device)[None, :] - start[:, None]  # (batch, n)
        key_positions = torch.arange(total, device=device)
        query_blocks = (query_positions // block_size)[:, None].expand(batch, keys.shape[1], -1)
        partner = sort.choice.gather(2, query_blocks)  # (batch, kv_heads, n)
        valid = sort.valid.gather(2, query_blocks)
        own = (key_positions // block_size == query_positions[..., None] // block_size) & \
            (key_positions <= query_positions[..., None])  # (batch, n, keys)
        keep = own[:, None] | ((key_positions // block_size == partner[..., None]) & valid[..., None])
        if attention_mask is not None:
            keep = keep & attention_mask[:, None, None, :]
        keep = keep.repeat_interleave(self.num_key_value_groups, 1)
        attended, weights = self.attend(query, keys, values, keep, need_weights=output_attentions)
        if weights is not None and alignment is not None:
            weights = alignment.restore(weights, 3)
        return self.merge_heads(attended), weights


def sort_network_for_conversion(weights: dict[str, torch.Tensor], config: EfficientSinkhornConfig) -> list[str]:
    """Conversion: every layer's sorting network (the only new parameters; q/k/v/o, MLP and embeddings are the
    source's) starts as a freshly initialised model's: both weight matrices drawn N(0, initializer_range^2) from a
    generator seeded 0, biases zero. Its block scores then start small and nearly uniform, so the soft sort of early
    fine-tuning mixes blocks almost evenly and the hard sort of eval is close to arbitrary until the network is
    trained. With block_size >= the input length (one block) the sort is the identity and the model is its source
    exactly, whatever these weights."""
    generator = torch.Generator().manual_seed(0)
    hidden = config.sort_hidden_size or config.head_dim
    shapes = {"first": (hidden, config.head_dim), "second": (config.max_num_blocks, hidden)}
    added = []
    for layer in range(config.num_hidden_layers):
        for name, shape in shapes.items():
            prefix = f"model.layers.{layer}.self_attn.sort_net.{name}"
            if f"{prefix}.weight" in weights:
                continue
            weights[f"{prefix}.weight"] = torch.randn(shape, generator=generator) * config.initializer_range
            weights[f"{prefix}.bias"] = torch.zeros(shape[0])
            added += [f"{prefix}.weight", f"{prefix}.bias"]
    return added


class EfficientSinkhornModel(EfficientModel):
    config_class = EfficientSinkhornConfig
    attention_class = EfficientSinkhornAttention


class EfficientSinkhornForMaskedLM(EfficientForMaskedLM):
    config_class = EfficientSinkhornConfig
    model_class = EfficientSinkhornModel


class EfficientSinkhornForCausalLM(EfficientForCausalLM):
    config_class = EfficientSinkhornConfig
    model_class = EfficientSinkhornModel


class EfficientSinkhornForSequenceClassification(EfficientForSequenceClassification):
    config_class = EfficientSinkhornConfig
    model_class = EfficientSinkhornModel


class EfficientSinkhornForTokenClassification(EfficientForTokenClassification):
    config_class = EfficientSinkhornConfig
    model_class = EfficientSinkhornModel


class EfficientSinkhornForQuestionAnswering(EfficientForQuestionAnswering):
    config_class = EfficientSinkhornConfig
    model_class = EfficientSinkhornModel
