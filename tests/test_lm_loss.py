"""Language-model losses without the whole logits: equal to transformers' losses (value and gradients, fp32), the
head never sees more than one chunk of rows, logits returned when asked."""

import pytest
import torch
from testers import TESTERS

from hf_efficient.auto import VARIANTS
from hf_efficient.core import lm_loss
from hf_efficient.core.lm_loss import chunked_head_loss

CASES = [("masked_lm", "bert"), ("causal_lm", "gpt2"), ("causal_lm", "llama")]


def build(head: str, style: str):
    torch.manual_seed(0)
    config = TESTERS["efficient_longformer"].config(style)
    return VARIANTS["efficient_longformer"].heads[head](config).train()


def batch(model, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, model.config.vocab_size, (2, 29), generator=generator)
    labels = ids.clone()
    labels[torch.rand(ids.shape, generator=generator) < 0.6] = -100  # masked-LM style: some positions unlabelled
    return ids, labels


def loss_and_grads(model, **inputs):
    model.zero_grad()
    out = model(**inputs)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("num_items", [None, 37])
@pytest.mark.parametrize(("head", "style"), CASES)
def test_loss_without_logits_equals_transformers_loss(head, style, num_items, monkeypatch):
    model = build(head, style)
    ids, labels = batch(model)
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    reference, reference_grads = loss_and_grads(model, input_ids=ids, labels=labels, return_logits=True, **extra)
    assert reference.logits is not None
    monkeypatch.setattr(lm_loss, "CHUNK_ROWS", 5)  # several chunks, the last partial
    rows_seen = []
    head_module = model.lm_head
    hook = head_module.register_forward_hook(lambda module, args, output: rows_seen.append(args[0].shape[0]))
    chunked, chunked_grads = loss_and_grads(model, input_ids=ids, labels=labels, **extra)
    hook.remove()
    assert chunked.logits is None
    torch.testing.assert_close(chunked.loss, reference.loss, rtol=1e-6, atol=1e-6)
    assert chunked_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    labelled = int((labels[:, 1:] if head == "causal_lm" else labels).ne(-100).sum())
    forward_rows = rows_seen[: len(rows_seen) // 2]  # each chunk runs again in the backward (checkpointing)
    assert max(rows_seen) <= 5 and sum(forward_rows) == labelled


@pytest.mark.parametrize(("head", "style"), CASES)
def test_logits_are_returned_unless_training_with_labels(head, style):
    model = build(head, style)
    ids, labels = batch(model)
    assert model(input_ids=ids).logits.shape == (*ids.shape, model.config.vocab_size)
    assert model(input_ids=ids, labels=labels).logits is None
    model.eval()
    with torch.no_grad():
        evaluated = model(input_ids=ids, labels=labels)
        assert evaluated.logits.shape == (*ids.shape, model.config.vocab_size)
        assert model(input_ids=ids, labels=labels, return_logits=False).logits is None


def test_chunked_head_loss_equals_cross_entropy_on_random_rows():
    torch.manual_seed(3)
    head = torch.nn.Linear(16, 50)
    hidden, labels = torch.randn(4, 23, 16, requires_grad=True), torch.randint(0, 50, (4, 23))
    labels[0, :10] = -100
    expected = torch.nn.functional.cross_entropy(head(hidden).flatten(0, 1), labels.flatten(), ignore_index=-100)
    expected_grad = torch.autograd.grad(expected, hidden)[0]
    for rows in (1, 7, 1000):
        actual = chunked_head_loss(head, hidden, labels, chunk_rows=rows)
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(torch.autograd.grad(actual, hidden)[0], expected_grad, rtol=1e-5, atol=1e-7)
