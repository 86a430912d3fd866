"""Local and memory-compressed attention: the two layer kinds of T-DMCA.

Liu, Saleh, Pot, Goodrich, Sepassi, Kaiser & Shazeer, "Generating Wikipedia by Summarizing Long Sequences",
arXiv 1801.10198 (section 4.2.3). Layers alternate between the two kinds (the paper: L, M, L, M, L).

With block length b, compression factor c, and slots K~ = Conv_k(K), V~ = Conv_v(V) (kernel = stride = c: slot s
summarises positions [s c, s c + c); the sequence is padded with zeros to a multiple of c inside), query i keeps

    local:       key j       when  i // b == j // b                      (and j <= i when causal)
    compressed:  slot s      always (bidirectional), or when s < i // c  (causal: the groups complete before i's own)
                 raw key j   when  j // c == i // c and j <= i           (causal only: i's own group so far)

out_i = softmax over i's kept keys of q_i k^T / sqrt(d), times their values. Causal use leaks nothing: a slot is seen
only by queries after its last input (s c + c - 1 < (i // c) c <= i). The paper leaves the current, incomplete group
out of reach in a compressed layer (its local layers carry it); we let each query see its own group's earlier raw
keys and itself instead, so no row is empty (the first group has no complete slot) and c = 1 is exact causal
attention. Padding: padded keys and values are zeroed before the convolution, slots made only of padding are masked,
a padding query keeps its own key (never an empty row). Slot boundaries are positions, so right padding leaves the
real tokens' slots unchanged (the model rotates a left-padded row to the right-padded layout first,
`core.masks.right_alignment`).

Three paths compute the same function:

* `memory_compressed_reference`: one dense mask over [the N raw keys | the M = ceil(N/c) slots] (slots computed by an
  explicit einsum, not the convolution), through `EfficientAttention.attend`; returns the weights (batch, heads, N,
  N + M) for both layer kinds. Tests and `output_attentions` only.
* `local_blocked`: queries and keys cut into blocks of b, one attend per block: time O(N b d), memory O(N b).
* `compressed_blocked`: the convolutions (O(N d^2) time), then attention over the M slots: bidirectional, one attend
  of the N queries over the M slots; causal, the queries in blocks of b' (b rounded up to a multiple of c) against
  [all M slots | the block's own raw keys]. Time O(N^2/c d) (the paper's complexity), memory O(N^2/c) scores (O(N)
  with sdpa's fused kernels in the bidirectional case) plus N/b' copies of the slots. The causal staircase
  computes and masks the upper half of the slot scores.

Both blocked paths go through transformers' attention interface (eager or sdpa): they are also the GPU path. A block-
sparse kernel (FlexAttention) would skip no block of the local layers (already dense blocks) and at most the causal
upper half of the slot scores, so it is not worth a third implementation here.
"""

import math

import torch
import torch.nn.functional as F

from ..core.attention import EfficientAttention


def compress(states: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, keep: torch.Tensor | None,
             factor: int) -> torch.Tensor:
    """Slots of a strided convolution. states (batch, kv_heads, L, d) -> (batch, kv_heads, ceil(L / c), d).

    `weight` (kv_heads d, kv_heads d, c) mixes every channel of the c positions of a group (channels head-major);
    padded positions (keep False) are zeroed first, the tail is zero-padded to a multiple of c. `weight` None is the
    identity (c = 1, no convolution).
    """
    if weight is None:
        return states
    batch, kv_heads, length, dim = states.shape
    if keep is not None:
        states = states * keep[:, None, :, None].to(states.dtype)
    groups = math.ceil(length / factor)
    # (batch, kv_heads, L, d) -> (batch, L, kv_heads * d) -> (batch, kv_heads * d, L): channels for conv1d
    channels = states.transpose(1, 2).reshape(batch, length, kv_heads * dim).transpose(1, 2)
    channels = F.pad(channels, (0, groups * factor - length))
    slots = F.conv1d(channels, weight, bias, stride=factor)  # (batch, kv_heads * d, groups)
    return slots.view(batch, kv_heads, dim, groups).transpose(2, 3)  # (batch, kv_heads, groups, d)


def compress_reference(states: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                       keep: torch.Tensor | None, factor: int) -> torch.Tensor:
    """`compress` written out: slot[s] = bias + sum over taps t and input channels of weight[:, :, t] x[s c + t]."""
    if weight is None:
        return states
    batch, kv_heads, length, dim = states.shape
    real = torch.ones(batch, length, dtype=torch.bool, device=states.device) if keep is None else keep
    states = torch.where(real[:, None, :, None], states, torch.zeros_like(states))
    groups = math.ceil(length / factor)
    windows = F.pad(states, (0, 0, 0, groups * factor - length)).view(batch, kv_heads, groups, factor, dim)
    taps = weight.view(kv_heads, dim, kv_heads, dim, factor)  # (out head, out d, in head, in d, tap)
    slots = torch.einsum("bhste,oahet->bosa", windows, taps)  # (batch, out head, slot, out d)
    if bias is not None:
        slots = slots + bias.view(kv_heads, dim)[None, :, None, :]
    return slots


def slot_keep(keep: torch.Tensor | None, length: int, factor: int) -> torch.Tensor | None:
    """(batch, ceil(L / c)) bool: the slot holds at least one real token (None: every slot does)."""
    if keep is None:
        return None
    groups = math.ceil(length / factor)
    return F.pad(keep, (0, groups * factor - length)).view(keep.shape[0], groups, factor).any(-1)


def memory_compressed_reference(
    attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    slot_keys: torch.Tensor, slot_values: torch.Tensor, keep: torch.Tensor | None,
    kind: str, block: int, factor: int, causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense masked reference over [N raw keys | M slots]. q (batch, heads, N, d), k/v (batch, kv_heads, N, d),
    slots (batch, kv_heads, M, d) (any values for local layers: they are masked). Returns the output (batch, N,
    heads, d) and the weights (batch, heads, N, N + M)."""
    batch, _, length, _ = query.shape
    count = slot_keys.shape[2]
    device = query.device
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    s = torch.arange(count, device=device)[None, :]
    real = torch.ones(batch, length, dtype=torch.bool, device=device) if keep is None else keep
    slot_real = torch.zeros(batch, count * factor, dtype=torch.bool, device=device)
    slot_real[:, :length] = real
    slot_real = slot_real.view(batch, count, factor).any(-1)  # a slot with any real token
    if kind == "local":
        raw = i // block == j // block
        slots = torch.zeros(length, count, dtype=torch.bool, device=device)
    elif causal:
        raw = j // factor == i // factor
        slots = s < i // factor
    else:
        raw = torch.zeros(length, length, dtype=torch.bool, device=device)
        slots = torch.ones(length, count, dtype=torch.bool, device=device)
    if causal:
        raw = raw & (j <= i)
    mask = torch.cat([raw[None] & real[:, None, :], slots[None] & slot_real[:, None, :]], dim=-1)
    own = torch.cat([i == j, torch.zeros(length, count, dtype=torch.bool, device=device)], dim=-1)
    mask = mask | (own & ~mask.any(-1, keepdim=True))  # only a padding query can have no key: give it its own
    keys, values = torch.cat([key, slot_keys], dim=2), torch.cat([value, slot_values], dim=2)
    attended, weights = attention.attend(query, keys, values, mask[:, None], need_weights=True)
    return attended, weights


def split_blocks(states: torch.Tensor, block: int, blocks: int) -> torch.Tensor:
    """(batch, h, N, d) -> zero-pad to blocks * block -> (batch * blocks, h, block, d)."""
    batch, heads, length, dim = states.shape
    states = F.pad(states, (0, 0, 0, blocks * block - length))
    return states.view(batch, heads, blocks, block, dim).transpose(1, 2).reshape(batch * blocks, heads, block, dim)


def real_positions(keep: torch.Tensor | None, length: int, padded: int, batch: int, device) -> torch.Tensor:
    """(batch, padded) bool: a real token (inside the input and not padding)."""
    real = torch.arange(padded, device=device)[None, :] < length
    if keep is not None:
        real = real & F.pad(keep, (0, padded - length))
    return real.expand(batch, padded)


def local_blocked(attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  keep: torch.Tensor | None, block: int, causal: bool) -> torch.Tensor:
    """Local attention in blocks of b. q (batch, heads, N, d), k/v (batch, kv_heads, N, d) -> (batch, N, heads, d)."""
    batch, heads, length, dim = query.shape
    block = min(block, length)  # a block longer than the input is the input
    blocks = math.ceil(length / block)
    padded = blocks * block
    query_blocks, key_blocks, value_blocks = (split_blocks(x, block, blocks) for x in (query, key, value))
    if keep is None and (causal or padded == length):  # nothing to mask beyond the block structure
        attended, _ = attention.attend(query_blocks, key_blocks, value_blocks, None, is_causal=causal)
    else:
        device = query.device
        key_real = real_positions(keep, length, padded, batch, device).reshape(batch * blocks, 1, 1, block)
        own = torch.eye(block, dtype=torch.bool, device=device)
        structure = own.cumsum(0).bool() if causal else torch.ones_like(own)  # lower triangle when causal
        mask = (structure & key_real) | own  # (batch * blocks, 1, b, b)
        attended, _ = attention.attend(query_blocks, key_blocks, value_blocks, mask)
    # (batch * blocks, b, heads, d) -> (batch, blocks * b, heads, d)
    return attended.reshape(batch, padded, heads, dim)[:, :length]


def compressed_blocked(
    attention: EfficientAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    slot_keys: torch.Tensor, slot_values: torch.Tensor, keep: torch.Tensor | None,
    factor: int, causal: bool, query_block: int,
) -> torch.Tensor:
    """Attention over the compressed memory. q (batch, heads, N, d), k/v (batch, kv_heads, N, d), slots (batch,
    kv_heads, M, d) with M = ceil(N / c). Returns (batch, N, heads, d)."""
    batch, heads, length, dim = query.shape
    kv_heads, count = slot_keys.shape[1], slot_keys.shape[2]
    slot_real = slot_keep(keep, length, factor)
    if not causal:
        mask = None
        if slot_real is not None:  # a row without any real slot (all padding) keeps them all: never an empty row
            mask = (slot_real | ~slot_real.any(-1, keepdim=True))[:, None, None, :]
        attended, _ = attention.attend(query, slot_keys, slot_values, mask)
        return attended

    block = factor * math.ceil(min(query_block, length) / factor)  # whole groups per query block
    blocks = math.ceil(length / block)
    padded = blocks * block
    device = query.device
    query_blocks, key_blocks, value_blocks = (split_blocks(x, block, blocks) for x in (query, key, value))

    def with_slots(raw: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        # (batch * blocks, kv, b', d), (batch, kv, M, d) -> (batch * blocks, kv, b' + M, d): [own raw keys | slots]
        slots = slots[:, None].expand(batch, blocks, kv_heads, count, dim).reshape(batch * blocks, kv_heads, count, dim)
        return torch.cat([raw, slots], dim=2)

    within = torch.arange(block, device=device)
    own = within[:, None] == within[None, :]
    same_group = (within[:, None] // factor == within[None, :] // factor) & (within[None, :] <= within[:, None])
    key_real = real_positions(keep, length, padded, batch, device).reshape(batch * blocks, 1, 1, block)
    raw_mask = (same_group & key_real) | own  # (batch * blocks, 1, b', b')
    query_group = torch.arange(padded, device=device).view(blocks, block) // factor
    slot_mask = torch.arange(count, device=device) < query_group[..., None]  # (blocks, b', M): complete groups only
    slot_mask = slot_mask[None].expand(batch, blocks, block, count)
    if slot_real is not None:
        slot_mask = slot_mask & slot_real[:, None, None, :]
    mask = torch.cat([raw_mask, slot_mask.reshape(batch * blocks, 1, block, count)], dim=-1)
    attended, _ = attention.attend(query_blocks, with_slots(key_blocks, slot_keys),
                                   with_slots(value_blocks, slot_values), mask)
    # (batch * blocks, b', heads, d) -> (batch, N, heads, d)
    return attended.reshape(batch, padded, heads, dim)[:, :length]


def decode_keep(query_positions: torch.Tensor, key_positions: torch.Tensor, real: torch.Tensor | None,
                slot_real: torch.Tensor | None, slot_count: int, kind: str, block: int, factor: int) -> torch.Tensor:
    """Keep-mask (batch or 1, 1, n, W [+ S]) of causal decoding: the n new queries at `query_positions` against the
    W cached raw keys at `key_positions` (real: (batch, W) or None) and, in a compressed layer, the S complete slots
    (slot_real: (batch, S) or None). The same sets as the reference, written for the window the cache keeps."""
    i, j = query_positions[:, None], key_positions[None, :]
    span = block if kind == "local" else factor
    raw = ((i // span == j // span) & (j <= i))[None]  # (1, n, W)
    if real is not None:
        raw = raw & real[:, None, :]
    raw = raw | (i == j)
    if kind == "local":
        return raw[:, None]
    slots = (torch.arange(slot_count, device=i.device)[None, :] < i // factor)[None]  # (1, n, S)
    if slot_real is not None:
        slots = slots & slot_real[:, None, :]
    batch = max(raw.shape[0], slots.shape[0])
    return torch.cat([raw.expand(batch, -1, -1), slots.expand(batch, -1, -1)], dim=-1)[:, None]
