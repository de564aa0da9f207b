"""References without confounds (issue 23, item 4): findings-erased is its source pixel for pixel except where the
findings are, on view-balanced rows; the view-only floor; a collapsed set is split and tested by content."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lib.analyze import calibration, view_floor
from lib.core import config
from lib.data import phantoms
from lib.evaluate import estimable, evaluation, metrics
from lib.generate import reference_sources, references

CLASSES = ["No Finding", "Unhealthy"]


def _u8(arr):
    return (arr * 255).round().astype(int)


def test_erased_redraw_differs_from_its_source_only_where_the_finding_is():
    cfg = config.load("params/smoke.yaml", {"generation.kind": "findings-erased", "data.image_size": 64})
    d = cfg.data
    for view in ("PA", "AP"):
        row = pd.Series({"source_image_id": "00000007_001.png", "patient": "7", "findings": "Nodule", "view": view})
        src = _u8(phantoms.draw("00000007_001.png", "7", ["Nodule"], view, d.image_size, d.phantom_seed,
                                d.phantom_textbook))
        erased = references._redraw(row, cfg, None).astype(int)
        differ = np.argwhere(src != erased)
        assert len(differ), "the nodule is gone"
        # only the nodule's pixels: a small disc (its radius is at most 0.08 x 1.2 of the half-width, plus blur)
        assert len(differ) < 0.05 * src.size, (view, len(differ))
        spread = np.linalg.norm(differ - differ.mean(0), axis=1).max()
        assert spread < 0.2 * d.image_size, spread        # the whole image (about 0.7) before
    # exaggerated changes no random draw either: the same image where the finding is not
    exag = _u8(phantoms.draw("x.png", "7", ["Nodule"], "PA", 64, 0, finding_scale=2.0))
    assert (exag != _u8(phantoms.draw("x.png", "7", ["Nodule"], "PA", 64, 0))).mean() < 0.05


def _pool(tmp_path, ap=(6, 20), n=30):
    """A tuning pool whose view predicts the label: ap[i] of the n images of class i are AP."""
    rows = []
    for li, label in enumerate(CLASSES):
        for i in range(n):
            p = tmp_path / f"{li}_{i}.png"
            Image.fromarray(np.full((8, 8), li * 100 + i, np.uint8), mode="L").save(p)
            rows.append({"image_id": f"{li}_{i:03d}.png", "path": str(p), "label": label, "patient": f"{li}-{i}",
                         "view": "AP" if i < ap[li] else "PA", "findings": "No Finding" if li == 0 else "Nodule"})
    return pd.DataFrame(rows)


def test_redrawn_kinds_take_view_balanced_rows(tmp_path, monkeypatch):
    pool = _pool(tmp_path)
    monkeypatch.setattr(reference_sources.stages, "require", lambda *a, **k: tmp_path)
    monkeypatch.setattr(reference_sources.curation, "load_pools", lambda d: {"tuning": pool})
    assert view_floor.auroc(pool, pool) > 0.7                      # the pool's view alone predicts the label
    for kind in ("findings-erased", "exaggerated"):
        cfg = config.load("params/smoke.yaml", {"generation.kind": kind, "generation.n_per_label": 10})
        df, params = references.plan(cfg, runs_root=tmp_path, progress=False)
        ap = df.groupby("label")["view"].apply(lambda v: int((v == "AP").sum())).to_dict()
        assert len(set(ap.values())) == 1 and df["label"].value_counts().to_dict() == {c: 10 for c in CLASSES}, ap
        assert view_floor.auroc(df, df) == 0.5                     # the view tells nothing of the label
        assert params["rows"] == "view-balanced"
    cfg = config.load("params/smoke.yaml", {"generation.n_per_label": 28})   # 6 AP 'No Finding' vs 28 - 10 PA: none fits
    with pytest.raises(references.DataError, match="as many AP images"):
        reference_sources.view_balanced(cfg, tmp_path)


def test_kind_versions_change_the_keys_of_the_stages_they_change(monkeypatch):
    from lib.core import stages

    keys = {}
    for kind in ("findings-erased", "collapsed"):
        cfg = config.load("params/smoke.yaml", {"generation.kind": kind})
        keys[kind] = [stages.key(cfg, s) for s in ("04_generation", "05_classifier")]
        monkeypatch.setitem(references.VERSIONS, kind, (None, None))
        old = [stages.key(cfg, s) for s in ("04_generation", "05_classifier")]
        assert keys[kind][1] != old[1]
        assert (keys[kind][0] != old[0]) == (kind == "findings-erased")   # collapsed's images did not change


def _sample(view_ap: dict, n=40):
    """n images per class, view_ap[label] of them AP."""
    return pd.DataFrame([{"label": c, "view": "AP" if i < view_ap[c] else "PA"} for c in CLASSES for i in range(n)])


def test_view_only_floor_is_chance_when_balanced_and_matches_logistic_regression_when_confounded():
    balanced = _sample({"No Finding": 15, "Unhealthy": 15})
    assert view_floor.auroc(balanced, _sample({"No Finding": 10, "Unhealthy": 30})) == 0.5   # nothing learnt
    train, test = _sample({"No Finding": 12, "Unhealthy": 24}), _sample({"No Finding": 14, "Unhealthy": 22})
    got = view_floor.auroc(train, test)
    lr = LogisticRegression(C=np.inf).fit((train[["view"]] == "AP").astype(float), train["label"] == "Unhealthy")
    want = roc_auc_score(test["label"] == "Unhealthy", lr.predict_proba((test[["view"]] == "AP").astype(float))[:, 1])
    assert got > 0.55 and got == pytest.approx(want, abs=1e-9)


def test_view_only_floor_per_seed_and_its_row_in_the_checks(tmp_path):
    records = []
    for seed, ap in ((0, {"No Finding": 12, "Unhealthy": 24}), (1, {"No Finding": 20, "Unhealthy": 20})):
        d = tmp_path / f"real{seed}"
        d.mkdir()
        _sample(ap).to_csv(d / "train_real.csv", index=False)
        _sample({"No Finding": 14, "Unhealthy": 22}).to_csv(d / "test_real.csv", index=False)
        records += [{"seed": seed, "real_baseline": str(d), "method": m} for m in ("random", "collapsed")]
    floor = calibration.view_floor(pd.DataFrame(records))
    assert floor["seeds"] == 2 and floor["per_seed"][1] == 0.5 and floor["per_seed"][0] > 0.55
    assert floor["value"] == pytest.approx((floor["per_seed"][0] + 0.5) / 2) and np.isnan(floor["ci_low"])
    table = calibration.checks(pd.DataFrame({"method": []}), None, floor)
    row = table.iloc[-1]
    assert row["reference"] == "view only (real)" and row["value"] == floor["value"] and row["holds"] is None


def _collapsed(unique: int, n: int = 30) -> pd.DataFrame:
    """A collapsed set: ``unique`` images per class, each repeated to fill n rows, with the source patient."""
    return pd.DataFrame([{"image_id": f"{c[:2]}{i}", "path": f"{c[:2]}{i % unique}.png", "label": c,
                          "hash": f"h-{c}-{i % unique}", "patient": f"p-{c}-{i % unique}"}
                         for c in CLASSES for i in range(n)])


def test_collapsed_is_split_and_tested_by_content_and_not_estimable_is_nan_with_a_reason():
    syn = _collapsed(unique=3)
    train, test = evaluation.split_synthetic(syn, 20, 100, seed=0, classes=CLASSES)
    assert train["label"].value_counts().to_dict() == {c: 20 for c in CLASSES}
    assert not set(test["hash"]) & set(train["hash"])               # no copy of a training image is tested on
    assert test["hash"].is_unique                                    # each image once
    why = estimable.note(test, CLASSES)
    assert why.startswith(f"not estimable: {test['hash'].nunique()} unique held-out image(s)")
    # one unique image per class: training takes them all, nothing is left to test on
    train1, test1 = evaluation.split_synthetic(_collapsed(unique=1), 20, 100, seed=1, classes=CLASSES)
    assert len(test1) == 0 and estimable.note(test1, CLASSES).startswith("not estimable: 0 unique")
    y, o = np.array([0, 1] * 10), np.tile([[0.6, 0.4], [0.3, 0.7]], (10, 1))
    row = metrics.matrix({"a": (y, o), "trtr": (y, o), "b": (np.array([0, 1]), np.array([[0.6, 0.4], [0.3, 0.7]])),
                          "tsts": (np.array([0, 1]), np.array([[0.6, 0.4], [0.3, 0.7]]))}, n_boot=20)
    assert row["b_auroc"] == 1.0                                     # a number by construction, not a measurement
    masked = estimable.mask(row, why)
    assert np.isnan(masked["b_auroc"]) and np.isnan(masked["tsts_auroc"]) and np.isnan(masked["fter"])
    assert masked["fter_note"] == why and masked["held_out_note"] == why and not masked["fter_defined"]
    assert masked["a_auroc"] == row["a_auroc"] and masked["tr"] == row["tr"]     # direction a is estimable


def test_a_set_without_copies_is_split_as_before():
    syn = pd.DataFrame([{"image_id": f"{c[:2]}{i}", "path": f"{c[:2]}{i}.png", "label": c, "hash": f"h-{c}-{i}"}
                        for c in CLASSES for i in range(30)])
    train, test = evaluation.split_synthetic(syn, 20, 100, seed=0, classes=CLASSES)
    want_train = evaluation.per_class(syn, 20, 0, "x", CLASSES)
    rest = syn[~syn["image_id"].isin(want_train["image_id"])]
    pd.testing.assert_frame_equal(train, want_train)
    pd.testing.assert_frame_equal(test, evaluation.test_sample(rest, 100, 1, "x"))
    assert estimable.note(test, CLASSES) is None
