"""Generation throughput: lib.generate.generation (per-image seeds, grayscale PNGs written atomically) against the
plain diffusers pipeline call with the same model, scheduler, steps and batch size. Goal: >= 0.9x.

    .venv/bin/python benchmarks/bench_generation.py [--params params/demo.yaml] [--batches 3]
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from lib.core import compute, config
from lib.finetune import diffusion_model
from lib.generate import generation

ap = argparse.ArgumentParser()
ap.add_argument("--params", default="params/demo.yaml")
ap.add_argument("--batches", type=int, default=3)
ap.add_argument("--repeats", type=int, default=2)
args = ap.parse_args()
cfg = config.load(args.params)
g = cfg.generation
model = str(diffusion_model.build_tiny(cfg.model.resolution, 0, 0, progress=False)) if cfg.model.base == "tiny" \
    else diffusion_model.base_for(cfg.model)
n = g.batch_size * args.batches
cfg = config.load(args.params, {"generation.n_per_label": n})
pipe = generation.load(model, cfg)
prompt = generation.prompt_for(cfg, "Unhealthy")


def plain() -> float:
    t = time.perf_counter()
    for b in range(args.batches):
        pipe(prompt=[prompt] * g.batch_size, num_inference_steps=g.steps, guidance_scale=g.guidance_scale,
             generator=torch.Generator().manual_seed(b), height=cfg.model.resolution, width=cfg.model.resolution)
    return n / (time.perf_counter() - t)


def ours() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        models = {label: model for label in ("No Finding", "Unhealthy")}
        plan = generation.plan(cfg)
        for f in plan[plan["label"] == "No Finding"]["file"]:  # only one label's images are timed
            Path(tmp, f).parent.mkdir(parents=True, exist_ok=True)
            Path(tmp, f).write_bytes(b"")
        t = time.perf_counter()
        generation.generate(cfg, Path(tmp), models, progress=False, pipes={"Unhealthy": pipe})
        return n / (time.perf_counter() - t)


with compute.cpu_threads(g.cpu_threads):
    plain()  # warm-up
    rates = {"plain diffusers call": [], "lib.generate.generation": []}
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
        rates["plain diffusers call"].append(plain())
        rates["lib.generate.generation"].append(ours())
best = {k: max(v) for k, v in rates.items()}
dev = pipe.device
print(f"device {dev}; model {model}; {g.scheduler} {g.steps} steps, guidance {g.guidance_scale}, batch {g.batch_size}, "
      f"{n} images per timing, {args.repeats} repeats (best)")
for k, v in best.items():
    print(f"  {k:22s} {v:8.2f} images/s   (all: {', '.join(f'{x:.2f}' for x in rates[k])})")
print(f"ratio lib.generate.generation / plain = {best['lib.generate.generation'] / best['plain diffusers call']:.3f}  (goal >= 0.9)")
