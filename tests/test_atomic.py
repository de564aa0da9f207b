"""Artefacts are written whole or not at all, and finished ones are not overwritten silently."""
import pandas as pd
import pytest

from lib.core import atomic


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


def test_a_held_lock_says_what_it_waits_for_and_times_out(tmp_path, capsys):
    import multiprocessing as mp
    import time

    lock = tmp_path / "stage.lock"
    ready = mp.Event()

    def hold():
        with atomic.exclusive(lock):
            ready.set()
            time.sleep(3)

    p = mp.get_context("fork").Process(target=hold)
    p.start()
    ready.wait(5)
    with pytest.raises(atomic.LockTimeout, match="stage.lock"):
        with atomic.exclusive(lock, timeout=0.5, what="stage 03 of another sweep point"):
            pass
    assert "waiting for stage 03 of another sweep point" in capsys.readouterr().out
    p.join()
    with atomic.exclusive(lock, timeout=1):      # free again
        pass


def test_identical_weights_saved_twice_have_identical_bytes(tmp_path):
    # torch.save(obj, path) names the zip's records after the (temporary) file, so a hash of saved weights,
    # e.g. the fidelity extractor's in results records, differed between two identical runs
    import hashlib

    import torch

    sd = {"w": torch.arange(6.0)}
    a, b = (atomic.save_torch(tmp_path / name, sd) for name in ("one.pt", "two.pt"))
    assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest()
    assert torch.equal(torch.load(b)["w"], sd["w"])
