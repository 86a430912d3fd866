"""EfficientPerformer: the backbone with FAVOR+ attention in every layer, and its constant-size decoding cache."""

import torch
from torch import nn
from transformers import initialization as init
from transformers.utils import logging

from ...attention.compiled import run_compiled
from ...attention.favor import (
    FavorState,
    draw_random_features,
    favor_bidirectional_qkv,
    favor_causal_qkv,
    favor_reference,
    favor_state,
    feature_map,
)
from ...attention.flex import bucket_keep, bucket_length, pad_length
from ...core.attention import EfficientAttention
from ...core.distributed import shared_seed
from ...core.heads import (
    EfficientForCausalLM,
    EfficientForMaskedLM,
    EfficientForQuestionAnswering,
    EfficientForSequenceClassification,
    EfficientForTokenClassification,
)
from ...core.modeling import EfficientModel
from ...core.state_cache import StateCache, StateCacheLayer
from .configuration_performer import EfficientPerformerConfig

logger = logging.get_logger(__name__)

LAYER_SEED_STRIDE = 100003


class FavorStateLayer(StateCacheLayer):
    """One layer's decoding state: FAVOR+'s (S, z, r) (see attention/favor.py), O(m d) whatever the length."""

    state_names = ("state",)

    def advance(self, state: FavorState, new_tokens: int) -> None:
        self.state, self.seen_tokens, self.is_initialized = state, self.seen_tokens + new_tokens, True
        self.device = state.sums.device

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("A FAVOR+ state is a running sum and can't be cropped; recompute the prefix.")

    def _apply(self, function) -> None:
        if self.state is not None:
            self.state = FavorState(*(function(t) for t in self.state.tensors()))


class FavorCache(StateCache):
    """The cache EfficientPerformer decodes with: per layer the prefix state (S, z, r) instead of keys and values,
    so each new token costs O(m d) time and the cache never grows. `get_seq_length` counts the tokens seen."""

    layer_class = FavorStateLayer


class EfficientPerformerAttention(EfficientAttention):
    """FAVOR+ attention: Choromanski et al., "Rethinking Attention with Performers" (arXiv 2009.14794).

    out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j) (j <= i when causal), phi the positive (or ReLU)
    random features of `random_features` (m x d, a persistent buffer drawn from the config's feature_seed; forward
    never redraws, `redraw_features` does). Bidirectional: time O(N m d), memory O(N m + m d); causal: chunked
    prefix sums, time O(N (C m + C d + m d)), memory O(N m + C^2 + m d); decoding O(m d) per token with a
    `FavorCache`. On CUDA the "compiled" backend runs the same functions through torch.compile (fused float32
    feature work). Deviations: the per-token stabilisation of attention/favor.py; attention dropout is not applied
    (there is no attention matrix to drop from). Padding rows of the output are zero.
    """

    supports_cache = True

    def __init__(self, config: EfficientPerformerConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        if config.attention_probs_dropout_prob > 0:
            logger.warning_once(
                f"attention_probs_dropout_prob={config.attention_probs_dropout_prob} is not applied: FAVOR+ never "
                "forms the attention matrix. Set it to 0.0 to silence this."
            )
        self.register_buffer("random_features", self.draw_features(config.feature_seed), persistent=True)

    def draw_features(self, seed: int) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(seed * LAYER_SEED_STRIDE + self.layer_idx)
        config = self.config
        return draw_random_features(config.nb_features, self.head_dim, generator, config.orthogonal_features,
                                    config.feature_norms)

    @torch.no_grad()
    def redraw_features(self, seed: int | None = None) -> None:
        """Draw new random features in place (from `seed`, or from torch's global RNG when None: rank 0's under
        torch.distributed, so every rank draws the same)."""
        seed = shared_seed(2**31) if seed is None else seed
        self.random_features.copy_(self.draw_features(seed))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Features of another nb_features (a checkpoint of another config, e.g. the full-attention twin made from a
        model's state dict) belong to another draw: this module keeps its own instead of failing on the shape."""
        key = prefix + "random_features"
        if key in state_dict and state_dict[key].shape != self.random_features.shape:
            logger.info(f"{key}: keeping this config's {tuple(self.random_features.shape)} features instead of the "
                        f"given {tuple(state_dict[key].shape)}.")
            state_dict = {k: v for k, v in state_dict.items() if k != key}
            state_dict[key] = self.random_features
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def features(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return feature_map(states, self.random_features, self.config.kernel, self.scaling**0.5)

    def backend(self, hidden_states: torch.Tensor, output_attentions: bool) -> str:
        return self.choose_backend(hidden_states, output_attentions, gpu_backend="compiled")

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
        batch, _, length, dim = query.shape
        groups = self.num_key_value_groups
        # (B, H, N, d) -> (B, Hkv, G, N, d): the queries of one KV head side by side; keys/values get G = 1
        query, key, value = query.view(batch, self.num_key_value_heads, groups, length, dim), key[:, :, None], \
            value[:, :, None]
        keep = None if attention_mask is None else attention_mask[:, -length:]  # the new tokens' keys

        layer, state = None, None
        if past_key_values is not None:
            layer = past_key_values.layers[self.layer_idx]
            if not isinstance(layer, FavorStateLayer):
                raise ValueError(f"EfficientPerformer decodes with a FavorCache, got {type(past_key_values).__name__}.")
            if layer.state is not None:
                state = FavorState(*(t.to(query.device) for t in layer.state.tensors()))
        backend = self.backend(hidden_states, output_attentions)
        if backend not in ("reference", "blocked", "compiled"):
            raise ValueError(f"attention_backend={backend!r} is not available for FAVOR+; use auto, compiled (CUDA), "
                             "blocked or reference.")
        compiled = backend == "compiled"
        if compiled and not query.is_cuda:
            raise ValueError("attention_backend='compiled' runs on CUDA only; use 'auto' or 'blocked' on this device.")
        real = keep
        if compiled and state is None:  # compiled graphs see a few lengths only: the shape bucket's
            query, key, value, keep = bucket_inputs(query, key, value, keep)
        weights = None
        if backend != "reference":  # features and sums in one function (fused when compiled)
            arguments = (query, key, value, self.random_features, self.config.kernel, self.scaling**0.5, keep)
            if not self.is_causal:
                attended = (run_compiled(favor_bidirectional_qkv, *arguments) if compiled
                            else favor_bidirectional_qkv(*arguments))
            else:
                arguments += (self.config.chunk_size, None if state is None else state.tensors())
                attended, *tensors = (run_compiled(favor_causal_qkv, *arguments) if compiled
                                      else favor_causal_qkv(*arguments))
                state = FavorState(*tensors)
        else:
            if state is not None:
                raise ValueError("The reference path (output_attentions=True or attention_backend='reference') "
                                 "needs every key, but a FavorCache keeps only the prefix state: decode without "
                                 "them, or call with use_cache=False.")
            query_features, _ = self.features(query)
            key_features, key_log_scale = self.features(key)
            attended, weights = favor_reference(query_features, key_features, key_log_scale, value, keep,
                                                self.is_causal)
            if layer is not None:  # the state a later step continues from
                state = favor_state(key_features, key_log_scale, value, keep)
        if layer is not None:
            layer.advance(state, length)
        attended = attended[..., :length, :]  # a bucket's padding queries dropped
        # (B, Hkv, G, N, d) -> (B, N, H, d)
        attended = attended.reshape(batch, self.num_heads, length, dim).transpose(1, 2).to(value.dtype)
        if real is not None:
            attended = attended * real[:, :, None, None]
        if output_attentions:
            weights = weights.reshape(batch, self.num_heads, length, length).to(value.dtype)
        return self.merge_heads(attended), weights


def bucket_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor | None):
    """q (B, Hkv, G, N, d), k/v (B, Hkv, 1, N, d) and keep (B, N) or None padded to N's shape bucket
    (`flex.bucket_length`), the padding marked as padding keys; real tokens' outputs and the state after them are
    those of the unpadded input (padding keys weigh 0). The keep mask is always a tensor: one compiled graph."""
    batch, length = query.shape[0], query.shape[-2]
    bucket = bucket_length(length)
    keep = bucket_keep(keep, batch, length, bucket, query.device)
    return (*(pad_length(x, bucket) for x in (query, key, value)), keep)


def no_new_parameters(weights: dict[str, torch.Tensor], config: EfficientPerformerConfig) -> list[str]:
    """Conversion adds nothing: FAVOR+ reuses the source's q/k/v/o projections unchanged, and its random features
    are buffers drawn from `feature_seed` (kept by the converter, saved with the model), not trained parameters."""
    return []


class EfficientPerformerModel(EfficientModel):
    config_class = EfficientPerformerConfig
    attention_class = EfficientPerformerAttention
    state_cache = FavorCache
    state_cache_refusal = "EfficientPerformer, which decodes from its FAVOR+ prefix state"
    seeded_tensors = ("self_attn.random_features",)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, EfficientPerformerAttention):  # at load: features the checkpoint lacked or resized
            init.copy_(module.random_features, module.draw_features(self.config.feature_seed))

    def redraw_features(self, seed: int | None = None) -> None:
        """Redraw every layer's random features (layer l from seed * 100003 + l; a fresh seed when None)."""
        redraw_features(self, seed)


def redraw_features(model: nn.Module, seed: int | None = None) -> None:
    """Redraw the random features of every FAVOR+ layer in `model` (a bare model or any head) and store the seed as
    the config's feature_seed, from which a checkpoint that lacks them rebuilds them. A fresh seed (None) is rank 0's
    under torch.distributed (every rank calls it), so the ranks keep equal features."""
    seed = shared_seed(2**31) if seed is None else seed
    for module in model.modules():
        if isinstance(module, EfficientPerformerAttention):
            module.redraw_features(seed)
    if hasattr(model, "config"):
        model.config.feature_seed = seed


class EfficientPerformerForMaskedLM(EfficientForMaskedLM):
    config_class = EfficientPerformerConfig
    model_class = EfficientPerformerModel


class EfficientPerformerForCausalLM(EfficientForCausalLM):
    config_class = EfficientPerformerConfig
    model_class = EfficientPerformerModel


class EfficientPerformerForSequenceClassification(EfficientForSequenceClassification):
    config_class = EfficientPerformerConfig
    model_class = EfficientPerformerModel


class EfficientPerformerForTokenClassification(EfficientForTokenClassification):
    config_class = EfficientPerformerConfig
    model_class = EfficientPerformerModel


class EfficientPerformerForQuestionAnswering(EfficientForQuestionAnswering):
    config_class = EfficientPerformerConfig
    model_class = EfficientPerformerModel
