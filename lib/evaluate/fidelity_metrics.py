"""The fidelity metrics themselves (issue 12), per call on one pair of sets; lib.evaluate.fidelity builds the
per-class table with bootstrap CIs from them, lib.evaluate.memorization shares the distances and resampling.

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
  classifier.input_size, lib.evaluate.fidelity.run: what the trainability matrix sees).

Too few images for a metric raise TooFewImages, which says what to change; no metric returns NaN.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

ALL = "all"
LEVEL = 0.95
MS_SSIM_MIN_SIDE = 176      # torchmetrics: side // (5 scales - 1)^2 > kernel 11 - 1, i.e. side // 16 >= 11
SSIM_MIN_SIDE = 11          # the Gaussian window
COLUMNS = ["group", "metric", "value", "ci_low", "ci_high", "n_real", "n_fake", "note"]
SALT = 0xF1D                # the fidelity random streams' salt (lib.evaluate.fidelity's bootstrap too)
_BLOCK = 1024               # rows per block of distance and kernel matrices (bounded memory)
_PAIR_PIXELS = 1 << 20      # pixels per image in one (MS-)SSIM batch


class TooFewImages(ValueError):
    """A metric given fewer images than it needs; the message names the metric and what to change."""


def _need(n: int, need: int, metric: str, what: str, fix: str) -> None:
    if n < need:
        raise TooFewImages(f"{metric} needs at least {need} {what}, got {n}. {fix}")


def ci(values) -> tuple[float, float]:
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


def check_fid(n_real: int, n_fake: int, d: int, where: str = "") -> None:
    fix = ("Set fidelity.fid_dims below the smaller set's size (FID on that many principal components), "
           "use a lower-dimensional extractor, or add images.")
    for n, what in ((n_real, "real"), (n_fake, "synthetic")):
        _need(n, d + 1, f"FID{where}", f"{what} images (more than the {d} feature dimensions)", fix)


def fid(real: np.ndarray, fake: np.ndarray, dims: int | None = None) -> float:
    """FID between two feature sets (n x d each); with ``dims``, on the top principal components of ``real``."""
    if dims:
        basis = pca_basis(real, dims)
        real, fake = project(real, basis), project(fake, basis)
    check_fid(len(real), len(fake), real.shape[1])
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


def subset_rows(n: int, m: int, count: int, rng, pool_counts: np.ndarray | None = None) -> np.ndarray:
    """``count`` rows of counts for subsets of m images drawn without replacement from n images, or from
    the multiset ``pool_counts`` (a resample: image i present pool_counts[i] times)."""
    rows = np.zeros((count, n), np.float32)
    pool = np.arange(n) if pool_counts is None else np.repeat(np.arange(n), pool_counts)
    for r in range(count):
        rows[r] = np.bincount(rng.choice(pool, m, replace=False), minlength=n)
    return rows


def check_kid(n_real: int, n_fake: int, m: int, where: str = "") -> None:
    _need(m, 2, f"KID{where}", "images per subset (fidelity.kid_subset_size)", "Raise fidelity.kid_subset_size.")
    for n, what in ((n_real, "real"), (n_fake, "synthetic")):
        _need(n, m, f"KID{where}", f"{what} images (fidelity.kid_subset_size = {m})",
              "Lower fidelity.kid_subset_size to at most the smaller set's size, or add images.")


def kid(real: np.ndarray, fake: np.ndarray, subset_size: int = 1000, n_subsets: int = 100,
        seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation over subsets of the unbiased MMD^2 (polynomial kernel)."""
    check_kid(len(real), len(fake), subset_size)
    rng = np.random.default_rng([seed, SALT])
    values = mmd2_rows(real, fake, subset_rows(len(real), subset_size, n_subsets, rng),
                       subset_rows(len(fake), subset_size, n_subsets, rng))
    return float(values.mean()), float(values.std())


# ---------------------------------------------------------------------- precision, recall, density, coverage
def sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aa, bb = np.einsum("id,id->i", a, a), np.einsum("id,id->i", b, b)
    return np.maximum(aa[:, None] + bb[None, :] - 2 * (a @ b.T), 0)


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row to its k-th nearest other row (the row itself, at 0, is the 0th)."""
    out = np.empty(len(x))
    for s in range(0, len(x), _BLOCK):
        d = sq_dists(x[s:s + _BLOCK], x)
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
        d = sq_dists(fake[s:s + _BLOCK], real)             # fakes of this block x every real
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
    rng = np.random.default_rng([seed, SALT, 1])
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


def pair_mean(pairs: pd.DataFrame, w: np.ndarray | None = None) -> float:
    if w is None:
        return float(pairs["score"].mean())
    pw = w[pairs["i"].to_numpy()] * w[pairs["j"].to_numpy()]
    return float(np.average(pairs["score"], weights=pw)) if pw.sum() > 0 else float(pairs["score"].mean())


# ------------------------------------------------------------------------------------------ resampling
def resample_counts(labels, n_boot: int, rng) -> np.ndarray:
    """n_boot x n image counts: each replicate draws each class's images with replacement, class sizes kept."""
    labels = np.asarray(labels).astype(str)
    out = np.zeros((n_boot, len(labels)), np.int32)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        out[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=n_boot)
    return out
