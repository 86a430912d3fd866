"""torch.compile for the GPU paths: one compiled graph per function and input shape, fused elementwise work.

A function compiled with static shapes is specialised to each shape (and mask function); past dynamo's recompile
limit (8) torch.compile falls back silently to the eager function (for FlexAttention: one that materialises the
N x N scores). A model sees one or two shapes per input length, but a run over many lengths or variants (a
benchmark, a test suite) needs more, so calls go through `run_compiled`, which raises the limit around them.
"""

import functools
from collections.abc import Callable

import torch

RECOMPILE_LIMIT = 256


@functools.cache
def compiled(function: Callable) -> Callable:
    """`torch.compile(function, dynamic=False)`, made once per function."""
    return torch.compile(function, dynamic=False)


def run_compiled(function: Callable, *args, **kwargs):
    """The compiled `function` on these arguments, with room for RECOMPILE_LIMIT shapes."""
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        return compiled(function)(*args, **kwargs)
