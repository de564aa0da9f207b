"""The real NIH metadata torchxrayvision ships: counts, and patient-level pools."""
import pandas as pd
import pytest

from lib.data import curation, leakage, nih


@pytest.fixture(scope="module")
def meta():
    return nih.read_metadata()


@pytest.fixture(scope="module")
def table(meta):
    return curation.label_table(meta, ["PA", "AP"]).assign(hash=lambda d: d["image_id"])


SIZES = {"tuning": 20000, "train": 60000, "test": 10000}


def test_bundled_counts(meta, table):
    assert len(meta) == 112120
    assert meta["Patient ID"].nunique() == 30805
    assert (table["label"] == "No Finding").sum() == 60361
    assert (table["label"] == "Unhealthy").sum() == 112120 - 60361


def test_view_filter(meta):
    pa = curation.label_table(meta, ["PA"])
    assert set(pa["view"]) == {"PA"} and len(pa) == 67310


def test_pools_are_patient_disjoint_and_sized(table):
    pools = curation.split_pools(table, SIZES, seed=0)
    assert {k: len(v) for k, v in pools.items()} == SIZES
    patients = [set(p["patient"]) for p in pools.values()]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2]) and not (patients[1] & patients[2])


def test_same_seed_same_pools_other_seed_other_pools(table):
    small = {"tuning": 500, "train": 1000, "test": 800}
    a, b = curation.split_pools(table, small, 1), curation.split_pools(table, small, 1)
    c = curation.split_pools(table, small, 2)
    for name in small:
        pd.testing.assert_frame_equal(a[name], b[name])
        assert set(a[name]["image_id"]) != set(c[name]["image_id"])


def test_leakage_check_catches_shared_patient(table):
    pools = curation.split_pools(table, {"tuning": 50, "train": 50, "test": 50}, 0)
    pools["train"] = pd.concat([pools["train"], pools["test"].head(1)])
    with pytest.raises(leakage.LeakageError, match="patient"):
        curation.check_leakage(pools)


def test_official_lists_are_honoured(table):
    test_ids = set(table["image_id"].iloc[:30000])
    official = {"test": test_ids, "train_val": set(table["image_id"]) - test_ids}
    # the first 30,000 rows hold whole patients except possibly one at the edge; drop it from both
    edge = set(table[table["image_id"].isin(test_ids)]["patient"]) & set(table[~table["image_id"].isin(test_ids)]["patient"])
    t = table[~table["patient"].isin(edge)]
    pools = curation.split_pools(t, {"tuning": 300, "train": 300, "test": 300}, 0, official)
    assert set(pools["test"]["image_id"]) <= test_ids
    assert not (set(pools["train"]["image_id"]) | set(pools["tuning"]["image_id"])) & test_ids


def test_pools_larger_than_data(table):
    with pytest.raises(nih.DataError, match="more than"):
        curation.split_pools(table, {"tuning": 100000, "train": 10000, "test": 10000}, 0)
