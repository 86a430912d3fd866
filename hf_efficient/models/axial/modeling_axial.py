"""EfficientAxial: axial attention over images (Ho et al., arXiv 1912.12180), as a bidirectional encoder and as the
paper's causal decoder that generates an image sub-pixel by sub-pixel in raster order.

An image is a grid (H, W, C) of intensities; the model's input is its sub-pixels in raster order, t = (row * W + col)
* C + channel, as `input_ids` (a causal input starts with bos). The states live on the grid, (batch, H, W, C, hidden),
and every block is a residual attention + MLP layer (core/layers.EfficientBlock) whose attention runs along one axis.

Encoder (is_causal=False): embeddings (intensity + row + column + channel, + class) -> num_hidden_layers layers of
row, column and channel attention (the channel block only when C > 1).

Decoder (is_causal=True), the paper's outer and inner decoders, with sub-pixel t predicted at grid position t:
  outer: context = outer layers (row, channel, masked column attention) over the embeddings shifted down one row, so
         position (r, c, k) sees every sub-pixel of rows < r;
  inner: h = context + embeddings shifted right one pixel, then inner layers (channel, masked row attention), so
         (r, c, k) also sees the pixels (r, < c) of its own row;
  channel stage (C > 1): h + embeddings shifted one channel, then num_channel_layers of masked channel attention, so
         (r, c, k) also sees (r, c, < k).
Position t thus depends exactly on the sub-pixels before t in raster order. bos is the zero the shifts bring in.
Deviation from the paper: the paper slices the channels (a whole colour plane after another, with an exterior decoder
over the planes already made); here channels are interleaved in raster order (r, c, k) to fit transformers' one
token sequence, with the channel axis as a third axis of attention (unmasked in the outer and inner decoders, masked in
the channel stage). Generation recomputes the full forward per step (no row cache).
"""

from functools import partial

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast, ImageClassifierOutput

from ...attention.axial import AXES, axial_attention_reference, from_lines, line_keep, to_lines
from ...core.attention import EfficientAttention, repeat_kv
from ...core.heads import LOSS_KWARGS, wants_logits
from ...core.layers import EfficientBlock, build_norm
from ...core.lm_loss import IGNORE_INDEX, chunked_head_loss, next_token_labels
from ...core.masks import left_padding_error, refuse_unless, validate_keep_mask
from ...core.modeling import EfficientPreTrainedModel, refuse_unknown_kwargs
from .configuration_axial import EfficientAxialConfig


class EfficientAxialAttention(EfficientAttention):
    """Multi-head softmax attention along one axis ("row", "column" or "channel") of a grid (batch, H, W, C, hidden),
    masked (key <= query on that axis) when `causal`. Math, complexity and paths: attention/axial.py. The "blocked"
    path (chosen under "auto" on every device) batches the lines into one sdpa call through transformers' attention
    interface; "reference" is dense attention over the flattened grid with the equivalent mask. Left padding is
    refused by the causal model (sub-pixel t sits at grid position t)."""

    supports_cache = False
    supports_left_padding = False

    def __init__(self, config: EfficientAxialConfig, layer_idx: int, axis: str = "row", causal: bool = False):
        super().__init__(config, layer_idx)
        if axis not in AXES:
            raise ValueError(f"axis={axis!r}: use one of {sorted(AXES)}.")
        self.axis, self.is_causal = axis, causal

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_attentions: bool = False, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states (batch, H, W, C, hidden); attention_mask (batch, H, W, C) bool key keep-mask or None."""
        query, key, value = (proj(hidden_states) for proj in (self.q_proj, self.k_proj, self.v_proj))
        backend = self.choose_backend(hidden_states, output_attentions, gpu_backend=None)
        if backend == "reference":
            # (batch, H, W, C, heads * d) -> (batch, heads, H, W, C, d)
            query, key, value = (t.unflatten(-1, (-1, self.head_dim)).movedim(-2, 1) for t in (query, key, value))
            key, value = (repeat_kv(t.flatten(2, 4), self.num_key_value_groups).view(*query.shape)
                          for t in (key, value))
            attended, weights = axial_attention_reference(query, key, value, self.axis, self.is_causal,
                                                          attention_mask, self.scaling, self.dropout, self.training)
            return self.o_proj(attended.flatten(-2)), weights
        dim = AXES[self.axis]
        lines = []
        for states in (query, key, value):
            flat, moved_shape = to_lines(states, dim)  # (lines, n, heads * d)
            lines.append(self.split_heads(flat))  # (lines, heads, n, d)
        keep = line_keep(attention_mask, dim)
        attended = torch.cat([  # at most LINES_PER_CALL lines per call: CUDA's kernels put them on one grid dimension
            self.attend(*(t[start:start + LINES_PER_CALL] for t in lines),
                        None if keep is None else keep[start:start + LINES_PER_CALL], is_causal=self.is_causal)[0]
            for start in range(0, lines[0].shape[0], LINES_PER_CALL)])
        attended = from_lines(attended.flatten(-2), moved_shape, dim)  # (lines, n, heads, d) -> (batch, H, W, C, .)
        return self.o_proj(attended), None


LINES_PER_CALL = 32768  # SDPA's CUDA kernels fail ("invalid argument") past 65,535 lines (batch) in one call


def shift(states: torch.Tensor, dim: int) -> torch.Tensor:
    """Shift a grid (batch, H, W, C, hidden) by one along `dim` (1: down a row, 2: right a pixel, 3: one channel),
    bringing in zeros: position i then holds what position i - 1 held."""
    return torch.cat([torch.zeros_like(states.narrow(dim, 0, 1)), states.narrow(dim, 0, states.shape[dim] - 1)], dim)


class EfficientAxialLayer(nn.Module):
    """A group of blocks, each attending along one axis: ((axis, causal), ...) in order."""

    def __init__(self, config: EfficientAxialConfig, first_index: int, blocks: tuple[tuple[str, bool], ...]):
        super().__init__()
        self.blocks = nn.ModuleList(
            EfficientBlock(config, first_index + i, partial(EfficientAxialAttention, axis=axis, causal=causal))
            for i, (axis, causal) in enumerate(blocks)
        )

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor | None, output_attentions: bool):
        weights = []
        for block in self.blocks:
            hidden, block_weights = block(hidden, attention_mask=keep, output_attentions=output_attentions)
            weights.append(block_weights)
        return hidden, weights


class EfficientAxialPreTrainedModel(EfficientPreTrainedModel):
    config_class = EfficientAxialConfig
    main_input_name = "input_ids"


class EfficientAxialModel(EfficientAxialPreTrainedModel):
    """The encoder (is_causal=False) or the causal decoder (is_causal=True) over images; see the module docstring.
    Returns per-token states (batch, L, hidden): for the decoder, position t holds the state that predicts sub-pixel
    t (the position after a whole image, which predicts nothing, holds zeros)."""

    attention_class = EfficientAxialAttention  # its capability flags are the model's (no cache)
    seeded_tensors: tuple[str, ...] = ()

    def __init__(self, config: EfficientAxialConfig):
        config.validate_backbone()
        config.validate_mechanism()
        super().__init__(config)
        height, width, channels = config.grid
        hidden = config.hidden_size
        self.embed_tokens = nn.Embedding(config.num_levels, hidden)  # intensities; bos is implicit in the shifts
        self.row_embeddings = nn.Embedding(height, hidden)
        self.column_embeddings = nn.Embedding(width, hidden)
        self.channel_embeddings = nn.Embedding(channels, hidden)
        self.class_embeddings = nn.Embedding(config.num_classes, hidden) if config.num_classes else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        channel = (("channel", False),) if channels > 1 else ()
        layers = config.num_hidden_layers
        if config.is_causal:
            outer, inner = (("row", False), *channel, ("column", True)), (*channel, ("row", True))
            self.outer_layers = nn.ModuleList(EfficientAxialLayer(config, 3 * i, outer) for i in range(layers))
            self.layers = nn.ModuleList(EfficientAxialLayer(config, 3 * (layers + i), inner) for i in range(layers))
            stage = config.num_channel_layers if channels > 1 else 0
            self.channel_layers = nn.ModuleList(
                EfficientAxialLayer(config, 3 * (2 * layers + i), (("channel", True),)) for i in range(stage))
        else:
            blocks = (("row", False), ("column", False), *channel)
            self.layers = nn.ModuleList(EfficientAxialLayer(config, 3 * i, blocks) for i in range(layers))
        self.norm = build_norm(config) if config.norm_position == "pre" else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def image_grid(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None):
        """Checks the input; returns the intensities on the grid (batch, H, W, C) (0 where none is given), the key
        keep-mask of the encoder (batch, H, W, C) or None, and the per-token keep-mask (batch, L) or None."""
        config = self.config
        if input_ids is None:
            raise ValueError("Pass exactly one input: input_ids (batch, sub-pixels in raster order).")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}; it needs (batch, length).")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}; pass at least one row (an image) of at "
                             "least one token.")
        batch, length = input_ids.shape
        total, causal = config.num_subpixels, config.is_causal
        if length > total + causal:
            height, width, channels = config.grid
            first = "bos + " if causal else ""
            raise ValueError(f"input_ids has {length} tokens, more than {first}{total} sub-pixels of an image of "
                             f"image_size={config.image_size} with {channels} channel(s); pass at most "
                             f"{total + causal}, or build the model with a larger image_size.")
        keep = validate_keep_mask(attention_mask, batch, length, "attention_mask")
        if keep is not None:
            keep = keep.to(input_ids.device)
        real = keep if keep is not None else torch.ones_like(input_ids, dtype=torch.bool)
        if causal:
            refuse_unless(~(~real[:, :-1] & real[:, 1:]).any(),
                          str(left_padding_error("The causal axial model (sub-pixel t sits at grid position t)")))
            refuse_unless(((input_ids[:, 0] == config.bos_token_id) | ~real[:, 0]).all(),
                          f"A causal axial input starts with bos_token_id={config.bos_token_id} (then the sub-pixels "
                          "in raster order); prepend it to input_ids.")
            values, real = input_ids[:, 1:], real[:, 1:]
        else:
            refuse_unless(real.any(-1).all(), "attention_mask has a row without any real sub-pixel; every image needs "
                                              "at least one.")
            values = input_ids
        refuse_unless((((values >= 0) & (values < config.num_levels)) | ~real).all(),
                      f"input_ids holds a value outside the intensities [0, num_levels={config.num_levels})"
                      + (" after the leading bos" if causal else " (an encoder input has no bos)") + ".")
        flat = values.new_zeros(batch, total)
        flat[:, : values.shape[1]] = values.masked_fill(~real, 0)
        grid_keep = None
        if not causal and (keep is not None or length < total):
            grid_keep = torch.zeros(batch, total, dtype=torch.bool, device=input_ids.device)
            grid_keep[:, :length] = real
            grid_keep = grid_keep.view(batch, *config.grid)
        return flat.view(batch, *config.grid), grid_keep, keep

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        class_labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput | tuple:
        """`input_ids` (batch, L): the encoder takes up to H*W*C sub-pixels; the decoder bos then up to H*W*C
        sub-pixels. `attention_mask` (batch, L): 1 on real tokens; the decoder takes right padding only.
        `class_labels` (batch,): the class of each image, for a model with num_classes > 0 (and only then)."""
        if kwargs.pop("inputs_embeds", None) is not None or kwargs.pop("pixel_values", None) is not None:
            raise ValueError(f"{type(self).__name__} takes input_ids (intensity levels in raster order, as the image "
                             "processor makes them), not inputs_embeds or pixel_values.")
        refuse_unknown_kwargs(self, kwargs)
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        levels, grid_keep, _ = self.image_grid(input_ids, attention_mask)
        batch, length = input_ids.shape
        tokens = self.embed_tokens(levels)  # (batch, H, W, C, hidden)
        if grid_keep is not None:
            tokens = tokens * grid_keep[..., None].to(tokens.dtype)  # absent sub-pixels contribute nothing
        positions = (self.row_embeddings.weight[:, None, None] + self.column_embeddings.weight[None, :, None]
                     + self.channel_embeddings.weight[None, None, :])  # (H, W, C, hidden)
        positions = positions + self.class_embedding(class_labels, batch)
        all_hidden, all_weights = [], []

        def run(layers, hidden):
            for layer in layers:
                if output_hidden_states:
                    all_hidden.append(hidden)
                hidden, weights = layer(hidden, grid_keep, output_attentions)
                all_weights.extend(weights)
            return hidden

        if config.is_causal:
            context = run(self.outer_layers, self.dropout(shift(tokens, 1) + positions))
            all_hidden.clear()  # hidden_states: the inner decoder's (the states that see the current row)
            hidden = run(self.layers, context + self.dropout(shift(tokens, 2)))
            if output_hidden_states:
                all_hidden.append(hidden)
            for layer in self.channel_layers:
                hidden, weights = layer(hidden + self.dropout(shift(tokens, 3)) if layer is self.channel_layers[0]
                                        else hidden, None, output_attentions)
                all_weights.extend(weights)
        else:
            hidden = run(self.layers, self.dropout(tokens + positions))
            if output_hidden_states:
                all_hidden.append(hidden)
        if self.norm is not None:
            hidden = self.norm(hidden)
        output = BaseModelOutput(
            last_hidden_state=self.tokens_of(hidden, length),
            hidden_states=tuple(self.tokens_of(h, length) for h in all_hidden) if output_hidden_states else None,
            attentions=tuple(all_weights) if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()

    def class_embedding(self, class_labels: torch.Tensor | None, batch: int) -> torch.Tensor | float:
        """(batch, 1, 1, 1, hidden) class embedding, or 0 for an unconditional model."""
        classes = self.config.num_classes
        if self.class_embeddings is None:
            if class_labels is not None:
                raise ValueError("class_labels given to an unconditional model (num_classes=0); drop them, or build "
                                 "the model with num_classes > 0.")
            return 0.0
        if class_labels is None:
            raise ValueError(f"This model is class-conditional (num_classes={classes}): pass class_labels (batch,).")
        if class_labels.shape != (batch,) or class_labels.is_floating_point():
            raise ValueError(f"class_labels has shape {tuple(class_labels.shape)}; it needs ({batch},) integers.")
        refuse_unless(((class_labels >= 0) & (class_labels < classes)).all(),
                      f"class_labels must lie in [0, num_classes={classes}).")
        return self.class_embeddings(class_labels.to(self.class_embeddings.weight.device))[:, None, None, None]

    def tokens_of(self, grid: torch.Tensor, length: int) -> torch.Tensor:
        """(batch, H, W, C, hidden) -> (batch, length, hidden) in raster order; the decoder's position after a whole
        image (length = H*W*C + 1) predicts nothing and gets zeros."""
        flat = grid.flatten(1, 3)
        if length > flat.shape[1]:
            flat = torch.cat([flat, flat.new_zeros(flat.shape[0], length - flat.shape[1], flat.shape[2])], 1)
        return flat[:, :length]


class EfficientAxialLMHead(nn.Module):
    """Logits over the vocabulary (the num_levels intensities, then bos): a linear layer for the intensities; the bos
    logit is -inf, so bos is never predicted or sampled."""

    def __init__(self, config: EfficientAxialConfig):
        super().__init__()
        self.proj = nn.Linear(config.hidden_size, config.num_levels, bias=config.lm_head_bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(self.proj(hidden), (0, 1), value=float("-inf"))


class EfficientAxialForCausalLM(EfficientAxialPreTrainedModel, GenerationMixin):
    """The causal decoder + LM head: input_ids [bos, sub-pixels...], logits (batch, L, vocab_size), position t
    predicting sub-pixel t; labels = input_ids (shifted here, as transformers does): the loss is nats per sub-pixel
    (bits/dim = loss / ln 2). generate() makes images in raster order (recomputing the full forward per step);
    a class-conditional model takes class_labels= through generate's keyword arguments."""

    def __init__(self, config: EfficientAxialConfig):
        if not config.is_causal:
            raise ValueError("EfficientAxialForCausalLM needs the causal decoder; set is_causal=True.")
        super().__init__(config)
        self.model = EfficientAxialModel(config)
        self.lm_head = EfficientAxialLMHead(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        class_labels: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        return_logits: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """In training with `labels`, `logits` are None unless `return_logits=True` (core/heads.wants_logits)."""
        refuse_unknown_kwargs(self, kwargs, LOSS_KWARGS | {"past_key_values", "cache"})
        if kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None:
            raise ValueError("EfficientAxialForCausalLM keeps no cache; call it without past_key_values.")
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, class_labels=class_labels,
                         output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                         return_dict=True)
        hidden = out.last_hidden_state
        logits = None
        if wants_logits(self, labels, return_logits):
            logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            targets = next_token_labels(labels.to(hidden.device))
            refuse_unless((((targets >= 0) & (targets < self.config.num_levels)) | (targets == IGNORE_INDEX)).all(),
                          f"labels must be intensities in [0, num_levels={self.config.num_levels}) after the first "
                          "position, or -100 (ignored).")
            loss = chunked_head_loss(self.lm_head, hidden, targets, kwargs.get("num_items_in_batch"))
        result = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, class_labels=None, **kwargs) -> dict:
        """Every step runs the full forward over the tokens so far (no cache)."""
        return {"input_ids": input_ids, "attention_mask": attention_mask, "class_labels": class_labels}


class EfficientAxialForImageClassification(EfficientAxialPreTrainedModel):
    """The encoder, the mean of its states over the real sub-pixels, and a linear classifier; `classifier_dropout`
    (else hidden_dropout_prob) before it. input_ids are the sub-pixels (no bos), (batch, H*W*C) or a padded prefix;
    `labels` (batch,) and transformers' problem_type losses, as the sequence-classification heads."""

    accepts_loss_kwargs = False  # per-example mean losses: Trainer scales them for gradient accumulation

    def __init__(self, config: EfficientAxialConfig):
        if config.is_causal:
            raise ValueError("EfficientAxialForImageClassification reads the bidirectional encoder; set "
                             "is_causal=False.")
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = EfficientAxialModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        class_labels: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, class_labels=class_labels,
                         output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                         return_dict=True, **kwargs)
        hidden = out.last_hidden_state
        real = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
        if attention_mask is not None:
            real = attention_mask.to(hidden.device, hidden.dtype)
        pooled = (hidden * real[..., None]).sum(1) / real.sum(1, keepdim=True)  # (batch, hidden)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        result = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                       attentions=out.attentions)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()
