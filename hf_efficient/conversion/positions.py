"""Positions for a longer context: a learned absolute table extended (copy or interpolate); rotary positions kept
as they are, or rescaled through transformers' rope_parameters (linear, yarn)."""

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


ROPE_SCALINGS = ("linear", "yarn")


def parse_rope_scaling(scaling: str | dict) -> dict:
    """TYPE[:FACTOR] -> rope_parameters keys: "linear:4" -> {"rope_type": "linear", "factor": 4.0}, "yarn" ->
    {"rope_type": "yarn"} (the factor filled in later); a dict is taken as given."""
    if isinstance(scaling, dict):
        return dict(scaling)
    rope_type, _, factor = scaling.partition(":")
    if rope_type not in ROPE_SCALINGS:
        why = (" (it recomputes the frequencies for each input length, which a converted model's static rotary "
               "tables and its KV cache don't follow)" if rope_type in ("dynamic", "longrope") else "")
        raise ValueError(f"{rope_type!r} is not supported{why}; use one of {ROPE_SCALINGS}, as "
                         "TYPE or TYPE:FACTOR, e.g. linear:4.")
    if not factor:
        return {"rope_type": rope_type}
    try:
        return {"rope_type": rope_type, "factor": float(factor)}
    except ValueError:
        raise ValueError(f"rope scaling factor {factor!r} is not a number; write e.g. {rope_type}:4.") from None


def scale_rotary(position_embedding_type: str, rope_parameters: dict | None, scaling: str | dict, source_length: int,
                 new_length: int) -> dict:
    """The target's `rope_parameters` (transformers' format): the source's RoPE rescaled for a longer context.

    The model's rotary embedding computes the frequencies with transformers' own ROPE_INIT_FUNCTIONS, so a converted
    model equals a transformers Llama with the same `rope_parameters`.
    linear: position interpolation (Chen et al., arXiv 2306.15595): inv_freq / s, i.e. position p rotated as p / s.
    yarn: NTK-by-parts interpolation plus an attention temperature (Peng et al., arXiv 2309.00071), with the source's
        length as `original_max_position_embeddings`.
    The factor s defaults to new_length / source_length. A dict gives rope_parameters keys directly (any static
    rope_type of transformers, e.g. llama3), kept over the source's rope_theta. Costs nothing at run time.
    """
    if position_embedding_type != "rotary":
        raise ValueError(f"it rescales rotary positions (Llama-family sources), but this source has "
                         f"{position_embedding_type} positions; a learned table is extended by position_init "
                         f"{POSITION_METHODS} instead.")
    source = dict(rope_parameters or {})
    scaled = parse_rope_scaling(scaling)
    if source.get("rope_type", "default") != "default" and not isinstance(scaling, dict):
        raise ValueError(f"the source already scales its RoPE ({source}), and conversion keeps that as it is; drop "
                         "the scaling, or give a dict of rope_parameters to replace it.")
    if "factor" not in scaled and scaled.get("rope_type") in ROPE_SCALINGS:
        if new_length <= source_length:
            raise ValueError(f"the factor defaults to max_length / source length, but max_length={new_length} is not "
                             f"above the source's {source_length}; give a longer max_length or the factor "
                             f"({scaled['rope_type']}:FACTOR).")
        scaled["factor"] = new_length / source_length
    factor = scaled.get("factor", 1.0)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
        raise ValueError(f"the factor must be a number >= 1 (how many times longer the context gets), got {factor!r}.")
    if scaled.get("rope_type") in ("yarn", "llama3"):
        scaled.setdefault("original_max_position_embeddings", source_length)
    kept = {key: source[key] for key in ("rope_theta", "partial_rotary_factor") if key in source}
    return {**kept, **scaled}
