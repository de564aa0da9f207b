"""Progress bars that obey the batch runner's environment.

tqdm reads TQDM_* variables only for arguments a call leaves out, and the suite's bars pass ``disable``
and ``mininterval`` explicitly; this wrapper lets the runner's environment (``runner.batch_environment``)
win, so batch logs get no line per update.
"""
from __future__ import annotations

import os

from tqdm.auto import tqdm as _tqdm


def tqdm(*args, **kwargs):
    if os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true"):
        kwargs["disable"] = True
    if os.environ.get("TQDM_MININTERVAL"):
        kwargs["mininterval"] = float(os.environ["TQDM_MININTERVAL"])
    return _tqdm(*args, **kwargs)
