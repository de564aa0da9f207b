"""The known-answer selections of the mode world (issue 27): mode-matched keeps the pool's acquisition mix,
rare-modes takes only rare modes; both refuse a world without modes."""
import numpy as np
import pandas as pd
import pytest

from lib.core import config
from lib.tuningset import selection


def _pool(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    modes = rng.choice(["normal", "devices", "rotated", "collimated", "pediatric"], size=n, p=[0.7, 0.15, 0.07, 0.05, 0.03])
    return pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "patient": [f"p{i}" for i in range(n)],
                         "label": rng.choice(["No Finding", "Unhealthy"], size=n), "mode": modes,
                         "path": [f"x{i}.png" for i in range(n)]})


def _request(tmp_path, method, pool, per_label=60):
    cfg = config.load("params/smoke.yaml", {"data.phantom_modes": True, "selection.per_label": per_label,
                                            "selection.methods": [method], "finetune.method": method})
    return selection.Request(cfg, method, pool, tmp_path, tmp_path)


def test_mode_matched_keeps_each_labels_mode_shares_and_rare_modes_takes_only_rare_ones(tmp_path):
    pool = _pool()
    matched = selection.method("mode-matched").choose(_request(tmp_path, "mode-matched", pool)).chosen
    for label, part in matched.groupby("label"):
        have = part["mode"].value_counts(normalize=True)
        want = pool[pool["label"] == label]["mode"].value_counts(normalize=True)
        assert len(part) == 60 and (have.reindex(want.index, fill_value=0) - want).abs().max() <= 1 / 60 + 1e-9
    rare = selection.method("rare-modes").choose(_request(tmp_path, "rare-modes", pool)).chosen
    assert set(rare["mode"]) == {"rotated", "collimated", "pediatric"}            # under 10% of the pool each
    for label, part in rare.groupby("label"):
        assert part["mode"].value_counts().nunique() == 1                          # an equal quota per rare mode
    # the total variation distance from the pool's mix: near 0 for matched, large for rare-only
    tv = lambda df: 0.5 * (df["mode"].value_counts(normalize=True)                # noqa: E731
                           .sub(pool["mode"].value_counts(normalize=True), fill_value=0).abs().sum())
    assert tv(matched) < 0.02 and tv(rare) > 0.8


def test_mode_selections_need_the_mode_world():
    with pytest.raises(config.ParamError, match="phantom_modes: true"):
        config.load("params/smoke.yaml", {"selection.methods": ["random", "rare-modes"]})
