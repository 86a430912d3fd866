"""The metrics the package's fine-tuning uses, shipped as `evaluate` metric modules so they load offline.

`evaluate.load("accuracy")` fetches its script from the Hub; `hf_efficient.metrics.load("accuracy")` is
`evaluate.load` on the module folder inside this package (accuracy, f1, perplexity): same object, same
`compute` / `add_batch`, no network. `module_path(name)` gives the folder for `evaluate.load` itself.

    accuracy, f1 = metrics.load("accuracy"), metrics.load("f1")

    def compute_metrics(eval_pred):
        predictions = eval_pred.predictions.argmax(-1)
        return {**accuracy.compute(predictions=predictions, references=eval_pred.label_ids),
                **f1.compute(predictions=predictions, references=eval_pred.label_ids, average="macro")}
"""

from pathlib import Path

import evaluate
import torch

METRICS = ("accuracy", "f1", "perplexity")
IGNORE_INDEX = -100


def module_path(name: str) -> str:
    """The folder of the packaged metric module `name` (one of METRICS), for `evaluate.load`."""
    if name not in METRICS:
        raise ValueError(f"No packaged metric {name!r}; the package ships {list(METRICS)}.")
    return str(Path(__file__).resolve().parent / name)


def load(name: str, **kwargs) -> evaluate.EvaluationModule:
    """`evaluate.load` of the packaged metric `name` (accuracy, f1, perplexity); kwargs go to `evaluate.load`
    (config_name, keep_in_memory, experiment_id, num_process, process_id, cache_dir...)."""
    return evaluate.load(module_path(name), **kwargs)


def token_log_likelihoods(logits, labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """log p(label) at every scored position, the `predictions` of the packaged perplexity; usable as Trainer's
    `preprocess_logits_for_metrics` (e.g. `functools.partial(token_log_likelihoods, causal=True)`).

    logits (batch, seq, vocab) (or a tuple starting with them, as Trainer passes extra outputs), labels (batch, seq)
    with -100 at unscored positions. causal=True: logits[:, t] scores labels[:, t + 1] (transformers' shift), and the
    result (batch, seq - 1) lines up with `labels[:, 1:]`; causal=False (masked LM): (batch, seq), with `labels`.
    Unscored positions hold 0 (the metric skips them by their label).
    """
    if isinstance(logits, tuple):
        logits = logits[0]
    if labels is None:
        raise ValueError("token_log_likelihoods needs the labels (Trainer passes them when the dataset has labels).")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (batch, seq).")
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    scored = labels != IGNORE_INDEX
    picked = log_probs.gather(-1, torch.where(scored, labels, 0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(~scored, 0.0)
