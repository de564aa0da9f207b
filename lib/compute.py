"""Compute settings shared by the generation and classifier stages."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def cpu_threads(n: int | None):
    """Limit torch's intra-op CPU threads inside the block (None: leave torch's default).

    Small convolutions on a shared 2-core machine run many times slower with 2 threads when another
    process is busy (measured ~10x), so the demo and smoke parameter sets ask for 1.
    """
    if n is None or torch.cuda.is_available():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
