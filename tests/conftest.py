"""Shared fixtures. Tests run on CPU with tiny data; each gets its own runs root."""
import os

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def smoke_cfg():
    from lib.core import config

    return config.load("params/smoke.yaml")


@pytest.fixture
def runs_root(tmp_path):
    """A private runs root, so tests never touch runs/ and never see each other's stages."""
    return tmp_path / "runs"
