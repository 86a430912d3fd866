"""EfficientMemoryCompressed: the backbone with T-DMCA's local and memory-compressed attention layers."""

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache

from ...attention.memory_compressed import (
    compress,
    compress_reference,
    compressed_blocked,
    decode_keep,
    local_blocked,
    memory_compressed_reference,
    slot_keep,
)
from ...core.attention import EfficientAttention
from ...core.heads import (
    EfficientForCausalLM,
    EfficientForMaskedLM,
    EfficientForQuestionAnswering,
    EfficientForSequenceClassification,
    EfficientForTokenClassification,
)
from ...core.masks import refuse_left_padding, right_alignment
from ...core.modeling import EfficientModel
from .cache_memory_compressed import CompressedMemoryCache, CompressedMemoryLayer
from .configuration_memory_compressed import EfficientMemoryCompressedConfig


class SequenceCompression(nn.Conv1d):
    """Keys or values pooled along the sequence: a convolution with kernel = stride = c over kv_heads * d channels
    (every channel of the c positions mixes into every output channel, as the paper's strided convolution)."""

    def __init__(self, channels: int, factor: int):
        super().__init__(channels, channels, kernel_size=factor, stride=factor)


def average_pooling_kernel(channels: int, factor: int) -> torch.Tensor:
    """(channels, channels, c): each output channel is the mean of its own input channel over the c positions."""
    return torch.eye(channels)[:, :, None].expand(channels, channels, factor) / factor


class EfficientMemoryCompressedAttention(EfficientAttention):
    """T-DMCA attention: Liu et al., "Generating Wikipedia by Summarizing Long Sequences" (arXiv 1801.10198).

    A "local" layer: softmax within blocks of b tokens (causal inside a block when causal). A "compressed" layer:
    K~ = Conv_k(K), V~ = Conv_v(V) with kernel = stride = c, then softmax(Q K~^T / sqrt(d)) V~ over the ceil(N/c)
    slots; causal: only the slots of groups complete before the query's own group, plus the query's own group's raw
    keys up to itself (see attention/memory_compressed.py). Time O(N b d) local, O(N^2/c d + N d^2) compressed;
    memory O(N b) and O(N^2/c). Cached decoding keeps a block per local layer and the slots (+ one incomplete group)
    per compressed layer: O(b) and O(N/c) per new token.
    Deviations: in a causal compressed layer a query also sees its own group's raw keys (the paper: nothing of the
    incomplete group), so no row is empty and c = 1 is exact; separate convolutions for keys and values act on the
    projected (and, with rotary, rotated) keys/values, per key/value head group; padding rows of the output are zero.
    Left padding: a full pass rotates each row so that its first real token starts block 0 and group 0
    (`masks.right_alignment`) and back after, which is exact; cached decoding keeps one block/group grid for the
    whole batch, so decoding after a left-padded prefix (generate() on left-padded prompts) raises a ValueError.
    """

    supports_cache = True
    supports_left_padding = False  # exact in full passes; cached decoding refuses it (see the docstring)

    def __init__(self, config: EfficientMemoryCompressedConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.kind = config.attention_layer_types[layer_idx]
        self.block = config.block_size
        self.factor = config.effective_compression_factor
        self.identity = config.identity_compression
        if self.kind == "compressed":
            channels = self.num_key_value_heads * self.head_dim
            self.key_compression = SequenceCompression(channels, config.compression_factor)
            self.value_compression = SequenceCompression(channels, config.compression_factor)

    @classmethod
    def lora_trained_in_full(cls, config: EfficientMemoryCompressedConfig) -> tuple[str, ...]:
        """The key and value convolutions of the compressed layers (their weights are read directly)."""
        return () if config.identity_compression else ("key_compression", "value_compression")

    def compressed_memory(self, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor | None,
                          compressor=compress) -> tuple[torch.Tensor, torch.Tensor]:
        """The slots (batch, kv_heads, ceil(L / c), d) of keys and values (the keys themselves under identity)."""
        if self.identity:
            return key, value
        keys = compressor(key, self.key_compression.weight, self.key_compression.bias, keep, self.factor)
        values = compressor(value, self.value_compression.weight, self.value_compression.bias, keep, self.factor)
        return keys, values

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        output_attentions: bool = False,
        shared_state: dict | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query, key, value = self.project(hidden_states, position_embeddings)
        state = None if past_key_values is None else past_key_values.layers[self.layer_idx]
        if state is not None and state.seen_tokens:
            return self.decode_step(query, key, value, attention_mask, state, output_attentions)
        alignment = right_alignment(attention_mask, shared_state)  # blocks and groups start at the first real token
        if alignment is not None:
            query, key, value = (alignment.align(states, 2) for states in (query, key, value))
            attention_mask = alignment.keep
        backend = self.choose_backend(hidden_states, output_attentions, gpu_backend=None)
        weights, slot_keys, slot_values = None, None, None
        if backend == "reference":
            if self.kind == "compressed":
                slot_keys, slot_values = self.compressed_memory(key, value, attention_mask, compress_reference)
            else:  # no slots: zeros, all masked, so the weights have the same columns in every layer
                count = -(-key.shape[2] // self.factor)
                slot_keys = slot_values = key.new_zeros(*key.shape[:2], count, key.shape[3])
            attended, weights = memory_compressed_reference(
                self, query, key, value, slot_keys, slot_values, attention_mask, self.kind, self.block, self.factor,
                self.is_causal,
            )
        elif backend == "blocked":
            if self.kind == "local":
                attended = local_blocked(self, query, key, value, attention_mask, self.block, self.is_causal)
            else:
                slot_keys, slot_values = self.compressed_memory(key, value, attention_mask)
                attended = compressed_blocked(self, query, key, value, slot_keys, slot_values, attention_mask,
                                              self.factor, self.is_causal, self.block)
        else:
            raise ValueError(
                f"attention_backend={backend!r}: T-DMCA's fast path is blocked attention through transformers' "
                "attention interface, on any device; use attention_backend='auto', 'blocked' or 'reference'."
            )
        if state is not None:  # decoding goes on only without left padding, where the alignment changes nothing
            self.store_prefix(state, key, value, slot_keys, slot_values)
        if attention_mask is not None:  # padding rows are zero
            attended = attended * attention_mask[:, :, None, None].to(attended.dtype)
        if alignment is not None:
            attended = alignment.restore(attended, 1)
            if weights is not None:  # (batch, heads, N, N + M): the queries and the raw keys (slots: aligned groups)
                length = key.shape[2]
                raw = alignment.restore(alignment.restore(weights[..., :length], 2), 3)
                weights = torch.cat([raw, alignment.restore(weights[..., length:], 2)], dim=-1)
        return self.merge_heads(attended), (weights if output_attentions else None)

    def store_prefix(self, state: CompressedMemoryLayer, key: torch.Tensor, value: torch.Tensor,
                     slot_keys: torch.Tensor | None, slot_values: torch.Tensor | None) -> None:
        """After a first (prefix) pass: keep the current block (local) or the complete slots and the raw keys of the
        incomplete group (compressed)."""
        length = key.shape[2]
        if self.kind == "local":
            start = length // self.block * self.block
            state.store(key[:, :, start:], value[:, :, start:], start, length)
            return
        complete = length // self.factor
        start = complete * self.factor
        state.store(key[:, :, start:], value[:, :, start:], start, length, slot_keys[:, :, :complete],
                    slot_values[:, :, :complete])

    def decode_step(self, query, key, value, attention_mask, state: CompressedMemoryLayer, output_attentions):
        """New queries at positions seen.. against the cached block (local) or the slots and the incomplete group
        (compressed); a group that completes here is convolved into a new slot, the memory grows only then."""
        refuse_left_padding(attention_mask, "Cached decoding of EfficientMemoryCompressed (T-DMCA)",
                            "A forward pass without the cache (use_cache=False) is exact with left padding.")
        past, total = state.seen_tokens, state.seen_tokens + query.shape[2]
        start = state.start
        keys, values = torch.cat([state.keys, key], dim=2), torch.cat([state.values, value], dim=2)
        real = None if attention_mask is None else attention_mask[:, start:total]
        query_positions = torch.arange(past, total, device=query.device)
        key_positions = torch.arange(start, total, device=query.device)
        slot_keys, slot_values = None, None
        if self.kind == "local":
            keep = decode_keep(query_positions, key_positions, real, None, 0, "local", self.block, self.factor)
            attended, weights = self.attend(query, keys, values, keep, need_weights=output_attentions)
            new_start = total // self.block * self.block
        else:
            complete = total // self.factor
            completed = complete * self.factor - start  # raw positions of the groups completed by these tokens
            slot_keys, slot_values = state.slot_keys, state.slot_values
            if completed > 0:
                group_real = None if real is None else real[:, :completed]
                new_keys, new_values = self.compressed_memory(keys[:, :, :completed], values[:, :, :completed],
                                                              group_real)
                slot_keys = torch.cat([slot_keys, new_keys], dim=2)
                slot_values = torch.cat([slot_values, new_values], dim=2)
            slot_real = None
            if attention_mask is not None:
                slot_real = slot_keep(attention_mask[:, : complete * self.factor], complete * self.factor,
                                      self.factor)
            keep = decode_keep(query_positions, key_positions, real, slot_real, complete, "compressed", self.block,
                               self.factor)
            attended, weights = self.attend(query, torch.cat([keys, slot_keys], dim=2),
                                            torch.cat([values, slot_values], dim=2), keep,
                                            need_weights=output_attentions)
            new_start = complete * self.factor
        state.store(keys[:, :, new_start - start:], values[:, :, new_start - start:], new_start, total, slot_keys,
                    slot_values)
        if attention_mask is not None:
            attended = attended * attention_mask[:, past:total, None, None].to(attended.dtype)
        return self.merge_heads(attended), weights


def compression_for_conversion(weights: dict[str, torch.Tensor], config: EfficientMemoryCompressedConfig) -> list[str]:
    """Conversion: the key and value convolutions of each compressed layer start as average pooling (each slot the
    mean of its c keys / values, channel by channel: identity across channels divided by c, zero bias), so a
    converted compressed layer attends to the group means of the source's own keys and values; local layers keep
    the source's attention inside blocks. With compression_init="random" they start random instead (seeded)."""
    channels = config.num_key_value_heads * config.head_dim
    factor = config.compression_factor
    generator = torch.Generator().manual_seed(0)
    added = []
    for layer, kind in enumerate(config.attention_layer_types):
        if kind != "compressed":
            continue
        for name in ("key_compression", "value_compression"):
            prefix = f"model.layers.{layer}.self_attn.{name}"
            if f"{prefix}.weight" in weights:
                continue
            if config.compression_init == "average_pooling":
                weight = average_pooling_kernel(channels, factor).clone()
            else:
                weight = torch.randn(channels, channels, factor, generator=generator) * config.initializer_range
            weights[f"{prefix}.weight"], weights[f"{prefix}.bias"] = weight, torch.zeros(channels)
            added += [f"{prefix}.weight", f"{prefix}.bias"]
    return added


class EfficientMemoryCompressedModel(EfficientModel):
    config_class = EfficientMemoryCompressedConfig
    attention_class = EfficientMemoryCompressedAttention
    state_cache = CompressedMemoryCache
    state_cache_refusal = "T-DMCA decoding, which keeps blocks and compressed slots per layer"

    def attention_weight_columns(self, keys: int) -> int:
        return keys + -(-keys // self.config.effective_compression_factor)  # the raw keys, then the slots

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SequenceCompression):
            channels, _, factor = module.weight.shape
            if self.config.compression_init == "average_pooling":
                init.copy_(module.weight, average_pooling_kernel(channels, factor))
            else:
                init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.bias)



class EfficientMemoryCompressedForMaskedLM(EfficientForMaskedLM):
    config_class = EfficientMemoryCompressedConfig
    model_class = EfficientMemoryCompressedModel


class EfficientMemoryCompressedForCausalLM(EfficientForCausalLM):
    config_class = EfficientMemoryCompressedConfig
    model_class = EfficientMemoryCompressedModel


class EfficientMemoryCompressedForSequenceClassification(EfficientForSequenceClassification):
    config_class = EfficientMemoryCompressedConfig
    model_class = EfficientMemoryCompressedModel


class EfficientMemoryCompressedForTokenClassification(EfficientForTokenClassification):
    config_class = EfficientMemoryCompressedConfig
    model_class = EfficientMemoryCompressedModel


class EfficientMemoryCompressedForQuestionAnswering(EfficientForQuestionAnswering):
    config_class = EfficientMemoryCompressedConfig
    model_class = EfficientMemoryCompressedModel
