"""The extension points of CONTRIBUTING.md, each exercised as its recipe says: a toy of each kind is registered
in this one file, accepted by the parameter check (which reads the registry) and run through its stage.

- a selection method (lib/tuningset/selection.py) through stage 02;
- a reference generator (lib/generate/references.py) through stage 04;
- a classifier backbone (lib/evaluate/backbones.py) and a metric (lib/evaluate/metrics.py) through stage 05, on
  the toy generator's set: the backbone trains all three classifiers and feeds the fidelity features, the
  metric lands in the results record, results.csv and the metric table, and recomputes from the predictions.

Sizes are the smoke parameters' or smaller; the whole file runs in well under a minute on 2 CPU cores.
"""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lib.core import atomic, config, paths, stages
from lib.data import curation
from lib.evaluate import backbones, evaluation, metrics, results
from lib.generate import generation, references
from lib.tuningset import selection


# ------------------------------------------------------------------------------------------- the toys
def first_by_id(req: selection.Request) -> selection.Selection:
    """A selection method: the per_label first images of each label by image id."""
    def choose():
        pool = req.pool.sort_values("image_id")
        return pool.groupby("label").head(req.cfg.selection.per_label).assign(cluster=-1, duplicate=False)
    return selection.Selection(req.once(choose), req.pool)


def mirrored_rows(req: references.Request) -> pd.DataFrame:
    """A reference generator: the held-out real images, mirrored left to right (written as PNGs)."""
    return references.pool_rows(req, keep_suffix=False)


def write_mirrored(todo: pd.DataFrame, out_dir, req: references.Request, bar) -> None:
    for _, row in todo.iterrows():
        arr = np.asarray(Image.open(row["source_path"]).convert("L"))[:, ::-1]
        atomic.save_image(out_dir / row["file"], Image.fromarray(np.ascontiguousarray(arr)))
        bar.update(1)


def tiny_cnn(weights: str, n_classes: int):
    """A classifier backbone: one strided convolution, pooled, and a linear head."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, n_classes))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """A metric: the multi-class Brier score of the normalised outputs."""
    return float(np.mean(np.sum((p - np.eye(p.shape[1])[y]) ** 2, axis=1)))


@pytest.fixture(scope="module")
def toys():
    """Each toy registered as CONTRIBUTING.md shows, and taken out of its registry again afterwards."""
    selection.register("toy-first")(first_by_id)
    references.register("toy-mirrored", write=write_mirrored)(mirrored_rows)
    backbones.register("toy-cnn", features=lambda net, x: net[:-1](x), head=lambda net: net[-1],
                       pretrained=False)(tiny_cnn)
    metrics.register("toy_brier")(brier)
    yield
    selection.METHODS.pop("toy-first")
    references.GENERATORS.pop("toy-mirrored")
    backbones.BACKBONES.pop("toy-cnn")
    metrics.METRICS.pop("toy_brier")


SMALL = {"generation.n_per_label": 30, "classifier.n_train_per_class": 16, "classifier.n_test": 40,
         "classifier.epochs": 1, "classifier.bootstrap": 10, "fidelity.bootstrap": 10, "fidelity.fid_dims": 4,
         "fidelity.kid_subset_size": 8, "fidelity.kid_subsets": 4, "fidelity.diversity_pairs": 20}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Stage 01 once, in a private runs root; every toy's stage reads its pools."""
    root = tmp_path_factory.mktemp("ext") / "runs"
    stages.run_stage(config.load("params/smoke.yaml"), "01_data_curation", curation.run, root, progress=False)
    return root


# ------------------------------------------------------------------------------------------- the tests
def test_a_registered_selection_method_runs_through_stage_02(toys, runs):
    with pytest.raises(config.ParamError, match="toy-frist.*did you mean 'toy-first'"):
        config.load("params/smoke.yaml", {"selection.methods": ["toy-frist"]})
    cfg = config.load("params/smoke.yaml", {"selection.methods": ["random", "toy-first"],
                                            "finetune.method": "toy-first"})
    out = stages.run_stage(cfg, "02_clustering", selection.run, runs, progress=False)
    pool = selection.tuning_pool(cfg, runs)
    chosen = selection.read_tuning_set(out / "tuning_toy-first.csv")
    want = pool.sort_values("image_id").groupby("label").head(cfg.selection.per_label)
    assert sorted(chosen["image_id"]) == sorted(want["image_id"])
    summary = selection.load(out)["summary"]
    assert summary.loc[summary["method"] == "toy-first", "taken"].tolist() == [cfg.selection.per_label] * 2
    assert (out / "tuning_random.csv").exists()          # the built-in methods beside it, unchanged


@pytest.fixture(scope="module")
def stage04(toys, runs):
    cfg = config.load("params/smoke.yaml", {**SMALL, "generation.kind": "toy-mirrored",
                                            "classifier.arch": "toy-cnn"})
    return cfg, stages.run_stage(cfg, "04_generation", generation.run, runs, progress=False)


def test_a_registered_reference_generator_runs_through_stage_04(toys, runs, stage04):
    with pytest.raises(config.ParamError, match="toy-mirored.*did you mean 'toy-mirrored'"):
        config.load("params/smoke.yaml", {"generation.kind": "toy-mirored"})
    cfg, out = stage04
    assert references.is_reference(cfg)
    assert stages.stage_dir(cfg, "04_generation", runs) == out          # keyed like any reference: no 02-03
    m = pd.read_csv(out / "manifest.csv")
    assert m["label"].value_counts().tolist() == [30, 30] and m["model"].eq("toy-mirrored").all()
    pool = curation.load_pools(stages.require(cfg, "01_data_curation", runs))["tuning"].set_index("image_id")
    for _, r in m.head(4).iterrows():
        got = np.asarray(Image.open(paths.resolve(r["path"])).convert("L"))
        src = np.asarray(Image.open(paths.resolve(pool.loc[r["source_image_id"], "path"])).convert("L"))
        assert np.array_equal(got, src[:, ::-1])
    summary = generation.summary(out)
    assert summary["kind"] == "toy-mirrored" and summary["reference"] and summary["source"] == "pools.tuning"
    # a rerun finds the stage done (sealed, nothing redrawn)
    assert stages.run_stage(cfg, "04_generation", generation.run, runs, progress=False) == out


@pytest.fixture(scope="module")
def stage05(stage04, runs):
    cfg, _ = stage04
    return cfg, stages.run_stage(cfg, "05_classifier", evaluation.run, runs, progress=False)


def test_a_registered_backbone_trains_every_classifier_of_stage_05(stage05):
    with pytest.raises(config.ParamError, match="toy-cnn stand-in has no pre-trained weights"):
        config.load("params/smoke.yaml", {"classifier.arch": "toy-cnn", "classifier.weights": "imagenet"})
    cfg, out = stage05
    run = evaluation.load(out)
    assert run["row"]["param.classifier.arch"] == "toy-cnn"
    model = backbones.backbone("toy-cnn").build("none", 2)
    for key in ("a", "det"):
        state = torch.load(out / f"classifier_{key}.pt")
        assert state["net.4.weight"].shape == model[4].weight.shape      # the toy's head, inside CheXNet
    assert np.isfinite(run["row"]["fidelity.fid"])                      # its penultimate layer as the features


def test_a_registered_metric_lands_in_the_results_record_and_recomputes(stage05):
    cfg, out = stage05
    row = results.read(out)
    csv = pd.read_csv(out / "results.csv")
    for cell in results.CELLS:
        pred = pd.read_csv(out / f"predictions_{cell}.csv")
        y, outputs = results.arrays(pred)
        assert row[f"{cell}_toy_brier"] == pytest.approx(brier(y, metrics.probabilities(outputs)))
        assert csv[f"{cell}_toy_brier"].iloc[0] == pytest.approx(row[f"{cell}_toy_brier"])
    assert "toy_brier" in results.metric_table(row).index
    assert results.recompute_from_predictions(out)["a_toy_brier"] == pytest.approx(row["a_toy_brier"])
    with pytest.raises(ValueError, match="must be new"):
        metrics.register("auroc")(brier)
