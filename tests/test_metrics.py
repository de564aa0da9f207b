"""Every metric against scikit-learn on random scores; FTER and its interval."""
import numpy as np
import pytest
from sklearn import metrics as skm

from lib.evaluate import metrics
from lib.data.nih import LABELS


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


def _outputs(y, q, rng):
    """Two sigmoid outputs of quality q: one per class, not summing to one."""
    p1 = 1 / (1 + np.exp(-(q * (2 * y - 1) + rng.normal(0, 1, len(y)))))
    p0 = 1 / (1 + np.exp(-(q * (1 - 2 * y) + rng.normal(0, 1, len(y)))))
    return np.column_stack([p0, p1])


def test_matrix_cells_and_ratios_equal_sklearn():
    rng = np.random.default_rng(4)
    y_real, y_syn = rng.integers(0, 2, 300), rng.integers(0, 2, 250)
    cells = {"a": (y_real, _outputs(y_real, 0.6, rng)), "trtr": (y_real, _outputs(y_real, 1.5, rng)),
             "b": (y_syn, _outputs(y_syn, 1.2, rng)), "tsts": (y_syn, _outputs(y_syn, 2.0, rng))}
    row = metrics.matrix(cells, n_boot=200, seed=0)
    au = {}
    for k, (y, o) in cells.items():
        au[k] = skm.roc_auc_score(y, o[:, 1] / o.sum(1))
        assert row[f"{k}_auroc"] == pytest.approx(au[k], abs=1e-12)
        # per-class AUROC from each class's own output: never the overall value by construction
        assert row[f"{k}_auroc[No Finding]"] == pytest.approx(skm.roc_auc_score(y == 0, o[:, 0]))
        assert row[f"{k}_auroc[Unhealthy]"] == pytest.approx(skm.roc_auc_score(y, o[:, 1]))
        assert len({row[f"{k}_auroc"], row[f"{k}_auroc[No Finding]"], row[f"{k}_auroc[Unhealthy]"]}) == 3
    assert row["fter"] == pytest.approx(au["a"] / au["b"])
    assert row["cc_fter"] == pytest.approx((au["a"] - 0.5) / (au["b"] - 0.5))
    assert row["tr"] == pytest.approx((au["a"] - 0.5) / (au["trtr"] - 0.5))
    for r in ("fter", "cc_fter", "tr"):
        assert row[f"{r}_defined"] and row[f"{r}_ci_low"] < row[r] < row[f"{r}_ci_high"]


def test_a_ratio_whose_denominator_is_at_chance_is_undefined_not_huge():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    chance = np.column_stack([rng.random(300), rng.random(300)])      # (b) and TRTR at chance
    cells = {"a": (y, _outputs(y, 1.0, rng)), "b": (y, chance), "trtr": (y, chance), "tsts": (y, chance)}
    row = metrics.matrix(cells, n_boot=200, seed=0)
    for r in ("cc_fter", "tr"):
        assert not row[f"{r}_defined"] and np.isnan(row[r]) and np.isnan(row[f"{r}_ci_low"])
        assert "chance" in row[f"{r}_note"]
    assert row["fter_defined"] and np.isfinite(row["fter"])           # a / b itself stays a number


def test_detection_auroc_overall_and_within_each_class():
    rng = np.random.default_rng(6)
    is_syn = np.repeat([0, 1], 200)
    labels = np.tile(np.array(LABELS), 200)
    score = rng.random(400) + 0.5 * is_syn * (labels == "Unhealthy")   # only Unhealthy fakes are visible
    d = metrics.detection_metrics(is_syn, score, labels, n_boot=100)
    assert d["det_auroc"] == pytest.approx(skm.roc_auc_score(is_syn, score))
    m = labels == "No Finding"
    assert d["det_auroc[No Finding]"] == pytest.approx(skm.roc_auc_score(is_syn[m], score[m]))
    assert d["det_auroc[Unhealthy]"] > 0.7 > d["det_auroc[No Finding]"]
