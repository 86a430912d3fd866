"""Full softmax attention: the exact mechanism every efficient variant approximates or restricts."""

import torch

from ..core.attention import EfficientAttention
from ..core.masks import key_keep


class FullAttention(EfficientAttention):
    """Vaswani et al., "Attention Is All You Need" (arXiv 1706.03762).

    out = softmax(Q K^T / sqrt(d) + M) V, M = padding (and causal) mask.
    Time O(N^2 d); memory O(N) through sdpa's fused kernels, O(N^2) on the eager path.
    The backbone runs with it to prove it reproduces BERT, GPT-2 and Llama exactly; it is also the teacher in
    degenerate-equivalence tests.
    """

    supports_cache = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values=None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query, key, value = self.project(hidden_states, position_embeddings)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        keep = key_keep(attention_mask, query.shape[-2], key.shape[-2])
        attended, weights = self.attend(
            query, key, value, keep, is_causal=self.is_causal, need_weights=output_attentions
        )
        return self.merge_heads(attended), weights
