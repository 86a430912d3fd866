"""Two (or more) CPU processes joined in a torch.distributed gloo group, as `torchrun` starts them: the tests of what
data-parallel training (DDP, FSDP) needs from the models."""

import os
import socket
import time
from datetime import timedelta

import torch
import torch.multiprocessing as mp

TIMEOUT = 300  # seconds for a whole run; a collective waits at most COLLECTIVE_TIMEOUT
COLLECTIVE_TIMEOUT = timedelta(seconds=120)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_ranks(worker, *args, world: int = 2, timeout: float = TIMEOUT) -> None:
    """Run `worker(rank, world, *args)` (a module-level function) in `world` spawned processes of one gloo group,
    with torchrun's environment variables set (so `Trainer` runs DDP); an exception in a rank fails the caller, and a
    run past `timeout` seconds is killed."""
    context = mp.spawn(_rank, args=(world, free_port(), worker, args), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"{worker.__name__} on {world} processes ran past {timeout} s")


def _rank(rank: int, world: int, port: int, worker, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      OMP_NUM_THREADS="1")  # accelerate sets the threads from it (and warns without it)
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    try:
        worker(rank, world, *args)
    finally:
        torch.distributed.destroy_process_group()
