"""EfficientLinearTransformer: the backbone with linear attention (elu(x)+1 feature map) in every layer."""

import torch
from transformers.cache_utils import Cache

from ...attention.compiled import run_compiled
from ...attention.linear import (
    elu_feature_map,
    linear_attention_causal_fla,
    linear_attention_qkv,
    linear_attention_reference,
    linear_state,
)
from ...core.attention import EfficientAttention, repeat_kv
from ...core.heads import (
    EfficientForCausalLM,
    EfficientForMaskedLM,
    EfficientForQuestionAnswering,
    EfficientForSequenceClassification,
    EfficientForTokenClassification,
)
from ...core.modeling import EfficientModel
from .cache_linear_transformer import LinearAttentionCache
from .configuration_linear_transformer import EfficientLinearTransformerConfig


class EfficientLinearTransformerAttention(EfficientAttention):
    """Linear attention: Katharopoulos et al., "Transformers are RNNs: Fast Autoregressive Transformers with Linear
    Attention" (arXiv 2006.16236).

    out_i = phi(q_i)^T S / (phi(q_i)^T z + eps), S = sum_j phi(k_j) v_j^T, z = sum_j phi(k_j), phi = elu + 1, over
    the real keys (j <= i when causal). Time O(N d^2) (causal: O(N (C + d) d) in chunks of C), memory O(d^2 + N d)
    bidirectional, O(N d^2 / C + N C + N d) causal; decoding carries (S, z): O(d^2) time and memory per token.
    The paths are in attention/linear.py: on CUDA "auto" runs the chunk-parallel form through torch.compile
    ("compiled"); "fla" (optional) runs flash-linear-attention's chunk kernel for the causal numerator.

    Deviations from the paper: no 1/sqrt(d) scaling (the paper has none either: phi(q)^T phi(k) is the kernel);
    with rotary positions (Llama) q and k are rotated *before* the feature map, which is what converting a Llama
    gives, so the score is no longer a function of the relative position alone (RoFormer's linear variant rotates
    after phi instead); attention dropout does not apply (no attention matrix is formed); padding rows of the output
    are zero.
    """

    supports_cache = True

    def __init__(self, config: EfficientLinearTransformerConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.eps = config.linear_attention_eps
        self.chunk_size = config.causal_chunk_size

    def backend(self, hidden_states: torch.Tensor, output_attentions: bool) -> str:
        return self.choose_backend(hidden_states, output_attentions, gpu_backend="compiled")

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query, key, value = self.project(hidden_states, position_embeddings)
        length = query.shape[2]
        keep = None if attention_mask is None else attention_mask[:, -length:]  # this call's tokens
        state_layer = None if past_key_values is None else past_key_values.layers[self.layer_idx]
        initial_state = None if state_layer is None else state_layer.current()
        backend = self.backend(hidden_states, output_attentions)
        if backend in ("compiled", "fla") and not query.is_cuda:
            raise ValueError(f"attention_backend={backend!r} runs on CUDA only; use 'auto' or 'blocked' on this "
                             "device.")
        if backend == "fla" and initial_state is not None:
            backend = "blocked"  # decoding steps continue the cached state on the chunked form (same function)
        weights, final_state = None, None
        if backend == "reference":
            if initial_state is not None:
                raise ValueError(
                    "Attention weights over earlier tokens are not kept by the linear-attention state: call with "
                    "output_attentions=False (and attention_backend other than 'reference') while decoding, or "
                    "use_cache=False."
                )
            groups = self.num_key_value_groups
            query_features, key_features = elu_feature_map(query), elu_feature_map(key)  # float32
            attended, weights = linear_attention_reference(
                query_features, repeat_kv(key_features, groups), repeat_kv(value, groups), keep, self.is_causal,
                self.eps,
            )
            weights = weights.to(value.dtype)
            if state_layer is not None:
                real_keys = key_features if keep is None else key_features * keep[:, None, :, None]
                final_state = linear_state(real_keys, value)
        elif backend in ("blocked", "compiled"):
            arguments = (query, key, value, keep, self.is_causal, self.eps, self.chunk_size, initial_state)
            attended, final_state = (run_compiled(linear_attention_qkv, *arguments) if backend == "compiled"
                                     else linear_attention_qkv(*arguments))
        elif backend == "fla":
            attended = linear_attention_causal_fla(query, key, value, keep, self.eps)
            if state_layer is not None:
                key_features = elu_feature_map(key)
                final_state = linear_state(key_features if keep is None else key_features * keep[:, None, :, None],
                                           value)
        else:
            raise ValueError(
                f"attention_backend={backend!r} is not available for linear attention; use 'auto', 'blocked' (the "
                "chunked PyTorch form), 'compiled' (torch.compile of it, CUDA), 'fla' (flash-linear-attention, "
                "causal, CUDA) or 'reference'."
            )
        if state_layer is not None:
            state_layer.store(final_state, length)
        if keep is not None:
            attended = attended * keep[:, :, None, None]
        return self.merge_heads(attended.to(value.dtype)), weights


def reuse_projections(weights: dict[str, torch.Tensor], config: EfficientLinearTransformerConfig) -> list[str]:
    """Conversion adds no parameters: the source's q/k/v/o projections are reused as they are. The elu(x)+1 kernel
    replaces softmax(q k^T / sqrt(d)), so the converted model computes a different function from its source (the
    fidelity report gives only the as-converted difference) and must be fine-tuned."""
    return []


class EfficientLinearTransformerModel(EfficientModel):
    config_class = EfficientLinearTransformerConfig
    attention_class = EfficientLinearTransformerAttention
    state_cache = LinearAttentionCache
    state_cache_refusal = "linear attention, whose cache is a fixed-size state per layer"



class EfficientLinearTransformerForMaskedLM(EfficientForMaskedLM):
    config_class = EfficientLinearTransformerConfig
    model_class = EfficientLinearTransformerModel


class EfficientLinearTransformerForCausalLM(EfficientForCausalLM):
    config_class = EfficientLinearTransformerConfig
    model_class = EfficientLinearTransformerModel


class EfficientLinearTransformerForSequenceClassification(EfficientForSequenceClassification):
    config_class = EfficientLinearTransformerConfig
    model_class = EfficientLinearTransformerModel


class EfficientLinearTransformerForTokenClassification(EfficientForTokenClassification):
    config_class = EfficientLinearTransformerConfig
    model_class = EfficientLinearTransformerModel


class EfficientLinearTransformerForQuestionAnswering(EfficientForQuestionAnswering):
    config_class = EfficientLinearTransformerConfig
    model_class = EfficientLinearTransformerModel
