"""Seed-level intervals and power (issue 22): coverage and power checked by simulation, not by formula."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from lib.analyze import power


@pytest.mark.parametrize("n_seeds", [3, 5, 10])
@pytest.mark.parametrize("between,within", [(0.04, 0.022), (0.14, 0.022), (0.01, 0.05), (0.0, 0.03)])
def test_the_seed_level_interval_covers_at_its_nominal_level(n_seeds, between, within):
    # 4000 simulated studies: Monte-Carlo s.d. of a 95% coverage is 0.34 points
    assert 0.93 <= power.coverage(n_seeds, between, within, reps=4000, seed=n_seeds) <= 0.97


def test_below_three_seeds_there_is_no_seed_level_interval():
    two = power.seed_interval([0.7, 0.8])
    assert two["n"] == 2 and math.isnan(two["low"]) and math.isnan(two["high"])
    three = power.seed_interval([0.7, 0.8, np.nan, 0.75])        # a failed seed is not counted
    assert three["n"] == 3 and three["low"] < 0.75 < three["high"]


def test_the_paired_test_matches_scipy_and_the_interval_matches_its_definition():
    d = np.array([0.03, -0.01, 0.05, 0.02, 0.04])
    r = power.paired_test(d)
    ref = sps.ttest_1samp(d, 0.0)
    assert r["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    h = sps.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert (r["low"], r["high"]) == pytest.approx((d.mean() - h, d.mean() + h))


@pytest.mark.parametrize("delta,sd,n", [(0.03, 0.03, 5), (0.05, 0.04, 8), (0.02, 0.05, 30)])
def test_power_agrees_with_simulated_studies(delta, sd, n):
    assert power.power_paired(delta, sd, n) == pytest.approx(power.simulated_power(delta, sd, n, reps=20000), abs=0.012)


def test_the_minimum_detectable_effect_is_found_with_80_percent_power():
    for sd, n in [(0.02, 3), (0.059, 10), (0.1, 40)]:
        mde = power.mde_paired(sd, n)
        assert power.simulated_power(mde, sd, n, reps=20000) == pytest.approx(0.80, abs=0.012)
        assert power.power_paired(0.9 * mde, sd, n) < 0.8


@pytest.mark.parametrize("delta,sd_g,sd_c", [(0.03, 0.02, 0.03), (0.05, 0.03, 0.06), (0.03, 0.04, 0.01)])
def test_the_planned_design_reaches_its_power_in_a_nested_simulation(delta, sd_g, sd_c):
    """Per seed: a generator effect plus the mean of R classifier repeats' noise, as the planner models it."""
    design = power.plan(delta, sd_g, sd_c, seconds_generator=200, seconds_classifier=30).iloc[0]
    r, n = int(design["repeats"]), int(design["seeds"])
    rng = np.random.default_rng(7)
    reps = 6000
    d = delta + rng.normal(0, sd_g, (reps, n)) + rng.normal(0, sd_c, (reps, n, r)).mean(axis=2)
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    reached = float(np.mean(np.abs(t) > sps.t.ppf(0.975, n - 1)))
    assert 0.75 <= reached <= 0.85, (r, n, reached)
    assert design["seconds"] == n * (200 + r * 30)


def test_ratio_replicates_follow_the_rule_of_the_point_estimate():
    """A replicate whose TRTR falls below chance has no finite TR: it belongs in the tail its numerator's sign
    gives (here AUROC(a) below chance: the low tail), not at +50 where plain division puts it (issue 22, item 9)."""
    import pandas as pd

    from lib.analyze import aggregate

    rng = np.random.default_rng(3)
    n, bad = 200, 4
    a = np.r_[rng.normal(0.62, 0.02, n - bad), np.full(bad, 0.45)]
    trtr = np.r_[rng.normal(0.90, 0.02, n - bad), np.full(bad, 0.499)]
    reps = pd.DataFrame({"a": a, "b": rng.normal(0.8, 0.02, n), "trtr": trtr})
    point = {"a": 0.62, "b": 0.8, "trtr": 0.9}
    out = aggregate.ratio_intervals(point, reps)
    by_hand = np.where(trtr > 0.5, (a - 0.5) / (trtr - 0.5), -np.inf)      # the rule, written out
    assert out["tr_defined"] and out["tr_pooled"] == pytest.approx(0.12 / 0.4)
    assert out["tr_ci_high"] == pytest.approx(np.percentile(by_hand, 97.5))
    assert out["tr_ci_low"] == pytest.approx(np.percentile(by_hand, 2.5))
    naive = (a - 0.5) / (trtr - 0.5)                   # before: +50 each, pushing the upper bound up
    assert out["tr_ci_high"] < np.percentile(naive, 97.5) and out["tr_ci_low"] < np.percentile(naive, 2.5)


def test_power_is_defined_where_the_noncentrality_is_large():
    # scipy's nct.cdf(-crit, 2, 15.4) is NaN: a tight pilot (s.d. 0.0056, delta 0.05, 3 seeds) had no power
    p = power.power_paired(0.05, 0.005635, 3)
    assert np.isfinite(p) and p == pytest.approx(power.simulated_power(0.05, 0.005635, 3, reps=20000), abs=0.01)
    assert power.power_paired(-0.05, 0.02, 5) == power.power_paired(0.05, 0.02, 5)
