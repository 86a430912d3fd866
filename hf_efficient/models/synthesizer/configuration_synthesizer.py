"""Configuration of EfficientSynthesizer (Tay et al., "Synthesizer: Rethinking Self-Attention in Transformer Models",
arXiv 2005.00743)."""

import math

from ...attention.synthetic import DOT_PRODUCT, SYNTHETIC_COMPONENTS
from ...core.configuration import EfficientConfig

COMPONENTS = (*SYNTHETIC_COMPONENTS, DOT_PRODUCT)


class EfficientSynthesizerConfig(EfficientConfig):
    """Backbone fields plus the Synthesizer's knobs. The fixed maximum length n (the paper's l) is
    `max_position_embeddings`: the synthetic tables have n rows/columns, an input of N <= n tokens uses the first N,
    a longer one raises.

    synthesizer_type: the components of the attention logits, joined by "+": "dense", "random", "factorized_dense",
        "factorized_random" (the synthetic ones) and "vanilla" (Q K^T / sqrt(d)), e.g. "dense", "random+vanilla",
        "dense+random", "dense+random+vanilla" (the paper's mixtures). At least one synthetic component.
    mixture_weights: the alpha of each component, in the order of `synthesizer_type` (mixtures only): the logits are
        sum_c alpha_c S_c. None = 1.0 each, the plain sum of the authors' released code (Long-Range Arena's
        synthesizer); the paper writes the mixture with alphas summing to one, e.g. [0.5, 0.5] (its scale is learnt
        by the components anyway). A converted model starts exactly at its source only with alpha_vanilla = 1.
    mixture_trainable: the alphas are learnt (a parameter `mixture_weights` per layer, the paper's "learnable
        weights"; they are not renormalised during training) or fixed (a persistent buffer of the same name, so a
        checkpoint loads either way).
    random_trainable: R (and R1, R2) are trained (the paper's Random Synthesizer) or fixed (its Fixed Random
        Synthesizer): persistent buffers drawn from `seed`.
    random_init_std: R is drawn N(0, std^2); R1, R2 N(0, std^2 / sqrt(k)) so that R1 R2^T has the same scale. 1.0
        gives logits neither uniform nor one-hot.
    factorized_random_rank: k of R = R1 R2^T (the authors' Long-Range Arena code uses 32); at most n.
    factorized_dense_a: a of the factorized dense synthesizer (b = n / a, a b = n exactly); None = the largest divisor
        of n not above sqrt(n) (n = 512: a = 16, b = 32).
    dense_hidden_size: d_h, the width of W1 per head (dense kinds); None = head_dim.
    seed: seeds the random tables of each layer (layer l, component c: a generator seeded from (seed, l, c)), at
        init and for fixed R; `model.redraw_random_synthesizers()` draws new ones.
    dot_product_only: the mixture with weight 0 on every synthetic component and 1 on Q K^T / sqrt(d): exact softmax
        attention. Every synthetic parameter (and alpha) stays in the model, unused (no gradient), so one checkpoint
        loads in both settings; this is the degenerate setting (`full_attention_overrides`).

    q_proj and k_proj exist in every model (so a checkpoint converts and loads in the dot-product setting); without
    "vanilla" they are unused persistent buffers (same state-dict keys), not trainable parameters.
    """

    model_type = "efficient_synthesizer"

    synthesizer_type: str = "dense"
    mixture_weights: list[float] | None = None
    mixture_trainable: bool = True
    random_trainable: bool = True
    random_init_std: float = 1.0
    factorized_random_rank: int = 32
    factorized_dense_a: int | None = None
    dense_hidden_size: int | None = None
    seed: int = 0
    dot_product_only: bool = False

    @property
    def synthesizer_components(self) -> tuple[str, ...]:
        return tuple(self.synthesizer_type.split("+"))

    @property
    def resolved_mixture_weights(self) -> list[float] | None:
        """One alpha per component (mixtures), or None for a single component."""
        if len(self.synthesizer_components) == 1:
            return None
        return [float(w) for w in self.mixture_weights] if self.mixture_weights is not None else \
            [1.0] * len(self.synthesizer_components)

    @property
    def factorized_dense_sizes(self) -> tuple[int, int]:
        n = self.max_position_embeddings
        a = self.factorized_dense_a
        if a is None:
            a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        return a, n // a

    @property
    def synthesizer_width(self) -> int:
        return self.dense_hidden_size or self.head_dim

    def validate_mechanism(self) -> None:
        if not isinstance(self.synthesizer_type, str):
            raise ValueError(f"synthesizer_type={self.synthesizer_type!r}: use a string such as 'dense' or "
                             "'random+vanilla'.")
        components = self.synthesizer_components
        unknown = [c for c in components if c not in COMPONENTS]
        if unknown or len(set(components)) != len(components):
            raise ValueError(
                f"synthesizer_type={self.synthesizer_type!r}: join distinct components from {COMPONENTS} with '+', "
                "e.g. 'dense', 'random+vanilla' or 'dense+random+vanilla'."
            )
        if not any(c in SYNTHETIC_COMPONENTS for c in components):
            raise ValueError(
                f"synthesizer_type={self.synthesizer_type!r} has no synthetic component: add one of "
                f"{SYNTHETIC_COMPONENTS} (plain dot-product attention is dot_product_only=True, or another variant)."
            )
        if self.mixture_weights is not None:
            weights = self.mixture_weights
            if len(components) == 1:
                raise ValueError(
                    f"mixture_weights={weights!r}: a single component ({self.synthesizer_type!r}) has no mixture "
                    "weight; set mixture_weights=None, or mix components, e.g. synthesizer_type='dense+vanilla'."
                )
            if (not isinstance(weights, (list, tuple)) or len(weights) != len(components)
                    or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                               for w in weights)):
                raise ValueError(
                    f"mixture_weights={weights!r}: give one finite number per component of {components} (in that "
                    "order), or None for 1.0 each."
                )
            self.mixture_weights = [float(w) for w in weights]
        for name in ("mixture_trainable", "random_trainable", "dot_product_only"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: use True or False.")
        std = self.random_init_std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std <= 0:
            raise ValueError(f"random_init_std={std!r}: use a positive number, e.g. 1.0.")
        n = self.max_position_embeddings
        rank = self.factorized_random_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1 or (
                "factorized_random" in components and rank > n):
            raise ValueError(
                f"factorized_random_rank={rank!r}: use an integer k with 1 <= k <= max_position_embeddings={n} "
                "(R = R1 R2^T of rank k; 32 in the authors' code)."
            )
        a = self.factorized_dense_a
        if a is not None and (isinstance(a, bool) or not isinstance(a, int) or a <= 0 or (
                "factorized_dense" in components and n % a)):
            raise ValueError(
                f"factorized_dense_a={a!r} must be a positive divisor of max_position_embeddings={n} (a * b = n); "
                "or None for the divisor nearest sqrt(n) from below."
            )
        width = self.dense_hidden_size
        if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width <= 0):
            raise ValueError(f"dense_hidden_size={width!r}: use a positive integer, or None for head_dim.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r}: use a non-negative integer.")
        if self.attention_backend == "flex":
            raise ValueError(
                "The Synthesizer has no FlexAttention path: its 'blocked' path (plain matmuls, and sdpa for mixtures "
                "with the dot product) is also the GPU path. Use attention_backend='auto', 'blocked' or 'reference'."
            )

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """Weight 0 on every synthetic component and 1 on the dot product: exact softmax attention, at any length
        (the synthetic parameters stay, unused)."""
        return {"dot_product_only": True}

    def describe_attention(self) -> str:
        if self.dot_product_only:
            return (f"Synthesizer ({self.synthesizer_type}) in its dot-product-only setting: exact softmax attention "
                    "(synthetic parameters kept, unused)")
        parts = []
        for component, weight in zip(self.synthesizer_components, self.resolved_mixture_weights or [None],
                                     strict=True):
            detail = {
                "dense": f"dense (per-token F: d -> n={self.max_position_embeddings}, width {self.synthesizer_width})",
                "random": f"random ({'trainable' if self.random_trainable else 'fixed'} R of n x n per head)",
                "factorized_dense": "factorized dense (a={}, b={})".format(*self.factorized_dense_sizes),
                "factorized_random": f"factorized random ({'trainable' if self.random_trainable else 'fixed'} "
                                     f"R1 R2^T of rank {self.factorized_random_rank})",
                "vanilla": "dot product",
            }[component]
            parts.append(detail if weight is None else f"{weight:g} x {detail}")
        mixture = "" if len(parts) == 1 else f", alphas {'trainable' if self.mixture_trainable else 'fixed'}"
        return (f"Synthesizer attention: softmax of {' + '.join(parts)}{mixture}; fixed maximum length "
                f"{self.max_position_embeddings} (seed {self.seed})")
