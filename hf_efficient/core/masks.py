"""The package's one mask convention: boolean keep-masks of shape (batch, seq), validated once at the model's door.

Under torch.compile the checks on mask values run as graph ops (`torch._assert_async`) and the shortcuts that drop an
all-ones padding mask or an all-zeros global mask are skipped: branching on tensor values would break the graph."""

import torch


def refuse_unless(condition: torch.Tensor, message: str) -> None:
    """A check on tensor values: a ValueError in eager mode; inside torch.compile an asynchronous assertion (a
    RuntimeError with the same message when the graph runs), which keeps the graph whole."""
    if torch.compiler.is_compiling():
        torch._assert_async(condition, message)
    elif not bool(condition):
        raise ValueError(message)


def as_bool_mask(mask: torch.Tensor, batch: int, length: int, name: str, meaning: str) -> torch.Tensor:
    """Check that a user's mask is (batch, length) of 0/1 (or bool) and return it as bool."""
    if mask.dim() != 2 or tuple(mask.shape) != (batch, length):
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)} but this input needs (batch, sequence) = ({batch}, {length}): "
            f"{meaning}. 3D/4D or additive (0/-inf) masks are not accepted."
        )
    if mask.dtype != torch.bool:
        refuse_unless(((mask == 0) | (mask == 1)).all(),
                      f"{name} must hold only 0 and 1 (or booleans); additive masks are not accepted.")
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


def leading_padding(keep: torch.Tensor) -> torch.Tensor:
    """(batch,) long: the padding positions before each row's first real token (0 for a right-padded row)."""
    return (keep.cumsum(-1) == 0).sum(-1)


def left_padding_error(where: str, instead: str = "") -> ValueError:
    """The refusal of left padding where a mechanism cannot make it exact, saying what to do instead."""
    return ValueError(
        f"{where} ties attention to absolute positions/blocks, so it cannot take a batch with padding before the real "
        'tokens (left padding). Pad on the right (tokenizer.padding_side = "right") or batch equal lengths; for '
        f"generation use batch size 1 or equal-length prompts.{' ' + instead if instead else ''}"
    )


def refuse_left_padding(keep: torch.Tensor | None, where: str, instead: str = "") -> None:
    """Raise `left_padding_error` when a row of `keep` (batch, N) starts with padding before its real tokens: a
    ValueError in eager mode; inside torch.compile an asynchronous assertion (a RuntimeError with the same message),
    which keeps the graph whole."""
    if keep is None:
        return
    padded_start = ~keep[:, 0] & keep.any(-1)
    refuse_unless(~padded_start.any(), str(left_padding_error(where, instead)))


def left_padding_starts(keep: torch.Tensor | None, shared_state: dict | None = None) -> torch.Tensor | None:
    """(batch,) long: each row's first real position (its leading padding), made once per forward (kept in
    `shared_state`); None when no row is left-padded, so unpadded and right-padded batches take no extra work (while
    compiling it is always made, so that no data-dependent branch breaks the graph)."""
    if keep is None:
        return None
    shared_state = {} if shared_state is None else shared_state
    if "left_padding_starts" not in shared_state:
        starts = leading_padding(keep)
        shared_state["left_padding_starts"] = starts if torch.compiler.is_compiling() or bool(starts.any()) else None
    return shared_state["left_padding_starts"]


class RightAlignment:
    """Moves each row's leading padding to its end (a per-row rotation), so a mechanism whose pattern is tied to
    absolute positions sees a batch padded on the right, where real tokens get exactly the outputs of the unpadded
    rows; `restore` moves outputs back. keep (batch, N) bool, starts (batch,) its `leading_padding`."""

    def __init__(self, keep: torch.Tensor, starts: torch.Tensor):
        length = keep.shape[-1]
        positions = torch.arange(length, device=keep.device)[None, :]
        self.order = (positions + starts[:, None]) % length  # (batch, N): aligned position t holds input order[t]
        self.inverse = (positions - starts[:, None]) % length
        self.keep = keep.gather(1, self.order)

    @staticmethod
    def _permute(states: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
        shape = [1] * states.dim()
        shape[0], shape[dim] = index.shape
        return states.gather(dim, index.view(shape).expand(states.shape))

    def align(self, states: torch.Tensor, dim: int) -> torch.Tensor:
        """(batch, ..., N, ...) with the sequence on `dim`: the input order -> the right-aligned order."""
        return self._permute(states, self.order, dim)

    def restore(self, states: torch.Tensor, dim: int) -> torch.Tensor:
        """The right-aligned order -> the input order."""
        return self._permute(states, self.inverse, dim)


def right_alignment(keep: torch.Tensor | None, shared_state: dict | None = None) -> RightAlignment | None:
    """The RightAlignment of this forward's padding mask, made once per forward (kept in `shared_state`), or None
    when no row is left-padded (see `left_padding_starts`)."""
    shared_state = {} if shared_state is None else shared_state
    if "right_alignment" not in shared_state:
        starts = left_padding_starts(keep, shared_state)
        shared_state["right_alignment"] = None if starts is None else RightAlignment(keep, starts)
    return shared_state["right_alignment"]


def padding_side(model) -> str:
    """The side a tokenizer should pad on for `model` (a model or head of the package): "left" for a causal model
    whose attention takes left padding everywhere (`supports_left_padding`: batched `generate()` works), "right"
    otherwise (an encoder's absolute positions shift under left padding unless position ids are given)."""
    attention = type(model.base_model).attention_class
    return "left" if model.config.is_causal and attention.supports_left_padding else "right"
