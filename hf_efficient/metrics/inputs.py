"""Input checks shared by the packaged metric modules (they import it as `hf_efficient.metrics.inputs`: evaluate
copies a module file alone into its cache, so a relative import would not follow it)."""

import numpy as np


def example_weights(sample_weight, count: int) -> np.ndarray:
    """The per-example weights as float64, ones when none are given; one finite, non-negative weight per example.
    No example at all is an error (a score of nothing is undefined)."""
    if count == 0:
        raise ValueError("No examples to score: predictions and references are empty.")
    if sample_weight is None:
        return np.ones(count)
    weights = np.asarray(sample_weight, dtype=np.float64)
    if weights.shape != (count,):
        raise ValueError(f"sample_weight has shape {weights.shape}; give one weight per example ({count}).")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("sample_weight must be finite and non-negative.")
    return weights
