"""EfficientSparseTransformer: the backbone with the Sparse Transformer's factorized attention in every layer."""

import torch

from ...attention.factorized import (
    factorized_blocked,
    factorized_flex,
    factorized_reference,
    flex_block_mask,
    head_factors,
    heads_keep,
)
from ...attention.flex import MIN_HEAD_DIM, bucket_keep, bucket_length, flex_available
from ...core.attention import EfficientAttention
from ...core.heads import (
    EfficientForCausalLM,
    EfficientForMaskedLM,
    EfficientForQuestionAnswering,
    EfficientForSequenceClassification,
    EfficientForTokenClassification,
)
from ...core.modeling import EfficientModel
from .configuration_sparse_transformer import EfficientSparseTransformerConfig


class EfficientSparseTransformerAttention(EfficientAttention):
    """Sparse Transformer attention: Child, Gray, Radford & Sutskever, "Generating Long Sequences with Sparse
    Transformers" (arXiv 1904.10509).

    Each head: softmax over its factor's key set A(i) (strided or fixed A1, A2, or A1 u A2, see
    attention/factorized.py), with the ordinary q/k/v projections. Time and memory O(N (l + N/l)) for strided,
    O(N (l + c N/l)) for fixed: O(N sqrt N) at l ~ sqrt N. Cached decoding scores each new token against every cached
    key under the pattern's mask (O(N) per token; exact, not the O(sqrt N) gather the pattern would allow).
    Deviations: the bidirectional extension, j = i always kept, shared summary columns across heads (see the math
    module); the paper's recomputation and custom kernels are replaced by the blocked / FlexAttention paths.
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

        backend = self.backend(hidden_states, output_attentions)
        weights = None
        if backend == "reference":
            attended, weights = factorized_reference(self, query, key, value, attention_mask, self.factors,
                                                     *self.settings)
        elif backend == "blocked":
            attended = factorized_blocked(self, query, key, value, attention_mask, self.factors, *self.settings)
        elif backend == "flex":
            mask_key = ("sparse_transformer_block_mask", self.factors)
            if mask_key not in shared_state:  # built on the length's shape bucket (see attention/flex.py)
                batch, length, device = query.shape[0], query.shape[2], query.device
                bucket = bucket_length(length)
                shared_state[mask_key] = flex_block_mask(bucket, self.factors, *self.settings,
                                                         bucket_keep(attention_mask, batch, length, bucket, device),
                                                         device)
            attended = factorized_flex(query, key, value, shared_state[mask_key], self.scaling)
        else:
            raise ValueError(f"Unknown attention_backend {backend!r}; use auto, reference, blocked or flex.")
        if attention_mask is not None:  # padding rows are zero
            attended = attended * attention_mask[:, :, None, None]
        return self.merge_heads(attended), (weights if output_attentions else None)

    def decode_step(self, query, keys, values, attention_mask, past_length, output_attentions):
        """New queries at positions past_length.. against every cached key, masked to the pattern (causal)."""
        length = keys.shape[2]
        query_positions = torch.arange(past_length, length, device=query.device)[:, None]
        key_positions = torch.arange(length, device=query.device)[None, :]
        keep = heads_keep(query_positions, key_positions, self.factors, *self.settings)[None]  # (1, 1|h, n, keys)
        if attention_mask is not None:
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
