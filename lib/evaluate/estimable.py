"""Which held-out synthetic cells can be estimated at all, judged on unique images.

A set with copies (the same file content under several rows: a collapsed generator's repeats) must never be tested on
a copy of a training image, nor count one image many times: lib.evaluate.evaluation.split_synthetic keeps copies in one
group and tests on unique images only. What is left may be too little to estimate anything: fewer than 2 unique
held-out images of a class give an AUROC of 0, 0.5 or 1 by construction, not a measurement. Such cells (TRTS,
TSTS, detection, and FTER, whose denominator is TRTS) are recorded as NaN with the reason, never as a number.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

MIN_UNIQUE = 2                                   # per class: fewer cannot rank a class against another
CELLS = ("b_", "tsts_", "det_")                  # the prefixes of every metric computed on the held-out set
RATIOS = ("fter", "cc_fter")                     # ratios whose denominator is AUROC(b)


def content(df: pd.DataFrame) -> pd.Series:
    """Each row's content key: the manifest's file hash where there is one, else the row's own id (no copies)."""
    col = "hash" if "hash" in df and df["hash"].notna().all() else "image_id"
    return df[col].astype(str)


def has_copies(df: pd.DataFrame) -> bool:
    return bool(content(df).duplicated().any())


def unique_unseen(rest: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``rest`` whose content the training sample does not hold, one row per content (the first);
    the same rows in the same order when there are no copies."""
    key = content(rest)
    keep = ~key.isin(set(content(train))) & ~key.duplicated()
    return rest[keep.to_numpy()]


def note(test: pd.DataFrame, classes: list[str]) -> str | None:
    """Why the held-out cells cannot be estimated, or None when they can."""
    counts = {c: int(content(test[test["label"] == c]).nunique()) for c in classes}
    if all(n >= MIN_UNIQUE for n in counts.values()):
        return None
    total = int(content(test).nunique())
    per = ", ".join(f"'{c}': {n}" for c, n in counts.items())
    return (f"not estimable: {total} unique held-out image(s) ({per}); {MIN_UNIQUE} per class needed (the set's "
            "copies leave no more once the training images and their copies are set aside)")


def mask(row: dict, why: str) -> dict:
    """The record's held-out metrics as NaN, each cell and ratio saying why (counts such as b_n are kept)."""
    out = dict(row)
    for k, v in row.items():
        number = isinstance(v, (float, np.floating)) or (isinstance(v, (int, np.integer)) and not isinstance(v, bool))
        if k.startswith(CELLS) and number and not k.endswith("_n") and "support[" not in k:
            out[k] = float("nan")
    for r in RATIOS:
        if r in row:
            out.update({r: float("nan"), f"{r}_ci_low": float("nan"), f"{r}_ci_high": float("nan"),
                        f"{r}_defined": False, f"{r}_note": why})
    out["held_out_note"] = why
    return out
