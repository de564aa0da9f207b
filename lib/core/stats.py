"""Statistics for the analysis: DeLong tests, Holm's correction, chance-aware ratios with bootstrap
intervals, summaries over seeds and the two-level (seeds, then test rows) bootstrap.

Plain numpy/scipy, checked in tests/test_stats.py against slow direct computations. Conventions as in
lib/evaluate/metrics.py: labels are 0/1, a score is P(label 1), AUROC is the Mann-Whitney statistic with ties
counted one half, and a percentile interval uses numpy's default (linear) quantiles.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata
from scipy.stats import t as student_t

NAN = float("nan")


# ----------------------------------------------------------------------------- helpers
def _labels_scores(y, *scores) -> tuple[np.ndarray, list[np.ndarray]]:
    y = np.asarray(y).astype(int).ravel()
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1.")
    out = []
    for s in scores:
        s = np.asarray(s, dtype=np.float64).ravel()
        if s.shape != y.shape:
            raise ValueError(f"{len(y)} labels but {len(s)} scores.")
        if not np.isfinite(s).all():
            raise ValueError("scores contain NaN or infinity.")
        out.append(s)
    return y, out


def _quantile(v: np.ndarray, q: float) -> float:
    """numpy's linear quantile of sorted v; a quantile that falls next to an infinite value is that value."""
    pos = q * (len(v) - 1)
    i = int(np.floor(pos))
    t = pos - i
    lo, hi = v[i], v[min(i + 1, len(v) - 1)]
    if t == 0 or lo == hi:
        return float(lo)
    if np.isinf(lo):
        return float(lo)
    if np.isinf(hi):
        return float(hi)
    return float(lo + t * (hi - lo))


def _ci(values, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates; NaN replicates are dropped."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = np.sort(v[~np.isnan(v)])
    if len(v) == 0:
        return NAN, NAN
    a = (1 - level) / 2
    return _quantile(v, a), _quantile(v, 1 - a)


def _z(level: float) -> float:
    return float(norm.ppf(1 - (1 - level) / 2))


# ----------------------------------------------------------------------------- DeLong
def _placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components from midranks (Sun & Xu's fast form), O(n log n).

    V10[i] = share of negatives scored below positive i, V01[j] = share of positives scored above
    negative j (ties count one half). Both average to the AUROC.
    """
    pos, neg = s[y == 1], s[y == 0]
    m, n = len(pos), len(neg)
    r = rankdata(np.concatenate([pos, neg]))  # midranks in the pooled sample
    v10 = (r[:m] - rankdata(pos)) / n  # pooled rank minus rank among positives = negatives below
    v01 = 1 - (r[m:] - rankdata(neg)) / m  # pooled rank minus rank among negatives = positives below
    return v10, v01


def _delong_cov(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of k scorers on the same labels and their k x k DeLong covariance S10/m + S01/n."""
    k = len(scores)
    m = int(y.sum()); n = len(y) - m
    if m == 0 or n == 0:
        return np.full(k, NAN), np.full((k, k), NAN)
    parts = [_placements(y, s) for s in scores]
    v10 = np.stack([p[0] for p in parts])  # k x m
    v01 = np.stack([p[1] for p in parts])  # k x n
    auc = v10.mean(axis=1)
    if m < 2 or n < 2:  # no spread to estimate from
        return auc, np.full((k, k), NAN)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return auc, cov


def delong(y, s1, s2, level: float = 0.95) -> dict:
    """Paired DeLong test of AUROC(s1) = AUROC(s2) on the same test set.

    Returns auc1, auc2, diff = auc1 - auc2, its standard error, z, the two-sided p-value and the normal
    interval of diff. All NaN when the test set holds one class only.
    """
    y, (s1, s2) = _labels_scores(y, s1, s2)
    auc, S = _delong_cov(y, [s1, s2])
    diff = auc[0] - auc[1]
    var = S[0, 0] + S[1, 1] - 2 * S[0, 1]
    se = float(np.sqrt(max(var, 0.0))) if np.isfinite(var) else NAN
    if se > 0:
        z = diff / se
    elif se == 0:  # identical placements: no evidence of a difference unless the AUROCs differ
        z = 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
    else:
        z = NAN
    p = NAN if np.isnan(z) else float(2 * norm.sf(abs(z)))
    h = _z(level) * se
    return {"auc1": float(auc[0]), "auc2": float(auc[1]), "diff": float(diff), "se": se, "z": float(z),
            "p": p, "ci_low": float(diff - h), "ci_high": float(diff + h)}


def delong_single(y, s, level: float = 0.95) -> dict:
    """AUROC with DeLong's standard error and normal interval (clipped to [0, 1])."""
    y, (s,) = _labels_scores(y, s)
    auc, S = _delong_cov(y, [s])
    se = float(np.sqrt(max(S[0, 0], 0.0))) if np.isfinite(S[0, 0]) else NAN
    h = _z(level) * se
    return {"auc": float(auc[0]), "se": se, "ci_low": float(max(auc[0] - h, 0.0)) if np.isfinite(h) else NAN,
            "ci_high": float(min(auc[0] + h, 1.0)) if np.isfinite(h) else NAN}


# ----------------------------------------------------------------------------- multiple testing
def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same shape as the input). NaN entries are passed through
    and do not count as tests."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = p.copy().ravel()
    ok = ~np.isnan(out)
    q = out[ok]
    if ((q < 0) | (q > 1)).any():
        raise ValueError("p-values must lie in [0, 1].")
    k = len(q)
    order = np.argsort(q, kind="stable")
    # the i-th smallest (0-based) is multiplied by k - i; a running max keeps the order, then cap at 1
    adj = np.minimum(np.maximum.accumulate((k - np.arange(k)) * q[order]), 1.0)
    q[order] = adj
    out[ok] = q
    return out.reshape(p.shape)


# ----------------------------------------------------------------------------- ratios
def _ratio(num, den, num_reps, den_reps, pole: float, pole_name: str, level: float) -> dict:
    """(num - pole) / (den - pole) with a percentile CI over paired replicates; undefined (NaN) when
    the denominator's CI reaches the pole."""
    def undefined(reason: str) -> dict:
        return {"value": NAN, "ci_low": NAN, "ci_high": NAN, "defined": False, "reason": reason}

    num, den = float(num), float(den)
    nr = np.asarray([] if num_reps is None else num_reps, dtype=np.float64).ravel()
    dr = np.asarray([] if den_reps is None else den_reps, dtype=np.float64).ravel()
    if len(nr) != len(dr):
        raise ValueError(f"replicates must be paired: {len(nr)} numerator vs {len(dr)} denominator.")
    if np.isnan(den):
        return undefined("denominator is NaN")
    if np.isnan(num):
        return undefined("numerator is NaN")
    d_low, _ = _ci(dr, level)
    if np.isnan(d_low):
        return undefined("no bootstrap replicates of the denominator")
    if den <= pole or d_low <= pole:
        return undefined(f"denominator's CI reaches {pole_name} (lower bound {d_low:.4g} <= {pole:g})")
    ok = np.isfinite(nr) & np.isfinite(dr)
    en, ed = nr[ok] - pole, dr[ok] - pole
    # A replicate whose denominator is at or past the pole has no finite ratio: count it as the limit
    # from the defined side (+-inf by the numerator's sign), so it lands in the tail it belongs to.
    # Once the denominator's CI clears the pole these are at most (1 - level) / 2 of the replicates.
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(ed > 0, en / ed, np.sign(en) * np.inf)
    r[(ed <= 0) & (en == 0)] = NAN  # 0 / 0: dropped
    lo, hi = _ci(r, level)
    return {"value": (num - pole) / (den - pole), "ci_low": lo, "ci_high": hi, "defined": True, "reason": ""}


def chance_ratio(num, den, num_reps, den_reps, chance: float = 0.5, level: float = 0.95) -> dict:
    """Chance-corrected ratio (num - chance) / (den - chance), e.g. (AUROC_a - .5) / (AUROC_b - .5),
    with a percentile CI from paired bootstrap replicates. Undefined when the denominator's CI reaches
    chance: its value would be arbitrarily large or of either sign."""
    return _ratio(num, den, num_reps, den_reps, chance, "chance", level)


def plain_ratio(num, den, num_reps, den_reps, level: float = 0.95) -> dict:
    """num / den (the thesis's FTER) with the same interval and rule, the pole being 0."""
    return _ratio(num, den, num_reps, den_reps, 0.0, "0", level)


# ----------------------------------------------------------------------------- seeds
def seed_summary(values, level: float = 0.95) -> dict:
    """Mean, s.d. (ddof=1) and t-interval of the mean over seeds. Non-finite values (failed seeds)
    are left out and not counted in n; the interval is NaN below two seeds."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = len(v)
    mean = float(v.mean()) if n else NAN
    if n < 2:
        return {"mean": mean, "sd": NAN, "n": n, "t_low": NAN, "t_high": NAN}
    sd = float(v.std(ddof=1))
    h = float(student_t.ppf((1 + level) / 2, n - 1)) * sd / np.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "t_low": mean - h, "t_high": mean + h}


# ----------------------------------------------------------------------------- bootstrap
def _aligned(arrays) -> tuple[np.ndarray, ...]:
    """A tuple of arrays that share their first axis (a bare array is a tuple of one)."""
    if isinstance(arrays, np.ndarray):
        arrays = (arrays,)
    arrays = tuple(np.asarray(a) for a in arrays)
    if not arrays or len({len(a) for a in arrays}) != 1:
        raise ValueError("need one or more arrays of the same length.")
    if len(arrays[0]) == 0:
        raise ValueError("cannot resample an empty test set.")
    return arrays


def _stat(statistic, arrays: tuple, idx=None) -> float:
    """statistic on the rows idx of every array (all rows when idx is None)."""
    return float(statistic(*arrays) if idx is None else statistic(*(a[idx] for a in arrays)))


def _rows(arrays: tuple, rng: np.random.Generator) -> np.ndarray:
    n = len(arrays[0])
    return rng.integers(0, n, n)


def bootstrap_reps(arrays, statistic, n_boot: int, rng) -> np.ndarray:
    """statistic(*arrays) on n_boot resamples of the rows (with replacement). NaN replicates are kept,
    so replicates of two statistics drawn with the same generator state stay paired."""
    arrays = _aligned(arrays)
    rng = np.random.default_rng(rng)
    return np.array([_stat(statistic, arrays, _rows(arrays, rng)) for _ in range(n_boot)])


def _draw_seeds(n_seeds: int, rng: np.random.Generator):
    # with one seed there is nothing to draw: the ordinary bootstrap, draw for draw
    return rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else [0]


def two_level_bootstrap(groups, statistic, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Bootstrap over seeds and test rows: each replicate draws seeds with replacement, resamples the
    rows of each drawn seed, and averages the statistic over the drawn seeds, so the interval holds the
    between-seed spread as well as the test-set noise. ``groups`` has one tuple of aligned arrays per
    seed; ``value`` is the mean over seeds of the statistic on the full data. Replicates in which the
    statistic is NaN (a resample with one class) are dropped."""
    groups = [_aligned(g) for g in groups]
    if not groups:
        raise ValueError("need at least one seed.")
    value = float(np.mean([_stat(statistic, g) for g in groups]))
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        reps[b] = np.mean([_stat(statistic, groups[k], _rows(groups[k], rng))
                           for k in _draw_seeds(len(groups), rng)])
    reps = reps[~np.isnan(reps)]
    lo, hi = _ci(reps, level)
    return {"value": value, "ci_low": lo, "ci_high": hi, "reps": reps}


def paired_difference(groups_a, groups_b, statistic, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                      shared_rows: bool = False) -> dict:
    """Method A minus baseline B on the same seeds: groups_a[i] and groups_b[i] are seed i's runs.

    diff is the mean over seeds of statistic(A_i) - statistic(B_i). Two intervals: a t-interval over
    the per-seed differences (t_low, t_high; seeds only), and a two-level bootstrap (ci_low, ci_high)
    that resamples seeds, then test rows -- with the same row indices for A and B when shared_rows is
    set and their test sets have the same length, else independently. p_boot is the two-sided
    bootstrap p-value 2 * min(share of replicates <= 0, share >= 0), floored at one replicate's share.
    """
    groups_a = [_aligned(g) for g in groups_a]
    groups_b = [_aligned(g) for g in groups_b]
    if len(groups_a) != len(groups_b) or not groups_a:
        raise ValueError(f"A and B must share their seeds: {len(groups_a)} vs {len(groups_b)} runs.")
    per_seed = np.array([_stat(statistic, a) - _stat(statistic, b) for a, b in zip(groups_a, groups_b)])
    share = [shared_rows and len(a[0]) == len(b[0]) for a, b in zip(groups_a, groups_b)]

    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for r in range(n_boot):
        d = []
        for k in _draw_seeds(len(groups_a), rng):
            ia = _rows(groups_a[k], rng)
            ib = ia if share[k] else _rows(groups_b[k], rng)
            d.append(_stat(statistic, groups_a[k], ia) - _stat(statistic, groups_b[k], ib))
        reps[r] = np.mean(d)
    reps = reps[~np.isnan(reps)]
    lo, hi = _ci(reps, level)
    if len(reps):
        p = 2 * min(np.mean(reps <= 0), np.mean(reps >= 0))
        p = float(min(max(p, 1 / len(reps)), 1.0))
    else:
        p = NAN
    s = seed_summary(per_seed, level)
    return {"diff": float(np.mean(per_seed)), "ci_low": lo, "ci_high": hi, "sd_over_seeds": s["sd"],
            "n_seeds": len(per_seed), "t_low": s["t_low"], "t_high": s["t_high"], "p_boot": p, "reps": reps}
