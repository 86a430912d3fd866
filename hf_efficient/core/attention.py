"""The attention contract every mechanism implements, and the one call into transformers' attention interface.

Contract (mirrors transformers' Llama attention):

    forward(hidden_states, attention_mask=None, position_embeddings=None, past_key_values=None, **kwargs)
        -> (output (batch, seq, hidden), weights (batch, heads, seq, keys) or None)

* `attention_mask` is a boolean keep-mask (batch, keys): True = a real token. Causality comes from
  `config.is_causal`, never from the mask. Global tokens arrive as `global_attention_mask` (batch, seq), bool.
* `position_embeddings` are the rotary (cos, sin) tables when the config uses rotary positions.
* `shared_state` (a dict made fresh by the model for every forward) lets layers share what they derive from the
  masks (block masks, global-token indices) without mutating any module.
* Capability flags are class attributes; the model reads them and raises on inputs a mechanism can't honour.
* `supports_left_padding`: a batch padded on the left (a keep-mask row with padding before a real token) gives its
  real tokens the outputs of the unpadded rows in every path, cached decoding included, so `generate()` may take
  left-padded prompts (with position ids from the mask, as it makes them). False: some path (named in the class
  docstring) refuses left padding with a ValueError (`masks.left_padding_error`). `convert` writes a tokenizer that
  pads on the left for causal models with the flag, on the right otherwise. Mechanisms tied to absolute positions get
  there with `masks.right_alignment` (a per-row rotation) or by indexing their tables from each row's first token.
"""

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration import EfficientConfig
from .embeddings import apply_rotary


def eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling + mask) v on (batch, heads, q, d) inputs; returns ((batch, q, heads, d), weights)."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """(batch, kv_heads, seq, d) -> (batch, kv_heads * groups, seq, d) for grouped-query attention."""
    if groups == 1:
        return states
    batch, kv_heads, seq, dim = states.shape
    return states[:, :, None].expand(batch, kv_heads, groups, seq, dim).reshape(batch, kv_heads * groups, seq, dim)


class EfficientAttention(nn.Module):
    """Base of every mechanism: the q/k/v/o projections, rotary, capability flags and `attend`."""

    supports_causal = True
    supports_bidirectional = True
    supports_padding_mask = True
    supports_cache = False
    supports_global_attention = False
    supports_left_padding = True  # see the module docstring
    is_stochastic = False
    max_length_fixed = False

    def __init__(self, config: EfficientConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = config.num_key_value_groups
        self.scaling = self.head_dim**-0.5
        self.is_causal = config.is_causal
        self.attention_dropout = config.attention_probs_dropout_prob
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(q_dim, config.hidden_size, bias=config.attention_bias)

    def choose_backend(self, hidden_states: torch.Tensor, output_attentions: bool, gpu_backend: str | None = "flex",
                       gpu_min_head_dim: int = 0) -> str:
        """The path for this call: "reference" when the weights are asked for; under "auto", `gpu_backend` on CUDA
        (when the head dim allows and no attention dropout is active, which fused kernels don't do) else
        "blocked", the memory-efficient PyTorch path. A forced backend is taken as is, or refused if it can't run."""
        if output_attentions:
            return "reference"  # the only path that materialises the weights
        chosen = self.config.attention_backend
        gpu_ok = gpu_backend is not None and hidden_states.is_cuda and self.head_dim >= gpu_min_head_dim
        if chosen == "auto":
            dropout_free = not self.training or self.attention_dropout == 0.0
            return gpu_backend if gpu_ok and dropout_free else "blocked"
        if chosen == gpu_backend and hidden_states.is_cuda and not gpu_ok:
            raise ValueError(
                f"attention_backend={chosen!r} needs head_dim >= {gpu_min_head_dim} on CUDA (this model has "
                f"{self.head_dim}); use attention_backend='auto' or 'blocked'."
            )
        return chosen

    @classmethod
    def lora_targets(cls, config: EfficientConfig) -> tuple[str, ...]:
        """The nn.Linear projections a LoRA adapter wraps, named inside the attention module (hf_efficient.lora)."""
        return ("q_proj", "k_proj", "v_proj", "o_proj")

    @classmethod
    def lora_trained_in_full(cls, config: EfficientConfig) -> tuple[str, ...]:
        """The attention's other trainable modules, which LoRA can't wrap (not nn.Linear, or weights read directly
        rather than through the module's forward): PEFT's `modules_to_save` trains them in full."""
        return ()

    @property
    def dropout(self) -> float:
        return self.attention_dropout if self.training else 0.0

    def split_heads(self, projected: torch.Tensor) -> torch.Tensor:
        # (batch, seq, heads * d) -> (batch, heads, seq, d)
        return projected.view(*projected.shape[:2], -1, self.head_dim).transpose(1, 2)

    def project(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
        projections: tuple[nn.Linear, nn.Linear, nn.Linear] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (batch, heads, seq, d), rotated when the model uses rotary positions."""
        q_proj, k_proj, v_proj = projections or (self.q_proj, self.k_proj, self.v_proj)
        query, key, value = (self.split_heads(p(hidden_states)) for p in (q_proj, k_proj, v_proj))
        if position_embeddings is not None:
            query, key = apply_rotary(query, position_embeddings), apply_rotary(key, position_embeddings)
        return query, key, value

    def merge_heads(self, attended: torch.Tensor) -> torch.Tensor:
        # (batch, seq, heads, d) -> (batch, seq, hidden)
        return self.o_proj(attended.reshape(*attended.shape[:2], -1))

    def interface(self, need_weights: bool = False) -> Callable:
        implementation = "eager" if need_weights else self.config._attn_implementation
        return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention)

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        keep: torch.Tensor | None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Exact softmax attention over the given keys through transformers' attention interface (eager or sdpa).

        `keep` is a boolean mask broadcastable to (batch, heads, q, keys); `is_causal` (bottom-right aligned) is
        turned into a mask except where sdpa can take its causal kernels. `need_weights` forces the eager path,
        which returns the attention weights. Returns ((batch, q, heads, d), weights or None).
        """
        eager = need_weights or self.config._attn_implementation in (None, "eager")
        if is_causal and (keep is not None or eager or query.shape[-2] != key.shape[-2]):
            causal = causal_keep(query.shape[-2], key.shape[-2], query.device)[None, None]
            keep = causal if keep is None else causal & keep
            is_causal = False
        mask = keep
        if keep is not None and eager:
            mask = torch.zeros(keep.shape, dtype=query.dtype, device=query.device)
            mask = mask.masked_fill(~keep, torch.finfo(query.dtype).min)
        with shape_agnostic_sdpa(query):
            return self.interface(need_weights)(
                self, query, key, value, mask, dropout=self.dropout, scaling=self.scaling, is_causal=is_causal
            )


def shape_agnostic_sdpa(query: torch.Tensor):
    """On CUDA, torch's SDPA limited to the flash, memory-efficient and math kernels: its cuDNN kernel builds an
    execution plan for every new shape, and the mechanisms here call SDPA on shapes that change with every padded
    batch (global rows, blocks of a new length). Measured on the H200 (benchmarks/padded_finetune.py, Trainer over
    batches padded to 59 lengths): 197 -> 46 ms per step for the Longformer. Elsewhere, torch's own choice."""
    if not query.is_cuda:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def causal_keep(query_length: int, key_length: int, device: torch.device) -> torch.Tensor:
    """(q, keys) bool: query i (the last q of `keys` positions) sees keys up to its own position."""
    return torch.ones(query_length, key_length, dtype=torch.bool, device=device).tril(key_length - query_length)
