"""Classifier epoch throughput: the real data path (manifest -> preloaded uint8 tensors -> batched
augmentation -> train step, as lib.evaluate.classifier.train runs it) against the same model and optimiser on
float tensors already in memory with no augmentation. Goal: >= 0.8x.

    .venv/bin/python benchmarks/bench_classifier.py [--params params/demo.yaml] [--epochs 2]
"""
import argparse
import time

import torch
from torch import nn

from lib.evaluate import classifier
from lib.core import compute, config, stages
from lib.data import curation

ap = argparse.ArgumentParser()
ap.add_argument("--params", default="params/demo.yaml")
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--runs-root", default="runs")
args = ap.parse_args()
cfg = config.load(args.params)
c = cfg.classifier
d01 = stages.run_stage(cfg, "01_data_curation", curation.run, args.runs_root, progress=False)
manifest = curation.load_pools(d01)["train"]
dev = compute.device()


def epoch(model, opt, x_all, y_all, gen, real: bool) -> None:
    model.train()
    order = torch.randperm(len(y_all), generator=gen).to(dev)
    for i in range(0, len(order), c.batch_size):
        idx = order[i:i + c.batch_size]
        x = classifier.to_float(x_all[idx]) if real else x_all[idx]
        if real and c.augment:
            x = classifier.augment(x, gen)
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()


def timed(real: bool) -> tuple[float, float]:
    t0 = time.perf_counter()
    if real:
        data = classifier.TensorSet.from_manifest(manifest, c.input_size, dev)
        x, y = data.x, data.y
    else:
        x = torch.rand(len(manifest), 1, c.input_size, c.input_size, device=dev)
        y = torch.randint(0, 2, (len(manifest),), device=dev).float()
    load = time.perf_counter() - t0
    classifier.seed_everything(0)
    model = classifier.build(c).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=c.learning_rate)
    gen = torch.Generator().manual_seed(0)
    epoch(model, opt, x, y, gen, real)  # warm-up epoch
    t = time.perf_counter()
    for _ in range(args.epochs):
        epoch(model, opt, x, y, gen, real)
    return len(y) * args.epochs / (time.perf_counter() - t), load


with compute.cpu_threads(c.cpu_threads):
    mem, _ = timed(False)
    real, load = timed(True)
    mem2, _ = timed(False)
mem = max(mem, mem2)
print(f"device {dev}; {c.arch} at {c.input_size} px, batch {c.batch_size}, {len(manifest)} real images, "
      f"{args.epochs} timed epochs")
print(f"  in-memory tensors       {mem:8.1f} images/s")
print(f"  real data path          {real:8.1f} images/s  (+ one-off preload {load:.2f} s = "
      f"{load / max(c.epochs, 1):.2f} s per epoch over {c.epochs} epochs)")
amort = len(manifest) / (len(manifest) / real + load / max(c.epochs, 1))
print(f"ratio real / in-memory = {real / mem:.3f} per epoch, {amort / mem:.3f} with the preload amortised "
      "(goal >= 0.8)")
