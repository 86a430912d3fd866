"""Accuracy, an `evaluate` metric module shipped with hf-efficient (loads offline: `hf_efficient.metrics.load`)."""

import datasets
import evaluate
import numpy as np

from hf_efficient.metrics.inputs import example_weights

_DESCRIPTION = "The fraction of predictions equal to their reference label (or their number, normalize=False)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids, one per example (e.g. `logits.argmax(-1)`).
    references (list of int): the true class ids.
    normalize (bool): True (default): the fraction correct; False: the (weighted) number correct.
    sample_weight (list of float, optional): a non-negative weight per example.
Returns:
    accuracy (float).
Examples:
    >>> accuracy = hf_efficient.metrics.load("accuracy")
    >>> accuracy.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'accuracy': 0.75}
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        if self.config_name != "default":
            raise ValueError(f"The packaged accuracy has one configuration, 'default' (got {self.config_name!r}).")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, normalize: bool = True, sample_weight=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        weights = example_weights(sample_weight, len(references))
        correct = float(np.sum(weights * (predictions == references)))
        if not normalize:
            return {"accuracy": correct}
        if weights.sum() == 0:
            raise ValueError("The sample weights sum to 0: accuracy is undefined.")
        return {"accuracy": correct / float(weights.sum())}
