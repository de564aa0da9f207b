"""The processes stage 03 trains on: accelerate's process state, and each rank's report of what it did.

One process, or several that ``accelerate launch`` started (lib.finetune.multiprocess); either way the
trainer (lib.finetune.trainer) and the stage (lib.finetune.dreambooth) ask here which process they are.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..core import atomic
from .checkpoints import trainable_state


def launched() -> bool:
    """Whether this process is one of several that a launcher (accelerate launch, torchrun) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def state():
    """accelerate's process state. Without CUDA, processes a launcher started join over gloo on the CPU
    (accelerate's PartialState needs cpu=True for that; ACCELERATE_USE_CPU=1 asks for it anywhere)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (launched() and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def weights_hash(trainer) -> str:
    """SHA-256 of a trainer's trained tensors (names and bytes), to compare processes bit for bit."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(trainable_state(trainer).items()):
        h.update(name.encode())
        h.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_rank_report(trainer, directory) -> Path:
    """rank<r>_<model>.json in ``directory``: this process's gate decisions, loss steps and weight hash.
    A test and debugging aid, written by every rank (the one exception to rank 0 writing alone)."""
    acc = trainer.acc
    report = {"rank": acc.process_index, "num_processes": acc.num_processes, "model": trainer.name,
              "decisions": [{"step": r["step"], "skipped": bool(r["skipped"]), "score": float(r["score"])}
                            for r in trainer.gating_rows],
              "loss_steps": [r["step"] for r in trainer.loss_rows], "weights_sha256": weights_hash(trainer)}
    return atomic.write_json(Path(directory) / f"rank{acc.process_index}_{trainer.name}.json", report)
