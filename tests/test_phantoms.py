"""The procedural phantom generator."""
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lib.data import images, phantoms


def test_deterministic_and_seed_dependent():
    a = phantoms.draw("00000001_000.png", "1", ["Effusion"], size=64, seed=0)
    b = phantoms.draw("00000001_000.png", "1", ["Effusion"], size=64, seed=0)
    c = phantoms.draw("00000001_000.png", "1", ["Effusion"], size=64, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("size", [32, 64, 200, 512])
def test_sizes(size):
    img = phantoms.draw("x.png", "2", [], size=size)
    assert img.shape == (size, size) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1


def test_size_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="between 32 and 512"):
        phantoms.generate(n=4, size=16, out_dir=tmp_path / "x")


@pytest.mark.parametrize("finding", phantoms.FINDINGS)
def test_every_finding_changes_the_image(finding):
    base = phantoms.draw("y.png", "3", [], size=64, textbook=True)
    sick = phantoms.draw("y.png", "3", [finding], size=64, textbook=True)
    assert np.abs(sick - base).max() > 0.05


def test_patients_keep_their_anatomy():
    """Follow-ups of one patient resemble each other more than images of different patients."""
    same = [phantoms.draw(f"a{i}.png", "10", [], size=64, textbook=True) for i in range(2)]
    other = phantoms.draw("b.png", "11", [], size=64, textbook=True)
    assert np.abs(same[0] - same[1]).mean() < np.abs(same[0] - other).mean()


def test_textbook_set_is_single_finding_pa(tmp_path):
    root = phantoms.generate(n=60, size=32, textbook=True, out_dir=tmp_path / "tb", progress=False)
    df = pd.read_csv(root / "Data_Entry_2017.csv")
    assert len(df) == 60 and set(df["View Position"]) == {"PA"}
    assert not df["Finding Labels"].str.contains("|", regex=False).any()


def test_resume_keeps_written_images(tmp_path):
    out = tmp_path / "set"
    root = phantoms.generate(n=20, size=32, out_dir=out, progress=False)
    first = sorted(p.name for p in (root / "images").glob("*.png"))
    (root / "Data_Entry_2017.csv").unlink()  # as if killed before the end
    victim = root / "images" / first[0]
    victim.unlink()
    phantoms.generate(n=20, size=32, out_dir=out, progress=False)
    assert sorted(p.name for p in (root / "images").glob("*.png")) == first


def test_not_trivially_separable(tmp_path):
    """A linear classifier gets signal from the phantoms but is far from AUROC 1.0."""
    root = phantoms.generate(n=700, size=32, seed=5, out_dir=tmp_path / "h", progress=False)
    df = pd.read_csv(root / "Data_Entry_2017.csv")
    x = images.load_stack([str(root / "images" / i) for i in df["Image Index"]], 32).reshape(len(df), -1)
    y = (df["Finding Labels"] != "No Finding").to_numpy()
    train = df["Patient ID"].to_numpy() % 3 != 0
    model = LogisticRegression(max_iter=1000).fit(x[train], y[train])
    auc = roc_auc_score(y[~train], model.predict_proba(x[~train])[:, 1])
    assert 0.55 < auc < 0.95, auc
