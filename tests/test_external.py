"""External tuning sets (issue 13, deliverable 5; the thesis's Experiment 5): a folder of unlabelled images
(phantoms drawn with the textbook option, written to a temp dir) pseudo-labelled in stage 02 by a classifier
trained on the real training pool; confidences recorded, a validated threshold, empty classes, bad folders
and leakage refused, stage keys that follow the folder's content."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lib.evaluate import classifier, evaluation
from lib.core import compute, config, stages
from lib.data import curation, leakage
from lib.tuningset import external, selection
from lib.core.config import ParamError
from lib.data.leakage import LeakageError
from lib.data.nih import DataError

import textbook_phantoms

# A labeller that learns at smoke size: a larger real training pool, a few more epochs and the demo's learning rate
# (at 1e-3 it had barely started in 12 epochs: once its validation split kept patients whole, issue 23, the epoch
# early stopping picked labelled 39 of the 40 textbook phantoms No Finding).
LABELLER = {"data.phantom_n": 900, "pools.train": 500, "classifier.epochs": 12, "classifier.patience": 4,
            "classifier.lr_patience": 2, "classifier.batch_size": 32, "classifier.learning_rate": 3e-3}


def _cfg(folder, **extra):
    return config.load("params/smoke.yaml", {"selection.methods": ["random", "external"],
                                             "selection.external_dir": str(folder), "finetune.method": "external",
                                             "selection.pseudo_label_threshold": 0.6, **extra})


@pytest.fixture(scope="module")
def stage02(tmp_path_factory):
    root = tmp_path_factory.mktemp("ext")
    folder = root / "textbook"
    truth = textbook_phantoms.write(folder, 20)
    cfg = _cfg(folder, **LABELLER)
    runs_root = root / "runs"
    stages.run_stage(cfg, "01_data_curation", curation.run, runs_root, progress=False)
    out = stages.run_stage(cfg, "02_clustering", selection.run, runs_root, progress=False)
    return cfg, runs_root, out, truth


def test_the_tuning_set_records_each_pseudo_label_and_its_confidence(stage02):
    cfg, runs_root, out, truth = stage02
    tuning = selection.read_tuning_set(out / "tuning_external.csv")
    assert (tuning["confidence"] >= 0.6).all() and tuning["confidence"].le(1.0).all()
    assert tuning["label"].value_counts().to_dict() == {"No Finding": 12, "Unhealthy": 12}   # selection.per_label
    assert set(tuning["path"]) <= set(truth["path"])
    # the confidences are the labeller's: recomputed from its saved weights
    labels = external.read_labels(out)
    model = classifier.build(cfg.classifier).to(compute.device())
    model.load_state_dict(torch.load(out / "labeller.pt", map_location=compute.device()))
    data = classifier.TensorSet.from_manifest(labels.assign(label="No Finding"), cfg.classifier.input_size,
                                              compute.device())
    s = classifier.predict(model, data)
    assert np.allclose(labels["confidence"], np.maximum(s, 1 - s))
    assert (labels["label"] == np.where(s >= 0.5, "Unhealthy", "No Finding")).all()
    assert (labels["kept"] == (labels["confidence"] >= 0.6)).all()
    assert len(labels) == len(truth)
    # and they mostly name the class each phantom was drawn with (the labeller learned the findings)
    kept = labels[labels["kept"]].merge(truth[["path", "label"]], on="path", suffixes=("", "_truth"))
    assert (kept["label"] == kept["label_truth"]).mean() >= 0.75
    # the labeller is its own classifier, trained on the real training pool (not stage 05's baseline sample)
    info = json.loads((out / "labeller.json").read_text())
    pool = curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))["train"]
    assert info["n_train"] + info["n_val"] == len(pool) and info["seed"] == cfg.seed + 2


def test_stage_03_and_05_read_it_like_any_tuning_set_and_the_leakage_check_covers_it(stage02):
    cfg, runs_root, out, _ = stage02
    tuning, where = evaluation.tuning_set(cfg, runs_root)
    assert where.endswith("tuning_external.csv") and len(tuning) == 24
    pools = curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))
    leakage.check_content(pools["test"], {"the tuning set": tuning})        # clean: passes
    fake_test = pd.concat([pools["test"], tuning.iloc[:1][["image_id", "path", "label"]]])
    with pytest.raises(LeakageError, match="same content"):
        leakage.check_content(fake_test, {"the tuning set": tuning.assign(image_id="other")})


def test_an_external_file_that_copies_a_real_test_image_is_refused_before_anything_trains(stage02, tmp_path):
    cfg, runs_root, _, _ = stage02
    folder = tmp_path / "leaky"
    textbook_phantoms.write(folder, 3)
    test_img = curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))["test"]["path"].iloc[0]
    shutil.copyfile(stages.paths.resolve(test_img), folder / "copied.png")
    leaky = _cfg(folder, **LABELLER)
    with pytest.raises(LeakageError, match="external tuning folder.*copied.png"):
        stages.run_stage(leaky, "02_clustering", selection.run, runs_root, progress=False)
    assert not (stages.stage_dir(leaky, "02_clustering", runs_root) / "labeller.pt").exists()


def test_a_class_left_empty_by_the_threshold_is_a_clear_error():
    labelled = pd.DataFrame({"label": ["No Finding"] * 3 + ["Unhealthy"] * 2,
                             "confidence": [0.95, 0.9, 0.7, 0.62, 0.55]})
    labelled["kept"] = labelled["confidence"] >= 0.8
    with pytest.raises(DataError, match=r"\['Unhealthy'\] hold no image.*highest confidence.*0.62.*Lower the"):
        external.check_classes(labelled, 0.8, "folder")
    assert len(external.check_classes(labelled.assign(kept=labelled["confidence"] >= 0.6), 0.6, "f")) == 4


def test_k_classes_are_pseudo_labelled_by_their_largest_output():
    shapes = ["circle", "square", "triangle"]
    outputs = np.array([[0.9, 0.3, 0.3], [0.1, 0.2, 0.7], [0.4, 0.5, 0.1], [0.5, 0.45, 0.05]])
    t = external.pseudo_labels(outputs, 0.5, shapes)
    assert list(t["label"]) == ["circle", "triangle", "square", "circle"]
    assert t["confidence"].to_numpy() == pytest.approx([0.6, 0.7, 0.5, 0.5]) and (t["score"] == t["confidence"]).all()
    assert list(t["kept"]) == [True, True, True, True]
    with pytest.raises(DataError, match=r"\['square'\] hold no image.*'triangle': 1.*every class"):
        external.check_classes(t.assign(kept=t["confidence"] > 0.55), 0.55, "folder", shapes)
    binary = external.pseudo_labels(np.array([[0.2, 0.6], [0.9, 0.3]]), 0.5)    # two classes: as the thesis
    assert list(binary["label"]) == ["Unhealthy", "No Finding"]
    assert binary["confidence"].to_numpy() == pytest.approx([0.75, 0.75]) and binary["score"][0] == pytest.approx(0.75)


def test_the_threshold_drops_less_confident_images(stage02):
    cfg, _, out, _ = stage02
    again = _cfg(cfg.selection.external_dir, **LABELLER, **{"selection.pseudo_label_threshold": 0.65})
    assert stages.key(again, "02_clustering") != stages.key(cfg, "02_clustering")   # the threshold is keyed
    s = external.read_labels(out)["score"].to_numpy()
    outputs = np.stack([1 - s, s], axis=1)
    conf = np.maximum(s, 1 - s)
    assert conf.min() < conf.max()          # a labeller whose confidences vary (how much varies with the machine)
    cut = float(conf.min() + conf.max()) / 2    # between them, so the stricter threshold must drop some
    loose, strict = external.pseudo_labels(outputs, 0.5), external.pseudo_labels(outputs, cut)
    assert (loose["label"] == strict["label"]).all() and (loose["confidence"] == strict["confidence"]).all()
    assert strict["kept"].sum() < loose["kept"].sum()
    assert (strict["kept"] == (strict["confidence"] >= cut)).all()
    assert external.pseudo_labels(outputs, 0.5)["kept"].all()          # 0.5 keeps every image


@pytest.mark.parametrize("value", [0.49, 1.01, -1])
def test_a_threshold_outside_half_to_one_is_refused(value, tmp_path):
    with pytest.raises(ParamError, match=r"pseudo_label_threshold = .* must be in \[0.5, 1.0\]"):
        _cfg(tmp_path, **{"selection.pseudo_label_threshold": value})


def test_external_needs_its_folder_and_the_folder_needs_external(tmp_path):
    with pytest.raises(ParamError, match="external_dir is not set"):
        config.load("params/smoke.yaml", {"selection.methods": ["random", "external"], "finetune.method": "random"})
    with pytest.raises(ParamError, match="read only by the 'external' selection method"):
        config.load("params/smoke.yaml", {"selection.external_dir": str(tmp_path)})


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        external.scan(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no image"):
        external.scan(str(tmp_path / "empty"))
    folder = tmp_path / "some"
    textbook_phantoms.write(folder, 2)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"1 of 5 file\(s\) cannot be read as images.*broken.png"):
        external.scan(str(folder))


def test_the_stage_key_follows_the_folder_content_and_leaves_other_runs_alone(tmp_path):
    folder = tmp_path / "tb"
    textbook_phantoms.write(folder, 2)
    cfg = _cfg(folder)
    before = stages.key(cfg, "02_clustering")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "sub_new.png")
    assert stages.key(cfg, "02_clustering") != before                    # an added image is new data
    plain = config.load("params/smoke.yaml")
    other = config.load("params/smoke.yaml", {"selection.pseudo_label_threshold": 0.9})
    assert stages.key(plain, "02_clustering") == stages.key(other, "02_clustering")   # unused: not keyed


def test_the_notebook_figures_are_drawn(stage02, tmp_path):
    from lib.viz import external as viz

    cfg, _, out, _ = stage02
    labels = external.read_labels(out)
    viz.label_distribution(labels, cfg.selection.pseudo_label_threshold, tmp_path)
    viz.label_montage(labels, cfg.data.image_size, tmp_path)
    table = external.label_table(out)
    assert table["labelled"].sum() == len(labels) and table["kept"].sum() == labels["kept"].sum()
    assert (tmp_path / "02_external_labels.png").exists() and (tmp_path / "02_external_montage.png").exists()
