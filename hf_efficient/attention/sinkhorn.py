"""Sparse Sinkhorn attention: Tay, Bahri, Yang, Metzler & Juan, "Sparse Sinkhorn Attention" (ICML 2020, arXiv
2002.11296).

The sequence is cut into nb blocks of b tokens. A sorting network scores every (block i, block j) pair from block
summaries, R = F2 relu(F1 s_i); Sinkhorn balancing in log space (rows, then columns, `sinkhorn_iterations` times, on
(R + Gumbel noise) / tau in training) makes it a soft permutation S, and each query block attends to its own block and
to its sorted partner, the block sum_j S_ij [K_j, V_j]:

    out_i = softmax(Q_i [K_i ; (S K)_i]^T / sqrt(d)) [V_i ; (S V)_i]

Training uses the soft S (every block a mixture of blocks, differentiable); eval uses a hard choice: the greedy
maximum-weight permutation of the balanced scores (bidirectional; take the largest remaining entry, retire its row
and column) or, causal, each block's best allowed block (a lower-triangular permutation can only be the identity).
SortCut (encoders): every query attends to the first k blocks of the sorted sequence only, sum_j S_rj [K_j, V_j] for
r < k, O(N k b).

Causal: block i is paired only with an earlier block j < i (its own block is attended with the causal mask), its
summary is its first key (what every query of the block may see), and its scores are normalised over its row only
(a softmax over the earlier blocks, with the same Gumbel noise and temperature), so row i depends on blocks <= i
only: no future leakage. Block 0 has no partner. A lower-triangular matrix cannot be balanced: the only doubly
stochastic one is the identity, and a causal column step (each row's column normaliser summing the rows up to it)
gives every column's first allowed row all its mass, which pairs each block with the one before it whatever the
input; the row normalisation is what the authors' code does for causal sorting too (its "softmax" sort).

Time O(N b d) for the block attention, O(nb d M) for the sorting network (M = max_num_blocks), O(nb^2 I) for the
balancing, O(N nb d) for the soft mixture in training (the paper's cost too) and O(nb^3) for eval's greedy matching
(nb sequential steps); memory O(N b + nb^2).

Deviations from the paper, all deliberate: the sorting network reads each head's keys, the mean of a block's (the
authors' code in google-research/long-range-arena sums each head's keys; the paper sums the layer input), so heads
sort independently, cached decoding needs only cached keys, and the scale does not grow with b; its scores are the
MLP's linear output (no final ReLU, which would zero half the logits); padding keys are zeroed before blocks are mixed
and padding blocks take no part in the balancing (so padded batches give the unpadded outputs); eval's hard sort is
greedy, not the optimal (Hungarian) assignment; causal sorting normalises rows only, as explained above.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.attention import repeat_kv

MASKED = -1e9  # a finite logit for excluded pairs: the balancing stays free of inf - inf and of NaN gradients


class SortNet(nn.Module):
    """The sorting network: a two-layer ReLU MLP from a block summary (head_dim) to a score for each of
    `max_blocks` target blocks; an input of nb blocks reads the first nb scores. Shared by the heads of a layer.
    Initialised like the model's other linear layers (weights N(0, initializer_range^2), zero biases), in a fresh
    model and in conversion alike (models/sinkhorn: `sort_network_for_conversion`)."""

    def __init__(self, head_dim: int, hidden_size: int, max_blocks: int, bias: bool = True):
        super().__init__()
        self.first = nn.Linear(head_dim, hidden_size, bias=bias)
        self.second = nn.Linear(hidden_size, max_blocks, bias=bias)

    def forward(self, summaries: torch.Tensor) -> torch.Tensor:
        """(batch, kv_heads, nb, head_dim) -> (batch, kv_heads, nb, nb) scores in float32."""
        blocks, limit = summaries.shape[-2], self.second.out_features
        if blocks > limit:
            raise ValueError(f"This input has {blocks} blocks but the sorting network scores at most max_num_blocks="
                             f"{limit}; pass a shorter input, or build the model with a larger max_num_blocks (or "
                             "block_size).")
        scores = self.second(F.relu(self.first(summaries)))
        return scores[..., :blocks].float()


def padded_keep(keep: torch.Tensor | None, batch: int, length: int, block_size: int,
                device: torch.device) -> tuple[torch.Tensor | None, int]:
    """(batch, nb * b) bool keep-mask of the blocked layout (the tail beyond `length` is padding), or None when every
    position is real; and nb."""
    blocks = math.ceil(length / block_size)
    tail = blocks * block_size - length
    if keep is None and tail == 0:
        return None, blocks
    if keep is None:
        keep = torch.ones(batch, length, dtype=torch.bool, device=device)
    return F.pad(keep, (0, tail), value=False), blocks


def to_blocks(states: torch.Tensor, blocks: int, block_size: int) -> torch.Tensor:
    # (batch, h, N, d) -> (batch, h, nb, b, d), zero-padded at the end
    batch, heads, length, dim = states.shape
    states = F.pad(states, (0, 0, 0, blocks * block_size - length))
    return states.view(batch, heads, blocks, block_size, dim)


def block_summaries(key_blocks: torch.Tensor, keep_blocks: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """(batch, kv_heads, nb, b, d) -> (batch, kv_heads, nb, d): the mean of a block's real keys (bidirectional) or
    its first key (causal: the only key every query of the block may see)."""
    if causal:
        return key_blocks[:, :, :, 0]
    if keep_blocks is None:
        return key_blocks.mean(3)
    weights = keep_blocks[:, None, :, :, None].to(key_blocks.dtype)  # (batch, 1, nb, b, 1)
    return (key_blocks * weights).sum(3) / weights.sum(3).clamp_min(1.0)


def allowed_pairs(keep_blocks: torch.Tensor | None, batch: int, blocks: int, causal: bool,
                  device: torch.device) -> torch.Tensor:
    """(batch, 1, nb, nb) bool: block i may take block j as its partner (both hold a real token; j < i if causal)."""
    real = torch.ones(batch, blocks, dtype=torch.bool, device=device) if keep_blocks is None else keep_blocks.any(-1)
    allowed = real[:, :, None] & real[:, None, :]
    if causal:
        allowed = allowed & torch.ones(blocks, blocks, dtype=torch.bool, device=device).tril(-1)
    return allowed[:, None]


def sinkhorn(log_alpha: torch.Tensor, allowed: torch.Tensor, iterations: int, causal: bool) -> torch.Tensor:
    """Log-space Sinkhorn balancing of (..., nb, nb) float32 scores over the allowed pairs: each iteration subtracts
    the rows' log-sum-exp, then the columns'. Causal: the rows' log-sum-exp once (a log-softmax over the earlier
    blocks; see the module docstring), so row i never depends on another row. Excluded pairs stay at MASKED."""
    log_alpha = log_alpha.masked_fill(~allowed, MASKED)
    for _ in range(1 if causal else iterations):
        log_alpha = (log_alpha - log_alpha.logsumexp(-1, keepdim=True)).masked_fill(~allowed, MASKED)
        if not causal:
            log_alpha = (log_alpha - log_alpha.logsumexp(-2, keepdim=True)).masked_fill(~allowed, MASKED)
    return log_alpha


def greedy_permutation(log_alpha: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(..., nb, nb) -> (..., nb) long: a permutation, built by repeatedly taking the largest entry among the rows and
    columns not yet used (allowed pairs first: an excluded pair sits at MASKED, below every allowed one)."""
    blocks = log_alpha.shape[-1]
    scores = log_alpha.detach().masked_fill(~allowed, MASKED)
    flat = scores.flatten(-2)
    choice = torch.zeros(log_alpha.shape[:-1], dtype=torch.long, device=log_alpha.device)
    for _ in range(blocks):
        best = flat.argmax(-1, keepdim=True)  # (..., 1)
        row, column = best // blocks, best % blocks
        choice.scatter_(-1, row, column)
        scores.scatter_(-2, row[..., None].expand(*row.shape[:-1], 1, blocks), -math.inf)  # retire the row
        scores.scatter_(-1, column[..., None, :].expand(*column.shape[:-1], blocks, 1), -math.inf)  # and column
    return choice


@dataclass
class BlockSort:
    """The sort of one layer's blocks, per kv head: a soft matrix (batch, kv_heads, nb, nb) in training, or a hard
    choice (batch, kv_heads, nb) with `valid` (False where block i has no partner)."""

    soft: torch.Tensor | None = None
    choice: torch.Tensor | None = None
    valid: torch.Tensor | None = None

    def matrix(self) -> torch.Tensor:
        """(batch, kv_heads, nb, nb): S itself, or the one-hot rows of the hard choice (zero where not valid)."""
        if self.soft is not None:
            return self.soft
        blocks = self.choice.shape[-1]
        return F.one_hot(self.choice, blocks).float() * self.valid[..., None]

    def apply(self, blocks: torch.Tensor) -> torch.Tensor:
        """(batch, kv_heads, nb, b, d) -> the sorted blocks: sum_j S_ij blocks_j, or blocks_choice(i)."""
        if self.soft is not None:
            return torch.einsum("bhij,bhjtd->bhitd", self.soft.to(blocks.dtype), blocks)
        index = self.choice[..., None, None].expand(*self.choice.shape, *blocks.shape[-2:])
        return blocks.gather(2, index)

    def apply_keep(self, keep_blocks: torch.Tensor | None, batch: int, heads: int, blocks: int,
                   block_size: int, device: torch.device) -> torch.Tensor:
        """(batch, kv_heads, nb, b) bool: position t of sorted block i holds a real key (some block with weight > 0
        has a real token at t)."""
        keep = (torch.ones(batch, blocks, block_size, dtype=torch.bool, device=device) if keep_blocks is None
                else keep_blocks)
        if self.soft is not None:
            return torch.einsum("bhij,bjt->bhit", self.soft, keep.float()) > 0
        index = self.choice[..., None].expand(*self.choice.shape, block_size)
        return keep[:, None].expand(batch, heads, blocks, block_size).gather(2, index) & self.valid[..., None]


def sort_blocks(sort_net: SortNet, key_blocks: torch.Tensor, keep_blocks: torch.Tensor | None, causal: bool,
                iterations: int, temperature: float, noise: bool, hard: bool) -> BlockSort:
    """Score the blocks (summaries of `key_blocks` (batch, kv_heads, nb, b, d)), balance in float32 and return the
    soft sort (training) or the hard one (eval). Gumbel noise is drawn from torch's default generator, like dropout
    (never reseeded; activation checkpointing replays it)."""
    batch, heads, blocks = key_blocks.shape[:3]
    allowed = allowed_pairs(keep_blocks, batch, blocks, causal, key_blocks.device)
    scores = sort_net(block_summaries(key_blocks, keep_blocks, causal))
    if noise:
        uniform = torch.rand(scores.shape, device=scores.device).clamp(1e-20, 1.0)
        exponential = (-torch.log(uniform)).clamp_min(1e-20)
        scores = scores - torch.log(exponential)  # + Gumbel(0, 1) noise: -log(-log u)
    log_alpha = sinkhorn(scores / temperature, allowed, iterations, causal)
    if not hard:
        return BlockSort(soft=log_alpha.exp() * allowed)
    if causal:
        choice = log_alpha.argmax(-1)
        valid = allowed.any(-1).expand(batch, heads, blocks)
    else:
        choice = greedy_permutation(log_alpha, allowed)
        valid = allowed.expand(batch, heads, blocks, blocks).gather(-1, choice[..., None])[..., 0]
    return BlockSort(choice=choice, valid=valid)


def sinkhorn_reference(attention: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       keep: torch.Tensor | None, sort: BlockSort, block_size: int, causal: bool,
                       sortcut: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense O(N^2) attention (eager, tests and weights): the sort as a token-level (nb b x nb b) matrix
    P = S (x) I_b applied to the whole key and value sequences, then masked softmax over [local keys ; P K].
    q (batch, heads, N, d), k/v (batch, kv_heads, N, d). Returns (batch, N, heads, d) and the weights
    (batch, heads, N, N) each original value gets (W_local + W_sorted P), which reproduce the output exactly."""
    batch, heads, length, _ = query.shape
    kv_heads, groups = key.shape[1], heads // key.shape[1]
    device = query.device
    keep_p, blocks = padded_keep(keep, batch, length, block_size, device)
    padded = blocks * block_size
    if keep_p is None:
        keep_p = torch.ones(batch, padded, dtype=torch.bool, device=device)
    pad = (0, 0, 0, padded - length)
    query, key, value = F.pad(query, pad), F.pad(key, pad), F.pad(value, pad)
    real = keep_p[:, None, :, None].to(key.dtype)
    key, value = key * real, value * real  # padding keys take no part in a mixture
    eye = torch.eye(block_size, device=device)
    tokens = sort.matrix()[:, :, :, None, :, None] * eye[:, None, :]  # (batch, kv_heads, nb, b, nb, b)
    tokens = tokens.reshape(batch, kv_heads, padded, padded).to(key.dtype)  # P
    sorted_key, sorted_value = tokens @ key, tokens @ value
    sorted_keep = (tokens.float() @ keep_p[:, None, :, None].float())[..., 0] > 0  # (batch, kv_heads, nb b)

    positions = torch.arange(padded, device=device)
    same_block = positions[:, None] // block_size == positions[None, :] // block_size
    if sortcut is None:
        local = same_block[None, None] & keep_p[:, None, None, :]
        if causal:
            local = local & (positions[None, :] <= positions[:, None])
        local = local | torch.eye(padded, dtype=torch.bool, device=device)
        partner = same_block[None, None] & sorted_keep[:, :, None, :]
    else:
        local = torch.zeros(1, 1, padded, padded, dtype=torch.bool, device=device)
        cut = positions[None, None, None, :] < min(sortcut, blocks) * block_size
        partner = cut & sorted_keep[:, :, None, :]
    mask = torch.cat([local.expand(batch, kv_heads, padded, padded), partner.expand(batch, kv_heads, padded, padded)],
                     -1)
    mask = mask.repeat_interleave(groups, 1)
    keys = repeat_kv(torch.cat([key, sorted_key], 2), groups)
    values = repeat_kv(torch.cat([value, sorted_value], 2), groups)
    scores = (query @ keys.transpose(-1, -2) * attention.scaling).masked_fill(~mask, -math.inf)
    weights = scores.softmax(-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=attention.dropout, training=attention.training)
    attended = (weights @ values)[:, :, :length].transpose(1, 2)
    local_weights, sorted_weights = weights.split(padded, -1)
    folded = local_weights + sorted_weights @ repeat_kv(tokens, groups)
    folded = (folded * keep_p[:, None, None, :])[:, :, :length, :length]
    return attended.contiguous(), folded


def sinkhorn_blocked(attention: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     keep: torch.Tensor | None, sort: BlockSort, block_size: int, causal: bool,
                     sortcut: int | None) -> torch.Tensor:
    """The memory-efficient path (CPU and GPU): gather (eval) or mix (training) the sorted key/value blocks, then one
    batched softmax call through transformers' attention interface (sdpa) over [own block ; sorted block] per query
    block (or over the first k sorted blocks for SortCut). Returns (batch, N, heads, d)."""
    batch, heads, length, dim = query.shape
    kv_heads, groups = key.shape[1], heads // key.shape[1]
    device = query.device
    keep_p, blocks = padded_keep(keep, batch, length, block_size, device)
    keep_blocks = None if keep_p is None else keep_p.view(batch, blocks, block_size)
    key_blocks, value_blocks = to_blocks(key, blocks, block_size), to_blocks(value, blocks, block_size)
    if keep_blocks is not None:
        real = keep_blocks[:, None, :, :, None].to(key.dtype)
        key_blocks, value_blocks = key_blocks * real, value_blocks * real
    sorted_keep = sort.apply_keep(keep_blocks, batch, kv_heads, blocks, block_size, device)
    if keep_blocks is None:  # without padding the sorted blocks' keys are real alike in every head: one mask
        sorted_keep, groups = sorted_keep[:, :1], 1
    if sortcut is not None:
        kept = min(sortcut, blocks)
        sorted_key = sort.apply(key_blocks)[:, :, :kept].flatten(2, 3)  # (batch, kv_heads, k b, d)
        sorted_value = sort.apply(value_blocks)[:, :, :kept].flatten(2, 3)
        mask = None  # without padding every sorted key of the first k blocks is real
        if keep_blocks is not None:
            mask = sorted_keep[:, :, :kept].flatten(2, 3)[:, :, None, :].repeat_interleave(groups, 1)
        attended, _ = attention.attend(query, sorted_key, sorted_value, mask)
        return attended

    # (batch, h, nb, b, d) -> (batch * nb, h, b, d); keys (batch * nb, kv_heads, 2b, d)
    def per_block(states: torch.Tensor) -> torch.Tensor:
        return states.transpose(1, 2).reshape(batch * blocks, states.shape[1], -1, dim)

    query_blocks = per_block(to_blocks(query, blocks, block_size))
    keys = per_block(torch.cat([key_blocks, sort.apply(key_blocks)], 3))
    values = per_block(torch.cat([value_blocks, sort.apply(value_blocks)], 3))
    mask = None
    if causal or keep_blocks is not None:
        local = torch.ones(block_size, block_size, dtype=torch.bool, device=device)
        if causal:
            local = local.tril()
        local = local[None, None, None]  # (1, 1, 1, b, b)
        if keep_blocks is not None:
            own = torch.eye(block_size, dtype=torch.bool, device=device)
            local = (local & keep_blocks[:, None, :, None, :]) | own
        partner = sorted_keep[:, :, :, None, :]  # (batch, kv_heads or 1, nb, 1, b)
        local = local.expand(batch, partner.shape[1], blocks, block_size, block_size)
        mask = torch.cat([local, partner.expand_as(local)], -1).repeat_interleave(groups, 1)
        mask = mask.transpose(1, 2).reshape(batch * blocks, -1, block_size, 2 * block_size)
    attended, _ = attention.attend(query_blocks, keys, values, mask)  # (batch * nb, b, heads, d)
    return attended.reshape(batch, blocks * block_size, heads, dim)[:, :length]
