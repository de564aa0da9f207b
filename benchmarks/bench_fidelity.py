"""The fidelity metric suite (lib/evaluate/fidelity_metrics.py, fidelity.py, memorization.py) on 2 x 10,000 demo-size feature vectors.

Features: 512-d, L2-normalised, like the demo's CLIP (ViT-B-32), two classes of 5,000 in each set, the
synthetic set slightly shifted and wider. Images for diversity: 10,000 per set at the demo's
classifier.input_size (32 px, so single-scale SSIM). Feature extraction is excluded (goal of issue 12).
Every metric runs per class and overall with the default FidelityConfig (bootstrap CIs included):
FID, KID, precision/recall/density/coverage, diversity of both sets, and memorization of the synthetic
set against a 2,000-image tuning set with the 10,000 real images as the held-out set.

Prints, in one run and side by side: each part's wall time, the total, the ratio total / goal
(goal <= 120 s on 2 cores), and the peak memory of the fresh process that ran it (peak RSS, and its
increase over the loaded data). An extra line times MS-SSIM at 224 px (real runs) for the same pairs.

    .venv/bin/python benchmarks/bench_fidelity.py [--n 10000] [--dims 512] [--bootstrap 100]
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import resource
import time

import numpy as np

GOAL_S = 120.0


def features(n: int, d: int, seed: int = 0):
    """(real, synthetic, labels): unit vectors around two class centres; the synthetic set is shifted
    and 10 % wider."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2, d))
    labels = np.repeat(np.array(["No Finding", "Unhealthy"]), [n // 2, n - n // 2])
    idx = (labels == "Unhealthy").astype(int)

    def draw(spread, shift):
        x = centres[idx] + spread * rng.standard_normal((n, d)) + shift
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(3.0, 0.0), draw(3.3, 0.05), labels


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """n blurred-noise images in [0, 1] (stand-ins for X-rays: SSIM's cost depends on size only)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((n, size, size)), sigma=(0, size / 16, size / 16))
    lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    return ((x - lo) / (hi - lo + 1e-8)).astype(np.float32)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def _job(args, q) -> None:
    from lib.evaluate import fidelity, fidelity_metrics, memorization
    from lib.core.config import FidelityConfig

    f = dataclasses.replace(FidelityConfig(), bootstrap=args.bootstrap)
    real, fake, labels = features(args.n, args.dims)
    tuning = features(args.tuning, args.dims, seed=1)[0]
    ims = {k: smooth_images(args.n, 32, s) for s, k in enumerate(("real", "synthetic"))}
    fidelity_metrics.pair_scores(ims["real"][:4], ["a", "a", "b", "b"], 2)   # warm-up: torchmetrics imported
    base = _peak_mb()           # imports (torch, torchmetrics) and data loaded; not timed
    times = {}
    t = time.perf_counter()
    pairs = {k: fidelity_metrics.pair_scores(ims[k], labels, f.diversity_pairs) for k in ims}
    times["diversity: (MS-)SSIM of the pairs"] = time.perf_counter() - t
    parts = {}
    table = fidelity.evaluate(real, fake, labels, labels, f, 0, pairs["real"], pairs["synthetic"], timings=parts)
    names = {"fid": "FID (+CI", "kid": "KID (+CI", "prdc": "precision/recall/density/coverage (+CIs",
             "diversity": "diversity CIs (2 sets"}
    times.update({f"{names[k]}, 3 groups)": v for k, v in parts.items()})
    t = time.perf_counter()
    mem, _ = memorization.analyse(fake, tuning, real, f.copy_threshold, 0, labels)
    memorization.summary(mem, f.bootstrap, 0)
    times["memorization (+CI)"] = time.perf_counter() - t
    big = smooth_images(2 * f.diversity_pairs, 224, 7)
    t = time.perf_counter()
    fidelity_metrics.pair_scores(big, labels[np.linspace(0, args.n - 1, len(big)).astype(int)], f.diversity_pairs)
    ms_ssim_s = time.perf_counter() - t
    q.put({"times": times, "total": sum(times.values()), "ms_ssim": ms_ssim_s, "peak": _peak_mb(), "base": base,
           "rows": len(table), "fid": float(table.query("metric == 'fid' and group == 'all'")["value"].iloc[0]),
           "flagged": float(mem["copy"].mean())})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000, help="feature vectors (and images) per set")
    ap.add_argument("--dims", type=int, default=512, help="feature dimension (demo CLIP ViT-B-32: 512)")
    ap.add_argument("--tuning", type=int, default=2000, help="tuning images for memorization")
    ap.add_argument("--bootstrap", type=int, default=None, help="replicates (default: FidelityConfig's)")
    args = ap.parse_args()
    from lib.core.config import FidelityConfig

    args.bootstrap = args.bootstrap or FidelityConfig().bootstrap
    print(f"cores: {os.cpu_count()}  (load average {os.getloadavg()[0]:.1f} at start); threads: "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"2 x {args.n:,} feature vectors of {args.dims} dims (2 classes), {args.tuning:,} tuning vectors, "
          f"{args.bootstrap} bootstrap replicates, FidelityConfig defaults otherwise")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_job, args=(args, q))
    p.start()
    r = q.get()
    p.join()
    for name, s in r["times"].items():
        print(f"  {name:50s} {s:7.2f} s")
    print(f"  {'total':50s} {r['total']:7.2f} s   ratio to the {GOAL_S:.0f} s goal: {r['total'] / GOAL_S:.2f} "
          f"({'met' if r['total'] <= GOAL_S else 'MISSED'})")
    print(f"  ({r['rows']} table rows; overall FID {r['fid']:.2f}; {100 * r['flagged']:.1f}% flagged as copies)")
    print(f"peak RSS {r['peak'] / 1024:.2f} GB (+{(r['peak'] - r['base']) / 1024:.2f} GB over the loaded data)")
    print(f"extra: MS-SSIM of {2 * FidelityConfig().diversity_pairs} pairs at 224 px (real runs): {r['ms_ssim']:.2f} s")


if __name__ == "__main__":
    main()
