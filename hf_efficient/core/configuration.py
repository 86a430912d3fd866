"""The backbone fields every variant's config shares.

One config expresses three families exactly, so that pretrained weights convert without approximation:

| family | norm_type | norm_position | position_embedding_type | mlp_type | embedding_norm | type_vocab_size |
|---|---|---|---|---|---|---|
| BERT (encoder) | layernorm | post | absolute | standard, gelu | True | 2 |
| GPT-2 (decoder) | layernorm | pre | absolute | standard, gelu_new | False | 0 |
| Llama (decoder) | rmsnorm | pre | rotary | gated, silu | False | 0 |

Variant configs inherit these fields and add their mechanism's knobs. Every check raises a `ValueError` that
says what to change.
"""

import dataclasses
import math
import types
import typing
from typing import Any

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .plugin_only import plugin_only

# rope types whose frequencies are a function of the config alone (dynamic and longrope recompute them per length)
STATIC_ROPE_TYPES = tuple(sorted(set(ROPE_INIT_FUNCTIONS) - {"dynamic", "longrope"} | {"default"}))
# what a config file must hold (save_pretrained writes every field): a file without them would load with BERT-base's
# defaults in their place
REQUIRED_IN_FILES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "hidden_act", "mlp_type", "norm_type", "norm_position",
                     "position_embedding_type", "type_vocab_size", "is_causal")
_CHOICES = {
    "norm_type": ("layernorm", "rmsnorm"),
    "norm_position": ("post", "pre"),
    "position_embedding_type": ("absolute", "rotary", "none"),
    "mlp_type": ("standard", "gated"),
    "classifier_pooling": ("first", "last"),
    "attention_backend": ("auto", "reference", "blocked", "flex", "compiled", "fla"),
    "pooler_act": ("tanh", "relu", "gelu"),
}


class EfficientConfig(PreTrainedConfig):
    """Shared backbone configuration (abstract: each variant subclasses it with its own `model_type`).

    Defaults are BERT-base's. `attention_backend` picks the attention path: "auto" takes the GPU fast path on
    CUDA and the memory-efficient PyTorch path elsewhere; "reference" is the naive O(N^2) path kept for tests;
    "flex" (FlexAttention), "compiled" (torch.compile of the blocked path) and "fla" (flash-linear-attention's
    kernels, optional) are the GPU fast paths of the variants that have them. `is_decoder` (transformers' flag for a
    causal BERT-style model) is another name for `is_causal`.

    Every field is checked (type, range, choices) when the config is made, loaded (keyword overrides of
    `from_pretrained` included) or saved. A config file must name this class's model_type and hold the fields of
    REQUIRED_IN_FILES; a config made in Python may leave any field at its default.
    """

    has_compiled_path = False  # a class attribute (not a config field): the variant has a "compiled" backend
    has_fla_path = False  # likewise for the "fla" backend

    # sizes
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None  # grouped KV heads (Llama); None = num_attention_heads
    head_dim: int | None = None  # None = hidden_size // num_attention_heads
    intermediate_size: int = 3072
    # block
    hidden_act: str = "gelu"
    mlp_type: str = "standard"  # "standard": down(act(up(x))); "gated": down(act(gate(x)) * up(x))
    norm_type: str = "layernorm"
    norm_position: str = "post"  # "post" (BERT) or "pre" (GPT-2, Llama; adds a final norm)
    layer_norm_eps: float = 1e-12
    attention_bias: bool = True
    mlp_bias: bool = True
    # embeddings and positions
    position_embedding_type: str = "absolute"
    max_position_embeddings: int = 512
    rope_parameters: dict | None = None  # {"rope_type": "default", "rope_theta": 10000.0, ...} for rotary
    type_vocab_size: int = 2  # 0 = no token-type embeddings
    embedding_norm: bool = True  # BERT normalises the summed embeddings
    embedding_size: int | None = None  # ELECTRA-small's narrower embeddings, projected up; None = hidden_size
    # regularisation and init
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    initializer_range: float = 0.02
    # direction and heads
    is_causal: bool | None = None  # None: transformers' `is_decoder` if given (an alias), else False (an encoder)
    use_pooler: bool = True  # BERT's pooler over the first token: pooler_act(W h_first + b)
    pooler_act: str = "tanh"  # tanh (BERT, RoBERTa), relu (DistilBERT's pre_classifier), gelu (ELECTRA)
    classifier_pooling: str | None = None  # "first" or "last" token; None = "last" if causal else "first"
    masked_lm_transform: bool = True  # BERT's dense + act + norm before the masked-LM decoder
    lm_head_bias: bool = True
    tie_word_embeddings: bool = True
    # tokens and decoding
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    use_cache: bool = True
    # attention path
    attention_backend: str = "auto"

    attribute_map = {"is_decoder": "is_causal"}  # transformers' flag for a causal BERT-style model

    def __post_init__(self, **kwargs: Any) -> None:
        self.validate_field_types(EfficientConfig.knob_fields())
        is_decoder = kwargs.pop("is_decoder", None)
        if is_decoder is not None:
            if not isinstance(is_decoder, bool):
                raise ValueError(f"is_decoder={is_decoder!r}: use True (causal) or False (an encoder).")
            if self.is_causal is not None and self.is_causal != is_decoder:
                raise ValueError(f"is_decoder={is_decoder} and is_causal={self.is_causal} disagree; is_decoder is "
                                 "another name for is_causal: give one of them.")
            self.is_causal = is_decoder
        if self.is_causal is None:
            self.is_causal = False
        self.validate_sizes()  # before the sizes derived from them
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads="
                    f"{self.num_attention_heads}; change one of them or set head_dim explicitly."
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size
        if self.classifier_pooling is None:
            self.classifier_pooling = "last" if self.is_causal else "first"
        if self.position_embedding_type == "rotary" and self.rope_parameters is None:
            self.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        super().__post_init__(**kwargs)
        self.validate_backbone()
        self.validate_knobs()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """A config loaded from a file (`from_pretrained`, `AutoConfig`): the file must be of this class's model_type
        and hold the fields of REQUIRED_IN_FILES. Keyword overrides of this class's fields (and `is_decoder`, which
        replaces the file's is_causal) are merged into the file's values before the config is made, so they are
        checked like any config instead of being set afterwards."""
        file_type = config_dict.get("model_type")
        if cls.model_type and file_type != cls.model_type:
            raise ValueError(f"This config file has model_type={file_type!r}, but {cls.__name__} loads "
                             f"{cls.model_type!r} checkpoints. Load it with AutoConfig / AutoModel (import "
                             "hf_efficient registers every efficient_* type), or with the class of its model_type.")
        own = {field.name for field in cls.knob_fields()} | {"is_decoder"}
        overrides = {name: kwargs.pop(name) for name in list(kwargs) if name in own}
        given = set(config_dict) | set(overrides) | ({"is_causal"} if "is_decoder" in overrides else set())
        missing = [name for name in REQUIRED_IN_FILES if name not in given]
        if missing:
            raise ValueError(f"This config file lacks {missing} (save_pretrained writes them); a model built from "
                             "it would take BERT-base's defaults instead. Add them to config.json.")
        config_dict = {**config_dict, **overrides}
        if "is_decoder" in overrides and "is_causal" not in overrides:
            config_dict.pop("is_causal", None)
        return super().from_dict(config_dict, **kwargs)

    def validate(self) -> None:
        """transformers' checks (run by save_pretrained), then this package's: a config changed after it was made is
        checked again before it is written."""
        super().validate()
        self.validate_backbone()
        self.validate_knobs()

    @classmethod
    def knob_fields(cls) -> list[dataclasses.Field]:
        """The fields this package defines (the backbone's and the variant's), not transformers' own."""
        base = {field.name for field in dataclasses.fields(PreTrainedConfig)}
        return [field for field in dataclasses.fields(cls) if field.name not in base]

    def validate_field_types(self, fields: list[dataclasses.Field] | None = None) -> None:
        """Each field (default: every field of `knob_fields`) against its annotation (an int is accepted where a
        float is expected)."""
        for field in self.knob_fields() if fields is None else fields:
            value = getattr(self, field.name)
            if not _matches(value, field.type):
                expected = field.type.__name__ if isinstance(field.type, type) else str(field.type)
                raise ValueError(f"{field.name}={value!r} has the wrong type; use {expected}.")

    @plugin_only
    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs) -> None:
        """Every save is Hub-ready (hf_efficient.hub): the package's own `auto_map` replaces any the config carries,
        and the variant's self-contained bundle and the card's version line are written next to it, so that every
        saved model, fine-tuning checkpoints and `push_to_hub` included, loads with `trust_remote_code=True` where
        only torch and transformers are installed. The bundle's classes don't have this method: a model loaded as
        remote code saves its files as transformers does, copying them."""
        from ..hub import bundle_auto_map, make_hub_ready

        self.auto_map = bundle_auto_map(self)
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        make_hub_ready(save_directory, self)

    @plugin_only
    def _upload_modified_files(self, working_dir, *args, **kwargs):
        """transformers' upload step (`save_pretrained(..., push_to_hub=True)`): the bundle and card go too."""
        from ..hub import make_hub_ready

        make_hub_ready(working_dir, self)
        return super()._upload_modified_files(working_dir, *args, **kwargs)

    def validate_mechanism(self) -> None:
        """Normalise and check the variant's own knobs (expand per-layer ints, raise ValueErrors saying what to
        change). Runs when the config is made or loaded (load-time overrides included, see `from_dict`), and again
        when a model is built and when the config is saved, in case attributes were changed in between."""

    def validate_knobs(self) -> None:
        """The variant's checks (`validate_mechanism`, with its own messages), then the type of every field, which
        catches what those leave unchecked."""
        try:
            self.validate_mechanism()
        except TypeError:
            self.validate_field_types()  # a knob of the wrong type broke the variant's checks: say which one
            raise
        self.validate_field_types()

    def validate_backbone(self) -> None:
        self.validate_field_types(EfficientConfig.knob_fields())
        for field, choices in _CHOICES.items():
            if getattr(self, field) not in choices:
                raise ValueError(f"{field}={getattr(self, field)!r} is not supported; use one of {choices}.")
        if self.attention_backend == "compiled" and not type(self).has_compiled_path:
            raise ValueError(f"attention_backend='compiled' is a torch.compile path that {type(self).__name__} does "
                             "not have. Use 'auto' (the variant's GPU fast path on CUDA), 'blocked' or 'reference'.")
        if self.attention_backend == "fla" and not type(self).has_fla_path:
            raise ValueError(f"attention_backend='fla' (flash-linear-attention's kernels) serves causal linear "
                             f"attention only; {type(self).__name__} has no such path. Use 'auto', 'blocked' or "
                             "'reference'.")
        self.validate_sizes()
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of num_key_value_heads="
                f"{self.num_key_value_heads}."
            )
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be >= 0 (0 = none), got {self.type_vocab_size}.")
        if self.position_embedding_type == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}.")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, field)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{field} must be in [0, 1), got {value}.")
        for field, example in (("layer_norm_eps", "1e-12 (BERT) or 1e-5 (GPT-2)"), ("initializer_range", "0.02")):
            value = getattr(self, field)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{field}={value!r}: use a small positive number, e.g. {example}.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not an activation transformers knows; use one of "
                             f"{sorted(ACT2FN)}.")
        # the padding id is the embedding's padding row; bos/eos ids only steer generate(), and GPT-2-style configs
        # carry eos 50256 whatever their vocabulary (transformers warns about those when saving)
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id}: the padding id is a row of the embedding table, in "
                             f"[0, vocab_size={self.vocab_size}); use one there, or None.")
        self.validate_rope_parameters()

    def validate_sizes(self) -> None:
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "max_position_embeddings", "head_dim", "num_key_value_heads", "embedding_size"):
            value = getattr(self, field)
            if value is not None and value <= 0:  # None: derived from the others when the config is made
                raise ValueError(f"{field} must be a positive integer, got {value!r}.")

    def validate_rope_parameters(self) -> None:
        """`rope_parameters` (transformers fills it in for every config): a static rope type, a positive
        rope_theta and the keys transformers' own check asks of that type."""
        parameters = self.rope_parameters
        rope_type, theta = parameters.get("rope_type", "default"), parameters.get("rope_theta")
        if rope_type not in STATIC_ROPE_TYPES:
            raise ValueError(f"rope_parameters={parameters!r}: rope_type {rope_type!r} is not supported; use one of "
                             f"{STATIC_ROPE_TYPES} (dynamic and longrope recompute the frequencies per input length).")
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
            raise ValueError(f"rope_parameters={parameters!r}: rope_theta must be a positive number, e.g. 10000.0.")
        try:
            self.validate_rope()
        except KeyError as error:
            raise ValueError(f"rope_parameters={parameters!r}: {error.args[0]}") from None

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """Config changes under which this variant computes exact full attention on inputs of `length` tokens
        (the degenerate setting in which a converted model must reproduce its source)."""
        raise NotImplementedError(f"{cls.__name__} defines no degenerate full-attention setting.")

    def describe_attention(self) -> str:
        """One line for model cards: the attention pattern and its knobs."""
        return self.model_type

    @property
    def num_key_value_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def per_layer(self, value: Any, name: str) -> list:
        """Expand an int to one value per layer, or check that a list has one value per layer."""
        values = [value] * self.num_hidden_layers if isinstance(value, int) else list(value)
        if len(values) != self.num_hidden_layers:
            raise ValueError(
                f"{name} has {len(values)} entries but the model has num_hidden_layers={self.num_hidden_layers}; "
                "give one value per layer or a single int."
            )
        return values


def _matches(value: Any, annotation: Any) -> bool:
    """Whether `value` fits a field annotation: int, float (an int is accepted), bool, str, dict, list[...], unions
    and None; bools are never taken for numbers."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(annotation))
    if annotation is None or annotation is type(None):
        return value is None
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, (list, tuple)) and all(_matches(entry, item) for entry in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(annotation) or annotation)
