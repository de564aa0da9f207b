"""Seed-level inference and power: what a comparison over generator seeds can see.

A seed is the unit of replication: each generator seed gives one estimate (AUROC(a), TR, or a paired difference of
two methods on that seed's shared test set). The primary interval is Student's t over those per-seed estimates,
which is exact when they are normal and independent whatever the split of their variance between the generator,
the classifier and the test images; a bootstrap that resamples seeds sees at most n distinct values and under-covers
at the seed counts people run (82% at 2 seeds, 86% at 3 in the audit of issue 22). Below ``MIN_SEEDS`` no
seed-level interval is given.

Power is that of the paired t-test over seeds: with per-seed differences of s.d. ``sd``, ``n`` seeds detect a
difference ``delta`` with probability ``power_paired``; ``mde_paired`` is the smallest delta found with 80% power, and
``plan`` picks generator seeds and classifier repeats for a target delta at the least cost.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.stats import nct, t as student_t

MIN_SEEDS = 3
ALPHA, POWER = 0.05, 0.80


# ------------------------------------------------------------------------------------ intervals
def seed_interval(values, level: float = 0.95) -> dict:
    """Mean of the per-seed estimates with its t-interval; the interval is NaN below MIN_SEEDS finite seeds."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = len(v)
    out = {"mean": float(v.mean()) if n else math.nan, "sd": float(v.std(ddof=1)) if n > 1 else math.nan,
           "n": n, "low": math.nan, "high": math.nan}
    if n >= MIN_SEEDS:
        h = float(student_t.ppf((1 + level) / 2, n - 1)) * out["sd"] / math.sqrt(n)
        out.update(low=out["mean"] - h, high=out["mean"] + h)
    return out


def paired_test(diffs, level: float = 0.95) -> dict:
    """The paired t-test over seeds on per-seed differences: mean, t-interval and two-sided p (NaN below
    MIN_SEEDS), and the minimum detectable effect at 80% power for this many seeds and this s.d. (from 2 seeds)."""
    out = seed_interval(diffs, level)
    n, sd = out["n"], out["sd"]
    out["p"] = math.nan
    # the MDE needs only an s.d.: at 2 seeds it says how large a difference could have been seen at all
    out["mde"] = mde_paired(sd, n, 1 - level) if n >= 2 else math.nan
    if n >= MIN_SEEDS:
        se = sd / math.sqrt(n)
        out["p"] = 1.0 if se == 0 and out["mean"] == 0 else (
            0.0 if se == 0 else float(2 * student_t.sf(abs(out["mean"]) / se, n - 1)))
    return out


# ---------------------------------------------------------------------------------------- power
def power_paired(delta: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test over n seeds for a true mean difference delta (noncentral t)."""
    if n < 2:
        return math.nan
    if sd <= 0:
        return 1.0 if delta else alpha
    df, nc = n - 1, abs(delta) / (sd / math.sqrt(n))      # symmetric in the sign of delta
    crit = float(student_t.ppf(1 - alpha / 2, df))
    # the wrong-sign tail P(T < -crit) as P(-T > crit), -T being noncentral with -nc: scipy's cdf(-crit, df, nc)
    # returns NaN for large nc (a per-seed s.d. of 0.0056 against delta 0.05 at 3 seeds)
    return float(nct.sf(crit, df, nc) + np.nan_to_num(nct.sf(crit, df, -nc)))


def mde_paired(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference the paired t-test over n seeds finds with the given power."""
    if n < 2 or not np.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    hi = sd
    while power_paired(hi, sd, n, alpha) < power:
        hi *= 2
    return float(optimize.brentq(lambda d: power_paired(d, sd, n, alpha) - power, 0.0, hi, xtol=1e-10))


def seeds_needed(delta: float, sd: float, alpha: float = ALPHA, power: float = POWER, most: int = 10_000) -> int:
    """The fewest seeds (at least MIN_SEEDS) whose paired t-test finds delta with the given power."""
    n = MIN_SEEDS
    while power_paired(abs(delta), sd, n, alpha) < power:
        n += 1
        if n > most:
            return most + 1
    return n


def plan(delta: float, sd_generator: float, sd_classifier: float, seconds_generator: float,
         seconds_classifier: float, alpha: float = ALPHA, power: float = POWER, max_repeats: int = 8) -> pd.DataFrame:
    """Designs for a target difference: for R classifier repeats per seed (averaged), the s.d. of a per-seed
    difference is sqrt(sd_generator^2 + sd_classifier^2 / R), the seeds that needs, and its cost in seconds
    (seeds x (generator + R x classifier)). Sorted cheapest first; column ``chosen`` marks the cheapest."""
    rows = []
    for r in range(1, max_repeats + 1):
        sd = math.sqrt(sd_generator ** 2 + sd_classifier ** 2 / r)
        n = seeds_needed(delta, sd, alpha, power)
        rows.append({"repeats": r, "sd_per_seed": sd, "seeds": n,
                     "power": power_paired(abs(delta), sd, n, alpha),
                     "seconds": n * (seconds_generator + r * seconds_classifier)})
    out = pd.DataFrame(rows).sort_values(["seconds", "repeats"]).reset_index(drop=True)
    out["chosen"] = out.index == 0
    return out


# ---------------------------------------------------------------------------------- simulations
def simulate_estimates(n_seeds: int, sd_between: float, sd_within: float, reps: int, rng, mu: float = 0.0):
    """reps x n_seeds per-seed estimates: a true value, a seed effect and the seed's own test/training noise."""
    return mu + rng.normal(0, sd_between, (reps, n_seeds)) + rng.normal(0, sd_within, (reps, n_seeds))


def coverage(n_seeds: int, sd_between: float, sd_within: float, reps: int = 4000, level: float = 0.95,
             seed: int = 0) -> float:
    """How often the seed-level t-interval holds the true value, over simulated studies."""
    rng = np.random.default_rng(seed)
    est = simulate_estimates(n_seeds, sd_between, sd_within, reps, rng)
    m, s = est.mean(axis=1), est.std(axis=1, ddof=1)
    h = student_t.ppf((1 + level) / 2, n_seeds - 1) * s / np.sqrt(n_seeds)
    return float(np.mean((m - h <= 0) & (0 <= m + h)))


def simulated_power(delta: float, sd: float, n: int, reps: int = 4000, alpha: float = ALPHA, seed: int = 0) -> float:
    """How often the paired t-test over n seeds rejects when the true difference is delta."""
    d = np.random.default_rng(seed).normal(delta, sd, (reps, n))
    tstat = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(n))
    return float(np.mean(np.abs(tstat) > student_t.ppf(1 - alpha / 2, n - 1)))
