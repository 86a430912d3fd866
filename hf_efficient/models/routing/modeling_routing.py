"""EfficientRouting: the backbone with the Routing Transformer's mix of local and k-means routing heads."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ...attention.flex import MIN_HEAD_DIM, bucket_keep, bucket_length, flex_available
from ...attention.routing import (
    LAYER_SEED_STRIDE,
    attend_per_head,
    causal_clusters,
    causal_routing_keep,
    centroid_statistics,
    draw_centroids,
    moved_centroids,
    per_head_keys,
    routing_blocked,
    routing_reference,
    routing_vectors,
    top_k_members,
)
from ...attention.sliding_window import (
    band_keep,
    flex_block_mask,
    sliding_window_blocked,
    sliding_window_flex,
    sliding_window_reference,
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
from .cache_routing import RoutingCache, RoutingCacheLayer
from .configuration_routing import EfficientRoutingConfig


class EfficientRoutingAttention(EfficientAttention):
    """Routing attention: Roy et al., "Efficient Content-Based Sparse Attention with Routing Transformers" (arXiv
    2003.05997).

    The first H - R heads are local (token i sees |i - j| <= local_window, j <= i when causal: sliding-window attention,
    attention/sliding_window.py); the last R route by online k-means: out_i = mean over the clusters C holding i of
    softmax_{j in C}(q_i . k_j / sqrt(d)) v_j (attention/routing.py: membership, the causal form, deviations).
    Time per head: local O(N w_local d); routing O(k w^2 d) bidirectional (O(N w d) at the paper's k w = N), O(N w d)
    causal; plus O(N k d) for the k-means step. Memory O(N w_local + k w^2) (causal: O(N w)). On CUDA the local heads
    run FlexAttention and the routing heads batched sdpa over the gathered clusters.

    Centroids: a persistent (k, d) buffer per layer (`centroids`), drawn from centroid_seed and saved with the model.
    The project's rule is that forward never mutates the module; the one exception is this documented k-means step,
    which happens only in training mode (and with centroid_decay < 1): the layer routes with the centroids as they
    were when it was called, then moves them (EMA, from detached statistics of real tokens, all-reduced under
    torch.distributed: every process then runs the same training forwards, as DDP does). A gradient-checkpointing
    recomputation of the layer reuses the centroids of the first pass (kept in the forward's `shared_state`) and does
    not move them again. Eval mode never changes them. With gradient accumulation they move once per micro-batch.
    Padding rows of the output are zero. Cached decoding (causal): a `RoutingCache` keeps every past key/value and
    each routing head's past clusters; a new token costs O(w_local d) in a local head and O(N d) in a routing head
    (its cluster's w most recent keys are picked by a mask over the past).
    """

    supports_cache = True

    def __init__(self, config: EfficientRoutingConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.num_routing_heads = config.num_routing_heads[layer_idx]
        self.num_local_heads = self.num_heads - self.num_routing_heads
        self.local_window = config.local_window
        self.routing_window = config.routing_window
        self.num_clusters = config.num_clusters
        self.decay = config.centroid_decay
        # every layer keeps centroids (also one without routing heads), so one checkpoint loads under any head split
        self.register_buffer("centroids", self.draw_centroids(config.centroid_seed), persistent=True)

    def _apply(self, fn, recurse: bool = True):
        """`model.to(dtype)` / `.half()` keep the centroids in float32: an EMA step of (1 - decay) = 1e-3 is below
        bfloat16's resolution and would round away."""
        super()._apply(fn, recurse)
        if self.centroids.dtype in (torch.float16, torch.bfloat16):
            self.centroids = self.centroids.float()
        return self

    def draw_centroids(self, seed: int) -> torch.Tensor:
        return draw_centroids(self.config.num_clusters, self.head_dim, seed * LAYER_SEED_STRIDE + self.layer_idx)

    def backend(self, hidden_states: torch.Tensor, output_attentions: bool) -> str:
        gpu = "flex" if flex_available() else None
        return self.choose_backend(hidden_states, output_attentions, gpu, gpu_min_head_dim=MIN_HEAD_DIM)

    def pass_centroids(self, shared_state: dict) -> tuple[torch.Tensor, bool]:
        """The centroids this call routes with, and whether it moves them afterwards (training, decay < 1, and not a
        gradient-checkpointing recomputation, which finds the first pass's centroids in `shared_state`)."""
        if not self.training or self.decay >= 1.0 or self.num_routing_heads == 0:
            return self.centroids, False
        name = f"routing_centroids.{self.layer_idx}"
        if name in shared_state:
            return shared_state[name], False
        shared_state[name] = self.centroids.clone()
        return shared_state[name], True

    @torch.no_grad()
    def move_centroids(self, vectors: torch.Tensor, centroids: torch.Tensor, keep: torch.Tensor | None) -> None:
        """The k-means EMA step from this pass's routing vectors (detached), all-reduced under torch.distributed."""
        sums, counts = centroid_statistics(vectors, centroids, keep)
        self.centroids.copy_(moved_centroids(centroids, sums, counts, self.decay))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values=None,
        output_attentions: bool = False,
        shared_state: dict | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        shared_state = {} if shared_state is None else shared_state
        query, key, value = self.project(hidden_states, position_embeddings)
        state = None if past_key_values is None else past_key_values.layers[self.layer_idx]
        if state is not None and state.seen_tokens:
            return self.decode_step(query, key, value, attention_mask, state, shared_state, output_attentions)
        keep = attention_mask
        backend = self.backend(hidden_states, output_attentions)
        if backend not in ("reference", "blocked", "flex"):
            raise ValueError(f"attention_backend={backend!r}: EfficientRouting has the paths 'auto', 'reference', "
                             "'blocked' and 'flex' (FlexAttention for the local heads on CUDA).")
        local, groups = self.num_local_heads, self.num_key_value_groups
        key_heads, value_heads = repeat_kv(key, groups), repeat_kv(value, groups)  # one per query head
        outputs, weights = [], []
        if local:
            q = query[:, :local]
            owner, k, v = self.local_keys(key, value, key_heads, value_heads)
            if backend == "reference":
                attended, local_weights = sliding_window_reference(
                    q, key_heads[:, :local], value_heads[:, :local], None, None, None, keep, None, self.local_window,
                    1, self.is_causal, self.scaling)
                weights.append(local_weights)
            elif backend == "flex":
                attended = sliding_window_flex(q, k, v, self.local_block_mask(query, keep, shared_state), self.scaling)
            else:
                attended = sliding_window_blocked(owner, q, k, v, keep, None, None, None, self.local_window, 1,
                                                  self.is_causal)
            outputs.append(attended)
        clusters = key.new_zeros(key.shape[0], 0, key.shape[2], dtype=torch.long)  # no routing heads: no clusters
        if self.num_routing_heads:
            q = query[:, local:]
            k, v = key_heads[:, local:], value_heads[:, local:]
            centroids, moves = self.pass_centroids(shared_state)
            vectors = routing_vectors(q, k)
            if self.is_causal:
                routing = clusters = causal_clusters(vectors, centroids, keep)
            else:
                routing = top_k_members(vectors, centroids, keep, self.routing_window)
            if backend == "reference":
                attended, routing_weights = routing_reference(q, k, v, routing, keep, self.routing_window,
                                                              self.is_causal, self.scaling, self.num_clusters)
                weights.append(routing_weights)
            else:
                attended = routing_blocked(self, q, k, v, routing, keep, self.routing_window, self.is_causal)
            outputs.append(attended)
            if moves:
                self.move_centroids(vectors, centroids, keep)
        if state is not None:
            state.store(key, value, clusters)
        attended = torch.cat(outputs, dim=2)  # (batch, N, heads, d)
        if keep is not None:
            attended = attended * keep[:, :, None, None].to(attended.dtype)
        return self.merge_heads(attended), (torch.cat(weights, dim=1) if output_attentions else None)

    def decode_step(self, query, key, value, attention_mask, state: RoutingCacheLayer, shared_state: dict,
                    output_attentions: bool):
        """New queries at positions seen.. against every cached key: the local band, and in each routing head the w
        most recent tokens of the query's cluster (the past tokens' clusters are cached)."""
        past, total = state.seen_tokens, state.seen_tokens + query.shape[2]
        keys, values = torch.cat([state.keys, key], dim=2), torch.cat([state.values, value], dim=2)
        key_keep = None if attention_mask is None else attention_mask[:, :total]
        new_keep = None if attention_mask is None else attention_mask[:, past:total]
        device = query.device
        query_positions, key_positions = torch.arange(past, total, device=device), torch.arange(total, device=device)
        local, groups = self.num_local_heads, self.num_key_value_groups
        outputs, weights = [], []
        key_heads, value_heads = repeat_kv(keys, groups), repeat_kv(values, groups)
        if local:  # the keys within local_window of the new queries
            start = max(0, past - self.local_window)
            band = band_keep(query_positions, key_positions[start:], self.local_window, 1, True)[None, None]
            if key_keep is not None:
                band = band & key_keep[:, None, None, start:]
            band = band | (query_positions[:, None] == key_positions[None, start:])
            owner, k, v = self.local_keys(keys[:, :, start:], values[:, :, start:], key_heads[:, :, start:],
                                          value_heads[:, :, start:])
            attended, local_weights = owner.attend(query[:, :local], k, v, band, need_weights=output_attentions)
            if output_attentions:  # the weights over every key
                local_weights = F.pad(local_weights, (start, 0))
            outputs.append(attended)
            weights.append(local_weights)
        clusters = state.clusters
        if self.num_routing_heads:
            centroids, moves = self.pass_centroids(shared_state)
            vectors = routing_vectors(query[:, local:], repeat_kv(key, groups)[:, local:])
            clusters = torch.cat([clusters, causal_clusters(vectors, centroids, new_keep)], dim=2)
            pairs = causal_routing_keep(clusters, self.routing_window, self.num_clusters, query_start=past)
            attended, routing_weights = attend_per_head(self, query[:, local:], key_heads[:, local:],
                                                        value_heads[:, local:], pairs, need_weights=output_attentions)
            outputs.append(attended)
            weights.append(routing_weights)
            if moves:
                self.move_centroids(vectors, centroids, new_keep)
        state.store(keys, values, clusters)
        attended = torch.cat(outputs, dim=2)
        if new_keep is not None:
            attended = attended * new_keep[:, :, None, None].to(attended.dtype)
        return self.merge_heads(attended), (torch.cat(weights, dim=1) if output_attentions else None)

    def local_keys(self, key, value, key_heads, value_heads):
        """The local heads' keys/values and the module to attend through: whole key/value heads when the local heads
        fill whole groups (the interface shares them), else one per query head."""
        local, groups = self.num_local_heads, self.num_key_value_groups
        if local % groups == 0:
            return self, key[:, :local // groups], value[:, :local // groups]
        return per_head_keys(self), key_heads[:, :local], value_heads[:, :local]

    def local_block_mask(self, query: torch.Tensor, keep: torch.Tensor | None, shared_state: dict):
        """The local heads' FlexAttention BlockMask, built once per forward on the length's shape bucket."""
        name = ("routing_local_block_mask", self.local_window)
        if name not in shared_state:
            batch, length, device = query.shape[0], query.shape[2], query.device
            bucket = bucket_length(length)
            shared_state[name] = flex_block_mask(bucket, self.local_window, 1, self.is_causal,
                                                 bucket_keep(keep, batch, length, bucket, device), None, device)
        return shared_state[name]


def no_new_parameters(weights: dict[str, torch.Tensor], config: EfficientRoutingConfig) -> list[str]:
    """Conversion adds no trained parameter: local and routing heads both use the source's q/k/v/o projections
    unchanged (a routing head is the source's head restricted to each token's cluster), and each layer's k-means
    centroids are buffers drawn from `centroid_seed` (random unit vectors, learned online by the EMA in training)."""
    return []


class EfficientRoutingModel(EfficientModel):
    config_class = EfficientRoutingConfig
    attention_class = EfficientRoutingAttention
    state_cache = RoutingCache
    state_cache_refusal = "EfficientRouting decoding, which keeps each past token's cluster with its key"
    seeded_tensors = ("self_attn.centroids",)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, EfficientRoutingAttention):  # at load: centroids the checkpoint lacked or resized
            init.copy_(module.centroids, module.draw_centroids(self.config.centroid_seed))


class EfficientRoutingForMaskedLM(EfficientForMaskedLM):
    config_class = EfficientRoutingConfig
    model_class = EfficientRoutingModel


class EfficientRoutingForCausalLM(EfficientForCausalLM):
    config_class = EfficientRoutingConfig
    model_class = EfficientRoutingModel


class EfficientRoutingForSequenceClassification(EfficientForSequenceClassification):
    config_class = EfficientRoutingConfig
    model_class = EfficientRoutingModel


class EfficientRoutingForTokenClassification(EfficientForTokenClassification):
    config_class = EfficientRoutingConfig
    model_class = EfficientRoutingModel


class EfficientRoutingForQuestionAnswering(EfficientForQuestionAnswering):
    config_class = EfficientRoutingConfig
    model_class = EfficientRoutingModel
