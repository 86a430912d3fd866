"""Language-model losses that never hold the whole (tokens x vocab) logits.

A 30522-way masked-LM head on 512K tokens makes 62 GB of fp32 logits, and as much again for their gradient; they,
not the attention, bound how long a sequence trains. Here the head runs only on the labelled positions (for masked
LM, about 15% of them) and in chunks of `chunk_rows` rows, each under activation checkpointing, so the logits of one
chunk exist at a time, in the forward and in the backward: memory O(chunk_rows x vocab) instead of
O(tokens x vocab), for one extra head matmul per chunk in the backward. The result equals transformers'
ForMaskedLMLoss / ForCausalLMLoss (the same sum, divided by `num_items_in_batch` when Trainer gives it, else by the
number of labelled positions).
"""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
CHUNK_ROWS = 4096


def _chunk_loss_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_head_loss(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                      num_items_in_batch: torch.Tensor | int | None = None,
                      chunk_rows: int | None = None) -> torch.Tensor:
    """Cross-entropy of `head(hidden)` against `labels` (-100 = ignored) over the labelled positions only.

    hidden (..., hidden_size) and labels (...) of the same leading shape; the mean over labelled positions, or the
    sum divided by `num_items_in_batch` when given (gradient accumulation). `chunk_rows` defaults to CHUNK_ROWS.
    """
    chunk_rows = chunk_rows or CHUNK_ROWS
    labelled = labels != IGNORE_INDEX
    rows, targets = hidden[labelled], labels[labelled]  # (labelled, hidden_size), (labelled,)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.shape[0], chunk_rows):
        chunk = (head, rows[start:start + chunk_rows], targets[start:start + chunk_rows])
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss_sum, *chunk, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(*chunk)
    if num_items_in_batch is None:
        return total / targets.shape[0]
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """(batch, seq) labels -> the label each position predicts: the next token's, -100 at the end."""
    return nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
