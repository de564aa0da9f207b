"""Artefacts are written whole or not at all, and finished ones are not overwritten silently."""
import pandas as pd
import pytest

from lib import atomic


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "m.csv"
    atomic.write_csv(target, pd.DataFrame({"a": [1]}))
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert pd.read_csv(target)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


def test_refuses_to_overwrite_when_asked(tmp_path):
    target = atomic.write_json(tmp_path / "r.json", {"x": 1})
    with pytest.raises(atomic.ResultExistsError, match="refusing to overwrite"):
        atomic.write_json(target, {"x": 2}, overwrite=False)
    assert '"x": 1' in target.read_text()
