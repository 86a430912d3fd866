"""torch.compile for the GPU paths: one compiled graph per function and input shape, fused elementwise work.

Shapes are static on purpose (`dynamic=False`, which also turns off dynamo's automatic dynamic shapes): each graph
is specialised to its shapes (FlexAttention's kernels take the sequence lengths and tile counts as constants), and
the callers keep the number of shapes small by padding the length to a few buckets (`flex.bucket_length`), so a run
compiles once per bucket and batch size whatever the lengths it sees. Masks and padding are tensors, data of the
graph, never constants of it. Past dynamo's recompile limit (8) torch.compile would fall back silently to the eager
function (for FlexAttention: one that materialises the N x N scores); a run over many buckets, variants or head
sizes (a benchmark, a test suite) needs more, so calls go through `run_compiled`, which raises the limit around them.
"""

import functools
from collections.abc import Callable

import torch

RECOMPILE_LIMIT = 256
BACKEND = "inductor"  # torch.compile's backend; tests swap in a counting one (then call compiled.cache_clear())


@functools.cache
def compiled(function: Callable) -> Callable:
    """`torch.compile(function, dynamic=False)`, made once per function."""
    return torch.compile(function, dynamic=False, backend=BACKEND)


def run_compiled(function: Callable, *args, **kwargs):
    """The compiled `function` on these arguments, with room for RECOMPILE_LIMIT shapes."""
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        return compiled(function)(*args, **kwargs)
