"""Cost and fidelity of the cheap gate, side by side in one run on the same model and steps.

1. Wall time of training with gating vs without (same batches; ratio, goal <= 1.25x), and the gate's
   pure cost (gate computed at every gate point, every batch trained).
2. Agreement of the decisions the cheap gate took (few-step DPM-Solver, small n, fresh samples every k
   batches) with those of a naive full-step oracle (n = batch size, 50 DDIM steps, full resolution)
   scored at every batch on the same model states (goal >= 90%). Both sides use the same rule (quantile
   mode: the rolling window and skip budget of lib.gating.Decider; the first warmup_batches are left
   out, since neither side skips them; absolute mode: gating.threshold).
3. The naive oracle against itself with another noise seed: how far any gate's decisions can agree
   at all when scores near the threshold are this noisy.

    .venv/bin/python benchmarks/bench_gating.py [--params params/demo.yaml] [--steps 40] [--set gating.every_k=1]
Needs stages 01-02 finished for the parameter file (notebooks 01-02).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from lib import config, diffusion_model, dreambooth, gating, runner


def oracle_fn(cfg, embed, repeat: dict | None = None):
    """Naive Algorithm 1: one image per batch item, 50 DDIM steps, full resolution. With ``repeat``, the
    same gate is also drawn from a second noise seed (stored there by step): the naive gate's own
    run-to-run agreement, the ceiling for any cheaper gate."""
    from diffusers import DDIMScheduler

    def draw(step, pipe, prompts, vectors, seed):
        sched = DDIMScheduler.from_config(pipe.scheduler.config)
        imgs = gating.generate(pipe, prompts, 50, cfg.model.resolution, seed, cfg.gating.guidance_scale, sched)
        return gating.score(embed(imgs), vectors, cfg.gating.aggregation)

    def score(step, pipe, prompts, vectors):
        if repeat is not None:
            repeat[step] = draw(step, pipe, prompts, vectors, cfg.seed * 100003 + step + 7919)
        return draw(step, pipe, prompts, vectors, cfg.seed * 100003 + step)
    return score


def train(cfg, runs_root, oracle: bool = False, repeat: dict | None = None, **fit):
    df = dreambooth.tuning_set(cfg, runs_root)
    embed, vecs = dreambooth.data_vectors(cfg, df, progress=False)
    if oracle:
        fit["oracle"] = oracle_fn(cfg, embed, repeat)
    with tempfile.TemporaryDirectory() as tmp, diffusion_model.cpu_threads(cfg.finetune.cpu_threads):
        tr = dreambooth.Trainer(cfg, tmp, df, progress=False, embed=embed, data_vectors=vecs)
        t0 = time.perf_counter()
        out = tr.fit(resume=False, **fit)
        wall = time.perf_counter() - t0 - sum(r.get("oracle_seconds", 0.0) for r in tr.gating_rows)
        return wall, out, tr.gating_rows


def oracle_decisions(scores, cfg) -> np.ndarray:
    """The naive gate's decisions under the same rule as the cheap gate (quantile mode: calibrated on
    its own first warmup_batches scores, nothing skipped before)."""
    decider = gating.Decider(cfg.gating)
    return np.array([decider.decide(s)[0] for s in scores])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/demo.yaml")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="gate variant, e.g. gating.every_k=1")
    a = ap.parse_args()
    over = {"finetune.steps": a.steps, "finetune.validation_images": 0, "finetune.checkpoint_every": 10 ** 6,
            **runner.parse_sets(a.set)}
    plain = config.load(a.params, {**over, "gating.enabled": False})
    gated = config.load(a.params, {**over, "gating.enabled": True})
    g = gated.gating
    print(f"model {plain.model.base} at {plain.model.resolution} px, {a.steps} batches of {plain.finetune.batch_size}; "
          f"gate: n={g.n_images}, {g.sampler_steps} DPM-Solver steps, every {g.every_k} batches, "
          f"resolution {g.resolution or plain.model.resolution}, {g.mode} mode")
    w_plain, _, _ = train(plain, a.runs_root)
    w_dry, _, _ = train(gated, a.runs_root, dry_gate=True)
    repeat: dict = {}
    w_gated, s_gated, rows = train(gated, a.runs_root, oracle=True, repeat=repeat)
    pts = [r for r in rows if "oracle_score" in r]
    cheap, naive = np.array([r["score"] for r in pts]), np.array([r["oracle_score"] for r in pts])
    taken = np.array([r["skipped"] for r in pts])               # the decisions the cheap gate took
    same = taken == oracle_decisions(naive, gated)
    warm = g.warmup_batches if g.mode == "quantile" else 0      # nobody skips during calibration
    fresh = np.array([r["generated"] for r in pts])
    naive_s = float(np.mean([r["oracle_seconds"] for r in pts])) / 2     # two naive draws per batch
    again = oracle_decisions([repeat[r["step"]] for r in pts], gated)
    self_agree = (again == oracle_decisions(naive, gated))[warm:].mean()
    cheap_s = float(np.mean([r["seconds"] for r in pts if r["generated"]]))
    print(f"wall time  ungated {w_plain:6.1f} s | gate computed, all batches trained {w_dry:6.1f} s "
          f"(ratio {w_dry / w_plain:.2f}x) | gated with skipping {w_gated:6.1f} s (ratio {w_gated / w_plain:.2f}x, "
          f"skip rate {s_gated['skip_rate']:.0%})")
    print(f"one gate: cheap {cheap_s:.2f} s vs naive full-step {naive_s:.2f} s ({naive_s / max(cheap_s, 1e-9):.0f}x); "
          f"naive gating at every batch would cost ~{(w_plain + a.steps * naive_s) / w_plain:.1f}x the ungated run")
    split = ", ".join(f"{same[warm:][m].mean():.0%} where the cheap gate {what} ({m.sum()} batches)"
                      for m, what in ((fresh[warm:], "drew fresh samples"), (~fresh[warm:], "reused them")) if m.any())
    print(f"agreement of the decisions taken with the naive oracle's: {same[warm:].mean():.0%} of the "
          f"{len(pts) - warm} batches after calibration ({split}); "
          f"oracle skip rate {oracle_decisions(naive, gated)[warm:].mean():.0%} vs cheap {taken[warm:].mean():.0%}")
    print(f"the naive oracle against itself (another noise seed, same model states): {self_agree:.0%} agreement "
          "after calibration, the ceiling for any cheaper gate with this embedder")
    rho = spearmanr(cheap, naive).statistic if len(pts) > 2 else float("nan")
    rho_self = spearmanr(naive, [repeat[r["step"]] for r in pts]).statistic if len(pts) > 2 else float("nan")
    print(f"score rank correlation over all {len(pts)} batches: cheap vs naive {rho:.2f}, naive vs naive {rho_self:.2f}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
