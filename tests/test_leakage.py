"""Leakage on file content: planted test images are found whatever the manifest says; hashes are cached."""
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lib.data import images, leakage
from lib.data.leakage import LeakageError
from lib.data.nih import DataError

OLD = 1_600_000_000  # an mtime well in the past, so cache entries are kept


def _png(path, seed, size=32):
    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size)) * 255).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    os.utime(path, (OLD, OLD))
    return path


def _manifest(paths, prefix, patient=None):
    return pd.DataFrame({"image_id": [f"{prefix}{i}" for i in range(len(paths))], "path": [str(p) for p in paths],
                         "label": "No Finding", "patient": patient or [f"{prefix}p{i}" for i in range(len(paths))],
                         "hash": [images.content_hash(p.read_bytes()) for p in paths]})


@pytest.fixture
def sets(tmp_path):
    test = _manifest([_png(tmp_path / "real" / f"t{i}.png", i) for i in range(4)], "t")
    synthetic = _manifest([_png(tmp_path / "syn" / f"s{i}.png", 100 + i) for i in range(6)], "syn")
    return test, synthetic, tmp_path / "cache.json"


def test_real_test_images_copied_over_synthetic_files_are_refused_with_the_manifest_unchanged(sets):
    test, synthetic, cache = sets
    leakage.check_content(test, {"the synthetic set": synthetic}, cache)        # clean: passes
    planted = {2: 0, 5: 3}                                                       # synthetic row <- test row
    for s, t in planted.items():
        with open(synthetic["path"][s], "wb") as fh:                             # same inode, new bytes
            fh.write(open(test["path"][t], "rb").read())
    # the manifests' hash columns still say the sets are disjoint
    assert not set(test["hash"]) & set(synthetic["hash"])
    with pytest.raises(LeakageError) as err:
        leakage.check_content(test, {"the real training pool": test.iloc[:0], "the synthetic set": synthetic}, cache)
    msg = str(err.value)
    assert "2 file(s) of the synthetic set" in msg
    for s, t in planted.items():
        assert f"{test['path'][t]} = {synthetic['path'][s]}" in msg


def test_image_ids_and_patients_are_still_refused(sets):
    test, synthetic, cache = sets
    with pytest.raises(LeakageError, match="patient"):
        leakage.check_content(test, {"the tuning set": synthetic.assign(patient=test["patient"][1])}, cache)
    with pytest.raises(LeakageError, match="image_id.*'t2'"):
        leakage.check_content(test, {"the tuning set": synthetic.assign(image_id="t2")}, cache)


def test_hashes_match_the_manifest_format_and_are_cached_by_path_size_and_times(sets, monkeypatch):
    test, _, cache = sets
    assert leakage.file_hashes(test["path"], cache) == test["hash"].tolist()
    assert cache.exists()

    def no_read(path):
        raise AssertionError(f"{path} was read again")
    monkeypatch.setattr(leakage.provenance, "file_hash", no_read)
    assert leakage.file_hashes(test["path"], cache) == test["hash"].tolist()   # all from the cache
    monkeypatch.undo()

    changed = test["path"][1]
    _png(Path(changed), 999, size=40)
    os.utime(changed, (OLD, OLD))                     # same old mtime: ctime and size still tell
    again = leakage.file_hashes(test["path"], cache)
    assert again[1] != test["hash"][1] and again[1] == images.content_hash(open(changed, "rb").read())


def test_recent_files_are_hashed_but_not_cached(tmp_path):
    f = tmp_path / "new.png"
    f.write_bytes(b"fresh")
    leakage.file_hashes([f], tmp_path / "cache.json")
    assert not (tmp_path / "cache.json").exists()     # modified within the racy window


def test_two_writers_keep_both_sets_of_cache_entries(tmp_path):
    cache = tmp_path / "cache.json"
    groups = [[_png(tmp_path / g / f"{i}.png", 10 * k + i) for i in range(5)] for k, g in enumerate("ab")]
    threads = [threading.Thread(target=leakage.file_hashes, args=(g, cache)) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    saved = leakage._read_cache(cache)
    assert {str(p.resolve()) for g in groups for p in g} <= set(saved)


def test_a_listed_file_missing_on_disk_is_named(sets):
    test, synthetic, cache = sets
    gone = synthetic.assign(path=synthetic["path"].str.replace("s3.png", "gone.png"))
    with pytest.raises(DataError, match="gone.png"):
        leakage.check_content(test, {"the synthetic set": gone}, cache)


def test_near_duplicates_are_found_warned_about_and_shown(sets, tmp_path, caplog):
    test, synthetic, _ = sets
    near = tmp_path / "syn" / "near.png"
    arr = np.asarray(Image.open(test["path"][1]), dtype=np.int16)
    Image.fromarray(np.clip(arr + 6, 0, 255).astype("uint8")).save(near)   # brighter, not byte-equal
    pairs = leakage.near_duplicates(test, synthetic["path"].tolist() + [str(near)])
    assert list(pairs.columns) == ["test_path", "source_path", "cosine", "l2", "ratio"]
    assert pairs[["test_path", "source_path"]].values.tolist() == [[test["path"][1], str(near)]]  # nothing else
    source = pd.DataFrame({"path": synthetic["path"].tolist() + [str(near)]})
    with caplog.at_level(logging.WARNING, logger="lib.data.leakage"):
        leakage.check_near_duplicates(test, source, "the imported folder", tmp_path / "dups.png", "warn")
    assert "near-copies" in caplog.text and (tmp_path / "dups.png").exists()
    assert Image.open(tmp_path / "dups.png").format == "PNG"
    assert leakage.montage(pairs.iloc[:0], tmp_path / "none.png") is None
