"""Task heads shared by every variant. A variant's head is a one-line subclass naming its config and base model."""

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import (
    CausalLMOutputWithPast,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)

from .cache_argument import CACHE_FIELD, one_cache, returned_cache
from .configuration import EfficientConfig
from .layers import build_norm
from .lm_loss import chunked_head_loss, next_token_labels
from .modeling import EfficientModel, EfficientPreTrainedModel, refuse_unknown_kwargs

# what Trainer passes to a loss that accepts it (gradient accumulation)
LOSS_KWARGS = frozenset({"num_items_in_batch"})


def wants_logits(module: nn.Module, labels: torch.Tensor | None, return_logits: bool | None) -> bool:
    """Language-model heads skip the (tokens x vocab) logits when training with labels (the loss is computed
    chunk by chunk on the labelled positions, core/lm_loss.py), unless the caller asks with return_logits=True."""
    return return_logits if return_logits is not None else not (module.training and labels is not None)


class EfficientHead(EfficientPreTrainedModel):
    """A backbone (`self.model`, of the variant's `model_class`) plus a task layer."""

    model_class: type[EfficientModel] = EfficientModel
    # further keyword inputs of the variant's backbone (ETC's global input) that every head passes through to it
    backbone_inputs: frozenset = frozenset()

    def __init__(self, config: EfficientConfig):
        super().__init__(config)
        self.model = self.model_class(config)

    def split_backbone_inputs(self, kwargs: dict) -> dict:
        """Refuse the arguments a head's forward does not use, and take `backbone_inputs` out of its **kwargs."""
        refuse_unknown_kwargs(self, kwargs, LOSS_KWARGS | self.backbone_inputs)
        return {name: kwargs.pop(name) for name in self.backbone_inputs if name in kwargs}

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def run_backbone(self, **inputs):
        return self.model(**inputs, return_dict=True)

    def finish(self, result, return_dict: bool | None):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()


class EfficientMaskedLMHead(nn.Module):
    """BERT's prediction head: decoder(norm(act(dense(h)))) when `masked_lm_transform`, else decoder(h)."""

    def __init__(self, config: EfficientConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size) if config.masked_lm_transform else None
        self.act = ACT2FN[config.hidden_act] if config.masked_lm_transform else None
        self.norm = build_norm(config) if config.masked_lm_transform else None
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.lm_head_bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            hidden = self.norm(self.act(self.dense(hidden)))
        return self.decoder(hidden)


class EfficientForMaskedLM(EfficientHead):
    _tied_weights_keys = {"lm_head.decoder.weight": "model.embeddings.embed_tokens.weight"}

    def __init__(self, config: EfficientConfig):
        if config.is_causal:
            raise ValueError("A masked-LM head needs a bidirectional model; set is_causal=False.")
        super().__init__(config)
        self.lm_head = EfficientMaskedLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head.decoder = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        return_logits: bool | None = None,
        **kwargs,
    ) -> MaskedLMOutput | tuple:
        """In training with `labels`, `logits` are None unless `return_logits=True` (see `wants_logits`)."""
        extra = self.split_backbone_inputs(kwargs)
        out = self.run_backbone(
            **extra,
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, global_attention_mask=global_attention_mask, inputs_embeds=inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        logits = self.lm_head(out.last_hidden_state) if wants_logits(self, labels, return_logits) else None
        loss = None
        if labels is not None and logits is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        elif labels is not None:
            hidden = out.last_hidden_state
            loss = chunked_head_loss(self.lm_head, hidden, labels.to(hidden.device), **kwargs)
        result = MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)
        return self.finish(result, return_dict)


class EfficientForCausalLM(EfficientHead, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.embed_tokens.weight"}

    def __init__(self, config: EfficientConfig):
        if not config.is_causal:
            raise ValueError("A causal-LM head needs a causal model; set is_causal=True.")
        super().__init__(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values: Cache | None = None,
        return_logits: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """In training with `labels`, `logits` are None unless `return_logits=True` (see `wants_logits`)."""
        extra = self.split_backbone_inputs(kwargs)
        out = self.run_backbone(
            **extra,
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, global_attention_mask=global_attention_mask,
            cache=one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden) if wants_logits(self, labels, return_logits) else None
        loss = None
        if labels is not None and logits is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        elif labels is not None:
            loss = chunked_head_loss(self.lm_head, hidden, next_token_labels(labels.to(hidden.device)), **kwargs)
        result = CausalLMOutputWithPast(
            loss=loss, logits=logits, **{CACHE_FIELD: returned_cache(out)}, hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return self.finish(result, return_dict)


def last_token_index(
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    pad_token_id: int | None,
    batch: int,
    length: int,
) -> torch.Tensor:
    """Index of each row's last real token: from the attention mask, else from pad tokens, else the last position."""
    positions = torch.arange(length)
    if attention_mask is not None:
        return (positions.to(attention_mask.device) * attention_mask.bool()).argmax(-1)
    if input_ids is not None and pad_token_id is not None:
        return (positions.to(input_ids.device) * (input_ids != pad_token_id)).argmax(-1)
    return torch.full((batch,), length - 1, dtype=torch.long)


class EfficientForSequenceClassification(EfficientHead):
    """Pools the first token (through the pooler when the config has one) or, for decoders, the last real token."""

    # The losses (regression, single- and multi-label) are per-example means: Trainer must scale them for gradient
    # accumulation itself instead of passing num_items_in_batch.
    accepts_loss_kwargs = False

    def __init__(self, config: EfficientConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast | tuple:
        extra = self.split_backbone_inputs(kwargs)
        out = self.run_backbone(
            **extra,
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, global_attention_mask=global_attention_mask, inputs_embeds=inputs_embeds,
            use_cache=False, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state
        if self.config.classifier_pooling == "first":
            pooled = out.pooler_output if out.pooler_output is not None else hidden[:, 0]
        else:
            index = last_token_index(input_ids, attention_mask, self.config.pad_token_id, *hidden.shape[:2])
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), index.to(hidden.device)]
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        result = SequenceClassifierOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
        return self.finish(result, return_dict)


class EfficientForTokenClassification(EfficientHead):
    def __init__(self, config: EfficientConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> TokenClassifierOutput | tuple:
        extra = self.split_backbone_inputs(kwargs)
        out = self.run_backbone(
            **extra,
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, global_attention_mask=global_attention_mask, inputs_embeds=inputs_embeds,
            use_cache=False, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None if labels is None else self.loss_function(logits, labels, self.config, **kwargs)
        result = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
        return self.finish(result, return_dict)


class EfficientForQuestionAnswering(EfficientHead):
    accepts_loss_kwargs = False  # a per-example mean loss: Trainer scales it for gradient accumulation

    def __init__(self, config: EfficientConfig):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.LongTensor | None = None,
        end_positions: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput | tuple:
        extra = self.split_backbone_inputs(kwargs)
        out = self.run_backbone(
            **extra,
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, global_attention_mask=global_attention_mask, inputs_embeds=inputs_embeds,
            use_cache=False, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        start_logits, end_logits = self.qa_outputs(out.last_hidden_state).split(1, dim=-1)
        start_logits, end_logits = start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = self.loss_function(start_logits, end_logits, start_positions, end_positions)
        result = QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits, hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return self.finish(result, return_dict)
