"""Any image domain, any number of classes: k-class metrics against scikit-learn, the ImageFolder and CSV
sources, and a three-class procedural domain (coloured shapes) through the whole pipeline."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as skm

from lib.core import config, stages
from lib.data import curation, domains, shapes
from lib.finetune import dreambooth
from lib.evaluate import evaluation, metrics, results
from lib.generate import generation, manifest
from lib.tuningset import selection
from lib.core.config import ParamError
from lib.data.nih import DataError

CLASSES = ["circle", "square", "triangle"]


# ------------------------------------------------------------------------------- k-class metrics
@pytest.mark.parametrize("k,seed", [(3, 0), (4, 1), (5, 2)])
def test_k_class_metrics_equal_sklearn(k, seed):
    rng = np.random.default_rng(seed)
    n = 301
    y = rng.integers(0, k, n)
    raw = rng.random((n, k)) + 0.8 * np.eye(k)[y] * rng.random((n, 1))   # informative, unnormalised outputs
    raw = np.round(raw, 2)                                                 # ties
    names = [f"class {i}" for i in range(k)]
    got = metrics.summary(y, raw, classes=names)
    prob = raw / raw.sum(1, keepdims=True)
    pred = prob.argmax(1)
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(y, prob, multi_class="ovr", average="macro"), abs=1e-12)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    p, r, f, sup = skm.precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    cm = skm.confusion_matrix(y, pred, labels=range(k))
    for c, name in enumerate(names):
        assert got[f"precision[{name}]"] == pytest.approx(p[c])
        assert got[f"recall[{name}]"] == pytest.approx(r[c])
        assert got[f"f1[{name}]"] == pytest.approx(f[c])
        assert got[f"support[{name}]"] == sup[c]
        assert got[f"auroc[{name}]"] == pytest.approx(skm.roc_auc_score(y == c, raw[:, c]))
        for q, other in enumerate(names):
            assert got[f"cm[{name}->{other}]"] == cm[c, q]
    np.testing.assert_array_equal(metrics.confusion(y, pred, k), cm)


def test_macro_auroc_of_two_classes_is_the_binary_auroc():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    o = np.round(rng.random((200, 2)) + 0.3 * np.eye(2)[y], 2)
    want = skm.roc_auc_score(y, o[:, 1] / o.sum(1))
    assert metrics.macro_auroc(y, o) == pytest.approx(want, abs=1e-12)
    # scikit-learn's one-vs-rest macro average over both classes gives the same number
    both = np.mean([skm.roc_auc_score(y == c, (o / o.sum(1, keepdims=True))[:, c]) for c in (0, 1)])
    assert metrics.macro_auroc(y, o) == pytest.approx(both, abs=1e-12)


def test_k_class_matrix_ratios_use_macro_auroc_and_chance_half():
    rng = np.random.default_rng(4)
    cells = {}
    for cell, signal in (("a", 0.6), ("b", 1.2), ("trtr", 1.5), ("tsts", 1.0)):
        y = rng.integers(0, 3, 240)
        cells[cell] = (y, rng.random((240, 3)) + signal * np.eye(3)[y])
    m = metrics.matrix(cells, n_boot=40, classes=CLASSES)
    a, b, t = m["a_auroc"], m["b_auroc"], m["trtr_auroc"]
    assert m["fter"] == pytest.approx(a / b)
    assert m["tr"] == pytest.approx((a - 0.5) / (t - 0.5))
    assert m["a_auroc_ci_low"] <= a <= m["a_auroc_ci_high"]
    assert sum(m[f"a_cm[{x}->{z}]"] for x in CLASSES for z in CLASSES) == 240


# ------------------------------------------------------------------------------------ the sources
def _folder(root, counts: dict[str, int]):
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(shapes.draw(c if c in shapes.AVAILABLE else "circle", i, i, 32)).save(root / c / f"{i}.png")
    return root


def test_image_folder_source_curates_k_classes(tmp_path, runs_root):
    root = _folder(tmp_path / "imgs", {"circle": 30, "ring": 30, "cross": 30})
    cfg = config.load("params/smoke.yaml", {"data.source": "folder", "data.folder": str(root),   # no data.classes
                                            "pools.tuning": 20, "pools.train": 30, "pools.test": 30})
    assert domains.classes(cfg) == ["circle", "cross", "ring"]          # sorted when data.classes is null
    d01 = stages.run_stage(cfg, "01_data_curation", curation.run, runs_root, progress=False)
    pools = curation.load_pools(d01)
    assert all(set(p["label"]) == {"circle", "cross", "ring"} for p in pools.values())
    # data.classes picks and orders classes; an image changed on disk is new data (a new stage key)
    two = config.load("params/shapes.yaml", {"data.source": "folder", "data.folder": str(root),
                                             "data.classes": ["ring", "circle"]})
    assert domains.classes(two) == ["ring", "circle"]
    assert set(curation.curate(two, progress=False).table["label"]) == {"ring", "circle"}
    before = stages.key(cfg, "01_data_curation")
    Image.fromarray(shapes.draw("ring", 99, 99, 32)).save(root / "ring" / "0.png")
    assert stages.key(cfg, "01_data_curation") != before


def test_csv_source_keeps_groups_in_one_pool(tmp_path, runs_root):
    root = _folder(tmp_path / "imgs", {"circle": 40, "square": 40, "triangle": 40})
    rows = [{"path": f"{c}/{i}.png", "label": c, "group": f"g{i // 4}"} for c in CLASSES for i in range(40)]
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    cfg = config.load("params/shapes.yaml", {"data.source": "csv", "data.csv": str(root / "labels.csv"),
                                             "pools.tuning": 24, "pools.train": 48, "pools.test": 36})
    pools = curation.load_pools(stages.run_stage(cfg, "01_data_curation", curation.run, runs_root, progress=False))
    groups = {name: set(p["patient"]) for name, p in pools.items()}
    assert not (groups["tuning"] & groups["train"]) and not (groups["train"] & groups["test"])
    assert not (groups["tuning"] & groups["test"])


def test_bad_domain_input_gets_clear_errors(tmp_path):
    root = _folder(tmp_path / "imgs", {"circle": 3, "square": 3})
    (root / "triangle").mkdir()
    with pytest.raises(DataError, match="triangle holds no image"):
        domains.read_folder(root)
    pd.DataFrame({"file": ["a.png"], "label": ["circle"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['path'\]"):
        domains.read_table(tmp_path / "bad.csv")
    with pytest.raises(ParamError, match="did you mean 'square'"):
        config.load("params/shapes.yaml", {"data.classes": ["circle", "sqare"]})
    with pytest.raises(ParamError, match="data.classes .* read by the folder, csv and shapes sources only"):
        config.load("params/smoke.yaml", {"data.classes": ["a", "b"]})
    with pytest.raises(ParamError, match="'textbook' picks typical X-ray cases"):
        config.load("params/shapes.yaml", {"selection.methods": ["random", "textbook"], "finetune.method": "random"})
    with pytest.raises(ParamError, match="needs data.folder"):
        config.load("params/shapes.yaml", {"data.source": "folder"})
    (root / "triangle").rmdir()
    cfg = config.load("params/shapes.yaml", {"data.source": "folder", "data.folder": str(root),
                                             "data.classes": ["circle", "ring"]})
    with pytest.raises(DataError, match=r"class\(es\) \['ring'\] of data.classes have no image"):
        curation.curate(cfg, progress=False)
    # a synthetic set whose labels differ from the real classes stops before anything trains
    syn = pd.DataFrame({"image_id": ["s1", "s2", "s3"], "path": ["x"] * 3, "label": ["circle", "square", "star"]})
    syn.to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(DataError, match=r"label\(s\) \['star'\] that the real data do not have"):
        manifest.read_synthetic(tmp_path / "manifest.csv", ["circle", "square"])


# ------------------------------------------------------------------- three classes, end to end
def test_three_class_shapes_domain_runs_through_the_whole_pipeline(runs_root):
    cfg = config.load("params/shapes.yaml", {"finetune.steps": 4, "finetune.checkpoint_every": 4,
                                             "finetune.validation_every": 4, "generation.n_per_label": 60})
    assert domains.classes(cfg) == CLASSES
    out = {}
    for stage, fn in (("01_data_curation", curation.run), ("02_clustering", selection.run),
                      ("03_dreambooth", dreambooth.run), ("04_generation", generation.run),
                      ("05_classifier", evaluation.run)):
        out[stage] = stages.run_stage(cfg, stage, fn, runs_root, progress=False)
    # selection: per_label images of each class, from spectral clusters of each class
    tuning = pd.read_csv(out["02_clustering"] / "tuning_spectral-pixel.csv")
    assert tuning.groupby("label").size().to_dict() == {c: cfg.selection.per_label for c in CLASSES}
    assert (tuning["cluster"] >= 0).all()
    # fine-tuning: one model (joint layout) that draws every class from its prompt (the template filled with
    # the class name)
    summary = json.loads((out["03_dreambooth"] / "train_summary.json").read_text())
    assert cfg.finetune.model_layout == "joint" and summary["steps"] == cfg.finetune.steps
    assert set(summary["models"]) == set(CLASSES) and len(set(summary["models"].values())) == 1
    gen = json.loads((out["04_generation"] / "generation_summary.json").read_text())
    assert gen["prompts"] == {c: f"an image of a {c}" for c in CLASSES}
    manifest = pd.read_csv(out["04_generation"] / "manifest.csv")
    assert manifest.groupby("label").size().to_dict() == {c: 60 for c in CLASSES}
    # the two-way evaluation: k-class predictions, macro AUROC recomputed with scikit-learn from the files
    d05, row = out["05_classifier"], results.read(out["05_classifier"])
    for cell in ("a", "b", "trtr", "tsts"):
        pred = pd.read_csv(d05 / f"predictions_{cell}.csv")
        assert results.classes_of(pred) == CLASSES
        o = pred[[f"p[{c}]" for c in CLASSES]].to_numpy()
        y = pred["label"].map(CLASSES.index).to_numpy()
        want = skm.roc_auc_score(y, o / o.sum(1, keepdims=True), multi_class="ovr", average="macro")
        assert row[f"{cell}_auroc"] == pytest.approx(want, abs=1e-12)
        cm = skm.confusion_matrix(y, o.argmax(1), labels=range(3))
        assert [[row[f"{cell}_cm[{t}->{q}]"] for q in CLASSES] for t in CLASSES] == cm.tolist()
        assert row[f"{cell}_balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, o.argmax(1)))
    assert row["fter"] == pytest.approx(row["a_auroc"] / row["b_auroc"])
    # group-disjoint: no object family of the real test sample is in the tuning set or the real training sample
    test = pd.read_csv(d05 / "test_a.csv")
    train = pd.read_csv(d05 / "train_b.csv")
    assert not set(test["patient"]) & (set(tuning["patient"]) | set(train["patient"]))
    # the domain is learnable: the real-trained classifier is far from chance on real shapes
    assert row["trtr_auroc_ci_low"] > 0.75


# The notebooks' claim is that they run on three classes, not that the classifiers learn (the pipeline test above
# checks that), so it runs at smaller sizes that every stage still accepts (each class keeps more images than
# fid_dims and the kid subset; the synthetic set splits into training and held-out images): 63 -> 52 CPU s.
NOTEBOOK_SIZE = {"finetune.steps": 4, "finetune.checkpoint_every": 4, "finetune.validation_every": 4,
                 "finetune.validation_steps": 2, "data.phantom_n": 240, "pools.tuning": 60, "pools.train": 90,
                 "pools.test": 60, "generation.n_per_label": 24, "generation.steps": 2, "classifier.epochs": 2,
                 "classifier.n_train_per_class": 16, "classifier.n_test": 45, "classifier.bootstrap": 20,
                 "fidelity.bootstrap": 10, "fidelity.kid_subsets": 5, "fidelity.diversity_pairs": 20}


def test_the_notebooks_run_the_three_class_domain_unchanged(runs_root, tmp_path):
    # Notebooks 01-06 as committed, through papermill, on the shapes domain: nothing in them is chest-specific.
    from lib.runs import runner

    figures = tmp_path / "figures"
    run = runner.run("params/shapes.yaml", NOTEBOOK_SIZE, runs_root, figures_dir=figures)
    assert run.finished, run.status
    made = {p.name for p in figures.glob("*.png")}
    assert {"01_label_findings.png", "04_synthetic_vs_real.png", "05_roc_confusion.png",
            "06_samples_by_method.png"} <= made
    matrix = pd.read_csv(figures / "06_matrix.csv")
    assert len(matrix) >= 1
