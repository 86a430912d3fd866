"""Norms, the feed-forward MLP and the residual block shared by every variant."""

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration import EfficientConfig


class EfficientRMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich, arXiv 1910.07467): y = w * x / sqrt(mean(x^2) + eps), computed in float32."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden.dtype
        hidden = hidden.to(torch.float32)
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * hidden.to(input_dtype)


def build_norm(config: EfficientConfig, size: int | None = None) -> nn.Module:
    size = size or config.hidden_size
    if config.norm_type == "rmsnorm":
        return EfficientRMSNorm(size, config.layer_norm_eps)
    return nn.LayerNorm(size, eps=config.layer_norm_eps)


class EfficientMLP(nn.Module):
    """standard: down(act(up(x)))  (BERT, GPT-2);  gated: down(act(gate(x)) * up(x))  (Llama's SwiGLU)."""

    def __init__(self, config: EfficientConfig):
        super().__init__()
        self.gate_proj = (
            nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
            if config.mlp_type == "gated"
            else None
        )
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is None:
            return self.down_proj(self.act(self.up_proj(hidden)))
        return self.down_proj(self.act(self.gate_proj(hidden)) * self.up_proj(hidden))


class EfficientBlock(GradientCheckpointingLayer):
    """One residual layer around any attention class.

    post-norm (BERT):       h = norm1(h + drop(attn(h)));  h = norm2(h + drop(mlp(h)))
    pre-norm (GPT-2/Llama): h = h + drop(attn(norm1(h)));  h = h + drop(mlp(norm2(h)))
    """

    def __init__(self, config: EfficientConfig, layer_idx: int, attention_class: type[nn.Module]):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.self_attn = attention_class(config, layer_idx)
        self.attention_norm = build_norm(config)
        self.mlp = EfficientMLP(config)
        self.mlp_norm = build_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, **attention_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_norm:
            attended, weights = self.self_attn(self.attention_norm(hidden), **attention_kwargs)
            hidden = hidden + self.dropout(attended)
            hidden = hidden + self.dropout(self.mlp(self.mlp_norm(hidden)))
        else:
            attended, weights = self.self_attn(hidden, **attention_kwargs)
            hidden = self.attention_norm(hidden + self.dropout(attended))
            hidden = self.mlp_norm(hidden + self.dropout(self.mlp(hidden)))
        return hidden, weights
