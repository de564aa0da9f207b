"""Two-way evaluation: results from saved predictions, leakage refusal, bad-input errors.

Stage 04 is stood in for by real phantom images from the tuning pool, relabelled as a synthetic set,
so these tests exercise stage 05 alone; tests/test_generation.py runs the chain through a diffusion model.
"""
import shutil

import numpy as np
import pandas as pd
import pytest

from lib import atomic, config, curation, evaluation, results, stages
from lib.curation import LeakageError
from lib.nih import DataError


def fake_upstream(cfg, runs_root, synthetic_rows=None, tuning_rows=None):
    """Stage 01 for real; stage 02 (a tuning set) and stage 04 (a manifest) written by hand."""
    d01 = stages.run_stage(cfg, "01_data_curation", curation.run, runs_root, progress=False)
    pools = curation.load_pools(d01)
    d02 = stages.stage_dir(cfg, "02_clustering", runs_root)
    tuning = pools["tuning"] if tuning_rows is None else tuning_rows
    atomic.write_csv(d02 / f"tuning_{cfg.finetune.method}.csv", tuning)
    stages.mark_done(d02, cfg, "02_clustering")
    d04 = stages.stage_dir(cfg, "04_generation", runs_root)
    if synthetic_rows is None:
        synthetic_rows = pools["tuning"].assign(image_id="syn_" + pools["tuning"]["image_id"])[
            ["image_id", "path", "label", "hash"]]
    atomic.write_csv(d04 / "manifest.csv", synthetic_rows)
    stages.mark_done(d04, cfg, "04_generation")
    return pools, d04


def sklearn_fter(stage_dir) -> float:
    """FTER straight from the saved prediction files, with scikit-learn (Unhealthy is the positive class)."""
    from sklearn.metrics import roc_auc_score

    auroc = [roc_auc_score(p["label"] == "Unhealthy", p["score"])
             for p in (pd.read_csv(stage_dir / f"predictions_{k}.csv") for k in "ab")]
    return auroc[0] / auroc[1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    cfg = config.load("params/smoke.yaml")
    runs_root = tmp_path_factory.mktemp("runs")
    fake_upstream(cfg, runs_root)
    out = stages.run_stage(cfg, "05_classifier", evaluation.run, runs_root, progress=False)
    return cfg, runs_root, out


def test_results_record_and_recompute_from_predictions(finished):
    cfg, _, out = finished
    row = results.read(out)
    assert pd.read_csv(out / "results.csv").shape[0] == 1
    for key in ("method", "tuning_size", "seed", "fter", "fter_ci_low", "a_auroc", "b_auroc", "a_collapsed",
                "b_f1[Unhealthy]", "a_cm[No Finding->Unhealthy]", "code_version", "data_hash_test_a",
                "param.classifier.arch", "param.gating.threshold", "a_classifier_hash"):
        assert key in row, key
    assert row["method"] == results.method_name(cfg)
    again = results.recompute_from_predictions(out)
    for key, value in again.items():
        if isinstance(value, float) and np.isnan(value):
            assert np.isnan(row[key]), key
        else:
            assert row[key] == pytest.approx(value, rel=1e-12), key
    assert row["fter"] == pytest.approx(row["a_auroc"] / row["b_auroc"])
    assert row["fter"] == pytest.approx(sklearn_fter(out), rel=1e-12)   # independent of lib.metrics
    pa, ta = pd.read_csv(out / "predictions_a.csv"), pd.read_csv(out / "test_a.csv")
    assert list(pa.columns) == ["image_id", "label", "score"] and set(pa.image_id) == set(ta.image_id)


def test_prediction_file_that_does_not_match_its_manifest_is_refused(finished, tmp_path):
    _, _, out = finished
    copy = tmp_path / "stage"
    shutil.copytree(out, copy)
    pred = pd.read_csv(copy / "predictions_a.csv")
    pred.iloc[1:].to_csv(copy / "predictions_a.csv", index=False)  # one prediction lost
    with pytest.raises(DataError, match="does not match its test manifest"):
        results.recompute_from_predictions(copy)
    pred.assign(label=pred["label"].iloc[::-1].to_numpy()).to_csv(copy / "predictions_a.csv", index=False)
    with pytest.raises(DataError, match="label other than the manifest"):
        results.recompute_from_predictions(copy)


def test_leakage_refusal_names_the_overlap(smoke_cfg, runs_root):
    d01 = stages.run_stage(smoke_cfg, "01_data_curation", curation.run, runs_root, progress=False)
    pools = curation.load_pools(d01)
    leaked = pd.concat([pools["tuning"], pools["test"].iloc[:2]])  # two test images in the tuning set
    fake_upstream(smoke_cfg, runs_root, tuning_rows=leaked)
    with pytest.raises(LeakageError, match="tuning set") as err:
        evaluation.run(smoke_cfg, stages.stage_dir(smoke_cfg, "05_classifier", runs_root), runs_root,
                       progress=False)
    assert str(pools["test"]["image_id"].iloc[0]) in str(err.value)
    # A test *patient* in the real training pool is refused too, even with a new image id and hash.
    stowaway = pools["test"].iloc[:1].assign(image_id="other.png", hash="ffff")
    with pytest.raises(LeakageError, match="patient"):
        evaluation.check_no_leakage(pools["test"], {"the real training pool": pd.concat([pools["train"], stowaway])})


def test_missing_class_and_empty_manifest_stop_the_run(smoke_cfg, runs_root, tmp_path):
    d01 = stages.run_stage(smoke_cfg, "01_data_curation", curation.run, runs_root, progress=False)
    tuning = curation.load_pools(d01)["tuning"]
    only_healthy = tuning[tuning["label"] == "No Finding"].assign(image_id=lambda d: "syn_" + d["image_id"])
    fake_upstream(smoke_cfg, runs_root, synthetic_rows=only_healthy)
    with pytest.raises(DataError, match="no image of class \\['Unhealthy'\\]"):
        evaluation.run(smoke_cfg, tmp_path / "s05", runs_root, progress=False)
    (tmp_path / "empty.csv").write_text("image_id,path,label\n")
    with pytest.raises(DataError, match="empty"):
        evaluation.read_synthetic(tmp_path / "empty.csv")


def test_short_class_names_the_knob():
    df = pd.DataFrame({"label": ["No Finding"] * 5 + ["Unhealthy"] * 2, "path": "x"})
    with pytest.raises(DataError, match="n_train_per_class"):
        evaluation.per_class(df, 3, 0, "the synthetic set")
