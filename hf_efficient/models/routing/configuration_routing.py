"""Configuration of EfficientRouting (Roy, Saffar, Vaswani & Grangier, "Efficient Content-Based Sparse Attention with
Routing Transformers", TACL 2021, arXiv 2003.05997)."""

from ...core.configuration import EfficientConfig


class EfficientRoutingConfig(EfficientConfig):
    """Backbone fields plus the Routing Transformer's knobs (defaults: the paper's enwik8 / PG-19 settings).

    num_routing_heads: how many of each layer's heads route by online k-means (the last ones; the others are local
        heads). An int for every layer or one entry per layer (0: a local-only layer, as the paper's
        `sparsity_skip_first`); None = half the heads, rounded down (the paper: 4 local + 4 routing, 8 + 8). With
        grouped key/value heads, a split inside a group gives its heads their own copies of the shared keys/values.
    local_window: how far a local head reaches: a token sees the tokens at most this many positions away (earlier
        ones only when causal). The paper's local blocks: 256.
    num_clusters: k, the k-means centroids of each layer, shared by its routing heads (the paper: 16 at 8K tokens,
        about sequence length / routing_window).
    routing_window: w, the cluster size. Bidirectional: each centroid takes its w nearest tokens (balanced top-k
        membership; min(w, length)). Causal: each token joins its nearest centroid and sees the w most recent tokens
        of that cluster, itself included (see attention/routing.py for why). The paper: 512.
    centroid_decay: the exponential-moving-average decay of the centroids, updated after each training forward
        from the routed tokens (the paper: 0.999); 1.0 keeps them fixed. Never updated in eval mode.
    centroid_seed: seeds each layer's initial centroids (layer l uses centroid_seed * 100003 + l); they are
        persistent buffers, saved with the model.
    """

    model_type = "efficient_routing"

    num_routing_heads: list[int] | int | None = None
    local_window: int = 256
    num_clusters: int = 16
    routing_window: int = 512
    centroid_decay: float = 0.999
    centroid_seed: int = 0

    def validate_mechanism(self) -> None:
        heads = self.num_routing_heads
        if heads is None:
            heads = self.num_attention_heads // 2
        heads = self.per_layer(heads, "num_routing_heads")
        for layer, count in enumerate(heads):
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= self.num_attention_heads:
                raise ValueError(f"num_routing_heads[{layer}]={count!r}: use an integer in [0, num_attention_heads="
                                 f"{self.num_attention_heads}] (the paper routes half the heads).")
        self.num_routing_heads = heads
        for name, paper in (("local_window", 256), ("num_clusters", 16), ("routing_window", 512)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: use a positive integer (the paper: {paper}).")
        decay = self.centroid_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay <= 1.0:
            raise ValueError(f"centroid_decay={decay!r}: use a number in (0, 1] (the paper: 0.999; 1.0 keeps the "
                             "centroids fixed).")
        if isinstance(self.centroid_seed, bool) or not isinstance(self.centroid_seed, int) or self.centroid_seed < 0:
            raise ValueError(f"centroid_seed={self.centroid_seed!r}: use a non-negative integer.")

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """Every head local, with a reach covering the input: exact softmax attention, causal or not. The centroids
        stay (every layer holds them), so a checkpoint loads strictly into this setting."""
        return {"num_routing_heads": 0, "local_window": length}

    def describe_attention(self) -> str:
        routing = sorted(set(self.num_routing_heads))
        counts = str(routing[0]) if len(routing) == 1 else "/".join(str(n) for n in self.num_routing_heads)
        membership = ("each token in its nearest cluster, seeing the cluster's last" if self.is_causal
                      else "each cluster taking its")
        return (f"Routing attention: {counts} of {self.num_attention_heads} heads routed by online k-means "
                f"({self.num_clusters} centroids per layer, EMA decay {self.centroid_decay}; {membership} "
                f"{self.routing_window} tokens), the others local over {self.local_window} positions"
                + (" (causal)" if self.is_causal else " (bidirectional)"))
