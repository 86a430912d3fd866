"""Configuration of EfficientPerformer (Choromanski et al., "Rethinking Attention with Performers", 2009.14794)."""

import math

from ...core.configuration import EfficientConfig

KERNELS = ("softmax", "relu")
FEATURE_NORMS = ("chi", "regularized")


class EfficientPerformerConfig(EfficientConfig):
    """Backbone fields plus FAVOR+'s knobs.

    nb_features: random features m per head (shared by the heads of a layer, as in the paper's code). None = the
        paper's m = d log d for head dim d (int(d ln d): 110 at d = 32, 266 at d = 64), fixed when the config is made.
    kernel: "softmax" (positive random features, an unbiased estimate of softmax attention) or "relu" (the paper's
        generalised attention with f = ReLU: another kernel, not an estimate of softmax).
    orthogonal_features: draw the rows in orthogonal blocks of head_dim (the "+" of FAVOR+, lower variance);
        False = i.i.d. Gaussian rows.
    feature_norms: row lengths of the orthogonal blocks: "chi" (those of Gaussian rows, the unbiased choice of the
        paper's theory; its code's scaling=0) or "regularized" (all sqrt(d), its code's scaling=1; the rows are then
        not Gaussian and the softmax estimate is biased).
    feature_seed: seeds each layer's draw (layer l uses feature_seed * 100003 + l). The features are persistent
        buffers, so a saved model reloads exactly the features it had (also after `redraw_features`).
    chunk_size: tokens per chunk of the causal prefix sums (an implementation knob: the function does not depend on it;
        a chunk does O(C^2) elementwise work and keeps one (m x d) state, see attention/causal_prefix.py; 64 balances
        the two at the default sizes).
    """

    model_type = "efficient_performer"

    nb_features: int | None = None
    kernel: str = "softmax"
    orthogonal_features: bool = True
    feature_norms: str = "chi"
    feature_seed: int = 0
    chunk_size: int = 64

    has_compiled_path = True

    def validate_mechanism(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel={self.kernel!r} is not supported; use one of {KERNELS}.")
        if self.feature_norms not in FEATURE_NORMS:
            raise ValueError(f"feature_norms={self.feature_norms!r} is not supported; use one of {FEATURE_NORMS}.")
        for field in ("chunk_size", "nb_features"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{field}={value!r}: use a positive integer" + (
                    " (or None for the paper's head_dim * ln(head_dim))." if field == "nb_features" else ", e.g. 128."))
        if isinstance(self.feature_seed, bool) or not isinstance(self.feature_seed, int) or self.feature_seed < 0:
            raise ValueError(f"feature_seed={self.feature_seed!r}: use a non-negative integer.")
        if self.attention_backend == "flex":
            raise ValueError("FAVOR+ has no FlexAttention path (it never forms the attention matrix); use "
                             "attention_backend='auto', 'compiled' (torch.compile, CUDA) or 'blocked' (PyTorch).")
        if self.nb_features is None:
            self.nb_features = max(1, int(self.head_dim * math.log(self.head_dim)))

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """No number of random features equals softmax attention; 8192 softmax-kernel features estimate it (error
        ~ sqrt((exp(|q^ + k^|^2) - 1) / m)): closely for short scaled queries/keys (the tiny test models, see
        tests/testers/performer.py), loosely for a trained model's sharp attention (benchmarks/performer_feature_error
        .py: MiniLM's last hidden state is still ~0.7 off in relative terms)."""
        return {"nb_features": 8192, "kernel": "softmax"}

    def describe_attention(self) -> str:
        rows = "orthogonal" if self.orthogonal_features else "i.i.d."
        return (f"FAVOR+ linear attention, {self.kernel} kernel, {self.nb_features} {rows} random features per head "
                f"({self.feature_norms} row norms, feature_seed {self.feature_seed}); causal by chunked prefix sums "
                f"(chunk {self.chunk_size})")
