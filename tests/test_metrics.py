"""Every metric against scikit-learn on random scores; FTER and its interval."""
import numpy as np
import pytest
from sklearn import metrics as skm

from lib import metrics
from lib.nih import LABELS


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_metric_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 257
    y = rng.integers(0, 2, n)
    s = np.round(rng.random(n) * 0.6 + 0.25 * y, 2)  # rounded: plenty of ties
    got = metrics.summary(y, s, threshold=0.5)
    pred = (s >= 0.5).astype(int)
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    p, r, f, sup = skm.precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    cm = skm.confusion_matrix(y, pred, labels=[0, 1])
    for c, name in enumerate(LABELS):
        assert got[f"precision[{name}]"] == pytest.approx(p[c])
        assert got[f"recall[{name}]"] == pytest.approx(r[c])
        assert got[f"f1[{name}]"] == pytest.approx(f[c])
        assert got[f"support[{name}]"] == sup[c]
        # one-vs-rest AUROC of class c with score P(c)
        assert got[f"auroc[{name}]"] == pytest.approx(skm.roc_auc_score(y == c, s if c else 1 - s))
        # per-class accuracy: the share of class c classified correctly
        assert got[f"accuracy[{name}]"] == pytest.approx(skm.accuracy_score(y[y == c], pred[y == c]))
        for q, other in enumerate(LABELS):
            assert got[f"cm[{name}->{other}]"] == cm[c, q]
    np.testing.assert_array_equal(metrics.confusion(y, pred), cm)
    assert got["collapsed"] is False


def test_collapsed_classifier_is_flagged_and_zero_division_matches_sklearn():
    y = np.array([0, 1, 0, 1, 1])
    s = np.full(5, 0.2)
    got = metrics.summary(y, s)
    assert got["collapsed"] is True
    assert got["precision[Unhealthy]"] == skm.precision_score(y, s >= 0.5, zero_division=0) == 0.0
    assert got["auroc"] == 0.5


def test_auroc_of_one_class_is_nan_and_bad_input_is_refused():
    assert np.isnan(metrics.auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="labels"):
        metrics.auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc([0, 1], [0.1, np.nan])


def test_bootstrap_interval_covers_the_estimate_and_is_seeded():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    s = rng.random(400) + 0.3 * y
    lo, hi = metrics.auroc_ci(y, s, n_boot=300, seed=1)
    assert lo < metrics.auroc(y, s) < hi and hi - lo < 0.2
    assert metrics.auroc_ci(y, s, n_boot=300, seed=1) == (lo, hi)
    assert metrics.auroc_ci(y, s, n_boot=300, seed=2) != (lo, hi)


def test_fter_and_its_interval_resample_both_sets():
    rng = np.random.default_rng(4)
    ya, yb = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    sa, sb = rng.random(300) + 0.1 * ya, rng.random(300) + 0.8 * yb
    row = metrics.two_way(ya, sa, yb, sb, n_boot=200, seed=0)
    assert row["fter"] == pytest.approx(skm.roc_auc_score(ya, sa) / skm.roc_auc_score(yb, sb))
    assert row["fter_ci_low"] < row["fter"] < row["fter_ci_high"]
    # A perfect (b) set leaves only (a)'s sampling noise: the interval must narrow.
    lo, hi = metrics.fter_ci(ya, sa, yb, yb.astype(float), n_boot=200, seed=0)
    assert hi - lo < row["fter_ci_high"] - row["fter_ci_low"]
