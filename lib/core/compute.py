"""Compute settings shared by every stage: the device and torch's CPU threads (their one home)."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def cpu_threads(n: int | None, gpu_too: bool = False):
    """Limit torch's intra-op CPU threads inside the block (None or 0: leave torch's default).

    Small convolutions on a shared 2-core machine run many times slower with 2 threads when another
    process is busy (measured ~10x), so the demo and smoke parameter sets ask for 1. On a CUDA machine
    the block is left alone (the work runs on the GPU) unless ``gpu_too``: for work that runs on the CPU
    whatever the machine (the tiny base model's and the offline CLIP's builds).
    """
    import torch      # here, so that importing this module stays torch-free (lib.tuningset.embeddings, lib.evaluate.features)

    if not n or (torch.cuda.is_available() and not gpu_too):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def device():
    """The device accelerate picks (CUDA or MPS when present), else torch's plain choice when accelerate is
    missing or misconfigured."""
    import torch

    try:
        from accelerate import PartialState

        return PartialState().device
    except Exception:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(precision: str | None, device=None, what: str = "precision"):
    """An autocast block for sampling in ``precision`` (fp32 / bf16 / fp16; None or fp32: a no-op) on ``device``'s
    type. fp16 has no fast CPU path: without CUDA it is refused with what to set instead."""
    import contextlib

    import torch

    if precision in (None, "fp32"):
        return contextlib.nullcontext()
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "fp16" and kind == "cpu":
        from .config import ParamError

        raise ParamError(f"{what} = fp16 needs a GPU; on the CPU set it to bf16 (fast with bf16 units) or fp32.")
    return torch.autocast(kind, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
