"""Curation on image folders: phantom set and NIH layout read alike; every bad input is reported."""
import shutil

import pandas as pd
import pytest

from lib.core import config, stages
from lib.data import curation, nih, phantoms


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    return phantoms.generate(n=160, size=32, seed=3, out_dir=tmp_path_factory.mktemp("ph") / "set", progress=False)


def _cfg(**data):
    return config.from_dict({"data": {"image_size": 32, **data},
                             "pools": {"tuning": 30, "train": 40, "test": 30}})


def _nih_copy(src, dst, layout="images_001/images"):
    """Copy a phantom set into an NIH-style folder: images_0XX/images/*.png and the Data_Entry CSV."""
    (dst / layout).mkdir(parents=True)
    for p in (src / "images").glob("*.png"):
        shutil.copy(p, dst / layout / p.name)
    shutil.copy(src / "Data_Entry_2017.csv", dst / "Data_Entry_2017.csv")
    return dst


def test_phantom_set_and_nih_layout_read_the_same(phantom_root, tmp_path, monkeypatch):
    monkeypatch.setattr(curation.phantoms, "generate", lambda *a, **k: phantom_root)
    a = curation.curate(_cfg(source="phantom"), progress=False)
    nih_root = _nih_copy(phantom_root, tmp_path / "nih")
    b = curation.curate(_cfg(source="nih", nih_root=str(nih_root)), progress=False)
    cols = ["image_id", "label", "patient", "view", "findings", "hash"]
    pd.testing.assert_frame_equal(a.table[cols], b.table[cols])
    assert len(a.table) == 160 and not b.missing and not b.corrupt


def test_missing_and_corrupt_images_are_reported(phantom_root, tmp_path, caplog):
    root = _nih_copy(phantom_root, tmp_path / "nih", layout="images")
    files = sorted((root / "images").glob("*.png"))
    for p in files[:3]:
        p.unlink()
    files[5].write_bytes(b"not a png")
    files[6].write_bytes(files[7].read_bytes()[:60])  # truncated
    # 3 of 160 missing is above the default data.max_missing_fraction (1%): allow 5% here
    cur = curation.curate(_cfg(source="nih", nih_root=str(root), max_missing_fraction=0.05), progress=False)
    assert len(cur.missing) == 3 and sorted(cur.corrupt) == sorted([files[5].name, files[6].name])
    assert len(cur.table) == 160 - 5
    assert "3 images named in the CSV are missing" in cur.report() and "2 unreadable" in cur.report()


def test_csv_missing_a_column(tmp_path):
    bad = tmp_path / "Data_Entry_2017.csv"
    pd.DataFrame({"Image Index": ["a.png"], "Finding Labels": ["No Finding"]}).to_csv(bad, index=False)
    with pytest.raises(nih.DataError, match=r"lacks column\(s\) \['Patient ID', 'View Position'\]"):
        nih.read_metadata(bad)


def test_missing_csv_and_missing_folder(tmp_path):
    with pytest.raises(nih.DataError, match="not found"):
        nih.read_metadata(tmp_path / "nope.csv")
    with pytest.raises(nih.DataError, match="does not exist"):
        nih.find_images(tmp_path / "nowhere")


def test_empty_class_after_filtering():
    meta = nih.read_metadata().head(500)
    meta = meta[meta["Finding Labels"] == "No Finding"]
    with pytest.raises(nih.DataError, match="class 'Unhealthy' is empty"):
        curation.label_table(meta, ["PA", "AP"])


def test_pool_sizes_larger_than_data(phantom_root, monkeypatch):
    monkeypatch.setattr(curation.phantoms, "generate", lambda *a, **k: phantom_root)
    cur = curation.curate(_cfg(source="phantom"), progress=False)
    with pytest.raises(nih.DataError, match="more than the 160 available"):
        curation.split_pools(cur.table, {"tuning": 100, "train": 100, "test": 100}, 0)


def test_stage_writes_manifests_and_never_overwrites(phantom_root, monkeypatch, runs_root):
    monkeypatch.setattr(curation.phantoms, "generate", lambda *a, **k: phantom_root)
    cfg = _cfg(source="phantom")
    out = stages.run_stage(cfg, "01_data_curation", curation.run, runs_root)
    pools = curation.load_pools(out)
    assert list(pools["tuning"].columns) == curation.MANIFEST_COLUMNS
    assert {len(p) for p in pools.values()} == {30, 40}
    curation.check_leakage(pools)
    before = (out / "DONE.json").read_text()
    assert stages.run_stage(cfg, "01_data_curation", curation.run, runs_root) == out
    assert (out / "DONE.json").read_text() == before
    with pytest.raises(FileExistsError):
        stages.mark_done(out, cfg, "01_data_curation")
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_official_split_files_next_to_the_images_are_honoured(phantom_root, tmp_path, runs_root):
    root = _nih_copy(phantom_root, tmp_path / "nih", layout="images")
    meta = pd.read_csv(root / "Data_Entry_2017.csv")
    patients = sorted(meta["Patient ID"].unique())
    test_ids = set(meta[meta["Patient ID"].isin(patients[: len(patients) // 2])]["Image Index"])
    (root / "test_list.txt").write_text("\n".join(sorted(test_ids)))
    (root / "train_val_list.txt").write_text("\n".join(sorted(set(meta["Image Index"]) - test_ids)))
    cfg = _cfg(source="nih", nih_root=str(root), official_split=True)
    pools = curation.load_pools(stages.run_stage(cfg, "01_data_curation", curation.run, runs_root, progress=False))
    assert set(pools["test"]["image_id"]) <= test_ids
    assert not (set(pools["train"]["image_id"]) | set(pools["tuning"]["image_id"])) & test_ids


def test_a_bad_request_after_a_finished_stage_loses_nothing(phantom_root, monkeypatch, runs_root):
    monkeypatch.setattr(curation.phantoms, "generate", lambda *a, **k: phantom_root)
    out = stages.run_stage(_cfg(source="phantom"), "01_data_curation", curation.run, runs_root, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    too_big = config.from_dict({"data": {"image_size": 32}, "pools": {"tuning": 100, "train": 100, "test": 100}})
    with pytest.raises(nih.DataError, match="more than"):
        stages.run_stage(too_big, "01_data_curation", curation.run, runs_root, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not stages.is_done(stages.stage_dir(too_big, "01_data_curation", runs_root))


def test_a_user_metadata_csv_gets_its_own_phantom_folder(tmp_path):
    csv = tmp_path / "Data_Entry_2017.csv"
    csv.write_text("Image Index,Finding Labels\n")
    assert phantoms.phantom_dir(100, 32, 0, False, csv) != phantoms.phantom_dir(100, 32, 0, False)
    other = tmp_path / "other.csv"
    other.write_text("Image Index,Finding Labels\nx.png,No Finding\n")
    assert phantoms.phantom_dir(100, 32, 0, False, csv) != phantoms.phantom_dir(100, 32, 0, False, other)
