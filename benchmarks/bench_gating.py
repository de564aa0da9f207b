"""Cost and fidelity of the cheap gate, side by side in one run on the same model and steps.

1. Wall time of training with gating vs without (same batches; ratio, goal <= 1.25x), and the gate's
   pure cost (gate computed at every gate point, every batch trained).
2. Agreement of the cheap gate (few-step DPM-Solver, small n, every k batches) with a naive full-step
   oracle (n = batch size, 50 DDIM steps, full resolution) scored on the same model states (goal >= 90%).
   In quantile mode each side skips its own top skip_fraction of scores; in absolute mode both use
   gating.threshold.

    .venv/bin/python benchmarks/bench_gating.py [--params params/demo.yaml] [--steps 40] [--runs-root runs]
Needs stages 01-02 finished for the parameter file (notebooks 01-02).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from lib import config, diffusion_model, dreambooth, gating


def oracle_fn(cfg, embed):
    """Naive Algorithm 1: one image per batch item, 50 DDIM steps, full resolution."""
    from diffusers import DDIMScheduler

    def score(step, pipe, prompts, vectors):
        sched = DDIMScheduler.from_config(pipe.scheduler.config)
        imgs = gating.generate(pipe, prompts, 50, cfg.model.resolution, cfg.seed * 100003 + step,
                               cfg.gating.guidance_scale, sched)
        return gating.score(embed(imgs), vectors, cfg.gating.aggregation)
    return score


def train(cfg, runs_root, oracle: bool = False, **fit):
    df = dreambooth.tuning_set(cfg, runs_root)
    embed, vecs = dreambooth.data_vectors(cfg, df, progress=False)
    if oracle:
        fit["oracle"] = oracle_fn(cfg, embed)
    with tempfile.TemporaryDirectory() as tmp, diffusion_model.cpu_threads(cfg.finetune.cpu_threads):
        tr = dreambooth.Trainer(cfg, tmp, df, progress=False, embed=embed, data_vectors=vecs)
        t0 = time.perf_counter()
        out = tr.fit(resume=False, **fit)
        wall = time.perf_counter() - t0 - sum(r.get("oracle_seconds", 0.0) for r in tr.gating_rows)
        return wall, out, tr.gating_rows


def decisions(scores, cfg) -> np.ndarray:
    scores = np.asarray(scores)
    thr = cfg.gating.threshold if cfg.gating.mode == "absolute" else np.quantile(scores, 1 - cfg.gating.skip_fraction)
    return scores > thr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/demo.yaml")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--runs-root", default="runs")
    a = ap.parse_args()
    over = {"finetune.steps": a.steps, "finetune.validation_images": 0, "finetune.checkpoint_every": 10 ** 6}
    plain = config.load(a.params, {**over, "gating.enabled": False})
    gated = config.load(a.params, {**over, "gating.enabled": True})
    g = gated.gating
    print(f"model {plain.model.base} at {plain.model.resolution} px, {a.steps} batches of {plain.finetune.batch_size}; "
          f"gate: n={g.n_images}, {g.sampler_steps} DPM-Solver steps, every {g.every_k} batches, "
          f"resolution {g.resolution or plain.model.resolution}, {g.mode} mode")
    w_plain, _, _ = train(plain, a.runs_root)
    w_dry, _, _ = train(gated, a.runs_root, dry_gate=True)
    w_gated, s_gated, rows = train(gated, a.runs_root, oracle=True)
    pts = [r for r in rows if "oracle_score" in r]
    cheap, naive = [r["score"] for r in pts], [r["oracle_score"] for r in pts]
    agree = float(np.mean(decisions(cheap, gated) == decisions(naive, gated)))
    naive_s = float(np.mean([r["oracle_seconds"] for r in pts]))
    cheap_s = float(np.mean([r["seconds"] for r in pts]))
    print(f"wall time  ungated {w_plain:6.1f} s | gate computed, all batches trained {w_dry:6.1f} s "
          f"(ratio {w_dry / w_plain:.2f}x) | gated with skipping {w_gated:6.1f} s (ratio {w_gated / w_plain:.2f}x, "
          f"skip rate {s_gated['skip_rate']:.0%})")
    print(f"one gate: cheap {cheap_s:.2f} s vs naive full-step {naive_s:.2f} s ({naive_s / max(cheap_s, 1e-9):.0f}x); "
          f"naive gating at every batch would cost ~{(w_plain + a.steps * naive_s) / w_plain:.1f}x the ungated run")
    rho = spearmanr(cheap, naive).statistic if len(pts) > 2 else float("nan")
    print(f"agreement with the naive oracle on {len(pts)} gate points: {agree:.0%} (score rank correlation {rho:.2f})")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
