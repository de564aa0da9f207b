"""Stage 03's checkpoints: save a trainer's state, resume it, and recognise a stage that already finished.

A checkpoint (``checkpoints/<model>/step_XXXXXX.pt``) holds the trained weights, the optimizer, the LR
schedule, the gating state and the logs so far, under the run key of its parameter set; a trainer resumed
from it ends identical to an uninterrupted one (lib.finetune.trainer). The last ``keep_checkpoints`` are kept.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..core import atomic, stages
from ..core.config import Config, ParamError


class CheckpointMismatch(ParamError):
    """A checkpoint written for other parameters."""


def trainable_state(trainer) -> dict:
    """The trained tensors of a trainer (UNet, and text encoder when trained), by name, on the CPU."""
    out = {}
    for prefix, mod in (("unet.", trainer.unet), ("text.", trainer.text)):
        m = trainer.acc.unwrap_model(mod)
        names = {n for n, p in m.named_parameters() if p.requires_grad}
        out.update({prefix + k: v.detach().cpu().clone() for k, v in m.state_dict().items() if k in names})
    return out


def train_key(cfg: Config, name: str) -> str:
    """The key a checkpoint is written under: stage 03's key and the model's name."""
    return f"{stages.key(cfg, '03_dreambooth')}/{name}"


def save(trainer) -> Path:
    """A checkpoint of the trainer at its current step (rank 0 writes it; every process waits for it)."""
    target = trainer.ckpt_root / f"step_{trainer.step:06d}"
    if trainer.acc.is_main_process:
        gate = trainer.gate
        state = {"key": train_key(trainer.cfg, trainer.name), "step": trainer.step,
                 "weights": trainable_state(trainer),
                 "optimizer": trainer.opt.state_dict(), "lr": trainer.lr_sched.state_dict(),
                 "gate": gate.decider.state.to_dict() if gate else None,
                 "gen_vectors": None if gate is None or gate.gen_vectors is None else gate.gen_vectors,
                 "gating_rows": trainer.gating_rows, "loss_rows": trainer.loss_rows}
        atomic.save_torch(target.with_suffix(".pt"), state)
        kept = sorted(trainer.ckpt_root.glob("step_*.pt"))
        for old in kept[: max(0, len(kept) - trainer.ft.keep_checkpoints)]:
            old.unlink()
    trainer.acc.wait_for_everyone()
    return target.with_suffix(".pt")


def latest(root: Path) -> Path | None:
    """The newest checkpoint in a model's checkpoint folder, or None."""
    found = sorted(Path(root).glob("step_*.pt"))
    return found[-1] if found else None


def to_resume(root: Path, resume: bool, resume_from=None) -> Path | None:
    """The checkpoint a trainer resumes from: ``resume_from`` (a checkpoint, or a folder: its newest, else
    its sub-folders' newest), else with ``resume`` the newest in ``root``; None to start afresh."""
    ckpt = Path(resume_from) if resume_from else (latest(root) if resume else None)
    if ckpt is not None and ckpt.is_dir():
        found = sorted(ckpt.glob("step_*.pt")) or sorted(ckpt.glob("*/step_*.pt"))
        ckpt = found[-1] if found else None
    return ckpt


def load(trainer, path: Path) -> None:
    """Restore a trainer from a checkpoint of the same parameter set; another set's is refused."""
    from . import gating

    state = torch.load(path, map_location="cpu", weights_only=False)
    key = train_key(trainer.cfg, trainer.name)
    if state.get("key") != key:
        raise CheckpointMismatch(
            f"checkpoint {path} was written for other parameters (run key {state.get('key')}, this run "
            f"{key}). Resume only from a checkpoint of the same parameter set: delete it, or "
            "point resume_from at this run's checkpoints/ folder.")
    for prefix, mod in (("unet.", trainer.unet), ("text.", trainer.text)):
        part = {k[len(prefix):]: v for k, v in state["weights"].items() if k.startswith(prefix)}
        if part:
            missing = trainer.acc.unwrap_model(mod).load_state_dict(part, strict=False).unexpected_keys
            if missing:
                raise CheckpointMismatch(f"checkpoint {path} holds weights this model lacks: {missing[:3]}")
    trainer.opt.load_state_dict(state["optimizer"])
    trainer.lr_sched.load_state_dict(state["lr"])
    if trainer.gate is not None and state["gate"] is not None:
        trainer.gate.decider.state = gating.GateState.from_dict(state["gate"])
        trainer.gate.gen_vectors = state["gen_vectors"]
    trainer.step, trainer.gating_rows, trainer.loss_rows = state["step"], state["gating_rows"], state["loss_rows"]


def finished(out: Path, model_folders: set[str]) -> dict | None:
    """The recorded summary when every model folder of the stage is saved and the summary written (the last
    step), else None. Resealing such a stage keeps its logs and summary byte for byte: retraining from the last
    checkpoint would rewrite their timings, and every sealed stage 04 built on them would look changed."""
    p = out / "train_summary.json"
    if not p.exists():
        return None
    return json.loads(p.read_text()) if all((out / f / "model_index.json").exists() for f in model_folders) else None
