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

from typing import Any

from transformers import PreTrainedConfig

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
    kernels, optional) are the GPU fast paths of the variants that have them.
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
    is_causal: bool = False
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

    def __post_init__(self, **kwargs: Any) -> None:
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
        self.validate_mechanism()

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs) -> None:
        """Every save is Hub-ready (hf_efficient.hub): the package's own `auto_map` replaces any the config carries,
        and the two remote-code files are written from the package's templates (after transformers' copies), so
        that every saved model, fine-tuning checkpoints and `push_to_hub` included, loads with
        `trust_remote_code=True`."""
        from ..hub import remote_code_auto_map, write_remote_code

        self.auto_map = remote_code_auto_map(self)
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        write_remote_code(save_directory, self)

    def validate_mechanism(self) -> None:
        """Normalise and check the variant's own knobs (expand per-layer ints, raise ValueErrors saying what to
        change). Runs when the config is made and again when a model is built, because
        `from_pretrained(path, knob=value)` sets attributes after the config exists."""

    def validate_backbone(self) -> None:
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
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "max_position_embeddings", "head_dim", "num_key_value_heads", "embedding_size"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) <= 0:
                raise ValueError(f"{field} must be a positive integer, got {getattr(self, field)!r}.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of num_key_value_heads="
                f"{self.num_key_value_heads}."
            )
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be >= 0 (0 = none), got {self.type_vocab_size}.")
        if self.position_embedding_type == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}.")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"{field} must be in [0, 1), got {getattr(self, field)}.")

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
