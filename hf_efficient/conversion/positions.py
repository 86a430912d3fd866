"""Extending a learned absolute position table to a longer context."""

import math

import torch
import torch.nn.functional as F

POSITION_METHODS = ("copy", "interpolate")


def extend_positions(table: torch.Tensor, new_length: int, method: str = "copy") -> torch.Tensor:
    """(old, hidden) -> (new_length, hidden).

    copy: the table repeated end to end (the Longformer paper's recipe, section 5): position p gets row p mod old,
        so the first `old` positions keep their exact embeddings and attention sees the same local structure.
    interpolate: rows linearly interpolated over the new length (positions are stretched, none is kept exactly).
    A shorter new_length truncates.
    """
    old = table.shape[0]
    if new_length <= old:
        return table[:new_length].clone()
    if method == "copy":
        return table.repeat(math.ceil(new_length / old), 1)[:new_length].clone()
    if method == "interpolate":
        stretched = F.interpolate(table.t()[None].float(), size=new_length, mode="linear", align_corners=True)
        return stretched[0].t().to(table.dtype).contiguous()
    raise ValueError(f"position method {method!r} is not one of {POSITION_METHODS}.")
