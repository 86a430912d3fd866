"""Synthetic attention (Synthesizer): attention weights made without token-token dot products.

Tay, Bahri, Metzler, Juan, Zhao & Zheng, "Synthesizer: Rethinking Self-Attention in Transformer Models",
arXiv 2005.00743.

With n the fixed maximum length, an input of N <= n tokens, and per head h (d_h its synthesizer width):

    dense              B_i = W2 relu(W1 x_i + b1) + b2 in R^n (the paper's F: d -> l);  S[i, j] = B_i[j]
    random             S = R[:N, :N],  R in R^{n x n}, trainable or fixed
    factorized_dense   A_i = W_A relu(W1 x_i + b1) + b_A in R^a,  B_i = W_B relu(W1 x_i + b1) + b_B in R^b,  a b = n;
                       C_i = H_A(A_i) * H_B(B_i): H_A tiles A_i b times, H_B repeats each entry of B_i a times, so
                       C_i[p a + r] = A_i[r] B_i[p] (every pair of entries once: the paper's composition "to avoid
                       similar values within the same block");  S[i, j] = C_i[j]
    factorized_random  S = (R1 R2^T)[:N, :N],  R1, R2 in R^{n x k}
    vanilla            S = Q K^T / sqrt(d)

    out = softmax(sum_c alpha_c S_c + mask) V,   V = x W_v; mask: padded keys and (causal) later keys at -inf.

Every component reads only the first N rows / columns of its n-sized tables, and a padded key is masked, so the
logits of real tokens never depend on padding (padding invariance by construction). Table positions count from each
row's first real token: a left-padded row (leading padding s) reads rows and columns i - s, j - s (`table_positions`),
so it gets the logits of the unpadded row too, in full passes and in cached decoding.

Two paths compute the same function:

* `synthetic_reference`: the paper's formulas literally (dense/factorized logits over all n columns, then the first N;
  R1 R2^T as the full n x n product), explicit mask, hand-written softmax; returns the (batch, heads, N, N) weights.
  For tests and `output_attentions`.
* `synthetic_attention` (the "blocked" backend): only the N needed columns are computed; logits of input-independent
  components (random, factorized_random) are made once per forward as (1, heads, N, N) and broadcast over the batch.
  A mixture with the dot product goes through transformers' attention interface (eager or sdpa) with the synthetic
  logits as an additive float mask: sdpa adds it to Q K^T * scale before its softmax, which is exactly the mixture
  (alpha_vanilla folded into the query), and on GPU its fused kernels never store the weights. Without the dot
  product there are no queries or keys to hand to that interface, so the softmax is computed here (`EfficientAttention
  .attend` takes a boolean keep-mask and is not used; a zero query with the logits as a mask would work but is a trick).

Complexity (per layer, h heads, N tokens, head dim d): the method is O(N^2) by nature; its point is removing the
token-token dot products, not memory. Time O(h N^2 d) for the values (+ O(N h d_h N) for dense logits, O(h N^2 k) for
factorized random); memory O(h N^2) for the logits (batch times that for dense kinds or with padding). Parameters:
dense h n d_h + d h d_h, random h n^2, factorized_dense h (a + b) d_h + d h d_h, factorized_random 2 h n k.
"""

import torch
from torch import nn

from ..core.attention import EfficientAttention, causal_keep, repeat_kv
from ..core.masks import key_keep

SYNTHETIC_COMPONENTS = ("dense", "random", "factorized_dense", "factorized_random")
DOT_PRODUCT = "vanilla"


def table_positions(first: int, stop: int, starts: torch.Tensor | None) -> slice | torch.Tensor:
    """The table indices of positions first..stop-1: a slice, or with `starts` (batch,) (each row's first real token)
    (batch, stop - first) long indices counted from it (clamped at 0 on the leading padding, which is masked)."""
    if starts is None:
        return slice(first, stop)
    return (torch.arange(first, stop, device=starts.device)[None, :] - starts[:, None]).clamp(min=0)


def take_columns(logits: torch.Tensor, columns: slice | torch.Tensor) -> torch.Tensor:
    """(batch, heads, L, m) -> (batch, heads, L, T): the columns of a slice, or per row of a (batch, T) index."""
    if isinstance(columns, slice):
        return logits[..., columns]
    return logits.gather(-1, columns[:, None, None, :].expand(*logits.shape[:-1], columns.shape[-1]))


def take_entries(table: torch.Tensor, rows: slice | torch.Tensor, columns: slice | torch.Tensor) -> torch.Tensor:
    """(heads, n, n) -> (1 or batch, heads, L, T): the rows x columns block (one per row of the batch for indices)."""
    if isinstance(rows, slice):
        return table[None, :, rows, columns]
    # (heads, batch, L, T) -> (batch, heads, L, T)
    return table[:, rows[:, :, None], columns[:, None, :]].transpose(0, 1)


class DenseSynthesizer(nn.Module):
    """F: d -> n per head. `hidden` (d -> heads * d_h) holds W1, b1 of every head; `weight` (heads, n, d_h) is W2,
    `bias` (heads, n) is b2."""

    def __init__(self, hidden_size: int, num_heads: int, width: int, max_length: int):
        super().__init__()
        self.num_heads, self.width = num_heads, width
        self.hidden = nn.Linear(hidden_size, num_heads * width)
        self.weight = nn.Parameter(torch.empty(num_heads, max_length, width))
        self.bias = nn.Parameter(torch.empty(num_heads, max_length))

    def features(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # (batch, N, d) -> (batch, N, heads, d_h) -> (batch, heads, N, d_h)
        features = torch.relu(self.hidden(hidden_states))
        return features.view(*hidden_states.shape[:2], self.num_heads, self.width).transpose(1, 2)

    def logits(self, hidden_states: torch.Tensor, rows, columns) -> torch.Tensor:
        """The entries `columns` (see `table_positions`) of B_i for the L new tokens (B_i depends on x_i alone, not on
        its row): (batch, heads, L, T)."""
        dtype, features = hidden_states.dtype, self.features(hidden_states)
        if isinstance(columns, slice):
            weight, bias = self.weight[:, columns].to(dtype), self.bias[:, None, columns].to(dtype)
            return torch.einsum("bhid,hjd->bhij", features, weight) + bias
        weight, bias = self.weight[:, columns].to(dtype), self.bias[:, columns].to(dtype)  # (heads, batch, T, ...)
        return torch.einsum("bhid,hbjd->bhij", features, weight) + bias.transpose(0, 1)[:, :, None, :]

    def reference_logits(self, hidden_states: torch.Tensor, rows, columns) -> torch.Tensor:
        """B_i over all n columns, then `columns` (the paper's F, then the keys there are)."""
        return take_columns(self.logits(hidden_states, rows, slice(None)), columns)


class FactorizedDenseSynthesizer(nn.Module):
    """F_A: d -> a and F_B: d -> b per head (a b = n), sharing the first layer: `hidden` (W1, b1), `weight_a`
    (heads, a, d_h) / `bias_a` (heads, a), `weight_b` (heads, b, d_h) / `bias_b` (heads, b)."""

    def __init__(self, hidden_size: int, num_heads: int, width: int, size_a: int, size_b: int):
        super().__init__()
        self.num_heads, self.width, self.size_a = num_heads, width, size_a
        self.hidden = nn.Linear(hidden_size, num_heads * width)
        self.weight_a = nn.Parameter(torch.empty(num_heads, size_a, width))
        self.bias_a = nn.Parameter(torch.empty(num_heads, size_a))
        self.weight_b = nn.Parameter(torch.empty(num_heads, size_b, width))
        self.bias_b = nn.Parameter(torch.empty(num_heads, size_b))

    def factors(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A (batch, heads, N, a) and B (batch, heads, N, b)."""
        # (batch, N, d) -> (batch, heads, N, d_h)
        features = torch.relu(self.hidden(hidden_states))
        features = features.view(*hidden_states.shape[:2], self.num_heads, self.width).transpose(1, 2)
        dtype = hidden_states.dtype
        factor_a = torch.einsum("bhid,had->bhia", features, self.weight_a.to(dtype)) + self.bias_a[:, None].to(dtype)
        factor_b = torch.einsum("bhid,hed->bhie", features, self.weight_b.to(dtype)) + self.bias_b[:, None].to(dtype)
        return factor_a, factor_b

    def logits(self, hidden_states: torch.Tensor, rows, columns) -> torch.Tensor:
        """Only the entries `columns` of C_i: column j = p a + r is A_i[r] B_i[p]. (batch, heads, L, T)."""
        factor_a, factor_b = self.factors(hidden_states)
        if isinstance(columns, slice):
            columns = torch.arange(self.size_a * factor_b.shape[-1], device=hidden_states.device)[columns][None]
        return take_columns(factor_a, columns % self.size_a) * take_columns(factor_b, columns // self.size_a)

    def reference_logits(self, hidden_states: torch.Tensor, rows, columns) -> torch.Tensor:
        """The paper's form: C = H_A(A) * H_B(B) over all n = a b columns, then `columns`."""
        factor_a, factor_b = self.factors(hidden_states)
        size_b = factor_b.shape[-1]
        tiled_a = factor_a.repeat(1, 1, 1, size_b)  # H_A: (A_1..A_a, A_1..A_a, ...), b times
        repeated_b = factor_b.repeat_interleave(self.size_a, dim=-1)  # H_B: (B_1 x a, B_2 x a, ...)
        return take_columns(tiled_a * repeated_b, columns)


class RandomSynthesizer(nn.Module):
    """R (heads, n, n): a parameter, or a persistent buffer when fixed (the same state-dict key `weight` either way).
    Drawn N(0, std^2) from a seeded generator; `layer_idx` names the layer whose seed drew it."""

    def __init__(self, trainable: bool, initial: torch.Tensor, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        if trainable:
            self.weight = nn.Parameter(initial)
        else:
            self.register_buffer("weight", initial, persistent=True)

    @staticmethod
    def draw(num_heads: int, max_length: int, std: float, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(num_heads, max_length, max_length, generator=generator, device="cpu") * std

    def logits(self, hidden_states: torch.Tensor, rows, columns) -> torch.Tensor:
        # (heads, n, n) -> (1 or batch, heads, L, T): the same for every row of the batch unless it is left-padded
        return take_entries(self.weight, rows, columns).to(hidden_states.dtype)

    def reference_logits(self, hidden_states: torch.Tensor, rows, columns) -> torch.Tensor:
        return self.logits(hidden_states, rows, columns).expand(hidden_states.shape[0], -1, -1, -1)


class FactorizedRandomSynthesizer(nn.Module):
    """R = R1 R2^T of rank k: `left` R1 and `right` R2, each (heads, n, k); parameters, or persistent buffers when
    fixed. Drawn N(0, std^2 / sqrt(k)) so that the entries of R1 R2^T have variance std^2 like R's; `layer_idx` names
    the layer whose seed drew them."""

    def __init__(self, trainable: bool, left: torch.Tensor, right: torch.Tensor, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        if trainable:
            self.left, self.right = nn.Parameter(left), nn.Parameter(right)
        else:
            self.register_buffer("left", left, persistent=True)
            self.register_buffer("right", right, persistent=True)

    @staticmethod
    def draw(num_heads: int, max_length: int, rank: int, std: float,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        scale = std * rank**-0.25
        return tuple(torch.randn(num_heads, max_length, rank, generator=generator, device="cpu") * scale
                     for _ in range(2))

    def logits(self, hidden_states: torch.Tensor, rows, columns) -> torch.Tensor:
        # R1[rows] R2[columns]^T: (heads, [batch,] L, k) @ (heads, [batch,] k, T) -> (1 or batch, heads, L, T)
        dtype = hidden_states.dtype
        left, right = self.left[:, rows].to(dtype), self.right[:, columns].to(dtype)
        product = torch.matmul(left, right.transpose(-1, -2))
        return product[None] if isinstance(rows, slice) else product.transpose(0, 1)

    def reference_logits(self, hidden_states: torch.Tensor, rows, columns) -> torch.Tensor:
        """The full n x n product R1 R2^T, then the rows of the new positions and the key columns."""
        full = torch.matmul(self.left, self.right.transpose(1, 2)).to(hidden_states.dtype)
        return take_entries(full, rows, columns).expand(hidden_states.shape[0], -1, -1, -1)


def allowed_keys(keep: torch.Tensor | None, query_length: int, key_length: int, causal: bool,
                 device: torch.device) -> torch.Tensor | None:
    """(batch or 1, 1, L, T) bool for the last L of T positions: real keys (and, when causal, not later ones), each
    query's own key always kept (a padding query keeps one key, so no softmax row is empty). None: all allowed."""
    allowed = key_keep(keep, query_length, key_length)
    if causal:
        lower = causal_keep(query_length, key_length, device)[None, None]
        allowed = lower if allowed is None else allowed & lower
    return allowed


def synthetic_attention(
    attention: EfficientAttention,
    synthetic_logits: torch.Tensor,
    query: torch.Tensor | None,
    key: torch.Tensor | None,
    value: torch.Tensor,
    keep: torch.Tensor | None,
    causal: bool,
) -> torch.Tensor:
    """The blocked path for L new queries over T keys (T = L without a cache). `synthetic_logits` (1 or batch,
    heads, L, T) = sum_c alpha_c S_c over the synthetic components; `query` (batch, heads, L, d) already scaled by
    alpha_vanilla, `key`/`value` (batch, kv_heads, T, d), or query = key = None for a synthesizer without the dot
    product; keep (batch, T). Returns (batch, L, heads, d)."""
    query_length, key_length = synthetic_logits.shape[-2:]
    allowed = allowed_keys(keep, query_length, key_length, causal, value.device)
    if query is not None:
        # softmax(Q K^T * scale + mask) V with mask = the synthetic logits (-min where not allowed): the mixture
        mask = synthetic_logits.to(query.dtype)
        if allowed is not None:
            mask = torch.where(allowed, mask, torch.finfo(query.dtype).min)
        attended, _ = attention.interface()(attention, query, key, value, mask, dropout=attention.dropout,
                                            scaling=attention.scaling, is_causal=False)
        return attended
    # (1 or batch, heads, L, T): stays shared by the batch unless padding makes rows differ
    scores = synthetic_logits if allowed is None else torch.where(allowed, synthetic_logits, float("-inf"))
    weights = nn.functional.dropout(scores.softmax(-1), p=attention.dropout)
    # (1 or batch, heads, L, T) @ (batch, heads, T, d): input-independent weights broadcast over the batch
    attended = torch.matmul(weights.to(value.dtype), repeat_kv(value, attention.num_key_value_groups))
    return attended.transpose(1, 2)


def synthetic_reference(
    scores: torch.Tensor, value: torch.Tensor, keep: torch.Tensor | None, causal: bool, dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit mask and softmax over the mixed logits `scores` (batch, heads, L, T) of the last L of T positions;
    value (batch, heads, T, d) already repeated to every head; keep (batch, T). Returns the output (batch, L, heads,
    d) and the weights (batch, heads, L, T), with padding query rows zero."""
    batch, _, query_length, key_length = scores.shape
    real = torch.ones(batch, key_length, dtype=torch.bool, device=scores.device) if keep is None else keep
    query_position = torch.arange(query_length, device=scores.device)[:, None] + key_length - query_length
    key_position = torch.arange(key_length, device=scores.device)
    allowed = real[:, None, None, :] | (key_position == query_position)
    if causal:
        allowed = allowed & (key_position <= query_position)
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    weights = nn.functional.dropout(weights, p=dropout) * real[:, None, -query_length:, None]
    return torch.matmul(weights, value).transpose(1, 2), weights
