"""EfficientCompressive: Transformer-XL with a compressed memory of the states that leave the memory."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions, CausalLMOutputWithPast

from ...attention.compressive import MemoryCompression, reconstruction_loss
from ...core.cache_argument import returned_cache
from ..transformer_xl.modeling_transformer_xl import (
    EfficientTransformerXLAttention,
    EfficientTransformerXLForCausalLM,
    EfficientTransformerXLForQuestionAnswering,
    EfficientTransformerXLForSequenceClassification,
    EfficientTransformerXLForTokenClassification,
    EfficientTransformerXLModel,
    TransformerXLBlock,
    relative_terms_for_conversion,
)
from .cache_compressive import CompressiveMemoryCache
from .configuration_compressive import EfficientCompressiveConfig


@dataclass
class CompressiveModelOutput(BaseModelOutputWithPoolingAndCrossAttentions):
    """The backbone's output plus `reconstruction_loss`: the attention-reconstruction loss summed over layers (None
    when no state was compressed in this call, or in inference without gradients)."""

    reconstruction_loss: torch.Tensor | None = None


@dataclass
class CompressiveCausalLMOutput(CausalLMOutputWithPast):
    """`loss` is the language-model loss plus reconstruction_loss_weight times `reconstruction_loss` (reported
    apart, None as in `CompressiveModelOutput`)."""

    reconstruction_loss: torch.Tensor | None = None


class EfficientCompressiveAttention(EfficientTransformerXLAttention):
    """Transformer-XL's relative attention (attention/relative.py) reading [compressed memory; memory; segment]:
    the block hands it the concatenated memories, and distances run over the whole span. Rae et al.,
    "Compressive Transformers for Long-Range Sequence Modelling" (arXiv 1911.05507); see attention/compressive.py.
    In inference the keys and values of the memories are projected again at each call (the compressed states change
    as the memory moves), not kept in the cache as Transformer-XL does."""


class CompressiveBlock(TransformerXLBlock):
    """Transformer-XL's block plus this layer's compression function f_c (`compression`)."""

    def __init__(self, config: EfficientCompressiveConfig, layer_idx: int, attention_class: type[nn.Module]):
        super().__init__(config, layer_idx, attention_class)
        self.compression = MemoryCompression(config.hidden_size, config.compression_rate, config.compression)


def compression_for_conversion(weights: dict[str, torch.Tensor], config: EfficientCompressiveConfig) -> list[str]:
    """Conversion: Transformer-XL's recipe (W_r, u and v of every layer start at zero, so the converted model computes
    its source's attention), and each layer's compression convolution starts as mean pooling (weight[o, i, t] = 1/c
    for o == i, else 0; bias 0), as a fresh model does."""
    added = relative_terms_for_conversion(weights, config)
    if config.compression != "conv":
        return added
    compression = MemoryCompression(config.hidden_size, config.compression_rate, "conv")
    compression.reset_as_mean_pooling()
    for layer in range(config.num_hidden_layers):
        for name, tensor in compression.state_dict().items():
            key = f"model.layers.{layer}.compression.{name}"
            if key not in weights:
                weights[key] = tensor.clone()
                added.append(key)
    return added


class CompressionInit:
    """Mixed into the model and its heads: every compression convolution starts as mean pooling."""

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MemoryCompression):
            module.reset_as_mean_pooling()


class EfficientCompressiveModel(CompressionInit, EfficientTransformerXLModel):
    """EfficientTransformerXLModel whose memories (a `CompressiveMemoryCache`) also keep, per layer, up to cmem_len
    compressed states of those that left the memory (compression rate c; f_c initialised as mean pooling). The
    output's `reconstruction_loss` is the paper's attention-reconstruction loss of the states compressed in this call
    (computed in training or under autograd); it trains only the compression functions."""

    config_class = EfficientCompressiveConfig
    attention_class = EfficientCompressiveAttention
    block_class = CompressiveBlock
    state_cache = CompressiveMemoryCache
    state_cache_refusal = "Compressive Transformer decoding, which keeps memories of hidden states per layer"

    def example_inputs(self, input_ids: torch.Tensor) -> dict:
        """The memories pattern pictures (hf_efficient.patterns) draw with: the same tokens read once before, as
        the previous segment, so a picture shows a segment's queries over [compressed memory; memory; segment]."""
        with torch.no_grad():
            cache = returned_cache(self(input_ids=input_ids, use_cache=True, return_dict=True))
        return {"cache": cache, "use_cache": True}

    def forward(self, *args, return_dict: bool | None = None, **kwargs) -> CompressiveModelOutput | tuple:
        """EfficientTransformerXLModel.forward (same arguments), with `reconstruction_loss` in the output."""
        out = super().forward(*args, return_dict=True, **kwargs)
        cache = returned_cache(out)
        loss = None
        if cache is not None:
            losses = [layer.reconstruction for layer in cache.layers if layer.reconstruction is not None]
            loss = torch.stack(losses).sum() if losses else None
            for layer in cache.layers:
                layer.reconstruction = None
            cache.reconstruction_loss = loss
        result = CompressiveModelOutput(**out, reconstruction_loss=loss)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()

    def remember(self, state, memory: torch.Tensor | None, layer_input: torch.Tensor, key_keep: torch.Tensor | None,
                 key_positions: torch.Tensor, seen_tokens: int, layer: nn.Module | None = None) -> None:
        """The new [compressed memory; memory]: the memory keeps its last mem_len states (up to c - 1 more, so that
        states leave in whole groups of c), those leaving are compressed (padding zeroed first) and appended to the
        compressed memory, which keeps its last cmem_len; all detached. With cmem_len = 0, Transformer-XL's."""
        config = self.config
        if not config.cmem_len:
            return super().remember(state, memory, layer_input, key_keep, key_positions, seen_tokens, layer)
        compressed = state.compressed_length if memory is not None else 0
        states = layer_input.detach() if memory is None else torch.cat([memory, layer_input.detach()], dim=1)
        batch, total = states.shape[:2]
        keep = key_keep if key_keep is not None else torch.ones(batch, total, dtype=torch.bool, device=states.device)
        rate = config.compression_rate
        leaving = max(total - compressed - config.mem_len, 0) // rate * rate
        split = compressed + leaving
        parts = [states[:, :compressed]], [keep[:, :compressed]], [key_positions[:, :compressed]]
        if leaving:
            old, old_keep = states[:, compressed:split], keep[:, compressed:split]
            old = old.masked_fill(~old_keep[..., None], 0.0)
            new_keep = old_keep.unflatten(1, (-1, rate)).any(-1)
            if layer is not None and (self.training or torch.is_grad_enabled()):
                state.reconstruction = reconstruction_loss(
                    layer.self_attn, layer.attention_norm if layer.pre_norm else None, layer.compression,
                    layer_input.detach(), old, old_keep, new_keep, keep[:, -layer_input.shape[1]:])
            with torch.no_grad():
                parts[0].append(layer.compression(old))
            parts[1].append(new_keep)
            parts[2].append(key_positions[:, compressed:split][:, rate - 1::rate])
        cmem, cmem_keep, cmem_positions = (torch.cat(part, dim=1)[:, -config.cmem_len:] for part in parts)
        memory_keep = torch.cat([cmem_keep, keep[:, split:]], dim=1)
        state.store(torch.cat([cmem, states[:, split:]], dim=1), None if key_keep is None else memory_keep,
                    torch.cat([cmem_positions, key_positions[:, split:]], dim=1), seen_tokens)
        state.compressed_length = cmem.shape[1]


class EfficientCompressiveForCausalLM(CompressionInit, EfficientTransformerXLForCausalLM):
    config_class = EfficientCompressiveConfig
    model_class = EfficientCompressiveModel

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                global_attention_mask=None, cache=None, inputs_embeds=None, labels=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, logits_to_keep=0,
                past_key_values=None, return_logits=None, **kwargs) -> CompressiveCausalLMOutput | tuple:
        """EfficientTransformerXLForCausalLM.forward; with labels, `loss` also holds reconstruction_loss_weight times
        the reconstruction loss, reported apart as `reconstruction_loss`."""
        out = super().forward(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, global_attention_mask=global_attention_mask, cache=cache,
            inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, logits_to_keep=logits_to_keep,
            past_key_values=past_key_values, return_logits=return_logits, **kwargs)
        memory = returned_cache(out)
        reconstruction = getattr(memory, "reconstruction_loss", None)
        if memory is not None:
            memory.reconstruction_loss = None  # taken: the cache carries no graph to the next step
        loss = out.loss
        if loss is not None and reconstruction is not None:
            loss = loss + self.config.reconstruction_loss_weight * reconstruction
        result = CompressiveCausalLMOutput(**{**out, "loss": loss}, reconstruction_loss=reconstruction)
        return self.finish(result, return_dict)


class EfficientCompressiveForSequenceClassification(CompressionInit, EfficientTransformerXLForSequenceClassification):
    config_class = EfficientCompressiveConfig
    model_class = EfficientCompressiveModel


class EfficientCompressiveForTokenClassification(CompressionInit, EfficientTransformerXLForTokenClassification):
    config_class = EfficientCompressiveConfig
    model_class = EfficientCompressiveModel


class EfficientCompressiveForQuestionAnswering(CompressionInit, EfficientTransformerXLForQuestionAnswering):
    config_class = EfficientCompressiveConfig
    model_class = EfficientCompressiveModel
