"""Where one diffusion point's CPU time goes (issue 24): stages 01-05 of a demo point run in-process, each
part timed (wall and process CPU) by wrapping the function that does it, then the same point through the
notebooks (papermill, every stage reused), which is what the notebooks and their figures add.

    .venv/bin/python benchmarks/bench_point_profile.py [--set key=value ...] [--before key=value ...] [--out FILE]

Two runs side by side: "before" (BEFORE: the demo's settings before issue 24) and "after" (params as they are),
with the ratio after/before of each part; the PER_POINT line sums stages 03-05.

The point is the demo's gated spectral-CLIP run at a development seed (0; the reported seeds are 2 and up).
Stages 01-02 and stage 05's real baseline are shared by every point of a seed; they are listed apart.
Parts are inclusive; an indented part is inside the one above it. Not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (label, module, attribute path): the function whose calls are the part. Indent = nested in the part above.
PARTS = [
    ("01 curation (shared per seed)", "lib.data.curation", "run"),
    ("02 clustering (shared per seed)", "lib.tuningset.selection", "run"),
    ("03 fine-tuning, whole stage", "lib.finetune.dreambooth", "run"),
    ("  base model load + accelerate prepare", "lib.finetune.trainer", "Trainer.__init__"),
    ("    VAE encoding of the tuning images", "lib.finetune.trainer", "Trainer._encode_images"),
    ("  CLIP vectors of the tuning set (gate)", "lib.finetune.dreambooth", "data_vectors"),
    ("  UNet training steps (fwd+bwd+opt)", "lib.finetune.trainer", "Trainer.train_step"),
    ("    backward", "accelerate", "Accelerator.backward"),
    ("    optimizer step", "accelerate.optimizer", "AcceleratedOptimizer.step"),
    ("  gate", "lib.finetune.trainer", "Trainer.gate_step"),
    ("    gate sampling (UNet + VAE decode)", "lib.finetune.gating", "generate"),
    ("  validation saves", "lib.finetune.trainer", "Trainer.validate"),
    ("    validation KID trace", "lib.finetune.validation", "Validator.trace"),
    ("  checkpoints", "lib.finetune.checkpoints", "save"),
    ("  TensorBoard scalars", "lib.finetune.tracking", "Board.scalars"),
    ("  model save", "lib.finetune.trainer", "Trainer.save_model"),
    ("04 generation, whole stage", "lib.generate.generation", "run"),
    ("  pipeline calls (UNet + VAE decode)", "lib.generate.generation", "_call"),
    ("  PNG writes", "lib.generate.generation", "_save"),
    ("05 evaluation, whole stage", "lib.evaluate.evaluation", "run"),
    ("  real baseline (shared per seed)", "lib.evaluate.evaluation", "real_baseline"),
    ("  classifier training", "lib.evaluate.classifier", "train"),
    ("  classifier predictions", "lib.evaluate.classifier", "predict_outputs"),
    ("  image loading", "lib.evaluate.classifier", "TensorSet.from_manifest"),
    ("  fidelity metrics", "lib.evaluate.evaluation", "fidelity_record"),
    ("  bootstrap matrix", "lib.evaluate.metrics", "matrix"),
]


# The settings of the demo before issue 24's changes (params/demo.yaml now samples in bf16).
BEFORE = {"generation.precision": "fp32", "finetune.sampling_precision": None}


class Clock:
    """Inclusive wall and CPU seconds and call counts per part; a part re-entered inside itself counts once."""

    def __init__(self):
        self.wall, self.cpu, self.calls, self.depth = defaultdict(float), defaultdict(float), defaultdict(int), defaultdict(int)

    def wrap(self, label, fn):
        @functools.wraps(fn)
        def timed(*a, **k):
            self.depth[label] += 1
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                self.depth[label] -= 1
                if self.depth[label] == 0:
                    self.wall[label] += time.perf_counter() - w
                    self.cpu[label] += time.process_time() - c
                    self.calls[label] += 1
        return timed

    @contextlib.contextmanager
    def patched(self):
        undo = []
        for label, mod, path in PARTS:
            owner = importlib.import_module(mod)
            *outer, name = path.split(".")
            for part in outer:
                owner = getattr(owner, part)
            orig = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
            kind = type(orig) if isinstance(orig, (classmethod, staticmethod)) else None
            new = kind(self.wrap(label, orig.__func__)) if kind else self.wrap(label, orig)
            setattr(owner, name, new)
            undo.append((owner, name, orig))
        try:
            yield self
        finally:
            for owner, name, orig in reversed(undo):
                setattr(owner, name, orig)


def in_process(cfg, root: Path, clock: Clock) -> float:
    from lib.core import stages
    from lib.data import curation
    from lib.evaluate import evaluation
    from lib.finetune import dreambooth
    from lib.generate import generation
    from lib.tuningset import selection

    t = time.perf_counter()
    with clock.patched():
        for stage, mod in (("01_data_curation", curation), ("02_clustering", selection), ("03_dreambooth", dreambooth),
                           ("04_generation", generation), ("05_classifier", evaluation)):
            stages.run_stage(cfg, stage, getattr(mod, "run"), root)   # the patched module attribute
    return time.perf_counter() - t


def notebooks(params: str, overrides: dict, root: Path) -> dict[str, float]:
    """Notebooks 01-05 executed by papermill on the finished stages (each reuses its stage folder): what a
    notebook adds to its stage, i.e. a kernel start, the imports and the figures. Seconds per notebook."""
    from lib.core import stages
    from lib.runs import runner

    out = {}
    for stage in stages.ORDER[:5]:
        nb = runner.notebook_for(stage)
        t = time.perf_counter()
        runner.papermill_engine(nb, root / nb.name, {"params_file": params, "overrides": overrides,
                                                     "runs_root": str(root)}, runner.default_kernel())
        out[stage] = time.perf_counter() - t
    return out


def slowest_cells(nb: Path, n: int = 2) -> str:
    """The notebook's n slowest cells (papermill's per-cell times), as 'cell i: s'."""
    import json
    from datetime import datetime

    cells = []
    for i, c in enumerate(json.loads(nb.read_text())["cells"]):
        pm = c.get("metadata", {}).get("papermill", {})
        if pm.get("start_time") and pm.get("end_time"):
            sec = (datetime.fromisoformat(pm["end_time"]) - datetime.fromisoformat(pm["start_time"])).total_seconds()
            cells.append((sec, i, "".join(c["source"]).splitlines()[0][:40]))
    return "; ".join(f"cell {i} {sec:.1f} s ({src})" for sec, i, src in sorted(cells, reverse=True)[:n])


def profile(params: str, overrides: dict, with_notebooks: bool) -> tuple[Clock, float, dict, dict]:
    from lib.core import config

    cfg = config.load(params, overrides)
    root = Path(tempfile.mkdtemp(prefix="profile-", dir=ROOT / "runs"))
    try:
        clock = Clock()
        total = in_process(cfg, root, clock)
        nb = notebooks(params, overrides, root) if with_notebooks else {}
        cells = {stage: slowest_cells(root / runner_nb(stage)) for stage in nb}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return clock, total, nb, cells


def runner_nb(stage: str) -> str:
    from lib.runs import runner

    return runner.notebook_for(stage).name


def per_point(clock: Clock) -> float:
    """CPU seconds of stages 03-05 without the real baseline every point of a seed shares."""
    return sum(clock.cpu[p] for p in ("03 fine-tuning, whole stage", "04 generation, whole stage",
                                      "05 evaluation, whole stage")) - clock.cpu["  real baseline (shared per seed)"]


def report(runs: dict[str, tuple], labels: dict[str, dict]) -> str:
    names = list(runs)
    head = f"{'part (CPU s; calls)':<46}" + "".join(f"{n:>16}" for n in names)
    head += f"{names[-1] + '/' + names[0]:>14}" if len(names) > 1 else ""
    lines = [f"{n}: {labels[n]}" for n in names] + [head]
    for part, _, _ in PARTS:
        clocks = [runs[n][0] for n in names]
        if not any(c.calls[part] for c in clocks):
            continue
        row = f"{part:<46}" + "".join(f"{c.cpu[part]:>10.1f} ({c.calls[part]:>3})" for c in clocks)
        if len(clocks) > 1 and clocks[0].cpu[part] > 0.05:
            row += f"{clocks[-1].cpu[part] / clocks[0].cpu[part]:>14.2f}"
        lines.append(row)
    lines.append(f"{'stages 01-05 in-process, wall s':<46}" + "".join(f"{runs[n][1]:>16.1f}" for n in names))
    for stage in runs[names[-1]][2]:
        lines.append(f"{'notebook ' + stage + ' on its finished stage, s':<46}"
                     + "".join(f"{runs[n][2].get(stage, float('nan')):>16.1f}" for n in names))
    for stage, cells in runs[names[-1]][3].items():
        lines.append(f"  {stage} slowest cells ({names[-1]}): {cells}")
    pp = {n: per_point(runs[n][0]) for n in names}
    summary = " ".join(f"{n}={pp[n]:.1f}" for n in names)
    ratio = f" ratio={pp[names[-1]] / pp[names[0]]:.2f}" if len(names) > 1 else ""
    lines.append(f"PER_POINT cpu_s {summary}{ratio} (stages 03-05, without the shared real baseline)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/demo.yaml")
    ap.add_argument("--set", action="append", default=[], help="key=value on top of the point, in both runs")
    ap.add_argument("--before", action="append", default=None,
                    help="key=value of the 'before' run (default: the settings before issue 24); none: one run")
    ap.add_argument("--no-notebooks", action="store_true")
    ap.add_argument("--out", default=None, help="write the report to this file too")
    args = ap.parse_args()
    os.chdir(ROOT)
    from lib.core.overrides import parse_sets

    point = {"finetune.method": "spectral-clip", "gating.enabled": True, "seed": 0, **parse_sets(args.set)}
    before = parse_sets(args.before) if args.before is not None else dict(BEFORE)
    labels = {"before": {**point, **before}, "after": point} if before else {"after": point}
    runs = {name: profile(args.params, ov, not args.no_notebooks) for name, ov in labels.items()}
    text = report(runs, labels)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
