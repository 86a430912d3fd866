"""F1 score, an `evaluate` metric module shipped with hf-efficient (loads offline: `hf_efficient.metrics.load`)."""

import datasets
import evaluate
import numpy as np

from hf_efficient.metrics.inputs import example_weights

AVERAGES = ("binary", "micro", "macro", "weighted", None)

_DESCRIPTION = """F1 = 2 TP / (2 TP + FP + FN), the harmonic mean of precision and recall, per class and averaged.
A class with TP + FP + FN = 0 scores 0 (as scikit-learn's default zero_division)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids, one per example (e.g. `logits.argmax(-1)`).
    references (list of int): the true class ids.
    average (str or None): "binary" (default): the F1 of class `pos_label` (at most two classes may occur);
        "micro": from the TP, FP, FN summed over the classes; "macro": the unweighted mean of the per-class F1;
        "weighted": their mean weighted by each class's (weighted) number of references; None: the per-class F1 as a
        list, in the order of `labels`.
    labels (list of int, optional): the classes averaged over when average is not "binary" (default: every class
        that occurs in predictions or references, sorted).
    pos_label (int): the positive class when average="binary" (default 1).
    sample_weight (list of float, optional): a non-negative weight per example.
Returns:
    f1 (float, or a list of float when average=None).
Examples:
    >>> f1 = hf_efficient.metrics.load("f1")
    >>> f1.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'f1': 0.6666666666666666}
    >>> f1.compute(predictions=[0, 2, 1, 0], references=[0, 1, 2, 0], average="macro")
    {'f1': 0.3333333333333333}
"""


def f1_from_counts(tp, fp, fn):
    """2 TP / (2 TP + FP + FN), 0 where the denominator is 0."""
    tp, fp, fn = np.asarray(tp, dtype=np.float64), np.asarray(fp, dtype=np.float64), np.asarray(fn, dtype=np.float64)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1.0), 0.0)


def chosen_labels(predictions, references, average, labels, pos_label) -> list:
    """The classes to score, after checking that `average`, `labels` and `pos_label` fit each other and the data."""
    if average not in AVERAGES:
        raise ValueError(f"average={average!r} is not one of {AVERAGES} ('samples' needs multilabel inputs).")
    present = sorted(set(np.unique(predictions).tolist()) | set(np.unique(references).tolist()))
    if average != "binary":
        if pos_label != 1:
            raise ValueError(f"pos_label is used only with average='binary' (got average={average!r}); to score "
                             f"one class pass labels=[{pos_label}].")
        if labels is None:
            return present
        labels = list(labels)
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be a non-empty list of distinct classes (got {labels}).")
        return labels
    if labels is not None:
        raise ValueError("labels is used only when average is not 'binary'; with average='binary' give pos_label.")
    if len(present) > 2:
        raise ValueError(f"average='binary' needs at most two classes, but {present} occur; choose one of "
                         f"'micro', 'macro', 'weighted' or None.")
    if len(present) == 2 and pos_label not in present:
        raise ValueError(f"pos_label={pos_label!r} is not one of the classes that occur, {present}.")
    return [pos_label]


class F1(evaluate.Metric):
    def _info(self):
        if self.config_name != "default":
            raise ValueError(f"The packaged f1 has one configuration, 'default' (single-label classes; got "
                             f"{self.config_name!r}).")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="binary", labels=None, pos_label=1, sample_weight=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        weights = example_weights(sample_weight, len(references))
        classes = chosen_labels(predictions, references, average, labels, pos_label)
        predicted = np.stack([predictions == c for c in classes])  # (classes, examples)
        actual = np.stack([references == c for c in classes])
        tp = (predicted & actual) @ weights
        fp = (predicted & ~actual) @ weights
        fn = (~predicted & actual) @ weights
        if average == "micro":
            return {"f1": float(f1_from_counts(tp.sum(), fp.sum(), fn.sum()))}
        per_class = f1_from_counts(tp, fp, fn)
        if average is None:
            return {"f1": per_class.tolist()}
        if average == "weighted":
            support = tp + fn
            return {"f1": float(per_class @ support / support.sum()) if support.sum() > 0 else 0.0}
        return {"f1": float(per_class.mean())}  # "binary" (one class) and "macro"
