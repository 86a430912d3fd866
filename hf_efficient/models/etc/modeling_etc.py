"""EfficientETC: a global input of its own beside the long input, one stream [global ; long] through shared layers."""

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.utils import logging

from ...attention.flex import MIN_HEAD_DIM, bucket_length, flex_available, pad_length
from ...attention.global_local import (
    global_local_block_mask,
    global_local_blocked,
    global_local_flex,
    global_local_reference,
    relative_scores,
)
from ...core.attention import EfficientAttention, repeat_kv
from ...core.heads import (
    EfficientForMaskedLM,
    EfficientForQuestionAnswering,
    EfficientForSequenceClassification,
    EfficientForTokenClassification,
)
from ...core.masks import refuse_unless, validate_keep_mask
from ...core.modeling import EfficientModel, refuse_unknown_kwargs
from .configuration_etc import EfficientETCConfig
from .global_input import build_global_input

logger = logging.get_logger(__name__)

PATTERN_BLOCK = 16  # the global input of pattern pictures: one global token per 16 long tokens (fixed blocks)
GLOBAL_INPUTS = frozenset({"global_input_ids", "global_input_mask", "global_token_type_ids", "segment_ids"})


@dataclass
class GlobalLocalLayout:
    """What every layer needs of one forward's two streams: G, each stream position's segment (a global token's own
    index; a long token's global index, -1 for none) and which positions are real tokens, (batch, G + N) each."""

    num_global: int
    segments: torch.Tensor
    real: torch.Tensor


@dataclass
class EfficientETCModelOutput(BaseModelOutputWithPoolingAndCrossAttentions):
    """The long stream's outputs (`last_hidden_state`, `hidden_states`) and the global stream's
    (`global_last_hidden_state` (batch, G, hidden), `global_hidden_states`). `attentions` are over [global ; long]."""

    global_last_hidden_state: torch.Tensor | None = None
    global_hidden_states: tuple[torch.Tensor, ...] | None = None


class RelativePositionTables(nn.Module):
    """One layer's relative position tables: key embeddings R (labels, heads, head_dim) and biases b (labels, heads)."""

    def __init__(self, labels: int, heads: int, head_dim: int):
        super().__init__()
        self.key = nn.Parameter(torch.zeros(labels, heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(labels, heads))


class EfficientETCAttention(EfficientAttention):
    """ETC attention: Ainslie et al., "ETC: Encoding Long and Structured Inputs in Transformers" (arXiv 2004.08483).

    softmax_j((q_i . k_j + q_i . R[label(i, j)] + b[label(i, j)]) / sqrt(d)) over the kept pairs of the g2g, g2l,
    l2g and l2l pieces of [global ; long] (attention/global_local.py has the pattern, the labels, the paths and the
    deviations). Time O(N (r + G) + G^2) x d, memory O(N (r + G) + G^2) per head (r the local radius, G the global
    length). An encoder only. Padding rows of the output are zero.
    """

    supports_causal = False
    supports_cache = False
    supports_global_attention = False  # its global tokens are a separate input (global_input_ids), not a mask

    def __init__(self, config: EfficientETCConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.radius = config.local_radius
        self.max_distance = config.relative_position_max_distance
        self.hard_g2l, self.hard_l2g = config.use_hard_g2l_mask, config.use_hard_l2g_mask
        self.relative_positions = RelativePositionTables(config.relative_vocab_size, self.num_heads, self.head_dim)

    @classmethod
    def lora_trained_in_full(cls, config: EfficientETCConfig) -> tuple[str, ...]:
        return ("relative_positions",)

    def backend(self, hidden_states: torch.Tensor, output_attentions: bool) -> str:
        gpu = "flex" if flex_available() else None
        return self.choose_backend(hidden_states, output_attentions, gpu, gpu_min_head_dim=MIN_HEAD_DIM)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings=None,
        past_key_values=None,
        layout: GlobalLocalLayout | None = None,
        output_attentions: bool = False,
        shared_state: dict | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        shared_state = {} if shared_state is None else shared_state
        if layout is None:  # called on its own: a long input only
            batch, length = hidden_states.shape[:2]
            real = torch.ones(batch, length, dtype=torch.bool, device=hidden_states.device)
            layout = GlobalLocalLayout(0, torch.full_like(real, -1, dtype=torch.long),
                                       real if attention_mask is None else attention_mask.bool())
        query, key, value = self.project(hidden_states, None)
        tables = self.relative_positions
        relative = relative_scores(query, tables.key, tables.bias)  # (batch, heads, T, V)
        pattern = (layout.num_global, self.radius)
        backend = self.backend(hidden_states, output_attentions)
        weights = None
        if backend == "reference":
            groups = self.num_key_value_groups
            attended, weights = global_local_reference(
                query, repeat_kv(key, groups), repeat_kv(value, groups), relative, layout.segments, layout.real,
                *pattern, self.max_distance, self.hard_g2l, self.hard_l2g, self.scaling,
            )
        elif backend == "blocked":
            attended = global_local_blocked(self, query, key, value, relative, layout.segments, layout.real, *pattern,
                                            self.max_distance, self.hard_g2l, self.hard_l2g, self.dropout)
        elif backend == "flex":
            mask_key = ("etc_block_mask", self.radius)
            if mask_key not in shared_state:  # one per forward, on the stream length's shape bucket
                bucket = bucket_length(query.shape[2])
                segments = pad_length(layout.segments, bucket, dim=1).contiguous()
                real = pad_length(layout.real, bucket, dim=1).contiguous()
                shared_state[mask_key] = (segments, global_local_block_mask(
                    segments, real, *pattern, self.hard_g2l, self.hard_l2g))
            segments, mask = shared_state[mask_key]
            attended = global_local_flex(query, key, value, relative, segments, mask, layout.num_global,
                                         self.max_distance, self.scaling)
        else:
            raise ValueError(f"Unknown attention_backend {backend!r}; use auto, reference, blocked or flex.")
        attended = attended * layout.real[:, :, None, None]
        return self.merge_heads(attended), (weights if output_attentions else None)


class EfficientETCModel(EfficientModel):
    """The backbone over two streams: `input_ids` (the long input, batch x N) and an optional global input
    `global_input_ids` (batch x G) with `segment_ids` (batch x N: the global token each long token belongs to, -1 for
    none; `build_global_input` makes both from sentence or paragraph boundaries), `global_input_mask` (its padding)
    and `global_token_type_ids`. Global tokens share the token, token-type and position tables and the embedding norm
    (their positions are 0..G-1). Without a global input the model is a local-attention encoder with relative labels.
    """

    config_class = EfficientETCConfig
    attention_class = EfficientETCAttention

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, RelativePositionTables):
            init.normal_(module.key, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.bias)

    def example_inputs(self, input_ids: torch.Tensor) -> dict:
        """The global input pattern pictures (hf_efficient.patterns) draw with: ETC's fixed-block layout, one global
        token per PATTERN_BLOCK long tokens."""
        return build_global_input(input_ids, block_size=PATTERN_BLOCK)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        global_input_ids: torch.LongTensor | None = None,
        global_input_mask: torch.Tensor | None = None,
        global_token_type_ids: torch.LongTensor | None = None,
        segment_ids: torch.LongTensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache=None,
        past_key_values=None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> EfficientETCModelOutput | tuple:
        """The long stream's outputs as `last_hidden_state`, the global stream's as `global_last_hidden_state`."""
        refuse_unknown_kwargs(self, kwargs)
        if global_attention_mask is not None:
            raise ValueError("EfficientETC takes its global tokens as a separate input, not as global_attention_mask: "
                             "pass global_input_ids and segment_ids (hf_efficient.models.etc.build_global_input "
                             "makes them).")
        if cache is not None or past_key_values is not None or use_cache:
            raise ValueError("EfficientETC is an encoder and has no decoding cache; drop cache/use_cache.")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        long_input = input_ids if input_ids is not None else inputs_embeds
        batch, length = long_input.shape[:2]
        device = long_input.device
        if batch == 0 or length == 0:
            raise ValueError(f"The input has shape (batch, sequence) = ({batch}, {length}); pass at least one row of "
                             "at least one token.")
        if position_ids is None:
            position_ids = torch.arange(length, device=device).expand(batch, -1)
        self._check_positions(position_ids, length)
        keep = validate_keep_mask(attention_mask, batch, length, "attention_mask")
        hidden = self.embeddings(input_ids, inputs_embeds, position_ids, token_type_ids)
        layout = self.global_layout(global_input_ids, global_input_mask, segment_ids, keep, batch, length, device)
        num_global = layout.num_global
        if num_global:
            global_positions = torch.arange(num_global, device=device).expand(batch, -1)
            self._check_positions(global_positions, num_global)
            global_hidden = self.embeddings(global_input_ids, None, global_positions, global_token_type_ids)
            hidden = torch.cat([global_hidden, hidden], dim=1)  # (batch, G + N, hidden)
        if output_attentions and not torch.compiler.is_compiling():
            self._warn_attention_weights(batch, num_global + length, num_global + length)

        shared_state: dict = {}
        all_hidden, all_weights = [], []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden, weights = layer(hidden, attention_mask=layout.real, layout=layout,
                                    output_attentions=output_attentions, shared_state=shared_state)
            all_weights.append(weights)
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        long_hidden = hidden[:, num_global:]
        output = EfficientETCModelOutput(
            last_hidden_state=long_hidden,
            pooler_output=self.pooler(long_hidden) if self.pooler is not None else None,
            hidden_states=tuple(h[:, num_global:] for h in all_hidden) if output_hidden_states else None,
            attentions=tuple(all_weights) if output_attentions else None,
            global_last_hidden_state=hidden[:, :num_global] if num_global else None,
            global_hidden_states=tuple(h[:, :num_global] for h in all_hidden)
            if output_hidden_states and num_global else None,
        )
        return output if return_dict else output.to_tuple()

    @staticmethod
    def global_layout(global_input_ids, global_input_mask, segment_ids, keep, batch: int, length: int,
                      device: torch.device) -> GlobalLocalLayout:
        """Check the global input against the long one and lay out the stream [global ; long]."""
        long_real = torch.ones(batch, length, dtype=torch.bool, device=device) if keep is None else keep
        if global_input_ids is None:
            given = [name for name, value in (("global_input_mask", global_input_mask), ("segment_ids", segment_ids))
                     if value is not None]
            if given:
                raise ValueError(f"{' and '.join(given)} describe a global input, but no global_input_ids were given; "
                                 "pass them too (build_global_input makes all three), or drop these.")
            return GlobalLocalLayout(0, torch.full((batch, length), -1, dtype=torch.long, device=device), long_real)
        if global_input_ids.dim() != 2 or global_input_ids.shape[0] != batch or global_input_ids.shape[1] == 0:
            raise ValueError(f"global_input_ids has shape {tuple(global_input_ids.shape)}; it needs (batch, G) = "
                             f"({batch}, G) with G >= 1 (or leave it out for no global tokens).")
        num_global = global_input_ids.shape[1]
        if segment_ids is None:
            raise ValueError("global_input_ids need segment_ids (batch, sequence): the global token each long token "
                             "belongs to (-1 for none); build_global_input makes them.")
        if tuple(segment_ids.shape) != (batch, length) or segment_ids.is_floating_point():
            raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)} ({segment_ids.dtype}); it needs "
                             f"integers of shape (batch, sequence) = ({batch}, {length}).")
        segment_ids = segment_ids.to(device=device, dtype=torch.long)
        refuse_unless(((segment_ids >= -1) & (segment_ids < num_global)).all(),
                      f"segment_ids must index the global input: values in [-1, {num_global}) (-1: no global token).")
        global_keep = validate_keep_mask(global_input_mask, batch, num_global, "global_input_mask")
        global_real = torch.ones(batch, num_global, dtype=torch.bool, device=device) if global_keep is None \
            else global_keep
        own = torch.arange(num_global, device=device).expand(batch, -1)
        return GlobalLocalLayout(num_global, torch.cat([own, segment_ids], dim=1),
                                 torch.cat([global_real, long_real], dim=1))


def zero_relative_tables(weights: dict[str, torch.Tensor], config: EfficientETCConfig) -> list[str]:
    """Conversion: every layer's relative position tables (R, relative_vocab_size x heads x head_dim, and b,
    relative_vocab_size x heads) start at zero, so that the converted model scores keys exactly as its source until
    fine-tuning teaches them; global tokens reuse the source's token, token-type and position embeddings, and every
    projection is shared by the four attention pieces, so nothing else is new."""
    added = []
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.self_attn"
        shapes = {"key": (config.relative_vocab_size, config.num_attention_heads, config.head_dim),
                  "bias": (config.relative_vocab_size, config.num_attention_heads)}
        for name, shape in shapes.items():
            target = f"{prefix}.relative_positions.{name}"
            if target not in weights:
                weights[target] = torch.zeros(shape)
                added.append(target)
    return added


def naming_global_inputs(forward):
    """A head's `forward` whose signature also names the global inputs (the base heads take them through **kwargs):
    Trainer keeps only the dataset columns that a model's forward names (remove_unused_columns)."""

    @functools.wraps(forward)
    def named(self, *args, **kwargs):
        return forward(self, *args, **kwargs)

    signature = inspect.signature(forward)
    parameters = list(signature.parameters.values())
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in sorted(GLOBAL_INPUTS)]
    named.__signature__ = signature.replace(parameters=parameters[:-1] + extra + parameters[-1:])  # before **kwargs
    return named


class EfficientETCForMaskedLM(EfficientForMaskedLM):
    """Masked-LM logits over the long input."""

    config_class = EfficientETCConfig
    model_class = EfficientETCModel
    backbone_inputs = GLOBAL_INPUTS
    forward = naming_global_inputs(EfficientForMaskedLM.forward)


class EfficientETCForSequenceClassification(EfficientForSequenceClassification):
    """Classifies from the long input's first token ([CLS], through the pooler when the config has one), which sees
    the global tokens (every one, or its segment's under use_hard_l2g_mask): the BERT recipe a converted model keeps."""

    config_class = EfficientETCConfig
    model_class = EfficientETCModel
    backbone_inputs = GLOBAL_INPUTS
    forward = naming_global_inputs(EfficientForSequenceClassification.forward)


class EfficientETCForTokenClassification(EfficientForTokenClassification):
    """Labels for every long token."""

    config_class = EfficientETCConfig
    model_class = EfficientETCModel
    backbone_inputs = GLOBAL_INPUTS
    forward = naming_global_inputs(EfficientForTokenClassification.forward)


class EfficientETCForQuestionAnswering(EfficientForQuestionAnswering):
    """Span start/end logits over the long input."""

    config_class = EfficientETCConfig
    model_class = EfficientETCModel
    backbone_inputs = GLOBAL_INPUTS
    forward = naming_global_inputs(EfficientForQuestionAnswering.forward)
