"""torch.distributed helpers: what every process of a data-parallel run (DDP, FSDP) must agree on."""

import torch


def distributed() -> bool:
    """Whether this process is one of a torch.distributed group (initialised)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def shared_seed(high: int, group=None) -> int:
    """A seed in [0, high) from torch's global generator; under torch.distributed rank 0's on every process (their
    generators drift apart, e.g. through dropout on batches of other shapes or per-rank seeds), so that a redraw or
    a per-step draw gives every rank the same random features, blocks or tables. A collective: every rank (of
    `group`, default the world; then its first rank's seed) calls it."""
    seed = int(torch.randint(0, high, (1,)))
    if distributed():
        box = [seed]
        source = 0 if group is None else torch.distributed.get_global_rank(group, 0)
        torch.distributed.broadcast_object_list(box, src=source, group=group)
        seed = box[0]
    return seed
