"""The partly-shuffled reference (issue 22, deliverable 7): the dose-response series between real-holdout (fraction 0)
and label-shuffled (fraction 1), and the slope/linearity fit of TR on the fraction."""
import numpy as np
import pandas as pd
import pytest

from lib.analyze import sensitivity
from lib.core import config, stages
from lib.core.config import ParamError
from lib.data import curation
from lib.generate import references

N = 8
KEEP = ["label", "index", "source_image_id", "source_hash", "file"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dose") / "runs"
    stages.run_stage(cfg_for(), "01_data_curation", curation.run, runs_root=root, progress=False)
    return root


def cfg_for(kind="diffusion", **extra):
    return config.load("params/smoke.yaml", {"generation.n_per_label": N, "generation.kind": kind, **extra})


def rows(runs, kind, fraction=None):
    extra = {} if fraction is None else {"generation.shuffled_fraction": fraction}
    df, params = references.plan(cfg_for(kind, **extra), runs, progress=False)
    return df, params


def test_the_fraction_is_checked_and_keys_the_set_only_when_set():
    for over, match in (({"generation.kind": "partly-shuffled"}, "shuffled_fraction between 0 and 1"),
                        ({"generation.kind": "partly-shuffled", "generation.shuffled_fraction": 1.5}, "between 0"),
                        ({"generation.kind": "real-holdout", "generation.shuffled_fraction": 0.5}, "only read by")):
        with pytest.raises(ParamError, match=match):
            config.load("params/smoke.yaml", over)
    keys = {f: stages.key(cfg_for("partly-shuffled", **{"generation.shuffled_fraction": f}), "04_generation")
            for f in (0.0, 0.25, 1.0)}
    assert len(set(keys.values())) == 3
    assert stages.key(cfg_for("label-shuffled"), "04_generation") not in keys.values()


def test_fraction_0_is_real_holdout_and_1_is_label_shuffled(runs):
    real, _ = rows(runs, "real-holdout")
    shuffled, _ = rows(runs, "label-shuffled")
    zero, p0 = rows(runs, "partly-shuffled", 0.0)
    one, _ = rows(runs, "partly-shuffled", 1.0)
    pd.testing.assert_frame_equal(zero[KEEP], real[KEEP])
    pd.testing.assert_frame_equal(one[KEEP], shuffled[KEEP])
    assert p0["shuffled_fraction"] == 0.0
    assert (zero["label"] == zero["source_label"]).all()


def test_intermediate_fractions_permute_the_right_counts_per_class(runs):
    real, _ = rows(runs, "real-holdout")
    for fraction in (0.25, 0.5, 0.75):
        df, _ = rows(runs, "partly-shuffled", fraction)
        k = round(fraction * N)
        assert df["label"].value_counts().to_dict() == real["label"].value_counts().to_dict()   # N per class
        assert df["source_image_id"].is_unique and set(df["source_image_id"]) == set(real["source_image_id"])
        kept = real.set_index("source_image_id")["index"]
        src_index = df["source_image_id"].map(kept)
        # the first round(f x N) held-out rows of each class are label-free, the others keep their own label
        assert (df.loc[src_index >= k, "label"] == df.loc[src_index >= k, "source_label"]).all()
        free = df[src_index < k]
        assert free.groupby("label").size().tolist() == [k] * 2 and len(free) == 2 * k
        assert (free["label"] != free["source_label"]).any()          # really permuted


def simulated(rng, seeds, tr_of, sd=0.05):
    f = np.repeat(sensitivity_fractions(), seeds)
    return pd.DataFrame({"fraction": f, "seed": np.tile(range(seeds), 5), "tr": tr_of(f) + rng.normal(0, sd, len(f))})


def sensitivity_fractions():
    return np.array([0, 0.25, 0.5, 0.75, 1.0])


def test_the_fit_recovers_a_known_line_and_its_intervals_cover():
    exact = sensitivity.fit(simulated(np.random.default_rng(0), 3, lambda f: 1 - 0.9 * f, sd=0.0))
    assert exact["slope_mean"] == pytest.approx(-0.9) and exact["intercept_mean"] == pytest.approx(1.0)
    assert exact["r2_mean"] == pytest.approx(1.0) and exact["curvature_mean"] == pytest.approx(0.0, abs=1e-9)
    assert exact["monotonic"] and exact["monotonic_seeds"] == exact["seeds"] == 3
    # 95% t-intervals over 3 seeds (seed-level noise on every point): the slope's covers the truth and the
    # curvature's holds 0 about 95% of the time on a straight line
    rng = np.random.default_rng(1)
    fits = [sensitivity.fit(simulated(rng, 3, lambda f: 1 - 0.9 * f)) for _ in range(400)]
    slope = np.mean([f["slope_low"] < -0.9 < f["slope_high"] for f in fits])
    straight = np.mean([f["curvature_low"] < 0 < f["curvature_high"] for f in fits])
    assert 0.92 <= slope <= 0.98 and 0.92 <= straight <= 0.98, (slope, straight)


def test_the_fit_flags_a_curve_and_a_flat_series():
    rng = np.random.default_rng(2)
    bent = sensitivity.fit(simulated(rng, 5, lambda f: (1 - f) ** 3, sd=0.01))
    assert bent["curvature_low"] > 0 and bent["monotonic"] and bent["r2_high"] < 0.99
    zigzag = sensitivity.fit(simulated(rng, 3, lambda f: 0.5 + 0.2 * (np.round(f * 4) % 2), sd=0.01))
    assert not zigzag["monotonic"] and zigzag["monotonic_seeds"] == 0
    two = sensitivity.fit(simulated(rng, 2, lambda f: 1 - f))
    assert two["seeds"] == 2 and np.isfinite(two["slope_mean"]) and np.isnan(two["slope_low"])   # no interval < 3


def test_notebook_06_call_writes_the_table_and_figure_only_for_the_series(tmp_path):
    from lib.viz import sensitivity as viz

    rng = np.random.default_rng(3)
    pts = simulated(rng, 3, lambda f: 1 - f)
    records = pd.DataFrame({"method": "partly-shuffled", "seed": pts["seed"], "tr": pts["tr"], "auroc_a": 0.5 +
                            0.4 * pts["tr"], "params": [{"generation": {"shuffled_fraction": f}} for f in pts["fraction"]]})
    other = pd.DataFrame({"method": ["random"], "seed": [0], "tr": [0.3], "auroc_a": [0.6],
                          "params": [{"generation": {"shuffled_fraction": None}}]})
    assert viz.report(other, tmp_path) is None and not any(tmp_path.iterdir())
    t = viz.report(pd.concat([records, other], ignore_index=True), tmp_path)
    saved = pd.read_csv(tmp_path / "06_sensitivity.csv")
    assert saved["fraction"].tolist() == [0, 0.25, 0.5, 0.75, 1.0] and (saved["seeds"] == 3).all()
    assert {"tr", "tr_ci_low", "tr_ci_high"} <= set(saved.columns) and len(t) == 5
    assert (saved["tr_ci_low"] < saved["tr"]).all() and (tmp_path / "06_sensitivity.png").exists()
    assert pd.read_csv(tmp_path / "06_sensitivity_fit.csv")["slope_mean"].iloc[0] == pytest.approx(-1, abs=0.1)


def test_each_fraction_is_its_own_row_and_no_method_is_compared_with_it():
    from lib.analyze import collection, comparisons

    settings = [collection._setting({"params": {"generation": {"shuffled_fraction": f}, "gating": {}}})
                for f in (0.0, 0.25, 1.0)]
    assert settings == ["shuffled0", "shuffled0.25", "shuffled1"]
    assert collection._setting({"params": {"generation": {"shuffled_fraction": None}, "gating": {}}}) == ""
    assert comparisons.pairs(["random", "spectral-clip", "partly-shuffled"]) == [("spectral-clip", "random")]
