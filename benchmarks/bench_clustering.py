"""Spectral clustering at ChestX-ray14 scale, and against scikit-learn's defaults on a 10k subsample.

Prints, measured in this run:
1. full scale: 112,120 x 512 structured synthetic embeddings (two labels, 10 planted clusters each),
   clustered per label exactly as stage 02 does, and as one graph of all 112,120 points (k = 20):
   wall time, peak memory (peak RSS of a fresh process, and its increase over the loaded data), ARI
   against the planted clusters;
2. a 10,000-point subsample of one label: this project's spectral clustering against
   sklearn.cluster.SpectralClustering with its defaults (dense rbf affinity, arpack): both wall times,
   the speed ratio and the ARI between the two.
Goals (issue 3): full scale <= 60 s and <= 4 GB; >= 10x faster than the default at 10k with ARI >= 0.9.
Each measurement runs in its own process, so peak memory is its own. Usage:
    .venv/bin/python benchmarks/bench_clustering.py [--quick]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time

import numpy as np

NIH_LABEL_COUNTS = (60361, 51759)   # "No Finding" and "Unhealthy" images in ChestX-ray14
DIM, K = 512, 10


def synthetic(counts=NIH_LABEL_COUNTS, k=K, d=DIM, latent=12, seed=0):
    """CLIP-like embeddings: per label, k clusters of unequal size around centres that share a common
    direction (so all cosines are positive), each spread along its own low-dimensional subspace plus
    isotropic noise; rows L2-normalised. Returns (X float32, label index, planted cluster id)."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(d)
    common /= np.linalg.norm(common)
    X, labels, planted = [], [], []
    for li, n in enumerate(counts):
        sizes = np.maximum((rng.dirichlet(np.full(k, 4.0)) * n).astype(int), 1)
        sizes[0] += n - sizes.sum()
        for c, m in enumerate(sizes):
            centre = rng.standard_normal(d)
            centre = 0.6 * common + 0.8 * centre / np.linalg.norm(centre)
            basis = rng.standard_normal((latent, d)) / np.sqrt(d)
            pts = centre + 0.35 * rng.standard_normal((m, latent)) @ basis \
                + 0.4 * rng.standard_normal((m, d)) / np.sqrt(d)
            X.append((pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32))
            labels.append(np.full(m, li))
            planted.append(np.full(m, li * k + c))
    return np.concatenate(X), np.concatenate(labels), np.concatenate(planted)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def _job(task: str, q, quick: bool) -> None:
    from sklearn.metrics import adjusted_rand_score as ari

    from lib.tuningset import clustering
    from lib.core.config import ClusterConfig

    counts = tuple(c // 10 for c in NIH_LABEL_COUNTS) if quick else NIH_LABEL_COUNTS
    X, labels, planted = synthetic(counts)
    base = _peak_mb()
    cfg = ClusterConfig(k=K)
    t = time.perf_counter()
    if task == "per_label":
        got = clustering.per_label(X, labels, "spectral", K, 0, cfg)
        got = labels * K + got
    elif task == "all_points":
        got = clustering.spectral(X, 2 * K, 0, cfg.n_neighbors, cfg.exact_below, cfg.solver, cfg.pca_dims)
    else:   # 10k subsample of label 0: ours, then sklearn's defaults
        rng = np.random.default_rng(1)
        pool = np.flatnonzero(labels == 0)
        rows = rng.choice(pool, min(10000, len(pool)), replace=False)
        Xs, ys = X[rows], planted[rows]
        t = time.perf_counter()
        if task == "ours_10k":
            got = clustering.spectral(Xs, K, 0, cfg.n_neighbors, cfg.exact_below, cfg.solver, cfg.pca_dims)
        else:
            from sklearn.cluster import SpectralClustering

            got = SpectralClustering(n_clusters=K, random_state=0).fit_predict(Xs)
        q.put({"wall": time.perf_counter() - t, "peak": _peak_mb(), "base": base,
               "ari_planted": ari(ys, got), "labels": got})
        return
    q.put({"wall": time.perf_counter() - t, "peak": _peak_mb(), "base": base, "ari_planted": ari(planted, got),
           "n": len(X)})


def measure(task: str, quick: bool) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_job, args=(task, q, quick))
    p.start()
    while p.is_alive() or not q.empty():
        try:
            out = q.get(timeout=5)
            p.join()
            return out
        except Exception:   # queue.Empty: still working
            continue
    raise RuntimeError(f"measurement {task!r} failed (exit code {p.exitcode}); see the traceback above.")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a tenth of the full-scale data (a check, not the figure)")
    args = ap.parse_args()
    print(f"cores: {os.cpu_count()}  (load average {os.getloadavg()[0]:.1f} at start)")
    scale = "1/10 scale (--quick)" if args.quick else "full scale"
    for task, what in (("per_label", "per label, k=10 each (as stage 02)"),
                       ("all_points", "one graph of all points, k=20")):
        r = measure(task, args.quick)
        print(f"[{scale}] {r['n']:,} x {DIM}, {what}: wall {r['wall']:.1f} s, peak RSS {r['peak'] / 1024:.2f} GB "
              f"(+{(r['peak'] - r['base']) / 1024:.2f} GB over the loaded data), ARI vs planted {r['ari_planted']:.3f}")
    ours, ref = measure("ours_10k", args.quick), measure("sklearn_10k", args.quick)
    from sklearn.metrics import adjusted_rand_score as ari

    print(f"[10k subsample, k={K}] ours: {ours['wall']:.2f} s (ARI vs planted {ours['ari_planted']:.3f}); "
          f"sklearn SpectralClustering defaults: {ref['wall']:.2f} s (ARI vs planted {ref['ari_planted']:.3f}, "
          f"peak RSS {ref['peak'] / 1024:.2f} GB)")
    print(f"[10k subsample] speed ratio {ref['wall'] / ours['wall']:.1f}x; ARI(ours, sklearn) = "
          f"{ari(ours['labels'], ref['labels']):.3f}")
    print("goals: full scale <= 60 s and <= 4 GB; >= 10x at 10k with ARI >= 0.9")


if __name__ == "__main__":
    main()
