"""EfficientLinformer: the backbone with low-rank (sequence-projected) attention in every layer. Encoder only."""

import math

import torch
from torch import nn
from transformers import initialization as init

from ...attention.low_rank import average_pooling_rows, low_rank_attention, low_rank_reference
from ...core.attention import EfficientAttention, repeat_kv
from ...core.heads import (
    EfficientForMaskedLM,
    EfficientForQuestionAnswering,
    EfficientForSequenceClassification,
    EfficientForTokenClassification,
)
from ...core.masks import key_keep, right_alignment
from ...core.modeling import EfficientModel
from .configuration_linformer import EfficientLinformerConfig

SHARED_PROJECTION = "linformer_layerwise_projection"  # the shared_state key of the layerwise-shared E


class LengthProjection(nn.Module):
    """E or F: `weight` (groups, k, n) maps n positions to k rows; groups = key/value heads, or 1 when shared."""

    def __init__(self, groups: int, projected_length: int, max_length: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, projected_length, max_length))


def random_projection_bound(projected_length: int, max_length: int) -> float:
    """Xavier-uniform bound for a (k, n) matrix with gain 1/sqrt(2) (the authors' fairseq code)."""
    return math.sqrt(6.0 / (projected_length + max_length)) / math.sqrt(2.0)


class EfficientLinformerAttention(EfficientAttention):
    """Linformer attention: Wang et al., "Linformer: Self-Attention with Linear Complexity" (arXiv 2006.04768).

    out = softmax(Q (E[:, :L] K)^T / sqrt(d)) (F[:, :L] V), E and F (k x n) per the config's `projection_sharing`.
    Time O(L k d), memory O(L k) (see attention/low_rank.py). The "blocked" backend (the package's name for the
    memory-efficient PyTorch path) is these matmuls plus exact softmax over the k projected keys through
    `self.attend`; it is also the GPU path (no special kernel needed). "reference" materialises the weights
    (batch, heads, L, k) for `output_attentions`.
    Deviations from the paper: E and F act on the projected keys/values (after k_proj/v_proj and their biases, so
    padding, zeroed there, contributes nothing), one per key/value head under grouped-query attention; an input
    shorter than n uses the first L columns (as the authors' code), counted from each row's first real token (a
    left-padded row is rotated to the right-padded layout, `masks.right_alignment`, and back); padding query rows of
    the output are zero.
    Not causal (E mixes future positions); inputs longer than n raise.
    """

    supports_causal = False
    max_length_fixed = True

    def __init__(self, config: EfficientLinformerConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.max_length = config.max_position_embeddings
        self.sharing = config.projection_sharing
        k, n = config.projected_length, config.max_position_embeddings
        groups = self.num_key_value_heads if self.sharing == "none" else 1
        owns_key_projection = self.sharing != "layerwise" or layer_idx == 0
        self.key_length_proj = LengthProjection(groups, k, n) if owns_key_projection else None
        self.value_length_proj = LengthProjection(groups, k, n) if self.sharing in ("none", "headwise") else None

    @classmethod
    def lora_trained_in_full(cls, config: EfficientLinformerConfig) -> tuple[str, ...]:
        """E and F: (groups, k, n) weights read directly, trained in full."""
        return ("key_length_proj", "value_length_proj") if config.projection_sharing in ("none", "headwise") else \
            ("key_length_proj",)

    def length_projections(self, shared_state: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(E, F) weights for this layer; under layerwise sharing the first layer's E, passed on in shared_state."""
        if self.sharing == "layerwise":
            if self.key_length_proj is not None:
                shared_state[SHARED_PROJECTION] = self.key_length_proj.weight
            elif SHARED_PROJECTION not in shared_state:
                raise ValueError(
                    "With projection_sharing='layerwise' the one projection lives in layer 0, which hands it to the "
                    "later layers through `shared_state`: run the layers through the model, layer 0 first."
                )
            projection = shared_state[SHARED_PROJECTION]
            return projection, projection
        key_projection = self.key_length_proj.weight
        return key_projection, (key_projection if self.value_length_proj is None else self.value_length_proj.weight)

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
        length = hidden_states.shape[1]
        if length > self.max_length:
            raise ValueError(
                f"This Linformer has a fixed maximum length: its projections have max_position_embeddings="
                f"{self.max_length} columns, but the input has {length} tokens. Truncate the input to {self.max_length}"
                " tokens, or convert/train a model with a larger max_position_embeddings."
            )
        shared_state = {} if shared_state is None else shared_state
        query, key, value = self.project(hidden_states, position_embeddings)
        alignment = right_alignment(attention_mask, shared_state)  # column j of E/F is the row's j-th real token
        if alignment is not None:
            query, key, value = (alignment.align(states, 2) for states in (query, key, value))
            attention_mask = alignment.keep
        backend = self.choose_backend(hidden_states, output_attentions, gpu_backend=None)
        identity = self.config.identity_projection
        key_projection, value_projection = (None, None) if identity else self.length_projections(shared_state)
        weights = None
        if backend == "reference":
            groups = self.num_key_value_groups
            attended, weights = low_rank_reference(
                query, repeat_kv(key, groups), repeat_kv(value, groups), key_projection, value_projection,
                attention_mask, self.scaling, self.dropout,
            )
        elif backend == "blocked":
            if identity:
                attended, _ = self.attend(query, key, value, key_keep(attention_mask, length, length))
            else:
                attended = low_rank_attention(self, query, key, value, key_projection, value_projection,
                                              attention_mask)
        else:
            raise ValueError(
                f"attention_backend={backend!r}: Linformer's fast path is plain matmuls that run on any device; use "
                "attention_backend='auto', 'blocked' or 'reference'."
            )
        if attention_mask is not None:
            attended = attended * attention_mask[:, :, None, None].to(attended.dtype)
        if alignment is not None:
            attended = alignment.restore(attended, 1)
            if weights is not None:  # (batch, heads, L, k): the query axis (and the key axis under identity)
                weights = alignment.restore(weights, 2)
                weights = alignment.restore(weights, 3) if identity else weights
        return self.merge_heads(attended), (weights if output_attentions else None)


def length_projections_for_conversion(weights: dict[str, torch.Tensor], config: EfficientLinformerConfig) -> list[str]:
    """Conversion: E and F start as average pooling over k contiguous segments of the n positions (the identity
    when k = n), so on an n-token input each projected key/value is a segment mean and the converted model attends
    to segment means; with k = n it reproduces the source exactly. Measured on all-MiniLM-L6-v2 (n = 512, 512 tokens
    of text): mean-pooled embedding cosine to the source 0.87 (k = 256) and 0.77 (k = 128), against 0.29 and 0.23
    from the paper's random start (`projection_init="random"`, seeded). Inputs shorter than n leave the rows of
    unreached segments empty (zero keys and values that still take softmax mass): fine-tune at full length."""
    k, n = config.projected_length, config.max_position_embeddings
    sharing = config.projection_sharing
    groups = config.num_key_value_heads if sharing == "none" else 1
    generator = torch.Generator().manual_seed(0)
    added = []
    for layer in range(config.num_hidden_layers if sharing != "layerwise" else 1):
        names = ["key_length_proj"] + (["value_length_proj"] if sharing in ("none", "headwise") else [])
        for name in names:
            target = f"model.layers.{layer}.self_attn.{name}.weight"
            if target in weights:
                continue
            if config.projection_init == "average_pooling":
                weights[target] = average_pooling_rows(k, n)[None].repeat(groups, 1, 1)
            else:
                bound = random_projection_bound(k, n)
                weights[target] = torch.empty(groups, k, n).uniform_(-bound, bound, generator=generator)
            added.append(target)
    return added


class EfficientLinformerModel(EfficientModel):
    config_class = EfficientLinformerConfig
    attention_class = EfficientLinformerAttention

    def attention_weight_columns(self, keys: int) -> int:
        return keys if self.config.identity_projection else self.config.projected_length

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LengthProjection):
            groups, k, n = module.weight.shape
            if self.config.projection_init == "average_pooling":
                init.copy_(module.weight, average_pooling_rows(k, n).expand(groups, k, n))
            else:
                bound = random_projection_bound(k, n)
                init.uniform_(module.weight, -bound, bound)


class EfficientLinformerForMaskedLM(EfficientForMaskedLM):
    config_class = EfficientLinformerConfig
    model_class = EfficientLinformerModel


class EfficientLinformerForSequenceClassification(EfficientForSequenceClassification):
    config_class = EfficientLinformerConfig
    model_class = EfficientLinformerModel


class EfficientLinformerForTokenClassification(EfficientForTokenClassification):
    config_class = EfficientLinformerConfig
    model_class = EfficientLinformerModel


class EfficientLinformerForQuestionAnswering(EfficientForQuestionAnswering):
    config_class = EfficientLinformerConfig
    model_class = EfficientLinformerModel
