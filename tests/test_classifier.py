"""CheXNet wrapper: one output per class, seeds honoured, validation carved from training data, early stopping, learning."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lib.evaluate import classifier, metrics
from lib.core import compute
from lib.data import images
from lib.core.config import ClassifierConfig
from lib.data.nih import DataError

CFG = ClassifierConfig(arch="densenet-mini", input_size=32, epochs=4, batch_size=16, patience=10,
                       val_fraction=0.25)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions on a shared CPU: one thread is faster and immune to other load."""
    with compute.cpu_threads(1):
        yield


def toy(n=48, seed=0):
    """A learnable task: 'Unhealthy' images carry a bright blob, 'No Finding' ones do not."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g) * 0.3
    y = torch.arange(n) % 2
    x[y == 1, :, 10:22, 10:22] += 0.6
    return classifier.TensorSet((x.clamp(0, 1) * 255).to(torch.uint8), y.float())


def test_densenet121_is_the_real_architecture_with_one_output_per_class():
    m = classifier.CheXNet("densenet121", "none")
    assert m.net.classifier.out_features == 2 and len(m.net.features.denseblock3) == 24
    assert m(torch.rand(3, 1, 64, 64)).shape == (3, 2)
    with pytest.raises(ValueError, match="arch"):
        classifier.CheXNet("resnet")


def test_seeds_are_honoured():
    data = toy()
    p1 = classifier.predict(classifier.train(data, CFG, seed=3, progress=False).model, data)
    p2 = classifier.predict(classifier.train(data, CFG, seed=3, progress=False).model, data)
    p3 = classifier.predict(classifier.train(data, CFG, seed=4, progress=False).model, data)
    np.testing.assert_array_equal(p1, p2)
    assert not np.allclose(p1, p3)


def test_validation_split_is_stratified_disjoint_and_from_the_training_source():
    y = np.array([0] * 40 + [1] * 20)
    tr, va = classifier.split_validation(y, 0.25, seed=0)
    assert not set(tr) & set(va) and len(tr) + len(va) == 60
    assert (y[va] == 0).sum() == 10 and (y[va] == 1).sum() == 5


def test_learns_a_separable_task_and_stops_early():
    res = classifier.train(toy(64), dataclasses.replace(CFG, epochs=12, patience=2), seed=0, progress=False)
    test = toy(64, seed=1)
    assert metrics.auroc(test.y.numpy(), classifier.predict(res.model, test)) > 0.9
    flat = dataclasses.replace(CFG, epochs=20, patience=1, learning_rate=1e-9)  # nothing improves
    stuck = classifier.train(toy(), flat, seed=0, progress=False)
    assert stuck.stopped_early and len(stuck.history) < 20


def test_manifest_loading_matches_the_image_reader_and_refuses_one_class(tmp_path):
    rows = []
    for i in range(4):
        arr = (np.random.default_rng(i).random((40, 40)) * 255).astype(np.uint8)
        Image.fromarray(arr, mode="L").save(tmp_path / f"{i}.png")
        rows.append({"path": str(tmp_path / f"{i}.png"), "label": ["No Finding", "Unhealthy"][i % 2]})
    m = pd.DataFrame(rows)
    data = classifier.TensorSet.from_manifest(m, 32, torch.device("cpu"))
    ref = np.round(images.load_gray(m.path[2], 32) * 255)
    np.testing.assert_array_equal(data.x[2, 0].numpy(), ref)
    assert data.y.tolist() == [0, 1, 0, 1]
    with pytest.raises(DataError, match="single class"):
        classifier.train(data.subset([0, 2]), CFG, 0, progress=False)
    with pytest.raises(DataError, match="empty"):
        classifier.TensorSet.from_manifest(m.iloc[:0], 32)
    on_default = classifier.TensorSet.from_manifest(m, 32)       # no device given: accelerate's pick
    assert on_default.x.device.type == compute.device().type and torch.equal(on_default.x.cpu(), data.x)


def test_each_class_has_its_own_output_and_the_binary_score_normalises_them():
    res = classifier.train(toy(64), dataclasses.replace(CFG, epochs=6), seed=0, progress=False)
    test = toy(64, seed=1)
    out = classifier.predict_outputs(res.model, test)
    assert out.shape == (64, 2) and ((out > 0) & (out < 1)).all()
    np.testing.assert_allclose(classifier.predict(res.model, test), out[:, 1] / out.sum(1))
    # two sigmoids, not a softmax: the outputs need not sum to one, so per-class AUROCs differ
    assert not np.allclose(out.sum(1), 1.0)


def test_the_history_is_written_after_every_epoch(tmp_path, monkeypatch):
    written, real_write = [], classifier.atomic.write_csv

    def spy(path, df, *a, **kw):
        written.append(len(df))
        return real_write(path, df, *a, **kw)

    monkeypatch.setattr(classifier.atomic, "write_csv", spy)
    cfg = dataclasses.replace(CFG, epochs=3)
    fit = classifier.train(toy(32), cfg, seed=0, progress=False, history_path=tmp_path / "history_a.csv")
    assert written == [1, 2, 3]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "history_a.csv"), fit.history, check_dtype=False)
