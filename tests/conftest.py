import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/testers.py

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n N`: N workers share the cores, one thread each
    torch.set_num_threads(1)


def pytest_collection_modifyitems(session, config, items):
    """The real-weight tests (marked slow: minutes each on one thread) go first, the longest of all at the very front.
    Under `-n auto --dist worksteal` a worker that runs out of tests takes the others' queued ones, so the run ends on
    short tests instead of one worker finishing a five-minute test while the other idles."""
    def rank(item) -> int:
        if item.get_closest_marker("slow") is None:
            return 2
        return 0 if "packaged_source" in item.name else 1

    items.sort(key=rank)  # stable: within a rank, collection order (each module's tests stay together)
