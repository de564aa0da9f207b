"""lib/core/stats.py against slow direct computations, scipy/sklearn and known answers."""
import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from lib.core import stats

Z95 = 1.959963984540054


def _auc(y, s):
    """Mann-Whitney AUROC from ranks (the test's own, for fast bootstrap loops)."""
    r = sps.rankdata(s)
    m = int(y.sum()); n = len(y) - m
    return (r[y == 1].sum() - m * (m + 1) / 2) / (m * n)


def _scores(rng, n, sep=(1.0, 0.6), shared=0.5, decimals=None):
    """Labels and two correlated noisy scorers (a shared noise term), optionally rounded for ties."""
    y = rng.integers(0, 2, n)
    common = rng.normal(size=n)
    s = [sep[k] * y + shared * common + rng.normal(size=n) for k in range(2)]
    if decimals is not None:
        s = [np.round(v, decimals) for v in s]
    return y, s[0], s[1]


# ----------------------------------------------------------------------------- DeLong
def _slow_delong(y, s1, s2):
    """DeLong et al. (1988) written out: kernel over every (positive, negative) pair, structural
    components V10 / V01, their sample covariances S10 / S01, S = S10/m + S01/n."""
    def psi(a, b):
        return 1.0 if a > b else (0.5 if a == b else 0.0)

    X = [list(s[y == 1]) for s in (s1, s2)]
    Y = [list(s[y == 0]) for s in (s1, s2)]
    m, n = len(X[0]), len(Y[0])
    V10 = [[0.0] * m for _ in range(2)]
    V01 = [[0.0] * n for _ in range(2)]
    for k in range(2):
        for i in range(m):
            for j in range(n):
                p = psi(X[k][i], Y[k][j])
                V10[k][i] += p / n
                V01[k][j] += p / m
    auc = [sum(V10[k]) / m for k in range(2)]
    S = [[0.0, 0.0], [0.0, 0.0]]
    for r in range(2):
        for c in range(2):
            s10 = sum((V10[r][i] - auc[r]) * (V10[c][i] - auc[c]) for i in range(m)) / (m - 1)
            s01 = sum((V01[r][j] - auc[r]) * (V01[c][j] - auc[c]) for j in range(n)) / (n - 1)
            S[r][c] = s10 / m + s01 / n
    var = S[0][0] + S[1][1] - 2 * S[0][1]
    diff = auc[0] - auc[1]
    z = diff / math.sqrt(var)
    return {"auc1": auc[0], "auc2": auc[1], "diff": diff, "se": math.sqrt(var), "z": z,
            "p": math.erfc(abs(z) / math.sqrt(2)), "se1": math.sqrt(S[0][0])}


@pytest.mark.parametrize("seed,decimals", [(0, None), (1, 1), (2, 2)])
def test_delong_equals_slow_direct_computation(seed, decimals):
    rng = np.random.default_rng(seed)
    y, s1, s2 = _scores(rng, 150, decimals=decimals)  # rounded: plenty of ties
    got = stats.delong(y, s1, s2)
    want = _slow_delong(y, s1, s2)
    for k in ("auc1", "auc2", "diff", "se", "z", "p"):
        assert got[k] == pytest.approx(want[k], abs=1e-10), k
    assert got["ci_low"] == pytest.approx(want["diff"] - Z95 * want["se"], abs=1e-10)
    assert got["ci_high"] == pytest.approx(want["diff"] + Z95 * want["se"], abs=1e-10)
    assert got["auc1"] == pytest.approx(roc_auc_score(y, s1), abs=1e-12)
    assert got["auc2"] == pytest.approx(roc_auc_score(y, s2), abs=1e-12)
    one = stats.delong_single(y, s1)
    assert one["auc"] == pytest.approx(roc_auc_score(y, s1), abs=1e-12)
    assert one["se"] == pytest.approx(want["se1"], abs=1e-10)
    assert one["ci_low"] == pytest.approx(max(0, one["auc"] - Z95 * want["se1"]), abs=1e-10)
    assert one["ci_high"] == pytest.approx(min(1, one["auc"] + Z95 * want["se1"]), abs=1e-10)


def test_delong_se_matches_paired_bootstrap():
    rng = np.random.default_rng(10)
    y, s1, s2 = _scores(rng, 4000, sep=(1.0, 0.7), shared=1.0)
    got = stats.delong(y, s1, s2)
    boot = np.empty(2000)
    for b in range(len(boot)):
        i = rng.integers(0, len(y), len(y))
        boot[b] = _auc(y[i], s1[i]) - _auc(y[i], s2[i])
    assert got["se"] == pytest.approx(boot.std(ddof=1), rel=0.10)
    single = stats.delong_single(y, s1)
    assert single["se"] == pytest.approx(np.std([_auc(y[i], s1[i]) for i in rng.integers(0, len(y), (1000, len(y)))]),
                                         rel=0.12)


def test_delong_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(11)
    p = np.array([stats.delong(*_scores(rng, 200, sep=(0.8, 0.8), shared=0.7))["p"] for _ in range(200)])
    assert 0.01 <= np.mean(p < 0.05) <= 0.10
    assert 0.4 <= p.mean() <= 0.6
    assert sps.kstest(p, "uniform").pvalue > 0.01


def test_delong_edge_cases():
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.9])
    same = stats.delong(y, s, s)
    assert same["diff"] == 0 and same["se"] == 0 and same["p"] == 1
    assert np.isnan(stats.delong(np.ones(5), s, s)["p"])  # one class: no AUROC
    with pytest.raises(ValueError):
        stats.delong(y, s, s[:4])


# ----------------------------------------------------------------------------- Holm
def _holm_loop(p):
    """Holm (1979) step-down, written out: the i-th smallest of k tests times (k - i + 1), running max."""
    idx = [i for i in range(len(p)) if not math.isnan(p[i])]
    idx.sort(key=lambda i: p[i])
    k, out, run = len(idx), [float("nan")] * len(p), 0.0
    for rank, i in enumerate(idx):
        run = max(run, min(1.0, (k - rank) * p[i]))
        out[i] = run
    return out


def _holm_reference(p):
    try:
        from statsmodels.stats.multitest import multipletests
    except ImportError:
        return np.array(_holm_loop(list(p)))
    p = np.asarray(p, float)
    out = np.full(len(p), np.nan)
    ok = ~np.isnan(p)
    out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def test_holm_known_example_and_nan():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-12)
    got = stats.holm([0.01, np.nan, 0.04, 0.03, 0.005])
    assert np.isnan(got[1])
    assert np.delete(got, 1) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-12)  # NaN not counted
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped


@pytest.mark.parametrize("seed", [0, 1])
def test_holm_against_reference(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(30) ** 3
    p[[3, 17]] = np.nan
    p[5] = p[6]  # a tie
    got = stats.holm(p)
    np.testing.assert_allclose(got, _holm_reference(p), atol=1e-12)
    order = np.argsort(p[~np.isnan(p)])
    assert np.all(np.diff(got[~np.isnan(p)][order]) >= 0)  # monotone in p


# ----------------------------------------------------------------------------- ratios
def test_chance_ratio_clear_case():
    rng = np.random.default_rng(0)
    nr = 0.8 + 0.01 * rng.normal(size=1000)
    dr = 0.9 + 0.01 * rng.normal(size=1000)
    got = stats.chance_ratio(0.8, 0.9, nr, dr)
    assert got["defined"] and got["reason"] == ""
    assert got["value"] == pytest.approx(0.75, abs=1e-12)
    want = np.quantile((nr - 0.5) / (dr - 0.5), [0.025, 0.975])
    assert [got["ci_low"], got["ci_high"]] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("den,sd", [(0.56, 0.04), (0.501, 0.001), (0.45, 0.01)])
def test_chance_ratio_undefined_when_denominator_ci_reaches_chance(den, sd):
    rng = np.random.default_rng(1)
    nr = 0.7 + 0.02 * rng.normal(size=1000)
    dr = den + sd * rng.normal(size=1000)
    assert np.quantile(dr, 0.025) <= 0.5  # the premise
    got = stats.chance_ratio(0.7, den, nr, dr)
    assert not got["defined"]
    assert "denominator's CI reaches chance" in got["reason"]
    assert all(np.isnan(got[k]) for k in ("value", "ci_low", "ci_high"))  # never a huge or negative number


def test_chance_ratio_keeps_replicates_below_chance_in_the_right_tail():
    rng = np.random.default_rng(2)
    nr = 0.7 + 0.01 * rng.normal(size=1000)
    dr = 0.6 + 0.02 * rng.normal(size=1000)
    dr[:10] = 0.49  # 1% of replicates past chance; the 2.5% bound still clears it
    got = stats.chance_ratio(0.7, 0.6, nr, dr)
    assert got["defined"]
    assert 0 < got["ci_low"] < got["value"] < got["ci_high"] < np.inf
    # they count as the largest ratios: the upper bound is at least the plain quantile with them dropped
    assert got["ci_high"] >= np.quantile((nr[10:] - 0.5) / (dr[10:] - 0.5), 0.975)


def test_plain_ratio():
    rng = np.random.default_rng(3)
    nr = 0.8 + 0.01 * rng.normal(size=500)
    dr = 0.9 + 0.01 * rng.normal(size=500)
    got = stats.plain_ratio(0.8, 0.9, nr, dr)
    assert got["defined"] and got["value"] == pytest.approx(0.8 / 0.9)
    assert [got["ci_low"], got["ci_high"]] == pytest.approx(np.quantile(nr / dr, [0.025, 0.975]), abs=1e-12)
    bad = stats.plain_ratio(0.8, 0.02, nr, 0.02 + 0.02 * rng.normal(size=500))
    assert not bad["defined"] and np.isnan(bad["value"]) and "reaches 0" in bad["reason"]
    nan_den = stats.plain_ratio(0.8, float("nan"), nr, dr)
    assert not nan_den["defined"] and np.isnan(nan_den["value"])
    with pytest.raises(ValueError):
        stats.plain_ratio(0.8, 0.9, nr, dr[:10])  # replicates must be paired


# ----------------------------------------------------------------------------- seeds
def test_seed_summary_against_scipy():
    v = [0.71, 0.74, 0.69, 0.77, 0.73]
    got = stats.seed_summary(v)
    lo, hi = sps.t.interval(0.95, df=4, loc=np.mean(v), scale=sps.sem(v))
    assert got["n"] == 5
    assert got["mean"] == pytest.approx(np.mean(v))
    assert got["sd"] == pytest.approx(np.std(v, ddof=1))
    assert [got["t_low"], got["t_high"]] == pytest.approx([lo, hi], abs=1e-12)
    one = stats.seed_summary([0.7])
    assert one["mean"] == 0.7 and one["n"] == 1 and np.isnan(one["t_low"]) and np.isnan(one["sd"])
    assert stats.seed_summary([0.7, np.nan, 0.8])["n"] == 2


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_reps_of_a_mean():
    rng = np.random.default_rng(4)
    x = rng.normal(size=500)
    reps = stats.bootstrap_reps((x,), np.mean, 2000, np.random.default_rng(0))
    assert reps.shape == (2000,)
    assert reps.std() == pytest.approx(x.std() / np.sqrt(len(x)), rel=0.08)
    assert reps.mean() == pytest.approx(x.mean(), abs=0.01)


def _seed_runs(rng, seps, n):
    """One (labels, scores) test set per seed, each seed's scorer separating the classes by seps[k]."""
    out = []
    for sep in seps:
        y = rng.integers(0, 2, n)
        out.append((y, sep * y + rng.normal(size=n)))
    return out


def test_two_level_bootstrap_includes_seed_variance():
    rng = np.random.default_rng(5)
    groups = _seed_runs(rng, [0.3, 0.8, 1.3, 1.8, 2.3], 4000)
    aucs = np.array([roc_auc_score(y, s) for y, s in groups])
    got = stats.two_level_bootstrap(groups, stats_auc, n_boot=400, seed=0)
    one = stats.two_level_bootstrap(groups[:1], stats_auc, n_boot=200, seed=0)
    assert got["value"] == pytest.approx(aucs.mean(), abs=1e-12)
    assert one["value"] == pytest.approx(aucs[0], abs=1e-12)
    assert got["ci_high"] - got["ci_low"] > 4 * (one["ci_high"] - one["ci_low"])
    # the replicates' spread is essentially that of a mean of 5 seeds drawn with replacement
    assert got["reps"].std() == pytest.approx(np.sqrt(aucs.var() / len(aucs)), rel=0.15)


def stats_auc(y, s):
    return _auc(y, s) if 0 < y.sum() < len(y) else float("nan")


def test_two_level_bootstrap_one_seed_is_the_ordinary_bootstrap_and_drops_nan():
    rng = np.random.default_rng(6)
    y = np.zeros(20, int); y[3] = 1  # one positive: many resamples have one class
    s = rng.random(20)
    got = stats.two_level_bootstrap([(y, s)], stats_auc, n_boot=300, seed=7)
    plain = stats.bootstrap_reps((y, s), stats_auc, 300, np.random.default_rng(7))
    assert 0 < len(got["reps"]) < 300 and np.isfinite(got["reps"]).all()
    np.testing.assert_array_equal(got["reps"], plain[~np.isnan(plain)])


def test_paired_difference_identical_is_exactly_zero():
    rng = np.random.default_rng(8)
    groups = _seed_runs(rng, [0.5, 1.0, 1.5], 300)
    got = stats.paired_difference(groups, groups, stats_auc, n_boot=200, shared_rows=True)
    assert got["diff"] == 0 and got["ci_low"] == 0 and got["ci_high"] == 0
    assert got["sd_over_seeds"] == 0 and got["t_low"] == 0 and got["t_high"] == 0
    assert got["n_seeds"] == 3 and got["p_boot"] == 1


def test_paired_difference_constant_shift_is_detected():
    rng = np.random.default_rng(9)
    b = [(rng.normal(size=200),) for _ in range(4)]
    a = [(x + 0.1,) for (x,) in b]
    got = stats.paired_difference(a, b, np.mean, n_boot=200, shared_rows=True)
    assert got["diff"] == pytest.approx(0.1, abs=1e-12)
    assert [got["ci_low"], got["ci_high"]] == pytest.approx([0.1, 0.1], abs=1e-12)
    assert [got["t_low"], got["t_high"]] == pytest.approx([0.1, 0.1], abs=1e-12)
    assert got["p_boot"] == pytest.approx(1 / 200)


def test_paired_difference_auroc_shift_and_pairing():
    rng = np.random.default_rng(12)
    ga, gb = [], []
    for k in range(5):
        y = rng.integers(0, 2, 1500)
        base = 0.8 * y + rng.normal(size=1500)
        ga.append((y, base + 0.4 * y + 0.3 * rng.normal(size=1500)))  # A: better, sharing B's errors
        gb.append((y, base))
    want = np.array([roc_auc_score(*a) - roc_auc_score(*b) for a, b in zip(ga, gb)])
    paired = stats.paired_difference(ga, gb, stats_auc, n_boot=200, seed=1, shared_rows=True)
    apart = stats.paired_difference(ga, gb, stats_auc, n_boot=200, seed=1, shared_rows=False)
    assert paired["diff"] == pytest.approx(want.mean(), abs=1e-12)
    assert paired["sd_over_seeds"] == pytest.approx(want.std(ddof=1), abs=1e-12)
    lo, hi = sps.t.interval(0.95, df=4, loc=want.mean(), scale=sps.sem(want))
    assert [paired["t_low"], paired["t_high"]] == pytest.approx([lo, hi], abs=1e-12)
    assert paired["ci_low"] > 0 and paired["t_low"] > 0 and paired["p_boot"] <= 0.01
    # sharing the rows removes the test-set noise common to A and B: a narrower interval
    assert paired["ci_high"] - paired["ci_low"] < 0.8 * (apart["ci_high"] - apart["ci_low"])
    with pytest.raises(ValueError):
        stats.paired_difference(ga, gb[:4], stats_auc, n_boot=10)
