"""Tuning-set selection: exact equal quotas, duplicates only where a cluster is short, seeds, stage 02."""
import numpy as np
import pandas as pd
import pytest

from lib.core import config, stages
from lib.data import curation
from lib.tuningset import selection


def pool_with_clusters(sizes=(50, 3, 10)):
    """A pool of two labels with the given cluster sizes in each."""
    rows, clusters = [], []
    for label in ("No Finding", "Unhealthy"):
        for c, n in enumerate(sizes):
            for i in range(n):
                rows.append({"image_id": f"{label[:2]}{c}_{i}.png", "path": f"x/{label[:2]}{c}_{i}.png",
                             "label": label, "patient": str(len(rows)), "hash": f"{len(rows):016x}"})
                clusters.append(c)
    return pd.DataFrame(rows), np.array(clusters)


def test_equal_quota_is_exact_and_duplicates_only_short_clusters():
    pool, clusters = pool_with_clusters((50, 3, 10))
    chosen = selection.select(pool, clusters, per_label=30, seed=0)
    counts = chosen.groupby(["label", "cluster"]).size()
    assert (counts == 10).all() and len(counts) == 6                    # same count from every cluster
    dups = chosen.groupby(["label", "cluster"])["duplicate"].sum()
    assert dups.xs(1, level="cluster").tolist() == [7, 7]                # the 3-image cluster is short by 7
    assert dups.xs(0, level="cluster").sum() == 0 and dups.xs(2, level="cluster").sum() == 0
    originals = chosen[~chosen["duplicate"]]
    assert not originals["image_id"].duplicated().any()                  # each image once before duplicates
    short = chosen[(chosen["cluster"] == 1) & (chosen["label"] == "Unhealthy")]
    assert sorted(short["image_id"].value_counts().tolist()) == [3, 3, 4]   # duplicates spread evenly
    # every row is a pool row of its own cluster
    lookup = dict(zip(pool["image_id"], clusters))
    assert all(lookup[i] == c for i, c in zip(chosen["image_id"], chosen["cluster"]))


def test_summary_records_sizes_and_duplicates():
    pool, clusters = pool_with_clusters((50, 3, 10))
    chosen = selection.select(pool, clusters, per_label=30, seed=0)
    s = selection.summarise("spectral-clip", pool, clusters, chosen)
    assert list(s.columns) == selection.SUMMARY_COLUMNS
    assert s["size"].tolist() == [50, 3, 10] * 2 and s["taken"].tolist() == [10] * 6
    assert s["duplicates"].tolist() == [0, 7, 0] * 2


def test_selection_is_deterministic_per_seed():
    pool, clusters = pool_with_clusters((50, 30, 20))
    a = selection.select(pool, clusters, 30, seed=1)
    pd.testing.assert_frame_equal(a, selection.select(pool, clusters, 30, seed=1))
    assert not a["image_id"].equals(selection.select(pool, clusters, 30, seed=2)["image_id"])
    r = selection.select(pool, None, 40, seed=1)
    pd.testing.assert_frame_equal(r, selection.select(pool, None, 40, seed=1))


def test_random_takes_distinct_pool_rows():
    pool, _ = pool_with_clusters((50, 30, 20))
    r = selection.select(pool, None, 40, seed=0)
    assert r.groupby("label").size().tolist() == [40, 40]
    assert not r["duplicate"].any() and not r["image_id"].duplicated().any() and (r["cluster"] == -1).all()
    assert set(r["image_id"]) <= set(pool["image_id"])


def test_proportional_quota_adds_up():
    q = selection.quotas(np.array([50, 3, 10]), 30, "proportional")
    assert q.sum() == 30 and q[0] > q[2] > q[1] >= 0


def test_quota_of_zero_is_a_clear_error():
    with pytest.raises(selection.SelectionError, match="quota of 0"):
        selection.quotas(np.array([5, 5, 5]), 2, "equal")
    with pytest.raises(config.ParamError, match="quota of 0"):
        config.load("params/smoke.yaml", {"selection.per_label": 2, "cluster.k": 3})
    with pytest.raises(config.ParamError, match="selection.methods"):
        config.load("params/smoke.yaml", {"selection.methods": ["spectral-pixels"]})


@pytest.fixture(scope="module")
def stage02(tmp_path_factory):
    """Stages 01 and 02 on the smoke parameters, in a private runs root and embedding cache."""
    root = tmp_path_factory.mktemp("runs")
    cfg = config.load("params/smoke.yaml", {"embedding.cache_dir": str(root / "cache"),
                                            "embedding.clip_model": "ViT-S-32",
                                            "selection.methods": ["random", "spectral-pixel", "spectral-clip",
                                                                  "kmeans-pixel", "textbook"]})
    stages.run_stage(cfg, "01_data_curation", curation.run, root, progress=False)
    out = stages.run_stage(cfg, "02_clustering", selection.run, root, progress=False)
    return cfg, root, out


def test_stage_writes_one_manifest_per_method_from_the_tuning_pool(stage02):
    cfg, root, out = stage02
    pool = selection.tuning_pool(cfg, root)
    k, per = cfg.cluster.k, cfg.selection.per_label
    for method in cfg.selection.methods:
        df = selection.read_tuning_set(out / f"tuning_{method}.csv")
        assert set(curation.MANIFEST_COLUMNS) | {"cluster", "duplicate"} <= set(df.columns)
        assert set(df["image_id"]) <= set(pool["image_id"])
        assert df.groupby("label").size().tolist() == [per if method in ("random", "textbook") else per - per % k] * 2
    summary = pd.read_csv(out / "selection_summary.csv")
    assert list(summary.columns) == selection.SUMMARY_COLUMNS
    assert set(summary["method"]) == set(cfg.selection.methods)
    clip = summary[summary["method"] == "spectral-clip"]
    assert (clip["taken"] == per // k).all() and len(clip) == 2 * k


def test_textbook_takes_only_typical_cases_of_the_tuning_pool(stage02):
    cfg, root, out = stage02
    df = selection.read_tuning_set(out / "tuning_textbook.csv")
    assert (df["view"] == "PA").all() and not df["findings"].str.contains("|", regex=False).any()
    assert set(df["image_id"]) <= set(selection.tuning_pool(cfg, root)["image_id"])
    with pytest.raises(selection.SelectionError, match="typical"):
        selection.typical_cases(selection.tuning_pool(cfg, root).assign(view="AP"))


def test_stage_rerun_reuses_and_states_random_clip_weights(stage02, capsys):
    cfg, root, out = stage02
    before = (out / "tuning_spectral-clip.csv").read_bytes()
    assert stages.run_stage(cfg, "02_clustering", selection.run, root) == out
    assert (out / "tuning_spectral-clip.csv").read_bytes() == before
    notes = selection.load(out)["embeddings"]
    assert "RANDOM weights" in notes["clip"]
