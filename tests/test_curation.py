"""Curation on image folders: phantom set and NIH layout read alike; every bad input is reported."""
import shutil

import pandas as pd
import pytest

from lib import config, curation, nih, phantoms, stages


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
    cur = curation.curate(_cfg(source="nih", nih_root=str(root)), progress=False)
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
