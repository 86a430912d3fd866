"""ETC's global input from a tokenized document: one global token per sentence (or paragraph, or fixed block)."""

from collections.abc import Iterable

import torch

from ...core.masks import validate_keep_mask


def separator_ids(tokenizer, tokens: Iterable[str]) -> list[int]:
    """The ids of `tokens` (sentence or paragraph ends) in a tokenizer's vocabulary; a token it lacks is refused."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    missing = [token for token, index in zip(tokens, ids, strict=True)
               if index is None or (tokenizer.unk_token_id is not None and index == tokenizer.unk_token_id)]
    if missing:
        raise ValueError(f"The tokenizer has no token {missing} (a SentencePiece vocabulary may spell '.' as '▁.'); "
                         "pass the separators that its tokens use, or their ids.")
    return ids


def build_global_input(input_ids: torch.Tensor, separators=None, attention_mask: torch.Tensor | None = None, *,
                       block_size: int | None = None, global_token_id: int = 1, pad_token_id: int = 0,
                       separator_tokens: tuple[str, ...] = (".", "?", "!")) -> dict[str, torch.Tensor]:
    """One global token per segment of each row of `input_ids` (batch, N), and each long token's segment.

    Segments end at a separator token (it belongs to the segment it ends) when `separators` is given: token ids (an
    int or several) or a tokenizer, whose `separator_tokens` and SEP token are used (sentences by default; pass the
    paragraph-break token for paragraphs). With `block_size` instead, every block_size real tokens form a segment
    (ETC's fixed-block layout). Padding (`attention_mask` 0) belongs to no segment.

    Returns `global_input_ids` (batch, G): `global_token_id` per segment (ETC's pretraining used 1), `pad_token_id`
    after a row's last one; `global_input_mask` (batch, G); `segment_ids` (batch, N), -1 on padding. G is the largest
    segment count of a row. Pass all three to an EfficientETC model.
    """
    if (separators is None) == (block_size is None):
        raise ValueError("Give exactly one of separators (token ids or a tokenizer) or block_size.")
    if input_ids.dim() != 2 or input_ids.is_floating_point():
        raise ValueError(f"input_ids must be integer ids of shape (batch, sequence); got {tuple(input_ids.shape)}.")
    batch, length = input_ids.shape
    real = validate_keep_mask(attention_mask, batch, length, "attention_mask")
    real = torch.ones_like(input_ids, dtype=torch.bool) if real is None else real.to(input_ids.device)
    if block_size is not None:
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
            raise ValueError(f"block_size={block_size!r}: use a positive number of tokens per global token, e.g. 32.")
        segments = (real.cumsum(1) - 1).div(block_size, rounding_mode="floor")
    else:
        if hasattr(separators, "convert_tokens_to_ids"):
            tokens = tuple(separator_tokens) + ((separators.sep_token,) if separators.sep_token else ())
            separators = separator_ids(separators, tokens)
        ids = torch.tensor([separators] if isinstance(separators, int) else list(separators), dtype=input_ids.dtype,
                           device=input_ids.device)
        if ids.numel() == 0:
            raise ValueError("separators is empty; give at least one token id that ends a sentence or paragraph.")
        ends = torch.isin(input_ids, ids) & real
        segments = ends.cumsum(1) - ends.long()  # a separator belongs to the segment it ends
    segments = torch.where(real, segments, -1)
    counts = segments.amax(1) + 1  # (batch,); 0 for a row of padding only
    num_global = max(int(counts.max()), 1)
    global_input_mask = torch.arange(num_global, device=input_ids.device)[None, :] < counts[:, None]
    global_input_ids = torch.where(global_input_mask, global_token_id, pad_token_id).to(input_ids.dtype)
    return {"global_input_ids": global_input_ids, "global_input_mask": global_input_mask.long(),
            "segment_ids": segments}


class GlobalInputCollator:
    """A data collator for EfficientETC: `collator` (e.g. DataCollatorWithPadding) pads the long input, then the
    global input is built per batch from it (`build_global_input` with these options), so datasets need no global
    columns. `collator(features)` must return input_ids (and attention_mask where padded)."""

    def __init__(self, collator, separators=None, **options):
        self.collator, self.separators, self.options = collator, separators, options

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        batch.update(build_global_input(batch["input_ids"], self.separators, batch.get("attention_mask"),
                                        **self.options))
        return batch
