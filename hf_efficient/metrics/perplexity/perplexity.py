"""Perplexity from a model's own token log-likelihoods, an `evaluate` metric module shipped with hf-efficient (loads
offline: `hf_efficient.metrics.load`). Unlike the Hub's perplexity it loads no model: it scores what `Trainer`'s
evaluation loop already computed."""

import datasets
import evaluate
import numpy as np

IGNORE_INDEX = -100  # transformers' label for a position that is not scored
ROUNDING = 1e-4  # log_softmax in float32 may exceed 0 by rounding; anything larger is not a log-probability

_DESCRIPTION = """Perplexity = exp(NLL), NLL the mean negative log-likelihood over every scored token of every text
(token-weighted, as a language model's loss over a corpus). A position counts when its reference label is not -100."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of float): per text, the natural-log probability the model gave each position's
        label, log p(label_t | context) <= 0 (not a loss: no minus sign). From logits and labels:
        `hf_efficient.metrics.token_log_likelihoods(logits, labels, causal)`, which also serves as Trainer's
        `preprocess_logits_for_metrics`.
    references (list of list of int): per text, the labels at the same positions; -100 marks a position not scored
        (padding, prompt, unmasked tokens of a masked LM). For a causal LM, where logits[t] scores labels[t + 1],
        pass `labels[:, 1:]`: token_log_likelihoods(..., causal=True) returns the log-likelihoods aligned with them.
Returns:
    perplexity (float): exp(nll).
    nll (float): the mean negative log-likelihood per scored token (the LM loss).
    tokens (int): how many positions were scored.
Examples:
    >>> perplexity = hf_efficient.metrics.load("perplexity")
    >>> perplexity.compute(predictions=[[-1.0, -2.0, 0.0]], references=[[5, 7, -100]])
    {'perplexity': 4.4816890703380645, 'nll': 1.5, 'tokens': 2}
"""


class Perplexity(evaluate.Metric):
    def _info(self):
        if self.config_name != "default":
            raise ValueError(f"The packaged perplexity has one configuration, 'default' (got {self.config_name!r}).")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("float64")),
                "references": datasets.Sequence(datasets.Value("int64")),
            }),
        )

    def _compute(self, predictions, references):
        total, count = 0.0, 0
        for index, (log_likelihoods, labels) in enumerate(zip(predictions, references, strict=True)):
            log_likelihoods, labels = np.asarray(log_likelihoods, dtype=np.float64), np.asarray(labels)
            if log_likelihoods.shape != labels.shape:
                raise ValueError(
                    f"Text {index} has {len(log_likelihoods)} log-likelihoods but {len(labels)} labels: give one per "
                    f"position (for a causal LM, labels[:, 1:] with token_log_likelihoods(..., causal=True))."
                )
            scored = log_likelihoods[labels != IGNORE_INDEX]
            if (scored > ROUNDING).any():
                raise ValueError(
                    f"Text {index} has a log-likelihood of {scored.max():.4g} > 0: predictions are log-probabilities "
                    f"(<= 0), not losses (negate per-token losses)."
                )
            total -= float(scored.sum())
            count += scored.size
        if count == 0:
            raise ValueError("No position to score: every reference label is -100.")
        nll = total / count
        return {"perplexity": float(np.exp(nll)), "nll": nll, "tokens": count}
