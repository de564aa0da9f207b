"""Memorization (lib/evaluate/memorization.py): planted copies are flagged, unseen real images are not."""
import numpy as np
import pytest

from fidelity_fixtures import fidelity_cfg, phantom_set
from lib.evaluate import features, memorization
from lib.data import images
from lib.evaluate.fidelity_metrics import TooFewImages


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Pixel features (16 x 16) of phantom sets of distinct patients: tuning, held-out, and unseen real
    images standing in for the real-holdout reference; plus the tuning images at the generator's lower
    resolution (copies that went through a 32 px generator)."""
    tmp = tmp_path_factory.mktemp("memo")
    cfg = fidelity_cfg(tmp, **{"embedding.pixel_size": 16})
    ex = features.extractor(cfg, "pixel")
    dfs = {k: phantom_set(tmp / k, k, n, size=64) for k, n in (("tuning", 20), ("holdout", 40), ("unseen", 30))}
    out = {k: features.extract(df, cfg, ex) for k, df in dfs.items()}
    out["degraded"] = features.embed_array(ex, images.load_stack(dfs["tuning"]["path"].head(8).tolist(), 32))
    out["dfs"] = dfs
    return out


def test_planted_copies_are_flagged_and_nothing_else(sets):
    planted = [3, 11, 17]
    synthetic = np.concatenate([sets["unseen"], sets["tuning"][planted], sets["degraded"][:4]])
    table, info = memorization.analyse(synthetic, sets["tuning"], sets["holdout"], 0.2, seed=0)
    n = len(sets["unseen"])
    assert table["copy"].iloc[n:].all() and not table["copy"].iloc[:n].any()
    assert table["tuning_index"].iloc[n:n + 3].tolist() == planted            # the right tuning image
    assert (table["d_tuning"].iloc[n:n + 3] == 0).all() and (table["ratio"].iloc[n:n + 3] == 0).all()
    assert info["n_holdout"] == len(sets["tuning"]) and info["threshold"] == pytest.approx(0.2 * info["scale"])


def test_a_real_holdout_like_set_flags_none_and_sits_at_ratio_one(sets):
    table, _ = memorization.analyse(sets["unseen"], sets["tuning"], sets["holdout"], 0.2, seed=0)
    assert not table["copy"].any()
    assert table["d_tuning_scaled"].min() > 0.3                 # a margin, not a near miss
    summary = memorization.summary(table.assign(label="all"), n_boot=50)
    ratio = summary.query("metric == 'ratio_median'").iloc[0]
    assert 0.7 < ratio["value"] < 1.4 and ratio["ci_low"] <= ratio["value"] <= ratio["ci_high"]
    assert summary.query("metric == 'copy_fraction'")["value"].item() == 0.0


def test_summary_per_class_and_overall_with_cis(sets):
    synthetic = np.concatenate([sets["unseen"], sets["tuning"][:6]])
    labels = np.array(sets["dfs"]["unseen"]["label"].tolist() + sets["dfs"]["tuning"]["label"].head(6).tolist())
    table, _ = memorization.analyse(synthetic, sets["tuning"], sets["holdout"], 0.2, 0, labels)
    s = memorization.summary(table, n_boot=50, seed=0)
    overall = s.query("group == 'all' and metric == 'copy_fraction'").iloc[0]
    assert overall["value"] == pytest.approx(6 / 66) and overall["ci_low"] < overall["value"] < overall["ci_high"]
    assert set(s["group"]) == {"No Finding", "Unhealthy", "all"} and np.isfinite(s["value"]).all()


def test_bad_held_out_sets_are_refused(sets):
    with pytest.raises(TooFewImages, match="at least as many held-out"):
        memorization.analyse(sets["unseen"], sets["tuning"], sets["holdout"][:10], 0.2)
    leaky = np.concatenate([sets["holdout"][:40], sets["tuning"][:20]])    # 60: any 40 of them hold a copy
    with pytest.raises(ValueError, match="never saw"):
        memorization.analyse(sets["unseen"], sets["tuning"], leaky, 0.2)


def test_montage_of_the_closest_pairs(sets, tmp_path):
    dfs = sets["dfs"]
    table, _ = memorization.analyse(np.concatenate([sets["unseen"][:5], sets["tuning"][:2]]), sets["tuning"],
                                    sets["holdout"], 0.2)
    paths = dfs["unseen"]["path"].head(5).tolist() + dfs["tuning"]["path"].head(2).tolist()
    table = table.assign(synthetic_path=paths, tuning_path=dfs["tuning"]["path"].to_numpy()[table["tuning_index"]])
    fig = memorization.montage(table, tmp_path, "04_memorization_test", n=4, size=32)
    assert (tmp_path / "04_memorization_test.png").exists() and (tmp_path / "04_memorization_test.pdf").exists()
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert sum("copy" in t for t in titles) == 2 and len(titles) == 4
    with pytest.raises(ValueError, match="notebook's number"):
        memorization.montage(table, tmp_path, "memorization", n=2, size=32)

