"""Global tokens (Longformer, BigBird, ETC): which positions of each row are global, and moving their rows.

Rows have different numbers of global tokens; they are packed into (batch, G) slots, G the largest count, with a
mask saying which slots are real.
"""

import torch


def global_slots(is_global: torch.Tensor, bound: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, seq) bool -> positions (batch, G) of each row's global tokens in order, and which slots are real.

    G is the largest count of a row; under torch.compile, where reading it would break the graph, G is `bound` (an
    upper bound the caller knows from the shapes; default seq), the extra slots not real."""
    counts = is_global.sum(1)
    compiling = torch.compiler.is_compiling()
    most = min(is_global.shape[1], bound or is_global.shape[1]) if compiling else int(counts.max())
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
    """Overwrite the global tokens' rows of attended (batch, N, heads, d) with rows (batch, G, heads, d); slots that are
    not real write into a spare row past the end (no data-dependent indexing, so it compiles into one graph)."""
    length = attended.shape[1]
    target = torch.where(global_valid, global_index, length)
    spare = torch.nn.functional.pad(attended, (0, 0, 0, 0, 0, 1))
    index = target[:, :, None, None].expand(*target.shape, *attended.shape[2:])
    return spare.scatter(1, index, rows.to(spare.dtype))[:, :length]
