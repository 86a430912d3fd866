"""Token, learned-position and token-type embeddings; rotary position embeddings (Su et al., arXiv 2104.09864)."""

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .configuration import STATIC_ROPE_TYPES, EfficientConfig
from .layers import build_norm


class EfficientEmbeddings(nn.Module):
    """x = project(dropout(norm(E_tok[ids] + E_pos[pos] + E_type[types]))), each term present only where the config
    has it (the projection only when embedding_size != hidden_size, as in ELECTRA-small)."""

    def __init__(self, config: EfficientConfig):
        super().__init__()
        size = config.embedding_size
        self.embed_tokens = nn.Embedding(config.vocab_size, size, padding_idx=config.pad_token_id)
        self.embed_positions = (
            nn.Embedding(config.max_position_embeddings, size) if config.position_embedding_type == "absolute" else None
        )
        self.embed_token_types = nn.Embedding(config.type_vocab_size, size) if config.type_vocab_size > 0 else None
        self.norm = build_norm(config, size) if config.embedding_norm else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.project = nn.Linear(size, config.hidden_size) if size != config.hidden_size else None

    def forward(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        position_ids: torch.LongTensor,
        token_type_ids: torch.LongTensor | None,
    ) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if self.embed_positions is not None:
            hidden = hidden + self.embed_positions(position_ids)
        if self.embed_token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(hidden.shape[:2], dtype=torch.long, device=hidden.device)
            hidden = hidden + self.embed_token_types(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids were given, but this model has no token-type embeddings.")
        if self.norm is not None:
            hidden = self.norm(hidden)
        hidden = self.dropout(hidden)
        return self.project(hidden) if self.project is not None else hidden




class EfficientRotaryEmbedding(nn.Module):
    """cos/sin tables for rotary positions: q_rot = q * cos + rotate_half(q) * sin.

    The inverse frequencies come from transformers' RoPE initialisers, so the static `rope_type`s there ("default",
    "linear", "yarn", "llama3", ...) are available through `config.rope_parameters`.
    """

    def __init__(self, config: EfficientConfig):
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        if self.rope_type not in STATIC_ROPE_TYPES:
            raise ValueError(f"rope_type {self.rope_type!r} is not supported here; use one of {STATIC_ROPE_TYPES}.")
        initialise = ROPE_INIT_FUNCTIONS.get(self.rope_type, self.compute_default_rope_parameters)
        inv_freq, self.attention_scaling = initialise(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: EfficientConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        """inv_freq_i = theta^(-2i / head_dim); transformers' weight init calls this by name (rope_type "default")."""
        dim = config.head_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
        return 1.0 / (config.rope_parameters["rope_theta"] ** exponents), 1.0

    @torch.no_grad()
    def forward(self, hidden: torch.Tensor, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        # position_ids (batch, seq) -> freqs (batch, seq, head_dim/2) -> cos, sin (batch, seq, head_dim)
        freqs = position_ids[..., None].float() * self.inv_freq.to(hidden.device, torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(hidden.dtype), sin.to(hidden.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate x (batch, heads, seq, head_dim) by the cos/sin tables (batch, seq, head_dim)."""
    cos, sin = (t.unsqueeze(1) for t in position_embeddings)
    return x * cos + rotate_half(x) * sin
