"""Live training logs of stage 03 through accelerate's trackers (TensorBoard).

Each model of a stage-03 run logs into ``<stage 03 folder>/tb/<model>/`` (``model``, or ``model_<label>``
for the per-label layout): ``train/loss``, ``train/loss_prior`` and ``train/lr`` per trained batch,
``gate/score``, ``gate/threshold``, ``gate/skipped`` and ``gate/skip_rate`` (running) per batch, and the
validation images per label (``validation/<label>``). ``make board`` opens TensorBoard on runs/, which finds
every stage folder's tb/. The folder lies beside the CSV logs it mirrors, so a run's logs stay with its
parameters; stage fingerprints read only CSV/JSON files directly in the stage folder, so tb/ changes none.

Logging draws no random numbers and touches no tensor the training reads, so it changes no result
(finetune.tensorboard is no part of any stage key); rank 0 alone writes (accelerate's trackers live on
the main process). A resumed run purges the events its killed predecessor logged after the checkpoint.
finetune.tensorboard: false turns it all off.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def accelerator_kwargs(cfg, out_dir) -> dict:
    """The Accelerator arguments that attach the TensorBoard tracker (none when switched off)."""
    if not cfg.finetune.tensorboard:
        return {}
    return {"log_with": "tensorboard", "project_dir": str(Path(out_dir) / "tb")}


class Board:
    """One model's TensorBoard run on an Accelerator built with ``accelerator_kwargs``."""

    def __init__(self, accelerator, name: str, start_step: int, enabled: bool):
        self.acc, self.on = accelerator, bool(enabled)
        if self.on:
            # purge_step: a resumed run drops what the killed one logged after its checkpoint
            kwargs = {"purge_step": start_step} if start_step > 0 else {}
            self.acc.init_trackers(name, init_kwargs={"tensorboard": kwargs})

    def scalars(self, values: dict, step: int) -> None:
        """Finite numbers only (the quantile rule's threshold is NaN during its warm-up)."""
        if not self.on:
            return
        clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        if clean:
            self.acc.log(clean, step=step)

    def images(self, tag: str, stack: np.ndarray, step: int) -> None:
        """A stack of n x H x W uint8 grayscale images under one tag."""
        if not self.on or not self.acc.is_main_process:
            return
        writer = self.acc.get_tracker("tensorboard", unwrap=True)
        writer.add_images(tag, np.asarray(stack)[:, None], step, dataformats="NCHW")

    def close(self) -> None:
        """Flush and close the event file. Not Accelerator.end_training, which also ends the process group
        a per-label run still needs for its next model."""
        if self.on:
            for tracker in self.acc.trackers:
                tracker.finish()
            self.on = False
