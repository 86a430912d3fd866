"""EfficientSparseTransformer: the backbone with the Sparse Transformer's factorized attention in every layer."""

import torch

from ...attention.factorized import (
    factorized_blocked,
    factorized_reference,
    fixed_compact,
    head_factors,
    heads_keep,
    strided_grid,
)
from ...attention.flex import MIN_HEAD_DIM, flex_available
from ...core.attention import EfficientAttention
from ...core.heads import (
    EfficientForCausalLM,
    EfficientForMaskedLM,
    EfficientForQuestionAnswering,
    EfficientForSequenceClassification,
    EfficientForTokenClassification,
)
from ...core.masks import leading_padding, right_alignment
from ...core.modeling import EfficientModel
from .configuration_sparse_transformer import EfficientSparseTransformerConfig


class EfficientSparseTransformerAttention(EfficientAttention):
    """Sparse Transformer attention: Child, Gray, Radford & Sutskever, "Generating Long Sequences with Sparse
    Transformers" (arXiv 1904.10509).

    Each head: softmax over its factor's key set A(i) (strided or fixed A1, A2, or A1 u A2, see
    attention/factorized.py), with the ordinary q/k/v projections. Time and memory O(N (l + N/l)) for strided,
    O(N (l + c N/l)) for fixed: O(N sqrt N) at l ~ sqrt N. Cached decoding scores each new token against every cached
    key under the pattern's mask (O(N) per token; exact, not the O(sqrt N) gather the pattern would allow).
    On CUDA ("flex") the strided pattern runs on the (N / l, l) grid: A1 a FlexAttention band, A2 attention along
    the grid's columns, the two merged by their log-sum-exps (`strided_grid`); the fixed pattern runs A1 over its
    block-diagonal BlockMask and A2 over the summary columns gathered into one compact sequence (`fixed_compact`).
    Deviations: the bidirectional extension, j = i always kept, shared summary columns across heads (see the math
    module); the paper's recomputation and custom kernels are replaced by the blocked / FlexAttention paths.
    Left padding: the fixed pattern's blocks count from each row's first real token (a full pass rotates the row to
    the right-padded layout, `masks.right_alignment`, and back; decoding shifts the positions), so a left-padded row
    gets the outputs of the unpadded one; the strided pattern depends on i - j only.
    """

    supports_cache = True

    def __init__(self, config: EfficientSparseTransformerConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.factors = head_factors(config.combination, layer_idx, self.num_heads)
        self.settings = (config.pattern, config.local_size, config.num_summary, config.is_causal)

    def backend(self, hidden_states: torch.Tensor, output_attentions: bool) -> str:
        gpu = "flex" if flex_available() else None
        return self.choose_backend(hidden_states, output_attentions, gpu, gpu_min_head_dim=MIN_HEAD_DIM)

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
        # the fixed pattern's blocks start at each row's first real token
        alignment = right_alignment(attention_mask, shared_state) if self.settings[0] == "fixed" else None
        if alignment is not None:
            query, key, value = (alignment.align(states, 2) for states in (query, key, value))
            attention_mask = alignment.keep
        backend = self.backend(hidden_states, output_attentions)
        weights = None
        if backend == "reference":
            attended, weights = factorized_reference(self, query, key, value, attention_mask, self.factors,
                                                     *self.settings)
        elif backend == "blocked":
            attended = factorized_blocked(self, query, key, value, attention_mask, self.factors, *self.settings)
        elif backend == "flex" and self.config.pattern == "strided":
            attended = strided_grid(self, query, key, value, attention_mask, self.factors, self.config.local_size,
                                    self.is_causal, masks=shared_state)
        elif backend == "flex":
            attended = fixed_compact(self, query, key, value, attention_mask, self.factors, self.config.local_size,
                                     self.config.num_summary, self.is_causal, masks=shared_state)
        else:
            raise ValueError(f"Unknown attention_backend {backend!r}; use auto, reference, blocked or flex.")
        if attention_mask is not None:  # padding rows are zero
            attended = attended * attention_mask[:, :, None, None]
        if alignment is not None:
            attended = alignment.restore(attended, 1)
            weights = None if weights is None else alignment.restore(alignment.restore(weights, 2), 3)
        return self.merge_heads(attended), (weights if output_attentions else None)

    def decode_step(self, query, keys, values, attention_mask, past_length, output_attentions):
        """New queries at positions past_length.. against every cached key, masked to the pattern (causal); positions
        count from each row's first real token."""
        length = keys.shape[2]
        query_positions = torch.arange(past_length, length, device=query.device)[:, None]
        key_positions = torch.arange(length, device=query.device)[None, :]
        if attention_mask is None:
            keep = heads_keep(query_positions, key_positions, self.factors, *self.settings)[None]  # (1, 1|h, n, keys)
        else:
            start = leading_padding(attention_mask)[:, None, None]  # (batch, 1, 1)
            keep = heads_keep(query_positions - start, key_positions - start, self.factors, *self.settings)
            keep = keep.transpose(0, 1)  # (1|h, batch, n, keys) -> (batch, 1|h, n, keys)
            keep = (keep & attention_mask[:, None, None, :]) | (query_positions == key_positions)
        attended, weights = self.attend(query, keys, values, keep, need_weights=output_attentions)
        return self.merge_heads(attended), weights


def no_new_parameters(weights: dict[str, torch.Tensor], config: EfficientSparseTransformerConfig) -> list[str]:
    """Conversion adds no parameters: every layer keeps the source's q/k/v/o projections and the Sparse Transformer
    only restricts which keys each head sees (the pattern is a pure function of the config). With pattern "fixed",
    local_size >= length and num_summary = local_size it is the source exactly."""
    return []


class EfficientSparseTransformerModel(EfficientModel):
    config_class = EfficientSparseTransformerConfig
    attention_class = EfficientSparseTransformerAttention


class EfficientSparseTransformerForMaskedLM(EfficientForMaskedLM):
    config_class = EfficientSparseTransformerConfig
    model_class = EfficientSparseTransformerModel


class EfficientSparseTransformerForCausalLM(EfficientForCausalLM):
    config_class = EfficientSparseTransformerConfig
    model_class = EfficientSparseTransformerModel


class EfficientSparseTransformerForSequenceClassification(EfficientForSequenceClassification):
    config_class = EfficientSparseTransformerConfig
    model_class = EfficientSparseTransformerModel


class EfficientSparseTransformerForTokenClassification(EfficientForTokenClassification):
    config_class = EfficientSparseTransformerConfig
    model_class = EfficientSparseTransformerModel


class EfficientSparseTransformerForQuestionAnswering(EfficientForQuestionAnswering):
    config_class = EfficientSparseTransformerConfig
    model_class = EfficientSparseTransformerModel
