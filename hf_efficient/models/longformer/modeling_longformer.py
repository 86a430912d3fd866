"""EfficientLongformer: the backbone with sliding-window + global attention in every layer."""

import torch
from torch import nn
from transformers.utils import logging

from ...attention.flex import MIN_HEAD_DIM, bucket_keep, bucket_length, flex_available, pad_length
from ...attention.global_tokens import global_slots, scatter_global_rows
from ...attention.sliding_window import (
    band_keep,
    flex_block_mask,
    global_rows,
    sliding_window_blocked,
    sliding_window_flex,
    sliding_window_reference,
)
from ...core.attention import EfficientAttention, repeat_kv
from ...core.heads import (
    EfficientForCausalLM,
    EfficientForMaskedLM,
    EfficientForQuestionAnswering,
    EfficientForSequenceClassification,
    EfficientForTokenClassification,
)
from ...core.modeling import EfficientModel
from .configuration_longformer import EfficientLongformerConfig

logger = logging.get_logger(__name__)


class EfficientLongformerAttention(EfficientAttention):
    """Longformer attention: Beltagy, Peters & Cohan, "Longformer: The Long-Document Transformer" (arXiv 2004.05150).

    Local rows: softmax over the dilated band |i-j| <= (window/2)*d plus the global keys, local projections.
    Global rows: softmax over every key with the separate global projections q_global/k_global/v_global.
    Time O(N (window + G) d_head), memory O(N (window + G)) (see attention/sliding_window.py for the paths).
    Beyond the paper: causal use keeps the earlier half of the window; a causal global token sees the tokens
    before it and is seen by the tokens after it. Padding rows of the output are zero.
    """

    supports_cache = True
    supports_global_attention = True
    supports_sequence_parallel = True
    sequence_split = None  # a sequence split across ranks: set by hf_efficient.parallel.sequence_parallel

    def __init__(self, config: EfficientLongformerConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.one_sided = config.attention_window[layer_idx] // 2
        self.dilation = config.attention_dilation[layer_idx]
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        self.q_global_proj = nn.Linear(config.hidden_size, q_dim, bias=config.attention_bias)
        self.k_global_proj = nn.Linear(config.hidden_size, kv_dim, bias=config.attention_bias)
        self.v_global_proj = nn.Linear(config.hidden_size, kv_dim, bias=config.attention_bias)

    @classmethod
    def lora_targets(cls, config: EfficientLongformerConfig) -> tuple[str, ...]:
        return (*super().lora_targets(config), "q_global_proj", "k_global_proj", "v_global_proj")

    def backend(self, hidden_states: torch.Tensor, output_attentions: bool) -> str:
        gpu = "flex" if flex_available() else None
        return self.choose_backend(hidden_states, output_attentions, gpu, gpu_min_head_dim=MIN_HEAD_DIM)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values=None,
        global_attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        shared_state: dict | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        shared_state = {} if shared_state is None else shared_state
        if self.sequence_split is not None:
            return self.sequence_split(self, hidden_states, attention_mask, position_embeddings, past_key_values,
                                       global_attention_mask, output_attentions, shared_state)
        query, key, value = self.project(hidden_states, position_embeddings)
        past_length = 0
        if past_key_values is not None:
            if global_attention_mask is not None:
                raise ValueError("Global tokens can't be combined with cached decoding; call with use_cache=False.")
            past_length = past_key_values.get_seq_length(self.layer_idx)
            all_keys, all_values = past_key_values.update(key, value, self.layer_idx)
            if past_length:
                return self.decode_step(query, all_keys, all_values, attention_mask, past_length, output_attentions)
        is_global = global_attention_mask  # the model has already dropped global marks on padding
        global_qkv = None
        if is_global is not None:
            projections = (self.q_global_proj, self.k_global_proj, self.v_global_proj)
            global_qkv = self.project(hidden_states, position_embeddings, projections)

        backend = self.backend(hidden_states, output_attentions)
        if backend == "reference":
            groups = self.num_key_value_groups
            gq, gk, gv = global_qkv if global_qkv is not None else (None, None, None)
            attended, weights = sliding_window_reference(
                query, repeat_kv(key, groups), repeat_kv(value, groups), gq,
                None if gk is None else repeat_kv(gk, groups), None if gv is None else repeat_kv(gv, groups),
                attention_mask, is_global, self.one_sided, self.dilation, self.is_causal, self.scaling,
            )
            return self.merge_heads(attended), (weights if output_attentions else None)

        if is_global is not None and "global_slots" not in shared_state:
            shared_state["global_slots"] = global_slots(is_global)
        global_index, global_valid = shared_state.get("global_slots", (None, None))
        if backend == "flex":
            mask_key = ("longformer_block_mask", self.one_sided, self.dilation)
            if mask_key not in shared_state:  # built on the length's shape bucket (see attention/flex.py)
                batch, length, device = query.shape[0], query.shape[2], query.device
                bucket = bucket_length(length)
                shared_state[mask_key] = flex_block_mask(
                    bucket, self.one_sided, self.dilation, self.is_causal,
                    bucket_keep(attention_mask, batch, length, bucket, device),
                    None if is_global is None else pad_length(is_global, bucket, dim=1), device,
                )
            attended = sliding_window_flex(query, key, value, shared_state[mask_key], self.scaling)
        elif backend == "blocked":
            attended = sliding_window_blocked(
                self, query, key, value, attention_mask, is_global, global_index, global_valid,
                self.one_sided, self.dilation, self.is_causal,
            )
        else:
            raise ValueError(f"Unknown attention_backend {backend!r}; use auto, reference, blocked or flex.")
        if global_index is not None:
            rows = global_rows(self, *global_qkv, attention_mask, global_index, self.is_causal)
            attended = scatter_global_rows(attended, rows, global_index, global_valid)
        if attention_mask is not None:
            attended = attended * attention_mask[:, :, None, None]
        return self.merge_heads(attended), None

    def decode_step(self, query, keys, values, attention_mask, past_length, output_attentions):
        """New queries at positions past_length.. against the cached keys inside their band: O(n (w d + n))."""
        length = keys.shape[2]
        start = 0 if output_attentions else max(0, past_length - self.one_sided * self.dilation)
        query_positions = torch.arange(past_length, length, device=query.device)
        key_positions = torch.arange(start, length, device=query.device)
        keep = band_keep(query_positions, key_positions, self.one_sided, self.dilation, causal=True)[None, None]
        if attention_mask is not None:
            keep = keep & attention_mask[:, None, None, start:]
        keep = keep | (query_positions[:, None] == key_positions[None, :])
        attended, weights = self.attend(
            query, keys[:, :, start:], values[:, :, start:], keep, need_weights=output_attentions
        )
        return self.merge_heads(attended), weights


def global_projections_from_local(weights: dict[str, torch.Tensor], config: EfficientLongformerConfig) -> list[str]:
    """Conversion: global q/k/v start as copies of the local q/k/v (the Longformer paper, section 5), so before
    fine-tuning a global token scores keys exactly as the source model would."""
    added = []
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.self_attn"
        for name in ("q", "k", "v"):
            for kind in ("weight", "bias"):
                local, target = f"{prefix}.{name}_proj.{kind}", f"{prefix}.{name}_global_proj.{kind}"
                if local in weights and target not in weights:
                    weights[target] = weights[local].clone()
                    added.append(target)
    return added


class EfficientLongformerModel(EfficientModel):
    config_class = EfficientLongformerConfig
    attention_class = EfficientLongformerAttention

    def global_tokens(self, global_keep, batch, length, decoding, device):
        if not self.config.global_first_token or decoding:
            return global_keep
        first = torch.zeros(batch, length, dtype=torch.bool, device=device)
        first[:, 0] = True
        return first if global_keep is None else global_keep | first


class EfficientLongformerForMaskedLM(EfficientForMaskedLM):
    config_class = EfficientLongformerConfig
    model_class = EfficientLongformerModel


class EfficientLongformerForCausalLM(EfficientForCausalLM):
    config_class = EfficientLongformerConfig
    model_class = EfficientLongformerModel


class EfficientLongformerForSequenceClassification(EfficientForSequenceClassification):
    config_class = EfficientLongformerConfig
    model_class = EfficientLongformerModel


class EfficientLongformerForTokenClassification(EfficientForTokenClassification):
    config_class = EfficientLongformerConfig
    model_class = EfficientLongformerModel


class EfficientLongformerForQuestionAnswering(EfficientForQuestionAnswering):
    config_class = EfficientLongformerConfig
    model_class = EfficientLongformerModel
