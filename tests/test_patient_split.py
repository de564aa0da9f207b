"""Patient-disjoint validation splits wherever a classifier early-stops (issue 23, item 3).

The validation split that early stopping reads keeps every patient wholly on one side, at classifier.repeats 1 too
(it was drawn by image there, and at R > 1 by patient within each class, so a patient with images of both classes
straddled it); a synthetic image without a patient is its own group. Each path is run at smoke size on stage 01's
real phantoms (about 3.5 images per patient) up to its split, which a spy records before any epoch trains: the real
baseline, direction a on a set that records patients, the detector, the mixing arms, transfer's real source and the
external pseudo-labeller.
"""
import numpy as np
import pandas as pd
import pytest

from lib.analyze import mixing, mixing_arms, transfer
from lib.core import config, stages
from lib.data import curation, domains
from lib.data.leakage import LeakageError
from lib.evaluate import classifier, evaluation
from lib.tuningset import external


class Split(Exception):
    """Raised by the spy once the split is drawn: nothing needs to train."""


@pytest.fixture
def spy(monkeypatch):
    seen = []
    real = classifier.split_validation

    def split(y, fraction, seed, groups=None):
        seen.append(real(y, fraction, seed, groups))
        raise Split

    monkeypatch.setattr(classifier, "split_validation", split)
    return seen


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    cfg = config.load("params/smoke.yaml")
    root = tmp_path_factory.mktemp("runs")
    return cfg, root, curation.load_pools(stages.run_stage(cfg, "01_data_curation", curation.run, root,
                                                           progress=False))


def _patients_on_both_sides(manifest: pd.DataFrame, split) -> set:
    tr, va = split
    assert len(tr) + len(va) == len(manifest) and len(va) > 0
    p = manifest["patient"].reset_index(drop=True)
    return set(p.iloc[tr].dropna()) & set(p.iloc[va].dropna())


def _assert_patient_disjoint(manifest: pd.DataFrame, seen: list) -> None:
    assert len(seen) == 1
    real = manifest["patient"].dropna()
    assert real.duplicated().any()              # patients with several images: an image split would straddle them
    assert not _patients_on_both_sides(manifest, seen[0])
    y = classifier.labels_of(manifest)
    assert set(y[seen[0][1]]) == {0, 1}          # still stratified: both classes validated on


def test_a_patient_with_images_of_both_classes_falls_wholly_on_one_side():
    y = np.array([0, 1] * 30)                    # every patient holds one image of each class
    patients = np.repeat(np.arange(30), 2).astype(str)
    tr, va = classifier.split_validation(y, 0.2, 3, patients)
    assert not set(patients[tr]) & set(patients[va]) and len(va) > 0
    assert np.array_equal(va, classifier.split_validation(y, 0.2, 3, patients)[1])      # seeded
    assert not np.array_equal(va, classifier.split_validation(y, 0.2, 4, patients)[1])
    y = np.repeat([0, 1, 0, 1], [20, 20, 6, 6])  # single-class patients of each class, and mixed ones
    patients = np.concatenate([np.arange(40), np.repeat(np.arange(40, 46), 2)]).astype(str)
    tr, va = classifier.split_validation(y, 0.25, 0, patients)
    assert not set(patients[tr]) & set(patients[va]) and set(y[va]) == {0, 1}


def test_a_patient_with_most_images_stays_in_training_and_validation_keeps_its_share():
    # the smoke calibration's seed 1 drew 91 of 130 training images from one phantom patient: holding it out
    # validated on 93 images and trained on 37
    y = np.repeat([0, 0, 1], [70, 25, 30])
    patients = np.array(["big"] * 70 + [f"p{i}" for i in range(55)])
    for seed in range(5):
        tr, va = classifier.split_validation(y, 0.2, seed, patients)
        assert "big" in set(patients[tr]) and len(va) == 19 + 6          # round(0.2 x 95) + round(0.2 x 30)
        assert not set(patients[tr]) & set(patients[va])
    tr, va = classifier.split_validation(np.array([0] * 9 + [1] * 3), 0.2, 0, np.array(["a"] * 6 + ["b"] * 3 + ["c"] * 3))
    assert set(va) == {6, 7, 8}                  # no group fits the 2-image target: the smallest one is held out


def test_one_image_per_group_is_the_plain_stratified_image_split():
    y = np.repeat([0, 1], [23, 17])
    for seed in range(3):
        plain = classifier.split_validation(y, 0.15, seed)
        grouped = classifier.split_validation(y, 0.15, seed, np.array([f"image:{i}" for i in range(40)]))
        assert all(np.array_equal(a, b) for a, b in zip(plain, grouped))


def test_groups_are_patients_where_recorded_else_each_image_its_own():
    df = pd.DataFrame({"image_id": ["a", "b", "c", "d", "7"], "patient": ["7", "7", None, None, None]})
    g = classifier.validation_groups(df)
    assert g[0] == g[1] and len(set(g)) == 4      # patient 7 once; image '7' is not patient '7'
    assert len(set(classifier.validation_groups(df.drop(columns="patient")))) == 5


def test_the_check_refuses_a_patient_on_both_sides():
    groups = classifier.validation_groups(pd.DataFrame({"image_id": list("abcd"), "patient": ["1", "1", "2", "3"]}))
    classifier.check_split(groups, np.array([0, 1, 2]), np.array([3]))
    with pytest.raises(LeakageError, match="patient:1"):
        classifier.check_split(groups, np.array([0, 2]), np.array([1, 3]))


def _samples(cfg, pools):
    c, classes = cfg.classifier, domains.classes(cfg)
    real = evaluation.per_class(pools["train"], c.n_train_per_class, cfg.seed, "the real training pool", classes)
    tuning = pools["tuning"].assign(image_id="syn_" + pools["tuning"]["image_id"])    # a set that records patients
    with_patients = evaluation.per_class(tuning, 30, cfg.seed, "the set", classes)
    synthetic = with_patients.drop(columns="patient")                                   # one that does not
    det, _ = evaluation.detection_sets(real, synthetic, real, synthetic, cfg.seed)
    return {"real": real, "a": with_patients, "det": det}


@pytest.mark.parametrize("key", ["real", "a", "det"])
def test_stage_05s_classifiers_split_by_patient_at_one_repeat(pools, spy, tmp_path, key):
    cfg, _, p = pools
    assert cfg.classifier.repeats == 1
    train = _samples(cfg, p)[key]
    with pytest.raises(Split):
        evaluation._fit(key, train, cfg, tmp_path, cfg.seed + 1, False,
                        evaluation.SOURCES if key == "det" else None)
    _assert_patient_disjoint(train, spy)
    if key == "det":                             # every synthetic image its own group, real patients whole
        assert train["patient"].isna().sum() == (train["source"] == "synthetic").sum() > 0


def _arms(cfg, p):
    real = evaluation.per_class(p["train"], cfg.classifier.n_train_per_class, cfg.seed, "the pool")
    syn = p["tuning"].assign(image_id="syn_" + p["tuning"]["image_id"]).drop(columns="patient")
    order = mixing_arms.ordered_synthetic(syn, cfg.seed)
    return {**mixing_arms.oversampled_sets(real, [24], cfg.seed),
            **mixing_arms.ratio_sets(mixing_arms.ordered_real(real, p["train"], cfg.seed), order, [[0.5, 0.5]], 24),
            **mixing_arms.bracket_sets(real, order, [8])}


@pytest.mark.parametrize("arm", ["oversampled+24", "ratio 50:50", "synthetic+8"])
def test_mixing_arms_split_by_patient(pools, spy, tmp_path, arm):
    cfg, _, p = pools
    train = _arms(cfg, p)[arm]
    with pytest.raises(Split):
        mixing._train_arm(cfg, tmp_path, arm, train, p["test"], False, domains.classes(cfg))
    _assert_patient_disjoint(train, spy)


def test_transfers_real_source_splits_by_patient(pools, spy, tmp_path):
    cfg, root, _ = pools
    with pytest.raises(Split):
        transfer._source(cfg, tmp_path, root, False, ds=transfer.DataSet(transfer.REAL, cfg, "08_transfer_real"))
    _assert_patient_disjoint(pd.read_csv(tmp_path / "train.csv", dtype={"patient": str}), spy)


def test_the_external_pseudo_labeller_splits_by_patient(pools, spy, tmp_path):
    cfg, _, p = pools
    with pytest.raises(Split):
        external.labeller(cfg, tmp_path, p["train"], progress=False)
    _assert_patient_disjoint(p["train"], spy)
