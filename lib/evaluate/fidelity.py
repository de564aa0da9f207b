"""Fidelity and diversity of a synthetic set against real images, per class and overall (issue 12).

Every metric but diversity works on feature arrays (lib.evaluate.features); all are small numpy/scipy code:

- **FID**: the Fréchet distance between Gaussians fitted to the two feature sets,
  |mu_r - mu_f|^2 + tr C_r + tr C_f - 2 tr (C_r C_f)^(1/2); the trace of the root is the sum of the square
  roots of the eigenvalues of L^T C_f L with C_r = L L^T (equal to scipy.linalg.sqrtm's, which the tests
  check, and ~100x faster). FID needs **more images than feature dimensions in each set** (n > d):
  below that the covariance is singular and FID mostly measures n. ``fidelity.fid_dims`` first projects
  both sets on that many principal components of the real features (then n > fid_dims is needed).
- **KID**: the unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over
  ``kid_subsets`` random subsets of ``kid_subset_size`` images of each set (Bińkowski et al. 2018);
  ``kid_subset_size`` must not exceed either set (and is at least 2). The constant 1 of the expanded
  kernel cancels in MMD^2 and is left out, which keeps float32 sums exact enough.
- **precision, recall, density, coverage** (Naeem et al. 2020): closed Euclidean k-NN balls, k = ``prdc_k``;
  each set needs more than k images.
- **diversity** (on images): the mean SSIM between random pairs of distinct images of a class (higher is
  less diverse). MS-SSIM (torchmetrics' defaults: 5 scales, 11-px Gaussian window) needs both sides of at
  least MS_SSIM_MIN_SIDE = 176 px (torchmetrics checks side // 16 > 10); smaller images get single-scale
  SSIM (same window, at least 11 px).
  The table's ``note`` says which. Images are compared at the size they are given (``run`` uses
  classifier.input_size: what the trainability matrix sees).

Too few images for a metric raise TooFewImages, which says what to change; no metric returns NaN.

**Bootstrap CIs** (percentile, 95 %): a replicate resamples images with replacement within each class of
each set (the overall metrics use the union, so class sizes stay fixed). FID, KID and diversity are
recomputed on the replicate (images weighted by how often they were drawn; KID averages
``kid_bootstrap_subsets`` subsets per replicate). Precision, recall, density and coverage are means of
per-image indicators given the k-NN balls of the full sets; a replicate reweights those indicators (k-NN
balls recomputed on a resample would shrink to zero around duplicated images: the bootstrap is not
consistent for nearest-neighbour radii), so their CIs do not include the balls' own variability.
FID is biased upwards at finite n, and more so on a resample (duplicates): its interval is the percentile
interval of the replicates shifted by their mean's offset from the estimate (the sampling spread at this
n); compare FIDs only at equal n and extractor.

Cost (benchmarks/bench_fidelity.py): 2 x 10,000 vectors of 512 dims, 200 replicates, every metric per
class and overall: about 40 s on 2 cores. FID's replicates need one eigendecomposition per group: at
Inception's 2048 dims that is ~0.8 s each (~8 min for 200 replicates and 3 groups); lower
fidelity.bootstrap or set fidelity.fid_dims there.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.config import Config, FidelityConfig

ALL = "all"
LEVEL = 0.95
MS_SSIM_MIN_SIDE = 176      # torchmetrics: side // (5 scales - 1)^2 > kernel 11 - 1, i.e. side // 16 >= 11
SSIM_MIN_SIDE = 11          # the Gaussian window
COLUMNS = ["group", "metric", "value", "ci_low", "ci_high", "n_real", "n_fake", "note"]
_SALT = 0xF1D
_BLOCK = 1024               # rows per block of distance and kernel matrices (bounded memory)
_PAIR_PIXELS = 1 << 20      # pixels per image in one (MS-)SSIM batch


class TooFewImages(ValueError):
    """A metric given fewer images than it needs; the message names the metric and what to change."""


def _need(n: int, need: int, metric: str, what: str, fix: str) -> None:
    if n < need:
        raise TooFewImages(f"{metric} needs at least {need} {what}, got {n}. {fix}")


def _ci(values) -> tuple[float, float]:
    a = (1 - LEVEL) / 2
    lo, hi = np.quantile(np.asarray(values, dtype=np.float64), [a, 1 - a])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------------------------- FID
def pca_basis(real: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top ``dims`` principal directions (d x dims) of the real features."""
    _need(len(real), dims + 1, "fidelity.fid_dims", "real images (more than fid_dims)", "Lower fidelity.fid_dims.")
    mu = real.mean(0, dtype=np.float64)
    _, _, vt = np.linalg.svd(real - mu, full_matrices=False)
    return mu, vt[:dims].T


def project(x: np.ndarray, basis: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return ((x - basis[0]) @ basis[1]).astype(np.float32)


def moments(x: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof 1) of the rows of x, row i counted w[i] times (a bootstrap resample)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.ones(len(x)) if w is None else np.asarray(w, dtype=np.float64)
    n = w.sum()
    mu = w @ x / n
    xc = x - mu
    return mu, (xc.T * w) @ xc / (n - 1)


def _trace_sqrt_product(c1: np.ndarray, c2: np.ndarray) -> float:
    """tr (c1 c2)^(1/2): c1 = L L^T, and c1 c2 has the (non-negative) eigenvalues of L^T c2 L."""
    d = len(c1)
    try:
        L = np.linalg.cholesky(c1 + np.eye(d) * 1e-12 * max(np.trace(c1) / d, 1e-300))
    except np.linalg.LinAlgError:       # numerically singular: a square root from the eigendecomposition
        w, v = np.linalg.eigh(c1)
        L = v * np.sqrt(np.clip(w, 0, None))
    ev = np.linalg.eigvalsh(L.T @ c2 @ L)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def frechet_distance(mu1, c1, mu2, c2) -> float:
    """Fréchet distance between N(mu1, c1) and N(mu2, c2); rounding below 0 is returned as 0."""
    diff = np.asarray(mu1) - np.asarray(mu2)
    value = diff @ diff + np.trace(c1) + np.trace(c2) - 2 * _trace_sqrt_product(c1, c2)
    return max(float(value), 0.0)


def _check_fid(n_real: int, n_fake: int, d: int, where: str = "") -> None:
    fix = ("Set fidelity.fid_dims below the smaller set's size (FID on that many principal components), "
           "use a lower-dimensional extractor, or add images.")
    for n, what in ((n_real, "real"), (n_fake, "synthetic")):
        _need(n, d + 1, f"FID{where}", f"{what} images (more than the {d} feature dimensions)", fix)


def fid(real: np.ndarray, fake: np.ndarray, dims: int | None = None) -> float:
    """FID between two feature sets (n x d each); with ``dims``, on the top principal components of ``real``."""
    if dims:
        basis = pca_basis(real, dims)
        real, fake = project(real, basis), project(fake, basis)
    _check_fid(len(real), len(fake), real.shape[1])
    return frechet_distance(*moments(real), *moments(fake))


# ----------------------------------------------------------------------------------------------- KID
def _poly(a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    """(a.b / d + 1)^3 - 1: the polynomial kernel without its constant, which cancels in MMD^2."""
    g = a @ b.T / d
    return g * (3 + g * (3 + g))


def _poly_self(x: np.ndarray) -> np.ndarray:
    """k(x_i, x_i) - 1 for every row: the diagonal of the kernel matrix."""
    g = np.einsum("id,id->i", x, x, dtype=np.float64) / x.shape[1]
    return g * (3 + g * (3 + g))


def _quadratic_forms(x: np.ndarray, y: np.ndarray, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """sum_ij wx[q, i] K(x_i, y_j) wy[q, j] for every row q, one block of the kernel matrix at a time."""
    out = np.zeros(len(wx))
    for s in range(0, len(x), _BLOCK):
        k = _poly(x[s:s + _BLOCK], y, x.shape[1])
        out += np.einsum("qj,qj->q", wx[:, s:s + _BLOCK] @ k, wy, dtype=np.float64)
    return out


def mmd2_rows(x: np.ndarray, y: np.ndarray, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 (polynomial kernel) for every row of image counts: row q takes x_i wx[q, i] times and
    y_j wy[q, j] times (a subset, a subset of a resample, or all ones). Within a set, only pairs of two
    different images count (weighted U-statistic), so an image drawn twice is never paired with its copy."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    wx, wy = np.asarray(wx, np.float32), np.asarray(wy, np.float32)

    def within(z, w):
        m, m2 = w.sum(1, dtype=np.float64), (w.astype(np.float64) ** 2).sum(1)
        pairs = m * m - m2
        if (pairs <= 0).any():
            raise TooFewImages("unbiased MMD^2 (KID) needs at least 2 different images of each set in every subset.")
        return (_quadratic_forms(z, z, w, w) - (w.astype(np.float64) ** 2) @ _poly_self(z)) / pairs, m

    xx, mx = within(x, wx)
    yy, my = within(y, wy)
    return xx + yy - 2 * _quadratic_forms(x, y, wx, wy) / (mx * my)


def _subset_rows(n: int, m: int, count: int, rng, pool_counts: np.ndarray | None = None) -> np.ndarray:
    """``count`` rows of counts for subsets of m images drawn without replacement from n images, or from
    the multiset ``pool_counts`` (a resample: image i present pool_counts[i] times)."""
    rows = np.zeros((count, n), np.float32)
    pool = np.arange(n) if pool_counts is None else np.repeat(np.arange(n), pool_counts)
    for r in range(count):
        rows[r] = np.bincount(rng.choice(pool, m, replace=False), minlength=n)
    return rows


def _check_kid(n_real: int, n_fake: int, m: int, where: str = "") -> None:
    _need(m, 2, f"KID{where}", "images per subset (fidelity.kid_subset_size)", "Raise fidelity.kid_subset_size.")
    for n, what in ((n_real, "real"), (n_fake, "synthetic")):
        _need(n, m, f"KID{where}", f"{what} images (fidelity.kid_subset_size = {m})",
              "Lower fidelity.kid_subset_size to at most the smaller set's size, or add images.")


def kid(real: np.ndarray, fake: np.ndarray, subset_size: int = 1000, n_subsets: int = 100,
        seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation over subsets of the unbiased MMD^2 (polynomial kernel)."""
    _check_kid(len(real), len(fake), subset_size)
    rng = np.random.default_rng([seed, _SALT])
    values = mmd2_rows(real, fake, _subset_rows(len(real), subset_size, n_subsets, rng),
                       _subset_rows(len(fake), subset_size, n_subsets, rng))
    return float(values.mean()), float(values.std())


# ---------------------------------------------------------------------- precision, recall, density, coverage
def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aa, bb = np.einsum("id,id->i", a, a), np.einsum("id,id->i", b, b)
    return np.maximum(aa[:, None] + bb[None, :] - 2 * (a @ b.T), 0)


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row to its k-th nearest other row (the row itself, at 0, is the 0th)."""
    out = np.empty(len(x))
    for s in range(0, len(x), _BLOCK):
        d = _sq_dists(x[s:s + _BLOCK], x)
        out[s:s + _BLOCK] = np.partition(d, k, axis=1)[:, k]
    return np.sqrt(out)


def prdc_parts(real: np.ndarray, fake: np.ndarray, k: int = 5, where: str = "") -> dict[str, np.ndarray]:
    """Per-image indicators behind precision/recall/density/coverage (Naeem et al. 2020):
    fake_in (fake in some real ball), fake_count (real balls holding it), real_recalled (real in some fake
    ball), real_covered (some fake in its own ball)."""
    for n, what in ((len(real), "real"), (len(fake), "synthetic")):
        _need(n, k + 1, f"precision/recall/density/coverage{where}", f"{what} images (more than prdc_k = {k})",
              "Lower fidelity.prdc_k or add images.")
    real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
    r_real, r_fake = knn_radii(real, k) ** 2, knn_radii(fake, k) ** 2
    fake_count = np.zeros(len(fake), np.int64)
    real_recalled = np.zeros(len(real), bool)
    real_nearest = np.full(len(real), np.inf)
    for s in range(0, len(fake), _BLOCK):
        d = _sq_dists(fake[s:s + _BLOCK], real)             # fakes of this block x every real
        fake_count[s:s + _BLOCK] = (d <= r_real[None, :]).sum(1)
        real_recalled |= (d <= r_fake[s:s + _BLOCK, None]).any(0)
        real_nearest = np.minimum(real_nearest, d.min(0))
    return {"fake_in": fake_count > 0, "fake_count": fake_count, "real_recalled": real_recalled,
            "real_covered": real_nearest <= r_real}


def prdc_from_parts(parts: dict, k: int, w_real=None, w_fake=None) -> dict[str, float]:
    """The four metrics as (weighted) means of the per-image indicators."""
    def mean(v, w):
        return float(np.average(v, weights=w))

    return {"precision": mean(parts["fake_in"], w_fake), "recall": mean(parts["real_recalled"], w_real),
            "density": mean(parts["fake_count"], w_fake) / k, "coverage": mean(parts["real_covered"], w_real)}


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    return prdc_from_parts(prdc_parts(real, fake, k), k)


# ------------------------------------------------------------------------------------------ diversity
def ssim_measure(side: int) -> str:
    """'ms-ssim' for images of at least MS_SSIM_MIN_SIDE px a side, 'ssim' below."""
    if side < SSIM_MIN_SIDE:
        raise TooFewImages(f"diversity needs images of at least {SSIM_MIN_SIDE} px a side (the SSIM window); "
                           f"got {side} px.")
    return "ms-ssim" if side >= MS_SSIM_MIN_SIDE else "ssim"


def _similarity(a: np.ndarray, b: np.ndarray, measure: str) -> np.ndarray:
    import torch
    from torchmetrics.functional.image import (multiscale_structural_similarity_index_measure as ms_ssim,
                                               structural_similarity_index_measure as ssim)

    fn = ms_ssim if measure == "ms-ssim" else ssim
    ta, tb = torch.from_numpy(np.asarray(a, np.float32))[:, None], torch.from_numpy(np.asarray(b, np.float32))[:, None]
    return fn(ta, tb, data_range=1.0, reduction="none").double().numpy()


def pair_scores(stack: np.ndarray, labels, n_pairs: int = 500, seed: int = 0) -> pd.DataFrame:
    """(MS-)SSIM of ``n_pairs`` random pairs of distinct images within each class: columns label, i, j,
    score, measure (i, j index ``stack``, N x H x W in [0, 1])."""
    stack, labels = np.asarray(stack, np.float32), np.asarray(labels).astype(str)
    measure = ssim_measure(min(stack.shape[1:]))
    rng = np.random.default_rng([seed, _SALT, 1])
    parts = []
    for label in sorted(set(labels)):
        idx = np.flatnonzero(labels == label)
        _need(len(idx), 2, f"diversity of class '{label}'", "images", "Add images of that class.")
        i = rng.integers(len(idx), size=n_pairs)
        j = (i + rng.integers(1, len(idx), size=n_pairs)) % len(idx)   # never the same image
        step = max(1, _PAIR_PIXELS // (stack.shape[1] * stack.shape[2]))   # bounded memory at any size
        scores = np.concatenate([_similarity(stack[idx[i[s:s + step]]], stack[idx[j[s:s + step]]], measure)
                                 for s in range(0, n_pairs, step)])
        parts.append(pd.DataFrame({"label": label, "i": idx[i], "j": idx[j], "score": scores, "measure": measure}))
    return pd.concat(parts, ignore_index=True)


def _pair_mean(pairs: pd.DataFrame, w: np.ndarray | None = None) -> float:
    if w is None:
        return float(pairs["score"].mean())
    pw = w[pairs["i"].to_numpy()] * w[pairs["j"].to_numpy()]
    return float(np.average(pairs["score"], weights=pw)) if pw.sum() > 0 else float(pairs["score"].mean())


# ------------------------------------------------------------------------------------------ the table
def resample_counts(labels, n_boot: int, rng) -> np.ndarray:
    """n_boot x n image counts: each replicate draws each class's images with replacement, class sizes kept."""
    labels = np.asarray(labels).astype(str)
    out = np.zeros((n_boot, len(labels)), np.int32)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        out[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=n_boot)
    return out


def groups(real_labels, fake_labels) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, real rows, fake rows) of each class present in both sets, then 'all'."""
    rl, fl = np.asarray(real_labels).astype(str), np.asarray(fake_labels).astype(str)
    out = [(c, np.flatnonzero(rl == c), np.flatnonzero(fl == c)) for c in sorted(set(rl) & set(fl))]
    return out + [(ALL, np.arange(len(rl)), np.arange(len(fl)))]


def _row(group, metric, value, reps, n_real, n_fake, note="", centred: bool = False) -> dict:
    """One table row; ``centred``: the replicates are first shifted by their mean's offset from the estimate."""
    reps = np.asarray(reps, np.float64)
    lo, hi = _ci(reps - reps.mean() + value if centred else reps)
    return {"group": group, "metric": metric, "value": float(value), "ci_low": lo, "ci_high": hi,
            "n_real": int(n_real), "n_fake": int(n_fake), "note": note}


def _label_moments(x: np.ndarray, labels: np.ndarray, w: np.ndarray | None) -> dict[str, tuple]:
    """(count, sum, uncentred second moment) of each label's rows, row i counted w[i] times; the
    second moments in float32 (x is centred on the real mean first, which keeps them accurate)."""
    w = np.ones(len(x), np.float32) if w is None else w.astype(np.float32)
    out = {}
    for label in np.unique(labels):
        i = labels == label
        xi, wi = x[i], w[i]
        out[label] = (float(wi.sum()), wi @ xi.astype(np.float64), ((xi.T * wi) @ xi).astype(np.float64))
    return out


def _gaussian(parts: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof 1) from summed (count, sum, second moment) parts."""
    n = sum(p[0] for p in parts)
    mu = sum(p[1] for p in parts) / n
    return mu, (sum(p[2] for p in parts) - n * np.outer(mu, mu)) / (n - 1)


def _fid_rows(real, fake, rl, fl, cr, cf) -> list[dict]:
    """FID of each class (in both sets) and overall, with replicates, from per-label moments: one pass
    over the images per replicate serves every group."""
    shift = real.mean(0)
    real, fake = real - shift, fake - shift
    names = groups(rl, fl)
    for name, ir, jf in names:
        _check_fid(len(ir), len(jf), real.shape[1], f" (group '{name}')")

    def fids(a, b):
        mr, mf = _label_moments(real, rl, a), _label_moments(fake, fl, b)
        pick = {name: ([mr[name]], [mf[name]]) for name, _, _ in names[:-1]}
        pick[ALL] = (list(mr.values()), list(mf.values()))
        return {name: frechet_distance(*_gaussian(r), *_gaussian(f)) for name, (r, f) in pick.items()}

    value = fids(None, None)
    reps = [fids(a, b) for a, b in zip(cr, cf)]
    return [_row(name, "fid", value[name], [r[name] for r in reps], len(ir), len(jf),
                 f"{real.shape[1]} dims; CI centred (resampling bias removed)", centred=True) for name, ir, jf in names]


def _kid_rows(name, xr, xf, cr, cf, f: FidelityConfig, rng) -> list[dict]:
    m, s, sb = f.kid_subset_size, f.kid_subsets, f.kid_bootstrap_subsets
    _check_kid(len(xr), len(xf), m, f" (group '{name}')")
    wr = [_subset_rows(len(xr), m, s, rng)] + [_subset_rows(len(xr), m, sb, rng, c) for c in cr]
    wf = [_subset_rows(len(xf), m, s, rng)] + [_subset_rows(len(xf), m, sb, rng, c) for c in cf]
    v = mmd2_rows(xr, xf, np.concatenate(wr), np.concatenate(wf))
    point, reps = v[:s], v[s:].reshape(len(cr), sb).mean(1)
    return [_row(name, "kid", point.mean(), reps, len(xr), len(xf),
                 f"std over {s} subsets of {m}: {point.std():.3g}")]


def _prdc_rows(name, xr, xf, cr, cf, k) -> list[dict]:
    parts = prdc_parts(xr, xf, k, f" (group '{name}')")
    value = prdc_from_parts(parts, k)
    reps = [prdc_from_parts(parts, k, a, b) for a, b in zip(cr, cf)]
    return [_row(name, m, value[m], [r[m] for r in reps], len(xr), len(xf), f"k = {k}") for m in value]


def diversity_rows(pairs: pd.DataFrame, n_images: int, n_boot: int, seed: int, metric: str) -> list[dict]:
    """Mean (MS-)SSIM per class and over every within-class pair, with image-resampling CIs."""
    rng = np.random.default_rng([seed, _SALT, 2])
    labels = np.full(n_images, "", dtype=object)
    labels[pairs["i"].to_numpy()] = pairs["label"].to_numpy()
    labels[pairs["j"].to_numpy()] = pairs["label"].to_numpy()
    counts = resample_counts(labels.astype(str), n_boot, rng)
    rows = []
    for group, part in [*pairs.groupby("label", sort=True), (ALL, pairs)]:
        reps = [_pair_mean(part, c) for c in counts]
        n = len(set(part["i"]) | set(part["j"]))      # images in the pairs
        n_real, n_fake = (n, 0) if metric.endswith("_real") else (0, n)
        rows.append(_row(group, metric, _pair_mean(part), reps, n_real, n_fake,
                         f"{part['measure'].iloc[0]}, {len(part)} pairs"))
    return rows


def evaluate(real: np.ndarray, fake: np.ndarray, real_labels, fake_labels, f: FidelityConfig, seed: int = 0,
             real_pairs: pd.DataFrame | None = None, fake_pairs: pd.DataFrame | None = None,
             timings: dict | None = None) -> pd.DataFrame:
    """Every fidelity metric per class and overall, each with a bootstrap CI: one row per (group, metric).
    ``real_pairs``/``fake_pairs`` (pair_scores of each set's images) add the diversity rows; ``timings``,
    when given, receives the seconds spent per metric."""
    real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be two n x d arrays of one d; got {real.shape} and {fake.shape}.")
    clock = _Clock(timings)
    rng = np.random.default_rng([seed, _SALT])
    cr, cf = resample_counts(real_labels, f.bootstrap, rng), resample_counts(fake_labels, f.bootstrap, rng)
    rl, fl = np.asarray(real_labels).astype(str), np.asarray(fake_labels).astype(str)
    with clock("fid"):
        basis = pca_basis(real, f.fid_dims) if f.fid_dims else None
        fr, ff = (project(real, basis), project(fake, basis)) if basis is not None else (real, fake)
        rows = _fid_rows(fr, ff, rl, fl, cr, cf)
    for name, ir, jf in groups(rl, fl):
        xr, xf, a, b = real[ir], fake[jf], cr[:, ir], cf[:, jf]
        with clock("kid"):
            rows += _kid_rows(name, xr, xf, a, b, f, rng)
        with clock("prdc"):
            rows += _prdc_rows(name, xr, xf, a, b, f.prdc_k)
    with clock("diversity"):
        for pairs, n, metric in ((fake_pairs, len(fake), "diversity_synthetic"),
                                 (real_pairs, len(real), "diversity_real")):
            if pairs is not None:
                rows += diversity_rows(pairs, n, f.bootstrap, seed, metric)
    return pd.DataFrame(rows, columns=COLUMNS)


class _Clock:
    """``with clock(name):`` adds the block's wall time to timings[name] (nothing when timings is None)."""

    def __init__(self, timings: dict | None):
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.timings is not None:
                self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t


def flat(table: pd.DataFrame, prefix: str = "fidelity.") -> dict:
    """One record: ``<prefix><metric>`` (overall) and ``<prefix><metric>.<class>``, each with _ci_low/_ci_high."""
    out = {}
    for r in table.itertuples():
        key = prefix + r.metric + ("" if r.group == ALL else f".{r.group}")
        out.update({key: r.value, f"{key}_ci_low": r.ci_low, f"{key}_ci_high": r.ci_high})
    return out


# ---------------------------------------------------------------------------------- stage-level helper
MEM = "memorization_"     # saved features of the memorization analysis (fidelity.memorization_extractor)


def run(cfg: Config, out_dir, synthetic: pd.DataFrame, real: pd.DataFrame, tuning: pd.DataFrame | None = None,
        holdout: pd.DataFrame | None = None, classifier_weights=None, figures_dir=None,
        figure_name: str = "06_memorization", progress: bool = False) -> dict:
    """Features (cached), fidelity and diversity of ``synthetic`` against ``real``, and memorization against
    ``tuning`` with ``holdout`` (real images the generator never saw) when both are given. Writes to out_dir:
    fidelity_features.npz, diversity_pairs.csv, fidelity.csv, and memorization.csv / memorization.json /
    the montage ``figure_name`` (in figures_dir, default out_dir). Returns the flat record."""
    from ..core import atomic
    from . import features, memorization
    from ..data import images

    out = Path(out_dir)
    ex = features.extractor(cfg, classifier_weights=classifier_weights)
    sets = {"real": real, "synthetic": synthetic}
    feats = {k: features.extract(df, cfg, ex, progress=progress) for k, df in sets.items()}
    labels = {f"{k}_labels": df["label"].astype(str).to_numpy() for k, df in sets.items()}
    extra = {}
    if tuning is not None and holdout is not None:      # a quota may repeat tuning images: count each once
        tuning, holdout = (df.drop_duplicates("path").reset_index(drop=True) for df in (tuning, holdout))
        mem_kind = cfg.fidelity.memorization_extractor
        mex = ex if mem_kind in ("same", ex.kind) else features.extractor(cfg, mem_kind, classifier_weights)
        extra = {f"{MEM}{k}": features.extract(df, cfg, mex, progress=progress)
                 for k, df in (("synthetic", synthetic), ("tuning", tuning), ("holdout", holdout))}
        extra[f"{MEM}extractor"] = np.array(mex.key)
    features.save(out / "fidelity_features.npz", **feats, **labels, **extra, extractor=np.array(ex.key))
    size = cfg.classifier.input_size
    pairs = pd.concat([pair_scores(images.load_stack(df["path"].tolist(), size), df["label"],
                                   cfg.fidelity.diversity_pairs, cfg.seed).assign(set=k)
                       for k, df in (("real", real), ("synthetic", synthetic))])
    atomic.write_csv(out / "diversity_pairs.csv", pairs)
    record = {"fidelity.extractor": ex.key}
    if extra:
        record["memorization.extractor"] = str(extra[f"{MEM}extractor"])
    table, mem = recompute(out, cfg)
    atomic.write_csv(out / "fidelity.csv", table)
    record.update(flat(table))
    if mem is not None:
        per_image, info, summary = mem
        per_image = per_image.assign(synthetic_path=synthetic["path"].to_numpy(),
                                     tuning_path=tuning["path"].to_numpy()[per_image["tuning_index"]])
        atomic.write_csv(out / "memorization.csv", per_image)
        atomic.write_json(out / "memorization.json", {**info, "summary": summary.to_dict("records")})
        import matplotlib.pyplot as plt

        plt.close(memorization.montage(per_image, figures_dir or out, figure_name, cfg.fidelity.montage_pairs, size))
        record.update(flat(summary, "memorization."))
    return record


def recompute(out_dir, cfg: Config):
    """The fidelity table and the memorization analysis from the saved features and pair scores alone:
    (table, (per_image, info, summary) or None)."""
    from . import features, memorization

    from threadpoolctl import threadpool_limits

    out = Path(out_dir)
    z = features.load(out / "fidelity_features.npz")
    pairs = pd.read_csv(out / "diversity_pairs.csv")
    # the thread count stage 05 used: BLAS sums in another order differ in the last bits
    with threadpool_limits(cfg.classifier.cpu_threads):
        table = evaluate(z["real"], z["synthetic"], z["real_labels"], z["synthetic_labels"], cfg.fidelity, cfg.seed,
                         pairs[pairs["set"] == "real"], pairs[pairs["set"] == "synthetic"])
        mem = None
        if f"{MEM}tuning" in z and f"{MEM}holdout" in z:
            per_image, info = memorization.analyse(z[f"{MEM}synthetic"], z[f"{MEM}tuning"], z[f"{MEM}holdout"],
                                                   cfg.fidelity.copy_threshold, cfg.seed, z["synthetic_labels"])
            mem = per_image, info, memorization.summary(per_image, cfg.fidelity.bootstrap, cfg.seed)
    return table, mem


# ------------------------------------------------------------------------------- fine-tuning trace
def validation_trace(stack: np.ndarray, labels: list[str], reference: dict[str, np.ndarray], ex) -> dict:
    """KID of one validation save (labels x n x H x W) against the tuning images' features (``reference``:
    label -> n x d, same extractor ``ex``), per label and pooled. With a handful of validation images FID's
    bias would swamp the trace, so it is KID on the full sets: the unbiased MMD^2 (polynomial kernel) of all
    validation images against all tuning images of the label (no subsets); a label needs >= 2 of each."""
    from . import features

    out = {"features": ex.key, "groups": {}}
    val = {lab: features.embed_array(ex, stack[i]) for i, lab in enumerate(labels)}
    pooled = (np.concatenate(list(val.values())), np.concatenate([reference[lab] for lab in labels]))
    for name, (v, r) in [*((lab, (val[lab], reference[lab])) for lab in labels), (ALL, pooled)]:
        if len(v) >= 2 and len(r) >= 2:
            kid_value = mmd2_rows(r, v, np.ones((1, len(r))), np.ones((1, len(v))))[0]
            out["groups"][name] = {"kid": float(kid_value), "n_val": len(v), "n_ref": len(r)}
    return out


def trace_log(validation_dir) -> pd.DataFrame:
    """validation/step_*.json traces as one table: model, step, group, kid, n_val, n_ref, features."""
    rows = []
    for meta in sorted(Path(validation_dir).glob("step_*.json")):
        m = json.loads(meta.read_text())
        trace = m.get("trace") or {}
        for group, v in trace.get("groups", {}).items():
            rows.append({"model": m["model"], "step": m["step"], "group": group, **v, "features": trace["features"]})
    return pd.DataFrame(rows, columns=["model", "step", "group", "kid", "n_val", "n_ref", "features"])
