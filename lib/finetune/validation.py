"""Stage 03's validation saves: images per label from fixed seeds while a model trains, and their KID trace.

Each save is ``validation/step_XXXXXX[_<model>].{png,npy,json}`` in the stage folder: a grid (rows = labels),
the images as an array, and the KID of the save against the tuning images on the cheap features of
fidelity.trace (lib.evaluate.fidelity.validation_trace), which ``validation_log.csv`` collects.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core import atomic
from ..core.config import Config
from ..data.domains import classes as classes_of
from .prompts import prompt_for, slug


class Validator:
    """The validation saves of one model trained on the rows of ``df``."""

    def __init__(self, cfg: Config, out_dir: Path, name: str, df: pd.DataFrame):
        self.cfg, self.ft, self.name, self.df = cfg, cfg.finetune, name, df
        self.dir = Path(out_dir) / "validation"
        self.labels = sorted(set(df["label"]), key=classes_of(cfg).index)
        self._ref = None      # (extractor, label -> tuning features) of the trace, computed once

    def target(self, step: int) -> Path:
        return self.dir / (f"step_{step:06d}" + ("" if self.name == "model" else f"_{self.name}"))

    def save(self, step: int, pipeline, sampling, board) -> Path:
        """validation_images per label, drawn by ``pipeline()`` (the live model) under ``sampling()`` (the
        trainer's sampling mode), saved and shown on ``board``. A save a killed run made is shown again."""
        target = self.target(step)
        if target.with_suffix(".npy").exists():   # a resumed run: drawn before the kill, shown again (purged)
            meta = json.loads(target.with_suffix(".json").read_text()) if target.with_suffix(".json").exists() else {}
            self.show(board, np.load(target.with_suffix(".npy")), meta.get("labels", []), meta.get("trace"), step)
            return target
        arr = self.draw(pipeline(), sampling)
        from PIL import Image

        from ..core.montage import grid

        atomic.save_image(target.with_suffix(".png"),
                          Image.fromarray((grid(arr.reshape(-1, *arr.shape[2:]) / 255.0, arr.shape[1]) * 255).astype(np.uint8)))
        atomic.write_npy(target.with_suffix(".npy"), arr)
        meta = {"step": step, "labels": self.labels, "model": self.name}
        trace = self.trace(arr, self.labels)
        atomic.write_json(target.with_suffix(".json"), {**meta, "trace": trace} if trace else meta)
        self.show(board, arr, self.labels, trace, step)
        return target

    def draw(self, pipe, sampling) -> np.ndarray:
        """labels x n x H x W uint8 images, the same seeds at every save."""
        rows, n, res = [], self.ft.validation_images, self.cfg.model.resolution
        with sampling():
            for label in self.labels:
                g = [torch.Generator("cpu").manual_seed(1000 + i) for i in range(n)]
                im = pipe([prompt_for(self.cfg, label)] * n, generator=g, num_inference_steps=self.ft.validation_steps,
                          guidance_scale=self.ft.validation_guidance, height=res, width=res, output_type="pt").images
                rows.append((im.float().mean(1).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
        return np.stack(rows)

    @staticmethod
    def show(board, arr: np.ndarray, labels: list[str], trace: dict | None, step: int) -> None:
        """One validation save on the live board: its images per label and its KID trace."""
        for stack, label in zip(arr, labels):
            board.images(f"validation/{slug(label)}", stack, step)
        board.scalars({f"validation/kid_{slug(g)}": v["kid"] for g, v in (trace or {}).get("groups", {}).items()},
                      step)

    def trace(self, arr: np.ndarray, labels: list[str]) -> dict | None:
        """KID of one validation save against the tuning images (lib.evaluate.fidelity.validation_trace), on the
        cheap features of fidelity.trace (none: no trace); the tuning images' features are cached."""
        from ..evaluate import features, fidelity

        kind = self.cfg.fidelity.trace
        if kind == "none":
            return None
        if self._ref is None:
            ex = features.extractor(self.cfg, kind)
            ref = self.df.drop_duplicates("path").reset_index(drop=True)   # a quota may repeat images
            vecs = features.extract(ref, self.cfg, ex)
            self._ref = ex, {lab: vecs[(ref["label"] == lab).to_numpy()] for lab in set(ref["label"])}
        ex, ref = self._ref
        return fidelity.validation_trace(arr, labels, ref, ex)

