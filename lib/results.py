"""The results record of a run: one tidy row, raw predictions, and recomputation from them.

Stage 05 writes ``results.csv`` and ``results.json`` (the same single row) beside ``predictions_a.csv``
and ``predictions_b.csv`` (image_id, label, score) and the test manifests they answer. Every metric in
the row can be recomputed from those files alone with ``recompute_from_predictions``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import atomic, metrics, nih
from .config import Config
from .nih import DataError

PREDICTION_COLUMNS = ["image_id", "label", "score"]


def method_name(cfg: Config) -> str:
    """What a run is called in tables and figures: the control, else active gating, else the tuning method."""
    if cfg.finetune.control != "none":
        return cfg.finetune.control
    if cfg.gating.enabled:
        return "active-gating"
    return cfg.finetune.method


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and mappings-as-values become JSON strings (one cell each)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "label_words":
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple, dict)):
            out[key] = json.dumps(v, sort_keys=True)
        else:
            out[key] = v
    return out


def predictions_frame(manifest: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    if len(manifest) != len(scores):
        raise DataError(f"{len(scores)} scores for a manifest of {len(manifest)} images.")
    return pd.DataFrame({"image_id": manifest["image_id"].to_numpy(), "label": manifest["label"].to_numpy(),
                         "score": np.asarray(scores, dtype=np.float64)})


def read_predictions(path: str | Path, manifest: pd.DataFrame | None = None) -> pd.DataFrame:
    """A predictions file, checked for its columns, and (given its test manifest) that it answers it exactly."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prediction file {path} not found; run notebook 05 first.")
    df = pd.read_csv(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"prediction file {path} lacks column(s) {missing}.")
    if df.empty:
        raise DataError(f"prediction file {path} is empty.")
    if df["image_id"].duplicated().any():
        raise DataError(f"prediction file {path} lists image(s) twice, e.g. "
                        f"{df.loc[df['image_id'].duplicated(), 'image_id'].head(3).tolist()}.")
    if manifest is not None:
        want = manifest.set_index("image_id")["label"]
        got = df.set_index("image_id")["label"]
        extra, lacking = sorted(set(got.index) - set(want.index)), sorted(set(want.index) - set(got.index))
        if extra or lacking:
            raise DataError(f"prediction file {path} does not match its test manifest: "
                            f"{len(extra)} image(s) not in the manifest (e.g. {extra[:3]}), "
                            f"{len(lacking)} manifest image(s) without a prediction (e.g. {lacking[:3]}).")
        wrong = got.index[got.to_numpy() != want.reindex(got.index).to_numpy()]
        if len(wrong):
            raise DataError(f"prediction file {path} gives {len(wrong)} image(s) a label other than the "
                            f"manifest's, e.g. {list(wrong[:3])}.")
    return df


def arrays(pred: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(0/1 labels, scores) of a predictions frame."""
    unknown = sorted(set(pred["label"]) - set(nih.LABELS))
    if unknown:
        raise DataError(f"prediction labels {unknown} are not in {nih.LABELS}.")
    return (pred["label"] == nih.LABELS[1]).to_numpy().astype(int), pred["score"].to_numpy(dtype=np.float64)


def write(out_dir: str | Path, row: dict) -> dict[str, Path]:
    """The row as results.json and a one-row results.csv; a finished record is never overwritten."""
    out_dir = Path(out_dir)
    return {"json": atomic.write_json(out_dir / "results.json", row, overwrite=False),
            "csv": atomic.write_csv(out_dir / "results.csv", pd.DataFrame([row]), overwrite=False)}


def read(stage_dir: str | Path) -> dict:
    path = Path(stage_dir) / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run notebook 05 for these parameters first.")
    return json.loads(path.read_text())


def recompute_from_predictions(stage_dir: str | Path) -> dict:
    """Every metric, FTER and the intervals again, from the saved predictions and test manifests only."""
    stage_dir = Path(stage_dir)
    row = read(stage_dir)
    ya, sa = arrays(read_predictions(stage_dir / "predictions_a.csv", pd.read_csv(stage_dir / "test_a.csv")))
    yb, sb = arrays(read_predictions(stage_dir / "predictions_b.csv", pd.read_csv(stage_dir / "test_b.csv")))
    return metrics.two_way(ya, sa, yb, sb, threshold=row["param.classifier.threshold"],
                           n_boot=row["param.classifier.bootstrap"], seed=row["bootstrap_seed"])


def metric_table(row: dict) -> pd.DataFrame:
    """Both directions side by side: one row per metric, columns (a) and (b)."""
    names = [k[2:] for k in row if k.startswith("a_") and f"b_{k[2:]}" in row]
    return pd.DataFrame({"(a) synthetic -> real": [row[f"a_{n}"] for n in names],
                         "(b) real -> synthetic": [row[f"b_{n}"] for n in names]}, index=names)
