"""Training data of the pretraining recipe: documents split by document into train and held-out parts, then packed
into blocks of the target length as a `datasets.Dataset` (imported lazily: the library is not needed to load or
evaluate a model; where it is not installed the blocks are served from a list, with a warning)."""

import random

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)


class Blocks(torch.utils.data.Dataset):
    """The packed blocks as {"input_ids": [...]} rows, where the datasets library is missing."""

    def __init__(self, blocks: list[list[int]]):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.blocks[index]}


def split_documents(documents: list[str], held_out_fraction: float = 0.05, seed: int = 0) -> tuple[list, list]:
    """(train, held_out): a seeded shuffle of whole documents, so no document contributes to both; at least one
    document on each side."""
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must lie strictly between 0 and 1, got {held_out_fraction}.")
    if len(documents) < 2:
        raise ValueError(f"Need at least 2 documents to hold some out, got {len(documents)}.")
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    count = min(max(1, round(len(documents) * held_out_fraction)), len(documents) - 1)
    return [documents[i] for i in sorted(order[count:])], [documents[i] for i in sorted(order[:count])]


def special_ids(tokenizer, causal: bool) -> tuple[list[int], list[int], list[int]]:
    """(block prefix, block suffix, document separator): [CLS] ... [SEP] blocks joined by [SEP] for an encoder;
    plain blocks joined by the end-of-text token for a decoder."""
    if causal:
        separator = tokenizer.eos_token_id
        if separator is None:
            raise ValueError("The tokenizer has no eos_token to separate documents for causal-LM training.")
        return [], [], [separator]
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError("The tokenizer has no [CLS]/[SEP] tokens to frame masked-LM blocks.")
    return [tokenizer.cls_token_id], [tokenizer.sep_token_id], [tokenizer.sep_token_id]


def pack_documents(documents: list[str], tokenizer, length: int, causal: bool):
    """A `datasets.Dataset` with one `input_ids` column of `length` tokens per row: the documents tokenized,
    concatenated with a separator between them, cut into consecutive blocks (each framed by [CLS]/[SEP] for an
    encoder); the last partial block is dropped."""
    prefix, suffix, separator = special_ids(tokenizer, causal)
    inner = length - len(prefix) - len(suffix)
    if inner < 1:
        raise ValueError(f"length {length} leaves no room for text between the special tokens.")
    stream = []
    for ids in tokenizer(documents, add_special_tokens=False, verbose=False)["input_ids"]:
        stream += ids + separator
    blocks = [prefix + stream[start:start + inner] + suffix for start in range(0, len(stream) - inner + 1, inner)]
    if not blocks:
        raise ValueError(f"The documents give {len(stream)} tokens, fewer than one block of {length}: add text or "
                         "shorten the length.")
    try:
        from datasets import Dataset  # lazily: see the module docstring
    except ImportError:
        logger.warning("The datasets library is not installed (pip install datasets): serving the blocks from a list.")
        return Blocks(blocks)
    return Dataset.from_dict({"input_ids": blocks})
