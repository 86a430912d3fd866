"""Multihead attention blocks over sets: MAB, SAB, ISAB and PMA.

Lee, Lee, Kim, Kosiorek, Choi, Teh, "Set Transformer: A Framework for Attention-based Permutation-Invariant Neural
Networks", ICML 2019, arXiv 1810.00825.

    MAB(X, Y) = LN(H + rFF(H)),  H = LN(X + Multihead(X, Y, Y));  SAB(X) = MAB(X, X);
    ISAB_m(X) = MAB(X, MAB(I, X)) with m learned inducing points I;  PMA_k(Z) = MAB(S, rFF(Z)) with k learned seeds S.

Cost for a set of n elements (per block, d = hidden size): SAB O(n^2 d) time and O(n^2) attention memory; ISAB
O(n m d) time and O(n m) memory (two n x m maps, never n x n); PMA O(n k d).

Deviations from the paper and its code (juho-lee/set_transformer):
- softmax(Q K^T / sqrt(head_dim)) per head, as in the paper; the code scales by the full width (an extra 1/sqrt(heads)).
- the residual adds X itself (the paper), not the projected queries (the code); an output projection W^O follows the
  concatenated heads (the paper's Multihead), as in every block of this package.
- rFF is the package's two-layer row-wise MLP (`intermediate_size`, `hidden_act`); the code uses one ReLU layer.
- PMA applies rFF to Z before pooling (the paper); the code omits it.
- layer norms on by default (the paper's equations); `use_layer_norm=False` drops them (the code's default `ln=False`).
- inducing points and seeds are drawn N(0, 1) with the layer norms (the scale of the normed set elements whose place
  they take as queries), N(0, initializer_range) without; the code draws them Xavier-uniform.
- sets of different sizes in one batch: a boolean keep-mask (batch, n) hides padding elements from every attention
  over the set (SAB keys, ISAB's inducing points, PMA's seeds); padding rows compute values nobody reads. The
  reference code has no masking.
"""

import torch


def set_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor | None,
                            scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive path: (batch, heads, q, d) x (batch, heads, k, d) -> ((batch, q, heads, d), weights (batch, heads,
    q, k)); `keep` (batch, k) bool hides padding keys (weight exactly 0)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (batch, heads, q, k)
    if keep is not None:
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    weights = scores.softmax(-1)
    return torch.matmul(weights, value).transpose(1, 2), weights
