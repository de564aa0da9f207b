"""The mode classifier behind "does the generator keep its tuning set's modes" (lib.analyze.generated_modes), on
images whose mode is drawn into the pixels by construction: it must recover the modes of held-out images, and the
shares it predicts for a set must follow that set's true mix."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lib.analyze import generated_modes as gm
from lib.data.nih import DataError


def _images(tmp_path, modes, seed):
    """One 16 px image per mode name: noise, plus a bright band whose row encodes the mode."""
    rng, rows = np.random.default_rng(seed), []
    for i, m in enumerate(modes):
        img = 0.3 * rng.random((16, 16))
        band = gm.MODES.index(m) * 2
        img[band:band + 2] = 0.9
        p = tmp_path / f"{seed}_{i}.png"
        Image.fromarray((img * 255).astype(np.uint8)).save(p)
        rows.append({"path": str(p), "mode": m})
    return pd.DataFrame(rows)


def test_held_out_modes_are_recovered_and_predicted_shares_follow_the_true_mix(tmp_path):
    train = _images(tmp_path, [m for m in gm.MODES for _ in range(6)], seed=0)
    test = _images(tmp_path, [m for m in gm.MODES for _ in range(3)], seed=1)
    clf, held_out = gm.fit(train, test, size=16)
    assert held_out["accuracy"] >= 0.9 and held_out["balanced_accuracy"] >= 0.9
    skewed = _images(tmp_path, ["rotated"] * 6 + ["normal"] * 2, seed=2)
    pred = gm.shares(clf.predict(gm._pixels(skewed["path"], 16)))
    assert list(pred.index) == gm.MODES and pred.sum() == pytest.approx(1.0)
    assert pred["rotated"] == pytest.approx(0.75, abs=0.13) and pred["normal"] == pytest.approx(0.25, abs=0.13)


def test_summary_counts_non_normal_shares_and_tv_distance_by_hand():
    rows = [{"method": "x", "seed": 0, "mode": m, "tuning_true": t, "tuning_predicted": p, "synthetic_predicted": s}
            for m, t, p, s in zip(gm.MODES, [0.7, 0.3] + [0] * 6, [0.6, 0.4] + [0] * 6, [0.2, 0.3, 0.5] + [0] * 5)]
    got = gm.summary(pd.DataFrame(rows)).loc["x"]
    assert got["tuning non-normal (true)"] == pytest.approx(0.3)
    assert got["synthetic non-normal (predicted)"] == pytest.approx(0.8)
    assert got["TV synthetic vs tuning (predicted)"] == pytest.approx(0.5 * (0.4 + 0.1 + 0.5))


def test_pools_without_modes_are_refused(tmp_path):
    plain = _images(tmp_path, ["normal"] * 2, seed=0).drop(columns="mode")
    with pytest.raises(DataError, match="phantom_modes"):
        gm.fit(plain, plain)
