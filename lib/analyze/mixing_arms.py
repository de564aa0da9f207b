"""The training sets of the mixing experiments (lib.analyze.mixing): which images each arm trains on.

  - brackets: the real training sample plus the first N synthetic images of each class, in a seeded order
    (``bracket_sets``; nested: +50 holds +25's images);
  - oversampling: the real sample plus N copies per class drawn at random, with replacement, from it: exactly
    the bracket's totals, real images only (``oversampled_sets``);
  - ratios: a fixed number of images per class, the real share from the real training pool (the baseline's
    sample first) and the rest synthetic (``ratio_sets``).
Arms are named ``real``, ``synthetic+100``, ``oversampled+100``, ``ratio 70:30`` (``arm_name``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import domains

TABLE = "mixing.csv"                   # each 07 stage folder's metrics, one row per arm
OVERSAMPLING = "oversampling"          # the generator name of the oversampled arms in tables and figures
BASELINE = "real"
_SALT = 0x313                          # keeps the synthetic draw apart from the pipeline's other uses of the seed


def arm_name(kind: str, n: int | None = None, ratio: tuple[float, float] | None = None) -> str:
    """'real', 'synthetic+100', 'oversampled+100', 'ratio 70:30'."""
    if kind == BASELINE:
        return BASELINE
    if kind == "ratio":
        return f"ratio {round(100 * ratio[0])}:{round(100 * ratio[1])}"
    return f"{kind}+{n}"


def file_key(arm: str) -> str:
    return arm.replace("synthetic+", "syn").replace("oversampled+", "over").replace("ratio ", "r").replace(":", "-")


def _classes(df: pd.DataFrame, classes: list[str] | None) -> list[str]:
    """The run's classes when given (lib.data.domains.classes), else the order the data's labels give."""
    return list(classes) if classes is not None else domains.order(df["label"])


def ordered_synthetic(synthetic: pd.DataFrame, seed: int, classes: list[str] | None = None) -> pd.DataFrame:
    """The synthetic set in a seeded random order within each class (brackets and ratios take prefixes)."""
    parts = []
    for i, label in enumerate(_classes(synthetic, classes)):
        rows = synthetic[synthetic["label"] == label].sort_values("image_id")
        parts.append(rows.iloc[np.random.default_rng([seed, i, _SALT]).permutation(len(rows))])
    return pd.concat(parts, ignore_index=True)


def ordered_real(train_real: pd.DataFrame, pool: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The real training pool with the baseline's sample first (in its order), then the rest in a seeded order."""
    rest = pool[~pool["image_id"].isin(train_real["image_id"])].sort_values("image_id")
    rest = rest.iloc[np.random.default_rng([seed, 7, _SALT]).permutation(len(rest))]
    return pd.concat([train_real, rest], ignore_index=True)


def first_per_class(df: pd.DataFrame, n: int, classes: list[str] | None = None) -> pd.DataFrame:
    """The first n rows of each class, classes in label-index order."""
    return pd.concat([df[df["label"] == label].iloc[:n] for label in _classes(df, classes)], ignore_index=True)


def bracket_sets(train_real: pd.DataFrame, syn_order: pd.DataFrame, brackets: list[int],
                 classes: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Real sample + the first N synthetic images of each class, per bracket N."""
    return {arm_name("synthetic", n): pd.concat([train_real.assign(source="real"),
                                                 first_per_class(syn_order, n, classes).assign(source="synthetic")],
                                                ignore_index=True)
            for n in sorted(brackets)}


def oversampled_sets(train_real: pd.DataFrame, brackets: list[int], seed: int,
                     classes: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Real sample + N copies per class drawn at random with replacement from that class's real images:
    exactly n_real + N images per class, the bracket's totals. ``group`` names each copy's source image."""
    out = {}
    for n in sorted(brackets):
        parts = [train_real.assign(source="real")]
        for i, label in enumerate(_classes(train_real, classes)):
            rows = train_real[train_real["label"] == label]
            pick = np.random.default_rng([seed, n, i, _SALT]).integers(0, len(rows), n)
            parts.append(rows.iloc[pick].assign(source="real copy"))
        df = pd.concat(parts, ignore_index=True)
        df["group"] = df["image_id"]
        out[arm_name("oversampled", n)] = df
    return out


def ratio_counts(ratio, total: int) -> tuple[int, int]:
    """(real, synthetic) images per class of a [real, synthetic] share pair at ``total`` per class."""
    n_real = int(round(ratio[0] * total))
    return n_real, total - n_real


def ratio_sets(real_order: pd.DataFrame, syn_order: pd.DataFrame, ratios, total: int,
               classes: list[str] | None = None) -> dict[str, pd.DataFrame]:
    out = {}
    for r in ratios:
        n_real, n_syn = ratio_counts(r, total)
        out[arm_name("ratio", ratio=tuple(r))] = pd.concat(
            [first_per_class(real_order, n_real, classes).assign(source="real"),
             first_per_class(syn_order, n_syn, classes).assign(source="synthetic")], ignore_index=True)
    return out



def class_counts(df: pd.DataFrame, classes: list[str] | None = None) -> dict[str, int]:
    """Images per class (0 for a class the frame lacks, so a missing class is the smallest)."""
    return {label: int((df["label"] == label).sum()) for label in _classes(df, classes)}
