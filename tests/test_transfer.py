"""The source x target matrix (issue 13, deliverable 6): its numbers recompute with scikit-learn from the
saved predictions, a collapsed classifier is flagged, the diagonal trains and tests on disjoint parts of
one set (no shared file or patient), stages are keyed and reused, bad input is refused first.

The real pools are the smoke phantoms, the real-holdout reference is built by lib.generate.references, and the
synthetic set is stood in for by real phantoms of the tuning pool relabelled (as in tests/test_mixing.py)."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from lib.core import atomic, config, stages
from lib.data import curation
from lib.evaluate import evaluation
from lib.analyze import transfer
from lib.core.config import ParamError
from lib.data.nih import DataError

import textbook_phantoms
from test_mixing import fake_stage04

SMALL = {"transfer.n_train_per_class": 16, "transfer.n_test": 24, "transfer.reference_n_per_label": 40, "classifier.epochs": 2,
         "classifier.bootstrap": 40}


def fake_stage02(cfg, runs_root, tuning_pool):
    """The generator's tuning set (the first 12 images per class of the tuning pool), written by hand."""
    d02 = stages.stage_dir(cfg, "02_clustering", runs_root)
    chosen = tuning_pool.sort_values("image_id").groupby("label").head(12).assign(cluster=-1, duplicate=False)
    atomic.write_csv(d02 / f"tuning_{cfg.finetune.method}.csv", chosen)
    stages.mark_done(d02, cfg, "02_clustering")
    return chosen


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    runs_root = tmp_path_factory.mktemp("runs")
    cfg = config.load("params/smoke.yaml", SMALL)
    d01 = stages.run_stage(cfg, "01_data_curation", curation.run, runs_root, progress=False)
    fake_stage02(cfg, runs_root, curation.load_pools(d01)["tuning"])
    fake_stage04(cfg, runs_root, textbook_phantoms.write(runs_root / "synthetic", 30, prefix="syn"))
    table = transfer.measure(cfg, runs_root)
    return cfg, runs_root, table


def test_every_pair_is_measured_and_the_diagonal_is_marked(measured):
    cfg, _, table = measured
    names = ["real", "real-holdout", cfg.finetune.method]
    assert list(dict.fromkeys(table["source"])) == names
    assert len(table) == 9 and set(zip(table["source"], table["target"])) == {(a, b) for a in names for b in names}
    assert (table["diagonal"] == (table["source"] == table["target"])).all()
    assert (table["n_train"] > 0).all() and (table["n_test"] + table["n_excluded"] == 24).all()
    for m in ("auroc", "balanced_accuracy"):
        assert ((table[f"{m}_ci_low"] <= table[m]) & (table[m] <= table[f"{m}_ci_high"])).all()


def test_the_numbers_recompute_with_scikit_learn_from_the_saved_predictions(measured):
    cfg, _, table = measured
    thr = cfg.classifier.threshold
    for _, r in table.iterrows():
        pred = pd.read_csv(r["predictions"] if r["predictions"].startswith("/") else
                           stages.paths.ROOT / r["predictions"])
        y = (pred["label"] == "Unhealthy").astype(int)
        s = pred["p[Unhealthy]"] / (pred["p[No Finding]"] + pred["p[Unhealthy]"])
        assert r["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, (s >= thr).astype(int)), abs=1e-12)
        assert r["collapsed"] == ((s >= thr).nunique() == 1)
    again = transfer.recompute(table, thr)
    assert np.allclose(again["auroc"], table["auroc"]) and (again["collapsed"] == table["collapsed"]).all()


def test_the_diagonal_uses_disjoint_splits_no_shared_file_or_patient(measured):
    cfg, runs_root, _ = measured
    for ds in transfer.data_sets(cfg):
        d = stages.stage_dir(ds.cfg, ds.stage, runs_root)
        train, test = (pd.read_csv(d / f, dtype={"patient": str}) for f in ("train.csv", "test.csv"))
        assert not set(train["path"]) & set(test["path"]), ds.name
        assert not set(train["image_id"]) & set(test["image_id"]), ds.name
        if "patient" in train and train["patient"].notna().all():
            assert not set(train["patient"]) & set(test["patient"]), ds.name
        reads = json.loads((d / "DONE.json").read_text())["inputs"]        # sealed with what it split
        assert ("01_data_curation" if ds.real else "04_generation") in reads, ds.name
    real_holdout = [ds for ds in transfer.data_sets(cfg) if ds.name == "real-holdout"][0]
    d = stages.stage_dir(real_holdout.cfg, real_holdout.stage, runs_root)
    assert pd.read_csv(d / "train.csv")["patient"].notna().all()       # the patient split was possible here


def test_target_images_the_source_generator_was_tuned_on_are_left_out_of_that_cell_only(measured):
    cfg, runs_root, table = measured
    tuning = evaluation.tuning_set(cfg, runs_root)[0]
    by = table.set_index(["source", "target"])
    holdout = [ds for ds in transfer.data_sets(cfg) if ds.name == "real-holdout"][0]
    test = pd.read_csv(stages.stage_dir(holdout.cfg, holdout.stage, runs_root) / "test.csv")
    overlap = set(test["source_image_id"]) & set(tuning["image_id"])
    assert overlap                                                     # the smoke pools make them meet
    cell = by.loc[(cfg.finetune.method, "real-holdout")]
    assert cell["n_excluded"] == len(overlap) and cell["n_test"] == len(test) - len(overlap)
    pred = pd.read_csv(stages.paths.resolve(cell["predictions"]))
    assert not set(pred["image_id"]) & set(test.loc[test["source_image_id"].isin(overlap), "image_id"])
    others = table[~((table["source"] == cfg.finetune.method) & (table["target"] == "real-holdout"))]
    assert (others["n_excluded"] == 0).all()


def test_a_collapsed_classifier_is_flagged(tmp_path):
    d = tmp_path / "src"
    (d / "targets").mkdir(parents=True)
    (d / "source.json").write_text('{"n_train": 10}')
    pred = pd.DataFrame({"image_id": [f"i{i}" for i in range(6)], "label": ["No Finding", "Unhealthy"] * 3,
                         "score": 0.9, "p[No Finding]": 0.1, "p[Unhealthy]": [0.9, 0.8, 0.95, 0.7, 0.85, 0.6]})
    path = d / "targets" / "t.csv"
    pred.to_csv(path, index=False)
    row = transfer.pair_row("a", "b", path, d, 0.5, 20, 0)
    assert row["collapsed"] and row["predicted_class"] == "Unhealthy"
    assert row["balanced_accuracy"] == pytest.approx(0.5)
    assert "yes (all 'Unhealthy')" in transfer.display_table(pd.DataFrame([row]))["collapsed"].iloc[0]
    pred["p[Unhealthy]"] = [0.2, 0.8, 0.1, 0.7, 0.3, 0.6]              # both classes predicted
    pred["p[No Finding]"] = 1 - pred["p[Unhealthy]"]
    pred.to_csv(path, index=False)
    assert not transfer.pair_row("a", "b", path, d, 0.5, 20, 0)["collapsed"]


def test_a_three_class_cell_is_measured_with_macro_auroc_and_largest_output_decisions(tmp_path):
    from lib.evaluate import results

    d = tmp_path / "src"
    (d / "targets").mkdir(parents=True)
    (d / "source.json").write_text('{"n_train": 10}')
    shapes, rng = ["circle", "square", "triangle"], np.random.default_rng(0)
    y = np.arange(30) % 3
    o = 1 / (1 + np.exp(-(2 * np.eye(3)[y] - 1 + rng.normal(0, 1, (30, 3)))))
    manifest = pd.DataFrame({"image_id": [f"i{i}" for i in range(30)], "label": [shapes[i] for i in y]})
    path = d / "targets" / "t.csv"
    results.predictions_frame(manifest, o, shapes).to_csv(path, index=False)
    row = transfer.pair_row("a", "b", path, d, 0.5, 20, 0)
    p = o / o.sum(1, keepdims=True)
    assert row["auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)), abs=1e-12)
    assert not row["collapsed"] and row["predicted_class"] == ""
    o[:, 2] = 5.0                                                       # every image taken for a triangle
    results.predictions_frame(manifest, o, shapes).to_csv(path, index=False)
    row = transfer.pair_row("a", "b", path, d, 0.5, 20, 0)
    assert row["collapsed"] and row["predicted_class"] == "triangle"
    assert row["balanced_accuracy"] == pytest.approx(1 / 3)


def test_a_set_of_other_classes_is_refused_before_anything_trains():
    cfg = config.load("params/smoke.yaml", SMALL)
    other = transfer.DataSet("shapes", config.load("params/smoke.yaml", {**SMALL, "data.source": "shapes"}),
                             "08_transfer")
    with pytest.raises(DataError, match="classes.*circle"):
        transfer.check(cfg, [*transfer.data_sets(cfg), other])


def test_a_rerun_reuses_every_stage_and_prediction(measured, capsys):
    cfg, runs_root, table = measured
    again = transfer.measure(cfg, runs_root)
    assert "already finished" in capsys.readouterr().out
    pd.testing.assert_frame_equal(again, table)


def test_the_figure_and_table_are_written(measured, tmp_path):
    from lib.viz import transfer as viz

    _, _, table = measured
    viz.heatmap(table, tmp_path)
    transfer.save_table(table, tmp_path)
    assert (tmp_path / "08_source_target.png").stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "08_source_target.csv")) == 9


def test_a_missing_synthetic_set_stops_before_anything_trains(tmp_path):
    cfg = config.load("params/smoke.yaml", SMALL)
    stages.run_stage(cfg, "01_data_curation", curation.run, tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="04_generation.*notebooks/04_generation.ipynb"):
        transfer.measure(cfg, tmp_path)
    assert not list(tmp_path.glob("smoke/stages/08_*"))


@pytest.mark.parametrize("override, message", [
    ({"transfer.sets": ["real", "real-holdot"]}, "did you mean 'real-holdout'"),
    ({"transfer.sets": ["real", "real"]}, "distinct"),
    ({"transfer.sets": []}, "distinct"),
    ({"transfer.n_test": 1}, "at least 2"),
])
def test_bad_transfer_parameters_are_refused(override, message):
    with pytest.raises(ParamError, match=message):
        config.load("params/smoke.yaml", override)


def test_a_split_larger_than_the_set_names_the_parameter(tmp_path):
    cfg = config.load("params/smoke.yaml", {**SMALL, "transfer.n_train_per_class": 47})
    fake_stage04(cfg, tmp_path)
    ds = [d for d in transfer.data_sets(cfg) if d.name == cfg.finetune.method][0]
    with pytest.raises(DataError, match="transfer.n_train_per_class = 47"):
        transfer.split(ds, tmp_path)
