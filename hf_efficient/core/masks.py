"""The package's one mask convention: boolean keep-masks of shape (batch, seq), validated once at the model's door.

Under torch.compile the checks on mask values run as graph ops (`torch._assert_async`) and the shortcuts that drop an
all-ones padding mask or an all-zeros global mask are skipped: branching on tensor values would break the graph."""

import torch


def as_bool_mask(mask: torch.Tensor, batch: int, length: int, name: str, meaning: str) -> torch.Tensor:
    """Check that a user's mask is (batch, length) of 0/1 (or bool) and return it as bool."""
    if mask.dim() != 2 or tuple(mask.shape) != (batch, length):
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)} but this input needs (batch, sequence) = ({batch}, {length}): "
            f"{meaning}. 3D/4D or additive (0/-inf) masks are not accepted."
        )
    if mask.dtype != torch.bool:
        binary = ((mask == 0) | (mask == 1)).all()
        message = f"{name} must hold only 0 and 1 (or booleans); additive masks are not accepted."
        if torch.compiler.is_compiling():  # a value check without a graph break (raises RuntimeError when run)
            torch._assert_async(binary, message)
        elif not binary:
            raise ValueError(message)
        mask = mask.bool()
    return mask


def validate_keep_mask(mask: torch.Tensor | None, batch: int, length: int, name: str) -> torch.Tensor | None:
    """The padding mask as bool, or None when it keeps every position."""
    if mask is None:
        return None
    meaning = "1 for tokens to attend to, 0 for padding; the model adds causality and its sparsity pattern itself"
    mask = as_bool_mask(mask, batch, length, name, meaning)
    if torch.compiler.is_compiling():  # dropping an all-ones mask is a shortcut, and a data-dependent branch
        return mask
    return None if bool(mask.all()) else mask


def validate_global_mask(mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """The global_attention_mask as bool, or None when no token is global."""
    if mask is None:
        return None
    meaning = "1 on the tokens that attend everywhere and are attended to by every token"
    mask = as_bool_mask(mask, batch, length, "global_attention_mask", meaning)
    if torch.compiler.is_compiling():
        return mask
    return mask if bool(mask.any()) else None


def key_keep(keep: torch.Tensor | None, query_length: int, key_length: int) -> torch.Tensor | None:
    """(batch, keys) keep-mask -> (batch, 1, q, keys), with each query's own key always kept.

    Keeping the diagonal means a padding query still has one key, so no row of the softmax is empty (an empty
    row is NaN in some kernels); real queries are unaffected because their own key is real.
    """
    if keep is None:
        return None
    query_positions = torch.arange(query_length, device=keep.device)[:, None] + key_length - query_length
    own = torch.arange(key_length, device=keep.device) == query_positions
    return keep[:, None, None, :] | own
