"""Held-out masked-LM / causal-LM loss and bits per character of a model at several context lengths.

Bits per character (the Longformer paper's measure), from the mean loss L in nats per scored token:

    bpc = L * tokens / characters / ln 2

where `tokens` counts the evaluated token stream (the held-out documents tokenized and joined by one separator
token) and `characters` the characters of those documents. For masked LM, L is the mean over the masked 15% (the
same seeded positions at every length), scaled to every token of the stream, as the paper does.
"""

import math

import torch

from ..conversion.evaluation import causal_lm_loss, masked_lm_loss, masked_stream
from .data import special_ids


def held_out_stream(documents: list[str], tokenizer, causal: bool, max_tokens: int | None = None):
    """(token ids, characters): whole documents in order, joined by the separator, until `max_tokens` (at least
    one document)."""
    separator = special_ids(tokenizer, causal)[2]
    ids, characters = [], 0
    encoded = tokenizer(documents, add_special_tokens=False, verbose=False)["input_ids"]  # no over-length warning
    for document, tokens in zip(documents, encoded, strict=True):
        if ids and max_tokens is not None and len(ids) + len(tokens) > max_tokens:
            break
        ids += tokens + separator
        characters += len(document)
    return torch.tensor(ids), characters


def evaluate_lm(model, documents: list[str], lengths: list[int], tokenizer, max_tokens: int | None = None) -> dict:
    """{length: {"loss", "bits_per_character", "tokens", "characters"}} of `model` (a masked-LM or causal-LM head) on
    the held-out `documents`, the stream cut into windows of each length; a length beyond the model's positions maps
    to None. The model is put in eval mode and given back in its former mode."""
    causal = bool(getattr(model.config, "is_causal", False))
    ids, characters = held_out_stream(documents, tokenizer, causal, max_tokens)
    limit = model.config.max_position_embeddings
    if not causal:
        if tokenizer.mask_token_id is None:
            raise ValueError("Masked-LM evaluation needs a tokenizer with a mask token.")
        inputs, labels = masked_stream(ids, tokenizer.mask_token_id)
    training = model.training
    model.eval()
    results = {}
    try:
        for length in lengths:
            if length > limit:
                results[length] = None
                continue
            if causal:
                loss = causal_lm_loss(model, ids, length)
            else:
                loss = masked_lm_loss(model, inputs, labels, length, tokenizer)
            results[length] = {"loss": loss, "bits_per_character": loss * len(ids) / characters / math.log(2),
                               "tokens": len(ids), "characters": characters}
    finally:
        model.train(training)
    return results
