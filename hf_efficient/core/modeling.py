"""The shared backbone: embeddings -> N residual blocks around any attention class -> final norm (+ pooler)."""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.utils import logging

from ..attention.full import FullAttention
from .cache_argument import CACHE_FIELD, one_cache
from .configuration import EfficientConfig
from .embeddings import EfficientEmbeddings, EfficientRotaryEmbedding
from .layers import EfficientBlock, EfficientRMSNorm, build_norm
from .masks import validate_global_mask, validate_keep_mask
from .plugin_only import plugin_only
from .state_cache import StateCache, refit_state_cache

logger = logging.get_logger(__name__)

# output_attentions above this many bytes of weights logs what it costs
LARGE_ATTENTION_WEIGHTS = 256 * 2**20


# arguments a forward may get and need not use: `generate()` of some transformers versions passes cache_position
# (positions here come from the cache's length); callers pass use_cache=False to heads that never cache
IGNORABLE_KWARGS = frozenset({"cache_position", "use_cache"})


def refuse_unknown_kwargs(owner: nn.Module, kwargs: dict, accepted: frozenset = frozenset()) -> None:
    """A forward's **kwargs take only what it uses: an argument it would silently drop (a renamed one, a typo)
    raises instead."""
    unknown = sorted(set(kwargs) - accepted - IGNORABLE_KWARGS)
    if unknown:
        raise TypeError(f"{type(owner).__name__}.forward got arguments it does not use: {unknown}.")


class EfficientPreTrainedModel(PreTrainedModel):
    """Weight init and the transformers integration flags shared by every model and head."""

    config_class = EfficientConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EfficientBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = False  # our masks are arbitrary boolean patterns
    _supports_flex_attn = False  # FlexAttention is used inside the mechanisms, chosen per device

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' `from_pretrained`, reading safetensors only unless told otherwise: `use_safetensors`
        defaults to True, so a folder holding only a pickled `pytorch_model.bin` is refused, never unpickled."""
        if kwargs.get("use_safetensors") is None:
            kwargs["use_safetensors"] = True
        return super().from_pretrained(*args, **kwargs)

    @plugin_only
    def _upload_modified_files(self, working_dir, *args, **kwargs):
        """transformers' upload step of `push_to_hub`, after it wrote the repo's card (or its template) over the
        folder's: the card gets the line saying which hf-efficient wrote the code (hf_efficient.hub.write_card)."""
        from ..hub import write_card

        write_card(working_dir, self.config)
        return super()._upload_modified_files(working_dir, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, EfficientRMSNorm):
            init.ones_(module.weight)

    def _initialize_missing_keys(self, is_quantized: bool) -> None:
        """transformers' initialisation of what a checkpoint lacked or held at another size (`from_pretrained`): the
        variants' `_init_weights` redraw seeded tensors (`EfficientModel.seeded_tensors`) from the config's seed, as a
        fresh model of that config draws them; a warning names them."""
        seeded = getattr(self.base_model, "seeded_tensors", ())
        tensors = [*self.named_parameters(), *self.named_buffers()]
        rebuilt = [name for name, tensor in tensors
                   if name.endswith(seeded) and not getattr(tensor, "_is_hf_initialized", False)]
        super()._initialize_missing_keys(is_quantized)
        if rebuilt:
            shown = ", ".join(rebuilt[:4]) + (f" and {len(rebuilt) - 4} more" if len(rebuilt) > 4 else "")
            logger.warning(f"{shown}: not in the checkpoint or of another size; rebuilt from the config's seed, as a "
                           f"fresh {type(self).__name__} of this config draws them.")


class EfficientPooler(nn.Module):
    """BERT's pooler: act(W h_first + b), act = tanh (BERT/RoBERTa), relu (DistilBERT) or gelu (ELECTRA)."""

    def __init__(self, config: EfficientConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.pooler_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(hidden[:, 0]))


class EfficientModel(EfficientPreTrainedModel):
    """The bare backbone. Variants subclass it and set `attention_class` (and `config_class`)."""

    attention_class: type[nn.Module] = FullAttention
    block_class: type[nn.Module] = EfficientBlock  # variants that change the residual block (memories) subclass it
    # variants that decode from a per-layer state rather than keys/values: its Cache class, and what it serves (for
    # the error when given another kind of cache)
    state_cache: type[StateCache] | None = None
    state_cache_refusal: str = ""
    # suffixes of the names of tensors drawn from the config's seed (random features, fixed random tables): a checkpoint
    # that lacks them, or holds them at another size, loads with them redrawn by `_init_weights`, and says so
    seeded_tensors: tuple[str, ...] = ()

    def __init__(self, config: EfficientConfig):
        config.validate_backbone()
        config.validate_mechanism()
        super().__init__(config)
        attention = self.attention_class
        if config.is_causal and not attention.supports_causal:
            raise ValueError(f"{attention.__name__} cannot be causal; set is_causal=False (an encoder).")
        if not config.is_causal and not attention.supports_bidirectional:
            raise ValueError(f"{attention.__name__} is causal-only; set is_causal=True (a decoder).")
        self.embeddings = EfficientEmbeddings(config)
        self.rotary = EfficientRotaryEmbedding(config) if config.position_embedding_type == "rotary" else None
        self.layers = nn.ModuleList(self.block_class(config, i, attention) for i in range(config.num_hidden_layers))
        self.final_norm = build_norm(config) if config.norm_position == "pre" else None
        self.pooler = EfficientPooler(config) if config.use_pooler else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndCrossAttentions | tuple:
        """The backbone over `input_ids` (or `inputs_embeds`) of shape (batch, seq), with the package's masks:
        `attention_mask` a (batch, seq) 0/1 padding mask, `global_attention_mask` (batch, seq) 1 on global tokens.

        `output_attentions=True` runs every layer's naive reference path and returns its weights: batch x heads x
        seq x keys numbers per layer (keys = seq for most variants), N^2 memory that the efficient paths never
        form (2.25 GiB at 2048 tokens, batch 1, 12 heads, 12 layers, fp32); a warning gives the size when it
        exceeds 256 MiB. `cache` (or its pre-5.24 name `past_key_values`) is the decoding cache of causal models.
        """
        refuse_unknown_kwargs(self, kwargs)
        past_key_values = one_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        device = (input_ids if input_ids is not None else inputs_embeds).device
        if batch == 0 or length == 0:
            raise ValueError(f"The input has shape (batch, sequence) = ({batch}, {length}); pass at least one row of "
                             "at least one token.")

        global_keep = self.global_tokens(validate_global_mask(global_attention_mask, batch, length), batch, length,
                                         past_key_values is not None, device)
        if global_keep is not None and not self.attention_class.supports_global_attention:
            raise ValueError(
                f"global_attention_mask was given, but {type(self).__name__}'s layers ({self.attention_class.__name__})"
                " have no global tokens. Drop it, or use a variant with global attention (e.g. efficient_longformer)."
            )
        past_key_values = self._resolve_cache(past_key_values, use_cache, global_keep is not None)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        if output_attentions and not torch.compiler.is_compiling():
            self._warn_attention_weights(batch, length, past_length + length)
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + length, device=device).expand(batch, -1)
        self._check_positions(position_ids, past_length + length)
        keep = validate_keep_mask(attention_mask, batch, past_length + length, "attention_mask")
        if keep is not None and not self.attention_class.supports_padding_mask:
            raise ValueError(
                f"{self.attention_class.__name__} cannot honour a padding mask; pass unpadded inputs of equal length."
            )
        if global_keep is not None and keep is not None:  # a padding token is never global
            global_keep = global_keep & keep[:, -length:]
            if not torch.compiler.is_compiling():  # dropping an all-False mask is a data-dependent shortcut
                global_keep = global_keep if bool(global_keep.any()) else None

        hidden = self.embeddings(input_ids, inputs_embeds, position_ids, token_type_ids)
        position_embeddings = self.rotary(hidden, position_ids) if self.rotary is not None else None
        shared_state: dict = {}
        all_hidden, all_weights = [], []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden, weights = layer(
                hidden,
                attention_mask=keep,
                position_embeddings=position_embeddings,
                past_key_values=past_key_values,
                global_attention_mask=global_keep,
                position_ids=position_ids,
                output_attentions=output_attentions,
                shared_state=shared_state,
            )
            all_weights.append(weights)
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        output = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=hidden,
            pooler_output=self.pooler(hidden) if self.pooler is not None else None,
            **{CACHE_FIELD: past_key_values},
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_weights) if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()

    def attention_weight_columns(self, keys: int) -> int:
        """The last dimension of the weights `output_attentions` returns, for `keys` keys (variants override)."""
        return keys

    def _warn_attention_weights(self, batch: int, length: int, keys: int) -> None:
        """Say what output_attentions costs when it is large: the weights of every layer are kept."""
        config, element = self.config, torch.finfo(self.dtype).bits // 8
        columns = self.attention_weight_columns(keys)
        size = batch * config.num_attention_heads * length * columns * config.num_hidden_layers * element
        if size > LARGE_ATTENTION_WEIGHTS:
            logger.warning_once(
                f"output_attentions=True materialises {size / 2**30:.2f} GiB of attention weights (batch {batch} x "
                f"{config.num_attention_heads} heads x {length} x {columns} x {config.num_hidden_layers} layers x "
                f"{element} bytes) through every layer's naive reference path, which the efficient paths avoid. "
                "Leave output_attentions off unless you need the weights, or pass a shorter input."
            )

    def global_tokens(self, global_keep: torch.Tensor | None, batch: int, length: int, decoding: bool,
                      device: torch.device) -> torch.Tensor | None:
        """The global-token mask the layers get; variants may add tokens their config makes global."""
        return global_keep

    def _resolve_cache(self, past_key_values: Cache | None, use_cache: bool | None, has_global: bool) -> Cache | None:
        """A cache only for causal models whose attention supports it; an explicit request otherwise raises.

        By default (use_cache=None) a cache is made in eval mode for causal models without global tokens: a
        DynamicCache of keys/values, or the variant's `state_cache` (core/state_cache.py), into which an empty
        DynamicCache from `generate()` is refitted.
        """
        supported = self.config.is_causal and self.attention_class.supports_cache
        if past_key_values is not None and not supported:
            raise ValueError(
                f"past_key_values were given but {type(self).__name__} has no incremental decoding "
                f"({'encoder' if not self.config.is_causal else self.attention_class.__name__}); drop them."
            )
        if use_cache and not supported and self.config.is_causal:
            raise ValueError(f"{self.attention_class.__name__} has no KV cache; call with use_cache=False.")
        if use_cache is None:
            use_cache = self.config.use_cache and supported and not self.training and not has_global
        if self.state_cache is None:
            return DynamicCache() if use_cache and past_key_values is None else past_key_values
        if use_cache and past_key_values is None:
            return self.state_cache(self.config.num_hidden_layers)
        return refit_state_cache(past_key_values, self.state_cache, self.config.num_hidden_layers,
                                 self.state_cache_refusal)

    def _check_positions(self, position_ids: torch.LongTensor, total_length: int) -> None:
        if self.config.position_embedding_type != "absolute":
            return
        limit = self.config.max_position_embeddings
        advice = (f"this model has max_position_embeddings={limit}. Truncate the input (tokenizer truncation=True, "
                  f"max_length={limit}) or convert the model with a larger --max-length.")
        if total_length > limit:  # a shape check: plain Python, also under torch.compile
            raise ValueError(f"The input needs positions up to {total_length} but {advice}")
        if torch.compiler.is_compiling():  # a value check without a graph break (raises RuntimeError when run)
            torch._assert_async(position_ids.max() < limit, f"position_ids reach past the table: {advice}")
        elif int(position_ids.max()) >= limit:
            raise ValueError(f"The input needs positions up to {int(position_ids.max()) + 1} but {advice}")
