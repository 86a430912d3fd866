"""EfficientImageTransformer: a decoder over the sub-pixels of an image with local 1D or 2D self-attention.

Input representation (the paper's categorical one): each sub-pixel is a token, its intensity level's embedding,
plus learned row, column and channel embeddings of its coordinates (the paper's learned variant of its position
encodings; tensor2tensor's imagetransformer models use them too), plus the class embedding on every position of a
class-conditional model. bos (id num_levels) starts every image and has no coordinates. The causal-LM head's logit
of bos is -inf, so it never wins when sampling and is never predicted.
"""

import torch
from torch import nn
from transformers.cache_utils import Cache

from ...attention.flex import MIN_HEAD_DIM, bucket_keep, bucket_length, flex_available
from ...attention.local_image import (
    LocalImagePattern,
    decode_keys,
    flex_block_mask,
    local_image_blocked,
    local_image_flex,
    local_image_reference,
)
from ...core.attention import EfficientAttention, repeat_kv
from ...core.embeddings import EfficientEmbeddings
from ...core.heads import EfficientForCausalLM
from ...core.masks import refuse_left_padding, refuse_unless
from ...core.modeling import EfficientModel
from .configuration_image_transformer import EfficientImageTransformerConfig

WHERE = "EfficientImageTransformer (rows are images: bos first, then sub-pixels in raster order)"


class EfficientLocalImageAttention(EfficientAttention):
    """Local 1D / local 2D self-attention of the Image Transformer (Parmar et al., arXiv 1802.05751).

    out_s = softmax over the keys of s's memory block (and bos) of q_s k_s' / sqrt(d), causal in raster order.
    Time O(N m d), memory O(N m) for m keys per query block (attention/local_image.py, with the deviations from the
    paper). Paths: "blocked" (gathered blocks, CPU and CUDA), "flex" (FlexAttention, the CUDA default), "reference".
    Cached decoding reads the span from the earliest memory position on. Left padding is refused (positions are
    pixel coordinates).
    """

    supports_bidirectional = False
    supports_cache = True
    supports_left_padding = False

    def __init__(self, config: EfficientImageTransformerConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.pattern = LocalImagePattern.of(config)

    def backend(self, hidden_states: torch.Tensor, output_attentions: bool) -> str:
        """The path of this call (benchmarks ask it too): flex on CUDA under "auto", else blocked."""
        gpu = "flex" if flex_available() else None
        return self.choose_backend(hidden_states, output_attentions, gpu, gpu_min_head_dim=MIN_HEAD_DIM)

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
        shared_state = {} if shared_state is None else shared_state
        query, key, value = self.project(hidden_states, position_embeddings)
        if past_key_values is not None:
            past_length = past_key_values.get_seq_length(self.layer_idx)
            key, value = past_key_values.update(key, value, self.layer_idx)
            if past_length:
                return self.decode_step(query, key, value, attention_mask, past_length, output_attentions)
        backend = self.backend(hidden_states, output_attentions)
        if backend == "reference":
            groups = self.num_key_value_groups
            attended, weights = local_image_reference(query, repeat_kv(key, groups), repeat_kv(value, groups),
                                                      self.pattern, attention_mask, self.scaling)
            return self.merge_heads(attended), (weights if output_attentions else None)
        if backend == "flex":
            if "local_image_block_mask" not in shared_state:  # built on the length's shape bucket (attention/flex.py)
                batch, length, device = query.shape[0], query.shape[2], query.device
                bucket = bucket_length(length)
                shared_state["local_image_block_mask"] = flex_block_mask(
                    self.pattern, bucket, bucket_keep(attention_mask, batch, length, bucket, device), device)
            attended = local_image_flex(query, key, value, shared_state["local_image_block_mask"], self.scaling,
                                        compiled=query.is_cuda)
        elif backend == "blocked":
            attended = local_image_blocked(self, query, key, value, self.pattern, attention_mask)
        else:
            raise ValueError(f"Unknown attention_backend {backend!r}; use auto, reference, blocked or flex.")
        return self.merge_heads(attended), None

    def decode_step(self, query, keys, values, attention_mask, past_length, output_attentions):
        """New queries at positions past_length.. against bos and the cached span their memory blocks reach."""
        index, keep = decode_keys(self.pattern, past_length, keys.shape[2], query.device)
        keep = keep[None, None]
        if attention_mask is not None:
            own = index[None, :] == torch.arange(past_length, keys.shape[2], device=query.device)[:, None]
            keep = keep & (attention_mask[:, None, None, index] | own)
        attended, weights = self.attend(query, keys[:, :, index], values[:, :, index], keep,
                                        need_weights=output_attentions)
        return self.merge_heads(attended), weights


class EfficientImageEmbeddings(EfficientEmbeddings):
    """E_level[id] + E_row[r] + E_col[c] + E_channel[ch] (+ E_class[y], added by the model), then the backbone's
    optional norm, dropout and projection. bos (position 0) gets no coordinate embeddings."""

    def __init__(self, config: EfficientImageTransformerConfig):
        super().__init__(config)
        height, width = config.image_size
        self.channels, self.width = config.num_channels, width
        self.embed_rows = nn.Embedding(height, config.embedding_size)
        self.embed_columns = nn.Embedding(width, config.embedding_size)
        self.embed_channels = nn.Embedding(config.num_channels, config.embedding_size)

    def forward(self, input_ids, inputs_embeds, position_ids, token_type_ids):
        # position_ids (batch, seq) raster positions: 0 = bos, 1 + t = sub-pixel t
        sub_pixel = (position_ids - 1).clamp(min=0)
        pixel, channel = sub_pixel // self.channels, sub_pixel % self.channels
        coordinates = (self.embed_rows(pixel // self.width) + self.embed_columns(pixel % self.width)
                       + self.embed_channels(channel)) * (position_ids > 0)[..., None]
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        return super().forward(None, hidden + coordinates.to(hidden.dtype), position_ids, token_type_ids)


class EfficientImageTransformerModel(EfficientModel):
    """The decoder over `input_ids` (batch, L) = [bos, sub-pixels in raster order], 1 <= L <= 1 + H W C, with
    `class_labels` (batch,) for a class-conditional config (num_classes > 0)."""

    config_class = EfficientImageTransformerConfig
    attention_class = EfficientLocalImageAttention

    def __init__(self, config: EfficientImageTransformerConfig):
        super().__init__(config)
        self.embeddings = EfficientImageEmbeddings(config)
        self.embed_classes = nn.Embedding(config.num_classes, config.embedding_size) if config.num_classes else None
        self.post_init()

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                class_labels: torch.LongTensor | None = None, position_ids: torch.LongTensor | None = None,
                cache: Cache | None = None, past_key_values: Cache | None = None, inputs_embeds=None, **kwargs):
        """See the class docstring; the other arguments are the backbone's (EfficientModel.forward)."""
        if input_ids is None or inputs_embeds is not None:
            raise ValueError(f"{type(self).__name__} takes input_ids (bos, then sub-pixel levels): pass exactly one "
                             "of input_ids (inputs_embeds are not accepted).")
        config = self.config
        active = cache if cache is not None else past_key_values
        past = active.get_seq_length() if active is not None else 0
        batch, length = input_ids.shape
        total = config.max_position_embeddings
        if past + length > total:
            raise ValueError(f"The sequence reaches {past + length} positions, but image_size={config.image_size} "
                             f"with num_channels={config.num_channels} holds 1 + {total - 1} (bos and every "
                             "sub-pixel); pass at most one image per row or change image_size.")
        if attention_mask is not None and attention_mask.shape == (batch, past + length):
            refuse_left_padding(attention_mask.bool(), WHERE)
        if batch and length:
            self.check_ids(input_ids, attention_mask, past)
        embeds = self.embeddings.embed_tokens(input_ids)
        if self.embed_classes is not None:
            if class_labels is None:
                raise ValueError(f"This model is class-conditional (num_classes={config.num_classes}): pass "
                                 "class_labels (batch,) with values in [0, num_classes).")
            if class_labels.shape != (batch,):
                raise ValueError(f"class_labels has shape {tuple(class_labels.shape)}; it needs (batch,) = ({batch},).")
            refuse_unless(((class_labels >= 0) & (class_labels < config.num_classes)).all(),
                          f"class_labels must lie in [0, num_classes={config.num_classes}).")
            embeds = embeds + self.embed_classes(class_labels)[:, None]
        elif class_labels is not None:
            raise ValueError("class_labels were given, but this model is unconditional (num_classes=0); drop them "
                             "or build the model with num_classes > 0.")
        return super().forward(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, past_key_values=past_key_values, **kwargs)

    def check_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, past: int) -> None:
        """Levels in [0, num_levels) after bos; bos first (when the call starts an image) and nowhere else."""
        bos = self.config.bos_token_id
        real = torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask is not None and attention_mask.shape == input_ids.shape:
            real = attention_mask.bool()
        ids = input_ids if past else input_ids[:, 1:]
        real = real if past else real[:, 1:]
        refuse_unless(((ids >= 0) & (ids < bos) | ~real).all(),
                      f"input_ids hold a value outside the intensity levels [0, num_levels={bos}) after the first "
                      f"position (bos_token_id={bos} only starts an image); quantise the image with the image "
                      "processor.")
        if not past:
            refuse_unless((input_ids[:, 0] == bos).all(),
                          f"Every row of input_ids must start with the start-of-image token bos_token_id={bos} (the "
                          "image processor adds it).")


class EfficientImageLMHead(nn.Linear):
    """The output layer: logits over the levels; the bos logit is -inf (bos is never a sub-pixel)."""

    def __init__(self, config: EfficientImageTransformerConfig):
        super().__init__(config.hidden_size, config.vocab_size, bias=False)
        self.bos_token_id = config.bos_token_id

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().forward(hidden)
        is_bos = torch.arange(logits.shape[-1], device=logits.device) == self.bos_token_id
        return logits.masked_fill(is_bos, float("-inf"))


class EfficientImageTransformerForCausalLM(EfficientForCausalLM):
    """p(x) = prod_t p(x_t | x_<t, y): logits (batch, L, vocab_size) at position s predict sub-pixel s (the row of
    bos predicts sub-pixel 0); `labels` = input_ids give the loss in nats per sub-pixel (bits/dim = loss / ln 2).
    `generate(input_ids=[[bos]], max_new_tokens=H*W*C, class_labels=...)` draws an image in raster order."""

    config_class = EfficientImageTransformerConfig
    model_class = EfficientImageTransformerModel
    backbone_inputs = frozenset({"class_labels"})

    def __init__(self, config: EfficientImageTransformerConfig):
        super().__init__(config)
        self.lm_head = EfficientImageLMHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, class_labels=None, **kwargs):
        """See the class docstring; the other arguments are EfficientForCausalLM.forward's."""
        if class_labels is not None:
            kwargs["class_labels"] = class_labels
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
