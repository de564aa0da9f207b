"""Mixed training sets (issue 13, deliverables 1-2): augmentation brackets with random oversampling to the
same totals, fixed-size real:synthetic ratios, tested on real, paired with the real-only baseline; keyed
stages that resume and are reused; bad input refused before anything trains.

Stage 04 is stood in for by real phantoms of the tuning pool relabelled as a synthetic set (as in
tests/test_evaluation.py), so these tests exercise lib.analyze.mixing (and its arms and tables) alone."""
import json

import numpy as np
import pandas as pd
import pytest

from lib.core import atomic, config, stages
from lib.evaluate import classifier, evaluation
from lib.data import curation
from lib.analyze import mixing, mixing_arms, mixing_tables
from lib.core.config import ParamError
from lib.data.nih import DataError

MIX = {"mixing.brackets": [6, 12], "mixing.total_per_class": 20, "classifier.epochs": 2,
       "mixing.ratios": [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]}


def fake_stage04(cfg, runs_root, synthetic_rows=None):
    """Stage 01 for real; stage 04 (a manifest of tuning-pool phantoms) written by hand."""
    d01 = stages.run_stage(cfg, "01_data_curation", curation.run, runs_root, progress=False)
    pools = curation.load_pools(d01)
    d04 = stages.stage_dir(cfg, "04_generation", runs_root)
    if synthetic_rows is None:
        t = pools["tuning"]
        synthetic_rows = t.assign(image_id="syn_" + t["image_id"])[["image_id", "path", "label", "hash"]]
    atomic.write_csv(d04 / "manifest.csv", synthetic_rows)
    stages.mark_done(d04, cfg, "04_generation")
    return pools


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    runs_root = tmp_path_factory.mktemp("runs")
    cfg = config.load("params/smoke.yaml", MIX)
    fake_stage04(cfg, runs_root)
    out = mixing.measure([cfg], "both", runs_root)
    return cfg, runs_root, out


def _real(n_per_class=10):
    labels = ["No Finding", "Unhealthy"]
    return pd.DataFrame({"image_id": [f"r{i}" for i in range(2 * n_per_class)],
                         "path": [f"r{i}.png" for i in range(2 * n_per_class)],
                         "label": [labels[i % 2] for i in range(2 * n_per_class)]})


# ---------------------------------------------------------------------------------------- the sets
@pytest.mark.parametrize("brackets", [[1], [7, 30], [250]])
def test_oversampling_gives_exactly_the_requested_totals_from_real_images_of_the_same_class(brackets):
    real = _real(10)
    sets = mixing_arms.oversampled_sets(real, brackets, seed=3)
    for n in brackets:
        df = sets[f"oversampled+{n}"]
        counts = df["label"].value_counts().to_dict()
        assert counts == {"No Finding": 10 + n, "Unhealthy": 10 + n}
        src = real.set_index("image_id")["label"]
        assert (df["label"].to_numpy() == src.loc[df["group"]].to_numpy()).all()   # copies keep their class
        assert set(df["image_id"]) <= set(real["image_id"])                       # real images only
    assert mixing_arms.oversampled_sets(real, brackets, seed=3)[f"oversampled+{brackets[0]}"].equals(
        sets[f"oversampled+{brackets[0]}"])                                         # seeded


def test_brackets_are_nested_and_ratios_keep_the_size_fixed():
    real, syn = _real(10), _real(30).assign(image_id=lambda d: "s" + d["image_id"])
    order = mixing_arms.ordered_synthetic(syn, seed=0)
    b = mixing_arms.bracket_sets(real, order, [5, 15])
    assert set(b["synthetic+5"]["image_id"]) < set(b["synthetic+15"]["image_id"])
    assert (b["synthetic+15"].groupby(["label", "source"]).size() == [10, 15, 10, 15]).all()
    r = mixing_arms.ratio_sets(mixing_arms.ordered_real(real.iloc[:8], real, 0), order, [[0.7, 0.3], [0.0, 1.0]], 10)
    for df, n_real in ((r["ratio 70:30"], 7), (r["ratio 0:100"], 0)):
        per = df.groupby(["label", "source"]).size().to_dict()
        assert sum(v for (lab, _), v in per.items() if lab == "Unhealthy") == 10
        assert per.get(("Unhealthy", "real"), 0) == n_real


def test_sets_counts_and_paired_statistics_take_any_number_of_classes():
    from lib.evaluate import metrics

    shapes = ["circle", "square", "triangle"]
    real = pd.DataFrame({"image_id": [f"r{i}" for i in range(30)], "path": [f"r{i}.png" for i in range(30)],
                         "label": [shapes[i % 3] for i in range(30)]})
    over = mixing_arms.oversampled_sets(real, [4], seed=0, classes=shapes)["oversampled+4"]
    assert over["label"].value_counts().to_dict() == {c: 14 for c in shapes}
    syn = real.assign(image_id="s" + real["image_id"])
    b = mixing_arms.bracket_sets(real, mixing_arms.ordered_synthetic(syn, 0, shapes), [3], shapes)["synthetic+3"]
    assert (b.groupby(["label", "source"]).size() == [10, 3] * 3).all()
    assert mixing_arms.class_counts(real[real["label"] != "square"], shapes)["square"] == 0    # an absent class counts 0
    y = np.array([0, 1, 2, 0, 1, 2])
    p = metrics.probabilities(np.eye(3)[[0, 1, 2, 1, 1, 2]] * 0.8 + 0.1)            # one circle taken for a square
    assert mixing_tables._stat("accuracy", 0.5)(y, p) == pytest.approx(5 / 6)
    assert mixing_tables._stat("balanced_accuracy", 0.5)(y, p) == pytest.approx((0.5 + 1 + 1) / 3)
    assert mixing_tables._stat("auroc", 0.5)(y, p) == metrics.macro_auroc(y, p)


def test_validation_groups_never_straddle_the_split():
    y = np.repeat([0, 1], 30)
    groups = np.array([f"g{i // 3}" for i in range(60)])      # three copies of each image
    tr, va = classifier.split_validation(y, 0.2, seed=1, groups=groups)
    assert not set(groups[tr]) & set(groups[va]) and len(va) > 0
    assert np.array_equal(classifier.split_validation(y, 0.2, 1)[1], classifier.split_validation(y, 0.2, 1)[1])


# ------------------------------------------------------------------------------------ the stages
def test_every_arm_trains_and_is_paired_with_the_real_baseline(measured):
    cfg, runs_root, out = measured
    rec = out[0]
    real_dir = stages.stage_dir(cfg, evaluation.REAL_STAGE, runs_root)
    for exp, arms in (("brackets", ["real", "synthetic+6", "synthetic+12"]),
                      ("oversampling", ["real", "oversampled+6", "oversampled+12"]),
                      ("ratios", ["real", "ratio 100:0", "ratio 50:50", "ratio 0:100"])):
        d = rec[exp]
        assert d.name.startswith(mixing.EXPERIMENTS[exp])
        assert (d / "DONE.json").exists() and not (d / "results.csv").exists()
        t = pd.read_csv(d / mixing_arms.TABLE)
        assert list(t["arm"]) == arms
        assert {"accuracy", "balanced_accuracy", "auroc", "precision[Unhealthy]", "recall[No Finding]",
                "f1[Unhealthy]"} <= set(t.columns)
        test = pd.read_csv(real_dir / "test_real.csv")
        for p in t["predictions"]:
            assert list(pd.read_csv(d / p)["image_id"]) == list(test["image_id"])     # same test images
        pd.testing.assert_frame_equal(pd.read_csv(d / "predictions_real.csv"),
                                      pd.read_csv(real_dir / "predictions_trtr.csv"))
    over = json.loads((rec["oversampling"] / "arm_over12.json").read_text())["per_class"]
    assert over == {"No Finding|real": 40, "No Finding|real copy": 12, "Unhealthy|real": 40, "Unhealthy|real copy": 12}
    syn = json.loads((rec["brackets"] / "arm_syn12.json").read_text())["per_class"]
    assert syn == {"No Finding|real": 40, "No Finding|synthetic": 12, "Unhealthy|real": 40, "Unhealthy|synthetic": 12}
    ratio = json.loads((rec["ratios"] / "arm_r50-50.json").read_text())["per_class"]
    assert ratio == {"No Finding|real": 10, "No Finding|synthetic": 10, "Unhealthy|real": 10, "Unhealthy|synthetic": 10}


def test_tables_report_changes_in_percentage_points_with_paired_statistics(measured, tmp_path):
    from lib.viz import mixing as viz

    cfg, runs_root, out = measured
    records = mixing_tables.collect(out)
    assert set(records["generator"]) == {"spectral-clip", mixing_arms.OVERSAMPLING}
    d = mixing_tables.compare(records, mixing_tables.BRACKETS, "accuracy", n_boot=50)
    row = d[(d["generator"] == "spectral-clip") & (d["arm"] == "synthetic+12")].iloc[0]
    t = records[records["stage_dir"] == str(out[0]["brackets"])].set_index("arm")
    assert row["diff_pp"] == pytest.approx(100 * (t.loc["synthetic+12", "accuracy"] - t.loc["real", "accuracy"]))
    assert row["ci_low_pp"] <= row["diff_pp"] <= row["ci_high_pp"] and 0 < row["p_holm"] <= 1
    table = mixing_tables.bracket_table(records, n_boot=50)
    assert list(table["generator"][:3]) == ["real", "oversampling", "oversampling"]
    assert {"accuracy (%)", "Δ acc. (pp)", "Δ acc. (pp) CI", "Δ bal. acc. (pp)"} <= set(table.columns)
    assert len(mixing_tables.per_class_table(records)) == 3
    assert len(mixing_tables.versus_oversampling(records, n_boot=50)) == 2
    rt = mixing_tables.ratio_table(records, n_boot=50)
    assert list(rt.loc[rt["generator"] == "spectral-clip", "real:synthetic"]) == ["100:0", "50:50", "0:100"]
    viz.brackets(d, records, tmp_path)
    viz.ratios(mixing_tables.seed_table(records, "ratios"), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"07_brackets.pdf", "07_brackets.png", "07_ratios.png"}
    # a run of one experiment (no ratio arms) leaves the other's figure and table as they were
    mixing_tables.save_tables({"ratios": rt}, tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in ("07_ratios.png", "07_table_ratios.csv")}
    viz.ratios(mixing_tables.seed_table(records.iloc[:0], "ratios"), tmp_path)
    mixing_tables.save_tables({"ratios": rt.iloc[:0]}, tmp_path)
    assert {f: (tmp_path / f).read_bytes() for f in before} == before


def test_finished_stages_are_reused_and_keys_follow_only_their_own_fields(measured):
    cfg, runs_root, out = measured
    stamp = {k: (out[0][k] / "DONE.json").stat().st_mtime_ns for k in ("brackets", "oversampling", "ratios")}
    again = mixing.measure([cfg], "both", runs_root)
    assert {k: (again[0][k] / "DONE.json").stat().st_mtime_ns for k in stamp} == stamp
    other = config.load("params/smoke.yaml", {**MIX, "mixing.brackets": [6]})
    assert stages.stage_dir(other, "07_ratios", runs_root) == out[0]["ratios"]
    assert stages.stage_dir(other, "07_brackets", runs_root) != out[0]["brackets"]
    ref = config.load("params/smoke.yaml", {**MIX, "generation.kind": "real-holdout"})
    assert stages.stage_dir(ref, "07_oversampling", runs_root) == out[0]["oversampling"]   # generator-free
    assert stages.stage_dir(ref, "07_brackets", runs_root) != out[0]["brackets"]


# ------------------------------------------------------------------------------------ bad input
def test_a_bracket_larger_than_the_synthetic_set_stops_before_anything_trains(measured):
    cfg, runs_root, _ = measured
    big = config.load("params/smoke.yaml", {**MIX, "mixing.brackets": [6, 5000]})
    with pytest.raises(DataError, match=r"largest bracket adds 5000 synthetic images per class.*holds only \d+"):
        mixing.measure([cfg, big], "brackets", runs_root)
    assert not stages.stage_dir(big, "07_brackets", runs_root).exists()


def test_a_ratio_that_needs_more_images_than_there_are_is_refused(measured):
    cfg, runs_root, _ = measured
    big = config.load("params/smoke.yaml", {**MIX, "mixing.total_per_class": 5000})
    with pytest.raises(DataError, match="lower mixing.total_per_class"):
        mixing.measure([big], "ratios", runs_root)


def test_labels_that_differ_between_real_and_synthetic_are_refused(smoke_cfg, runs_root):
    cfg = config.load("params/smoke.yaml", MIX)
    pools = fake_stage04(cfg, runs_root, synthetic_rows=None)
    d04 = stages.stage_dir(cfg, "04_generation", runs_root)
    m = pd.read_csv(d04 / "manifest.csv")
    m.loc[m["label"] == "Unhealthy", "label"] = "Pneumonia"
    (d04 / "DONE.json").unlink()
    atomic.write_csv(d04 / "manifest.csv", m)
    stages.mark_done(d04, cfg, "04_generation")
    with pytest.raises(DataError, match=r"different labels.*only in real: \['Unhealthy'\].*only in synthetic: "
                                        r"\['Pneumonia'\]"):
        mixing.measure([cfg], "brackets", runs_root)
    assert not stages.stage_dir(cfg, evaluation.REAL_STAGE, runs_root).exists()   # nothing trained
    assert len(pools["train"])


@pytest.mark.parametrize("bad, match", [
    ({"mixing.ratios": [[0.7, 0.2]]}, r"mixing.ratios\[0\] = \[0.7, 0.2\] must be a \[real, synthetic\] pair"),
    ({"mixing.ratios": [[70, 30]]}, r"write 70:30 as \[0.7, 0.3\]"),
    ({"mixing.ratios": [[1.0]]}, "pair"),
    ({"mixing.brackets": [100, 100]}, "distinct positive"),
    ({"mixing.brackets": [-5]}, "distinct positive"),
    ({"mixing.total_per_class": 1}, "at least 2"),
])
def test_mixing_settings_are_checked_at_load_time(bad, match):
    with pytest.raises(ParamError, match=match):
        config.load("params/smoke.yaml", bad)


def test_unknown_experiment_is_named():
    with pytest.raises(ValueError, match="unknown mixing experiment"):
        mixing.experiments_of("bracket", config.load("params/smoke.yaml"))
