"""EfficientSetTransformer: an encoder of SAB or ISAB blocks and a PMA (+ SABs) decoder over sets of feature vectors.

The model takes no tokens: `input_features` (batch, set size, input_size) enter through a linear projection, with an
`attention_mask` (batch, set size) of 1 on real elements and 0 on padding, so that sets of different sizes share a
batch. It reuses the package's attention projections and sdpa dispatch (EfficientAttention), its rFF (EfficientMLP),
norms, masks and the transformers losses of its heads; the blocks are its own (attention/set_attention.py has the
math). There is no order, so no causal mode, cache or positions; nothing converts into it from a token model.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput
from transformers.utils import ModelOutput

from ...attention.set_attention import set_attention_reference
from ...core.attention import EfficientAttention
from ...core.layers import EfficientMLP, build_norm
from ...core.masks import refuse_unless, validate_keep_mask
from ...core.modeling import EfficientPreTrainedModel, refuse_unknown_kwargs
from .configuration_set_transformer import EfficientSetTransformerConfig

TOKEN_INPUTS = ("input_ids", "inputs_embeds")  # what a token model takes; given (not None), they raise
ISAB_MAPS = ("inducing points <- set (batch, heads, m, n)", "set <- inducing points (batch, heads, n, m)")


class EfficientSetAttention(EfficientAttention):
    """Multihead(X, Y, Y) of the Set Transformer (Lee et al., arXiv 1810.00825): queries from X (batch, q, hidden),
    keys and values from Y (batch, k, hidden), softmax(Q K^T / sqrt(head_dim)) V per head, then W^O. O(q k) time and
    memory for the weights; padding keys of Y are hidden by `key_keep` (batch, k). Exact softmax over the keys through
    transformers' attention interface (sdpa, also on CUDA); "reference" is the naive path of
    attention/set_attention.py. Deviations from the paper: see that file."""

    supports_causal = False
    supports_cache = False
    supports_global_attention = False
    supports_left_padding = True  # a set has no order: padding may sit anywhere

    def forward(self, hidden_states: torch.Tensor, key_value_states: torch.Tensor, key_keep: torch.Tensor | None = None,
                output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        query = self.split_heads(self.q_proj(hidden_states))  # (batch, heads, q, d)
        key, value = self.split_heads(self.k_proj(key_value_states)), self.split_heads(self.v_proj(key_value_states))
        backend = self.choose_backend(hidden_states, output_attentions, gpu_backend=None)
        if backend == "reference":
            key, value = (repeat_heads(t, self.num_key_value_groups) for t in (key, value))
            attended, weights = set_attention_reference(query, key, value, key_keep, self.scaling)
        else:
            keep = None if key_keep is None else key_keep[:, None, None, :]
            attended, weights = self.attend(query, key, value, keep)
        return self.merge_heads(attended), weights


def repeat_heads(states: torch.Tensor, groups: int) -> torch.Tensor:
    # (batch, kv_heads, k, d) -> (batch, kv_heads * groups, k, d)
    return states.repeat_interleave(groups, dim=1) if groups > 1 else states


class EfficientMAB(nn.Module):
    """MAB(X, Y) = LN(H + rFF(H)), H = LN(X + Multihead(X, Y, Y)); without the norms when use_layer_norm=False.
    The attention is named `self_attn`, as in every block of the package (LoRA targets it), also where Y is not X."""

    def __init__(self, config: EfficientSetTransformerConfig, layer_idx: int):
        super().__init__()
        self.self_attn = EfficientSetAttention(config, layer_idx)
        self.attention_norm = build_norm(config) if config.use_layer_norm else nn.Identity()
        self.mlp = EfficientMLP(config)
        self.mlp_norm = build_norm(config) if config.use_layer_norm else nn.Identity()
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, y: torch.Tensor, y_keep: torch.Tensor | None,
                output_attentions: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.self_attn(x, y, y_keep, output_attentions)
        hidden = self.attention_norm(x + self.dropout(attended))
        return self.mlp_norm(hidden + self.dropout(self.mlp(hidden))), weights


class EfficientSAB(GradientCheckpointingLayer):
    """SAB(X) = MAB(X, X): every element attends to every real element of its set (O(n^2))."""

    def __init__(self, config: EfficientSetTransformerConfig, layer_idx: int):
        super().__init__()
        self.mab = EfficientMAB(config, layer_idx)

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor | None, output_attentions: bool = False):
        hidden, weights = self.mab(hidden, hidden, keep, output_attentions)
        return hidden, weights


class EfficientISAB(GradientCheckpointingLayer):
    """ISAB_m(X) = MAB(X, H), H = MAB(I, X): m learned inducing points summarise the set, and the set attends to the
    summary; two n x m attention maps, O(n m) (weights: ISAB_MAPS, in that order)."""

    def __init__(self, config: EfficientSetTransformerConfig, layer_idx: int):
        super().__init__()
        self.inducing_points = nn.Parameter(torch.empty(config.num_inducing_points, config.hidden_size))
        self.summarise = EfficientMAB(config, layer_idx)  # H = MAB(I, X)
        self.broadcast = EfficientMAB(config, layer_idx)  # MAB(X, H)

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor | None, output_attentions: bool = False):
        # (batch, m, hidden), materialised: an expanded (stride-0) batch takes another matmul path, whose rounding
        # would differ from the same layer applied to a materialised copy (e.g. wrapped by a LoRA adapter)
        inducing = self.inducing_points.to(hidden.dtype).expand(hidden.shape[0], -1, -1).contiguous()
        summary, to_inducing = self.summarise(inducing, hidden, keep, output_attentions)
        hidden, to_set = self.broadcast(hidden, summary, None, output_attentions)
        return hidden, ((to_inducing, to_set) if output_attentions else None)


class EfficientPMA(nn.Module):
    """PMA_k(Z) = MAB(S, rFF(Z)): k learned seeds attend to the real elements of the set (O(n k))."""

    def __init__(self, config: EfficientSetTransformerConfig, layer_idx: int):
        super().__init__()
        self.seeds = nn.Parameter(torch.empty(config.num_seeds, config.hidden_size))
        self.feed_forward = EfficientMLP(config)  # the rFF before pooling
        self.mab = EfficientMAB(config, layer_idx)

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor | None, output_attentions: bool = False):
        seeds = self.seeds.to(hidden.dtype).expand(hidden.shape[0], -1, -1).contiguous()  # (batch, k, hidden), as ISAB
        return self.mab(seeds, self.feed_forward(hidden), keep, output_attentions)


class EfficientSetDecoder(nn.Module):
    """Decoder(Z) = SAB^num_decoder_layers(PMA_k(Z)): (batch, n, hidden) -> (batch, k, hidden), permutation-
    invariant."""

    def __init__(self, config: EfficientSetTransformerConfig):
        super().__init__()
        layers = config.num_hidden_layers
        self.pma = EfficientPMA(config, layers)
        self.layers = nn.ModuleList(EfficientSAB(config, layers + 1 + i) for i in range(config.num_decoder_layers))

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor | None, output_attentions: bool):
        pooled, weights = self.pma(hidden, keep, output_attentions)
        all_weights = [weights]
        for layer in self.layers:
            pooled, weights = layer(pooled, None, output_attentions)
            all_weights.append(weights)
        return pooled, tuple(all_weights)


@dataclass
class EfficientSetTransformerModelOutput(ModelOutput):
    """last_hidden_state: the encoder's output (batch, set size, hidden), permutation-equivariant.
    pooler_output: the decoder's output (batch, num_seeds, hidden), permutation-invariant (None without a decoder).
    hidden_states: the input projection and every encoder block's output, (batch, set size, hidden) each.
    attentions: one entry per encoder block: SAB (batch, heads, n, n); ISAB a pair (ISAB_MAPS).
    decoder_attentions: PMA's (batch, heads, k, n), then each decoder SAB's (batch, heads, k, k)."""

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple | None = None
    decoder_attentions: tuple | None = None


class EfficientSetTransformerPreTrainedModel(EfficientPreTrainedModel):
    config_class = EfficientSetTransformerConfig
    main_input_name = "input_features"
    _no_split_modules = ["EfficientSAB", "EfficientISAB"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, EfficientISAB):
            init.normal_(module.inducing_points, std=self.learned_query_std())
        elif isinstance(module, EfficientPMA):
            init.normal_(module.seeds, std=self.learned_query_std())

    def learned_query_std(self) -> float:
        """The init std of the inducing points and seeds. They stand in for set elements as queries (and ISAB's first
        residual), so with the layer norms they start at the scale of a normed hidden state (1 per entry): drawn at
        initializer_range, their queries would be ~1/initializer_range times smaller than the set's, the attention
        over the set uniform (a mean) with a second-order gradient, and ISAB would not learn. Without the norms the
        hidden states have no set scale: initializer_range."""
        return 1.0 if self.config.use_layer_norm else self.config.initializer_range


class EfficientSetTransformerModel(EfficientSetTransformerPreTrainedModel):
    """Input projection -> num_hidden_layers SAB or ISAB blocks (the encoder) -> PMA + SABs (the decoder).
    `add_decoder=False` builds the encoder alone (the per-element head)."""

    attention_class = EfficientSetAttention  # its capability flags are the model's (no causal mode, no cache)
    seeded_tensors: tuple[str, ...] = ()  # nothing is drawn from a config seed (inducing points and seeds are learned)

    def __init__(self, config: EfficientSetTransformerConfig, add_decoder: bool = True):
        config.validate_backbone()
        config.validate_mechanism()
        super().__init__(config)
        self.input_proj = nn.Linear(config.input_size, config.hidden_size)
        block = EfficientISAB if config.encoder_block == "isab" else EfficientSAB
        self.layers = nn.ModuleList(block(config, i) for i in range(config.num_hidden_layers))
        self.decoder = EfficientSetDecoder(config) if add_decoder else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Linear:
        return self.input_proj

    def set_input_embeddings(self, value: nn.Linear) -> None:
        self.input_proj = value

    def forward(
        self,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> EfficientSetTransformerModelOutput | tuple:
        """`input_features` (batch, set size, input_size): the elements of each set, in any order; `attention_mask`
        (batch, set size): 1 on real elements, 0 on padding (every set needs at least one real element)."""
        if any(kwargs.pop(name, None) is not None for name in TOKEN_INPUTS):
            raise ValueError(f"{type(self).__name__} takes sets of feature vectors, not tokens: pass input_features "
                             "(batch, set size, input_size) instead of input_ids / inputs_embeds.")
        refuse_unknown_kwargs(self, kwargs)
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        if input_features is None:
            raise ValueError("Pass exactly one input: input_features (batch, set size, input_size).")
        if input_features.dim() != 3 or input_features.shape[-1] != config.input_size:
            raise ValueError(f"input_features has shape {tuple(input_features.shape)}; it needs (batch, set size, "
                             f"input_size={config.input_size}).")
        batch, size = input_features.shape[:2]
        if batch == 0 or size == 0:
            raise ValueError(f"The input has shape (batch, set size) = ({batch}, {size}); pass at least one row (a "
                             "set) of at least one element.")
        keep = validate_keep_mask(attention_mask, batch, size, "attention_mask")
        if keep is not None:
            refuse_unless(keep.any(-1).all(), "attention_mask has a set without any real element (a row of zeros); "
                                              "every set needs at least one element.")
            input_features = input_features.masked_fill(~keep[..., None], 0.0)  # padding values never matter
        hidden = self.input_proj(input_features.to(self.input_proj.weight.dtype))
        all_hidden, all_weights = [], []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden, weights = layer(hidden, keep, output_attentions)
            all_weights.append(weights)
        if output_hidden_states:
            all_hidden.append(hidden)
        pooled, decoder_weights = self.decoder(hidden, keep, output_attentions) if self.decoder else (None, None)
        output = EfficientSetTransformerModelOutput(
            last_hidden_state=hidden,
            pooler_output=pooled,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_weights) if output_attentions else None,
            decoder_attentions=decoder_weights if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()


class EfficientSetTransformerHead(EfficientSetTransformerPreTrainedModel):
    """A set model (`self.model`) plus a task layer; `classifier_dropout` (else hidden_dropout_prob) before it."""

    add_decoder = True

    def __init__(self, config: EfficientSetTransformerConfig, in_features: int):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = EfficientSetTransformerModel(config, add_decoder=self.add_decoder)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_features, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Linear:
        return self.model.input_proj

    def run_model(self, input_features, attention_mask, output_attentions, output_hidden_states, kwargs):
        tokens = {name: kwargs.pop(name) for name in TOKEN_INPUTS if name in kwargs}  # the model refuses them
        refuse_unknown_kwargs(self, kwargs)
        return self.model(input_features=input_features, attention_mask=attention_mask,
                          output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                          return_dict=True, **tokens)

    def finish(self, result, return_dict: bool | None):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()


class EfficientSetTransformerForSequenceClassification(EfficientSetTransformerHead):
    """Set classification or regression: a linear layer over the decoder's num_seeds pooled vectors (concatenated),
    permutation-invariant. `problem_type` and the losses are transformers' (regression for num_labels=1, single-label
    for integer labels, multi-label for float labels of num_labels columns)."""

    accepts_loss_kwargs = False  # per-example mean losses: Trainer scales them for gradient accumulation

    def __init__(self, config: EfficientSetTransformerConfig):
        super().__init__(config, config.num_seeds * config.hidden_size)

    def forward(self, input_features: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs):
        out = self.run_model(input_features, attention_mask, output_attentions, output_hidden_states, kwargs)
        logits = self.classifier(self.dropout(out.pooler_output.flatten(1)))  # (batch, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        result = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                          attentions=out.attentions)
        return self.finish(result, return_dict)


class EfficientSetTransformerForTokenClassification(EfficientSetTransformerHead):
    """A label per set element (the encoder alone, permutation-equivariant): logits (batch, set size, num_labels).
    As in transformers, labels of padding elements must be -100."""

    add_decoder = False

    def __init__(self, config: EfficientSetTransformerConfig):
        super().__init__(config, config.hidden_size)

    def forward(self, input_features: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs):
        out = self.run_model(input_features, attention_mask, output_attentions, output_hidden_states, kwargs)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None if labels is None else self.loss_function(logits, labels, self.config)
        result = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                       attentions=out.attentions)
        return self.finish(result, return_dict)
