"""The Compressive Transformer's compressed memory and its attention-reconstruction loss.

Rae et al., "Compressive Transformers for Long-Range Sequence Modelling" (ICLR 2020, arXiv 1911.05507). Per layer,
the n_m most recent hidden states form the memory (Transformer-XL's, attention/relative.py); the states that fall
out of it are compressed at rate c by f_c and appended to a FIFO of n_cm compressed states. The attention reads
[compressed memory; memory; segment] with the relative encoding over the whole span (distances counted in slots):

    cmem <- last n_cm of [cmem; f_c(old_mem)],   L_attn = || attn(h, old_mem) - attn(h, f_c(old_mem)) ||^2

where f_c is a 1D convolution with kernel = stride = c (default), or mean / max pooling over c states, and L_attn
(the paper's attention-reconstruction loss, Algorithm 2) uses the layer's frozen weights on stop-gradient inputs, so
its gradient reaches only f_c; the compressed states are stored detached, so the language-model loss never trains f_c.
Time per segment O(n (n_cm + n_m + n) d) for the attention plus O(n_m d^2) for the compression; memory per layer
O(n_cm + n_m + c) states whatever the number of segments.

Deviations and choices: L_attn is the mean squared error over heads, queries and dimensions of the per-head content
attention outputs (before the output projection, no relative or rotary terms), summed over layers; the paper leaves
these details open. States leave the memory in whole groups of c (the memory holds n_m to n_m + c - 1 states), so
any segment length (one token at a time included) compresses the same groups in FIFO order; with the paper's
segment length n = n_m, a multiple of c, the memory holds exactly n_m. Padding states are zeroed before
compression and a compressed slot is attended only if one of its c states was real; a compressed slot's position (for
rotary models) is that of its last state.
"""

import torch
from torch import nn
from transformers import initialization as init

from ..models.memory_compressed.modeling_memory_compressed import average_pooling_kernel

COMPRESSIONS = ("conv", "mean", "max")


class MemoryCompression(nn.Module):
    """f_c: (batch, k c, hidden) -> (batch, k, hidden). Only `conv` has parameters: `weight` (hidden, hidden, c) and
    `bias` (hidden) of a 1D convolution with kernel = stride = c, initialised as mean pooling (weight[o, i, t] = 1/c
    if o == i, else 0; bias 0)."""

    def __init__(self, hidden_size: int, rate: int, kind: str):
        super().__init__()
        self.rate, self.kind = rate, kind
        if kind == "conv":
            self.weight = nn.Parameter(torch.empty(hidden_size, hidden_size, rate))
            self.bias = nn.Parameter(torch.empty(hidden_size))
            self.reset_as_mean_pooling()

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if self.kind == "conv":
            compressed = nn.functional.conv1d(states.transpose(1, 2), self.weight, self.bias, stride=self.rate)
            return compressed.transpose(1, 2)
        grouped = states.unflatten(1, (-1, self.rate))
        return grouped.mean(2) if self.kind == "mean" else grouped.amax(2)

    def reset_as_mean_pooling(self) -> None:
        """The documented start of `conv` (through transformers' init functions, which leave loaded tensors alone)."""
        if self.kind == "conv":
            init.copy_(self.weight, average_pooling_kernel(self.weight.shape[0], self.rate))
            init.zeros_(self.bias)


def frozen(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """The module applied with its parameters detached: its output carries gradient to the inputs only."""
    return torch.func.functional_call(module, {n: p.detach() for n, p in module.named_parameters()}, inputs)


def content_attention(attention: nn.Module, norm: nn.Module | None, queries: torch.Tensor, memory: torch.Tensor,
                      keep: torch.Tensor | None) -> torch.Tensor:
    """Per-head content attention of `queries` (b, n, hidden) over `memory` (b, k, hidden) with the layer's frozen
    norm (None under post-norm) and projections; `keep` (b, k) masks memory slots. -> (b, h, n, d)."""
    if norm is not None:
        queries, memory = frozen(norm, queries), frozen(norm, memory)
    query = attention.split_heads(frozen(attention.q_proj, queries))
    key = attention.split_heads(frozen(attention.k_proj, memory)).repeat_interleave(attention.num_key_value_groups, 1)
    value = attention.split_heads(frozen(attention.v_proj, memory)).repeat_interleave(attention.num_key_value_groups,
                                                                                      1)
    scores = torch.matmul(query, key.transpose(-1, -2)) * attention.scaling
    if keep is not None:
        scores = scores.masked_fill(~keep[:, None, None, :], torch.finfo(scores.dtype).min)
    return torch.matmul(scores.softmax(-1), value)


def reconstruction_loss(attention: nn.Module, norm: nn.Module | None, compression: MemoryCompression,
                        queries: torch.Tensor, old_memory: torch.Tensor, old_keep: torch.Tensor | None,
                        compressed_keep: torch.Tensor | None, query_keep: torch.Tensor | None) -> torch.Tensor:
    """The paper's L_attn for one layer: queries (b, n, hidden) and the evicted states old_memory (b, k c, hidden),
    both already detached; the target attention carries no gradient, the other reaches f_c only. Padding queries
    (query_keep False) are left out of the mean."""
    with torch.no_grad():
        target = content_attention(attention, norm, queries, old_memory, old_keep)
    compressed = compression(old_memory)
    error = (content_attention(attention, norm, queries, compressed, compressed_keep) - target).pow(2)
    if query_keep is None:
        return error.mean()
    weights = query_keep[:, None, :, None].to(error.dtype).expand_as(error)
    return (error * weights).sum() / weights.sum().clamp(min=1)
