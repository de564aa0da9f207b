"""Batch runs: the runner's environment silences the suite's progress bars even where a call enables them."""
from lib.core import progress
from lib.runs import runner


def test_batch_environment_overrides_explicit_bar_settings(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not progress.tqdm(range(3), disable=False).disable
    with runner.batch_environment():
        assert progress.tqdm(range(3), disable=False, mininterval=2).disable
    with runner.batch_environment(progress=True):
        bar = progress.tqdm(range(3), disable=False, mininterval=2)
        assert not bar.disable and bar.mininterval == 30
