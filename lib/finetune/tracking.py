"""Live training logs of stage 03 through accelerate's trackers (TensorBoard).

Each model of a stage-03 run logs into ``<stage 03 folder>/tb/<run id>/<model>/``: the run id is the one
the runner names the run by (method, tuning size, gate, control, seed: ``spectral-clip_n100_thr0.875_seed2``),
so TensorBoard's run list tells the runs apart without their stage hashes; ``<model>`` is ``model``, or
``model_<label>`` for the per-label layout. It holds ``train/loss``, ``train/loss_prior`` and ``train/lr`` per
trained batch, the validation images per label (``validation/<label>``), and, only for a run that can skip
(gated, or the random-skip control), ``gate/skipped`` and ``gate/skip_rate`` (running) per batch, with
``gate/score`` and ``gate/threshold`` for the gated run (an ungated run would only draw flat zero lines).
``make board`` opens TensorBoard on runs/, which finds every stage folder's tb/. The folder lies beside the CSV logs it mirrors, so a run's logs stay with its
parameters; stage fingerprints read only CSV/JSON files directly in the stage folder, so tb/ changes none.

Logging draws no random numbers and touches no tensor the training reads, so it changes no result
(finetune.tensorboard is no part of any stage key); rank 0 alone writes (accelerate's trackers live on
the main process). A resumed run purges the events its killed predecessor logged after the checkpoint.
finetune.tensorboard: false turns it all off.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..core import run_names

import numpy as np


def accelerator_kwargs(cfg, out_dir) -> dict:
    """The Accelerator arguments that attach the TensorBoard tracker (none when switched off)."""
    if not cfg.finetune.tensorboard:
        return {}
    return {"log_with": "tensorboard", "project_dir": str(Path(out_dir) / "tb")}


def run_name(cfg, model: str) -> str:
    """The tracker's run folder under tb/: ``<run id>/<model>``, the run id as the runner names the run."""
    return f"{run_names.run_id(cfg)}/{model}"


def skips(cfg) -> bool:
    """Whether the run can skip batches (the gate, or the random-skip control), so has gate lines to draw."""
    return (cfg.gating.enabled and cfg.finetune.control == "none") or cfg.finetune.control == "random-skip"


class Board:
    """One model's TensorBoard run on an Accelerator built with ``accelerator_kwargs``. With ``cfg``, the run
    is named by ``run_name`` and keeps gate scalars only if ``skips``; without, it is named ``name``."""

    def __init__(self, accelerator, name: str, start_step: int, enabled: bool, cfg=None):
        self.acc, self.on = accelerator, bool(enabled)
        self.gated = cfg is None or skips(cfg)
        if self.on:
            # purge_step: a resumed run drops what the killed one logged after its checkpoint
            kwargs = {"purge_step": start_step} if start_step > 0 else {}
            self.acc.init_trackers(run_name(cfg, name) if cfg is not None else name,
                                   init_kwargs={"tensorboard": kwargs})

    def scalars(self, values: dict, step: int) -> None:
        """Finite numbers only (the quantile rule's threshold is NaN during its warm-up)."""
        if not self.on:
            return
        clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))
                 and (self.gated or not k.startswith("gate/"))}
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
