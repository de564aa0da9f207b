"""Per-subgroup trainability (lib.analyze.subgroups) on stage-05 folders whose answer is known by construction:
AUROCs recounted pair by pair, TR and the seed-level t-interval recomputed by hand."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from lib.analyze import subgroups
from lib.data.nih import DataError

MODES = ["devices", "normal", "rotated"]


def _pairs_auroc(y, s) -> float:
    """P(score of a positive > score of a negative) + half the ties, by counting every pair."""
    pos, neg = s[y == 1], s[y == 0]
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


def _stage(d, seed: int, with_mode: bool = True):
    """A finished stage 05: test_a.csv with modes, predictions_a/_trtr.csv, results.csv. Scores: the real-trained
    classifier separates every mode well; the synthetic-trained one is good on normal, weaker on devices and
    rotated (noise), with ties (rounded scores)."""
    rng = np.random.default_rng(seed)
    n = 90
    y = np.tile([0, 1], n // 2)
    mode = np.repeat(MODES, n // 3)
    noise = np.where(mode == "normal", 0.3, np.where(mode == "devices", 1.5, 3.0))
    a = np.round(1 / (1 + np.exp(-(y - 0.5 + noise * rng.standard_normal(n)))), 1)
    t = np.round(1 / (1 + np.exp(-(y - 0.5 + 0.6 * rng.standard_normal(n)))), 2)
    labels = np.where(y == 1, "Unhealthy", "No Finding")
    ids = [f"{i:05d}.png" for i in range(n)]
    d.mkdir(parents=True)
    test = pd.DataFrame({"image_id": ids, "label": labels, "patient": [str(i) for i in range(n)]})
    if with_mode:
        test["mode"] = mode
    test.to_csv(d / "test_a.csv", index=False)
    for name, s in (("a", a), ("trtr", t)):
        order = rng.permutation(n)                          # a predictions file in any row order
        pd.DataFrame({"image_id": np.array(ids)[order], "label": labels[order], "score": s[order],
                      "p[No Finding]": 1 - s[order], "p[Unhealthy]": s[order]}).to_csv(d / f"predictions_{name}.csv",
                                                                                        index=False)
    pd.DataFrame([{"method": "random", "seed": seed}]).to_csv(d / "results.csv", index=False)
    return y, mode, a, t


def test_per_mode_auroc_and_tr_match_pair_counting(tmp_path):
    y, mode, a, t = _stage(tmp_path / "s0", seed=0)
    got = subgroups.per_mode(tmp_path / "s0").set_index("mode")
    assert list(got.index) == MODES
    for m in MODES:
        k = mode == m
        want_a, want_t = _pairs_auroc(y[k], a[k]), _pairs_auroc(y[k], t[k])
        assert got.loc[m, "auroc_a"] == pytest.approx(want_a, abs=1e-12)
        assert got.loc[m, "auroc_trtr"] == pytest.approx(want_t, abs=1e-12)
        assert got.loc[m, "tr"] == pytest.approx((want_a - 0.5) / (want_t - 0.5), abs=1e-12)
        assert got.loc[m, "images"] == k.sum() and got.loc[m, "positives"] == y[k].sum()
    assert got.loc["normal", "auroc_a"] > got.loc["rotated", "auroc_a"]     # the construction's order


def test_seed_level_mean_and_t_interval_over_runs(tmp_path):
    built = [_stage(tmp_path / f"s{s}", seed=s) for s in range(3)]
    paths = subgroups.write([tmp_path / f"s{s}" for s in range(3)], tmp_path / "out")
    summary = pd.read_csv(paths["summary"]).set_index("mode")
    assert len(pd.read_csv(paths["runs"])) == 9 and (summary["n_seeds"] == 3).all()
    for m in MODES:
        trs = []
        for y, mode, a, t in built:
            k = mode == m
            trs.append((_pairs_auroc(y[k], a[k]) - 0.5) / (_pairs_auroc(y[k], t[k]) - 0.5))
        mean, half = np.mean(trs), st.t.ppf(0.975, 2) * np.std(trs, ddof=1) / np.sqrt(3)
        assert summary.loc[m, "tr"] == pytest.approx(mean, abs=1e-9)
        assert summary.loc[m, "tr_t_low"] == pytest.approx(mean - half, abs=1e-9)
        assert summary.loc[m, "tr_t_high"] == pytest.approx(mean + half, abs=1e-9)


def test_a_one_class_mode_gives_nan_and_tr_needs_a_real_classifier_above_chance():
    one = pd.DataFrame({"image_id": ["x", "y"], "label": ["Unhealthy"] * 2, "score": [0.2, 0.9]})
    assert np.isnan(subgroups._auroc(one))
    assert np.isnan(subgroups.tr(0.8, 0.5)) and subgroups.tr(0.75, 1.0) == pytest.approx(0.5)


def test_a_test_sample_without_modes_is_refused_with_what_to_do(tmp_path):
    _stage(tmp_path / "s0", seed=0, with_mode=False)
    with pytest.raises(DataError, match=r"test_a.csv has no 'mode' column.*data.phantom_modes"):
        subgroups.per_mode(tmp_path / "s0")


def test_mode_shares_and_clusters_against_modes_on_known_sets():
    """Shares and TV distance counted by hand; clusters that are the modes score AMI 1, shuffled ones about 0."""
    import numpy as np
    import pandas as pd
    import pytest

    from lib.analyze import subgroups

    test = pd.DataFrame({"mode": ["normal"] * 8 + ["rotated"] * 2})
    tuning = pd.DataFrame({"mode": ["normal"] * 5 + ["rotated"] * 5})
    s = subgroups.mode_shares({"test pool": test, "tuning": tuning})
    assert s.loc["rotated", "tuning"] == 0.5 and s.loc["rotated", "test pool"] == 0.2
    assert s.loc["TV distance", "tuning"] == pytest.approx(0.3) and s.loc["TV distance", "test pool"] == 0
    with pytest.raises(Exception, match="phantom_modes"):
        subgroups.mode_shares({"x": pd.DataFrame({"label": [1]})})
    rng = np.random.default_rng(0)
    modes = rng.choice(["normal", "devices", "rotated"], size=600, p=[0.9, 0.06, 0.04])
    same = pd.Series(modes).map({"normal": 0, "devices": 1, "rotated": 2}).to_numpy()
    r = subgroups.clusters_against_modes(same, modes)
    assert r["ami"] == pytest.approx(1.0) and r["rare_concentration"] == {"devices": 1.0, "rotated": 1.0}
    assert abs(subgroups.clusters_against_modes(rng.permutation(same), modes)["ami"]) < 0.05


def test_notebook_report_labels_gated_runs_apart_and_skips_records_outside_the_mode_world(tmp_path):
    from lib.viz import subgroups as viz

    for s in range(3):
        _stage(tmp_path / f"s{s}", seed=s)
    params = lambda modes: {"data": {"phantom_modes": modes}}  # noqa: E731
    records = pd.DataFrame({"results_dir": [str(tmp_path / f"s{s}") for s in (0, 1, 2, 0)],
                            "method": ["random"] * 4, "gating": [False, False, True, False],
                            "params": [params(True), params(True), params(True), params(False)]})
    dirs, labels = subgroups.mode_world_runs(records)
    assert labels == ["random", "random", "random (gated)"] and len(dirs) == 3
    summary = viz.report(records, tmp_path / "fig")
    assert set(summary["method"]) == {"random", "random (gated)"}
    assert (tmp_path / "fig" / "06_by_subgroup.csv").exists() and (tmp_path / "fig" / "06_by_subgroup.png").exists()
    assert viz.report(records.iloc[3:], tmp_path / "none") is None and not (tmp_path / "none").exists()
