"""Global tokens (Longformer, BigBird, ETC): which positions of each row are global, and moving their rows.

Rows have different numbers of global tokens; they are packed into (batch, G) slots, G the largest count, with a
mask saying which slots are real.
"""

import torch


def global_slots(is_global: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, seq) bool -> positions (batch, G) of each row's global tokens in order, and which slots are real."""
    counts = is_global.sum(1)
    most = int(counts.max())
    order = torch.argsort((~is_global).to(torch.int8), dim=1, stable=True)[:, :most]
    valid = torch.arange(most, device=is_global.device)[None, :] < counts[:, None]
    return order, valid


def gather_positions(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """states (batch, heads, seq, d), index (batch, G) -> (batch, heads, G, d)."""
    batch, heads, _, dim = states.shape
    return states.gather(2, index[:, None, :, None].expand(batch, heads, index.shape[1], dim))


def scatter_global_rows(
    attended: torch.Tensor, rows: torch.Tensor, global_index: torch.Tensor, global_valid: torch.Tensor
) -> torch.Tensor:
    """Overwrite the global tokens' rows of attended (batch, N, heads, d) with rows (batch, G, heads, d)."""
    batch_index, slot = global_valid.nonzero(as_tuple=True)
    return attended.index_put((batch_index, global_index[batch_index, slot]), rows[batch_index, slot])
