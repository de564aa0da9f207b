"""The results record of a run: one tidy row, raw predictions, and recomputation from them.

Stage 05 writes ``results.csv`` and ``results.json`` (the same single row) beside one predictions file
per cell of the trainability matrix, ``predictions_{a,b,trtr,tsts}.csv`` (image_id, label, score and
one output per class, ``p[No Finding]`` and ``p[Unhealthy]`` for the thesis's task, ``p[<class>]`` in
label-index order for any other domain), the detector's ``predictions_det.csv``
(image_id, label, source, score = P(synthetic)), and the test manifests they answer. Every metric in
the row can be recomputed from those files alone with ``recompute_from_predictions``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import atomic
from . import metrics
from ..data import nih
from ..core.config import Config
from ..data.nih import DataError

PREDICTION_COLUMNS = ["image_id", "label", "score"]
OUTPUT_COLUMNS = [f"p[{c}]" for c in nih.LABELS]  # the thesis's task; output_columns(classes) in general
CELLS = ["a", "b", "trtr", "tsts"]           # the trainability matrix; see lib.evaluate.metrics.CELLS
TESTS = {"a": "test_a.csv", "b": "test_b.csv", "trtr": "test_a.csv", "tsts": "test_b.csv"}


def method_name(cfg: Config) -> str:
    """What a run is called in tables and figures: a reference generator's kind, else the control, else
    active gating, else the tuning method."""
    if cfg.generation.kind != "diffusion":
        return cfg.generation.kind
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


def output_columns(classes: list[str] | None = None) -> list[str]:
    return [f"p[{c}]" for c in (classes or nih.LABELS)]


def classes_of(pred: pd.DataFrame) -> list[str]:
    """The classes a predictions frame answers, in label-index order (its p[...] columns)."""
    names = [c[2:-1] for c in pred.columns if c.startswith("p[") and c.endswith("]")]
    return names or list(nih.LABELS)


def predictions_frame(manifest: pd.DataFrame, outputs: np.ndarray, classes: list[str] | None = None
                      ) -> pd.DataFrame:
    """image_id, label, the score and one sigmoid output per class. The score is P(class 1) normalised for
    two classes, and the normalised probability of the predicted class for more."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if len(manifest) != len(outputs):
        raise DataError(f"{len(outputs)} predictions for a manifest of {len(manifest)} images.")
    cols = output_columns(classes)
    if outputs.shape[1] != len(cols):
        raise DataError(f"{outputs.shape[1]} outputs per image for {len(cols)} classes {cols}.")
    score = metrics.score_of(outputs) if len(cols) == 2 else metrics.probabilities(outputs).max(1)
    df = pd.DataFrame({"image_id": manifest["image_id"].to_numpy(), "label": manifest["label"].to_numpy(),
                       "score": score})
    for j, col in enumerate(cols):
        df[col] = outputs[:, j]
    return df


def detection_frame(manifest: pd.DataFrame, outputs: np.ndarray) -> pd.DataFrame:
    """image_id, class label, source (real / synthetic) and score = P(synthetic), normalised."""
    return pd.DataFrame({"image_id": manifest["image_id"].to_numpy(), "label": manifest["label"].to_numpy(),
                         "source": manifest["source"].to_numpy(), "score": metrics.score_of(outputs)})


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
    """(class indices, N x k per-class outputs) of a predictions frame, in the order of its p[...] columns
    (a binary record without them: 0/1 labels and the score alone)."""
    classes = classes_of(pred)
    unknown = sorted(set(pred["label"].astype(str)) - set(classes))
    if unknown:
        raise DataError(f"prediction labels {unknown} are not in {classes}.")
    y = pred["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy().astype(int)
    cols = output_columns(classes)
    if all(c in pred for c in cols):
        return y, pred[cols].to_numpy(dtype=np.float64)
    return y, pred["score"].to_numpy(dtype=np.float64)


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


def classes_from(stage_dir: str | Path) -> list[str]:
    """The classes of a finished stage 05, from its TSTR predictions file."""
    return classes_of(pd.read_csv(Path(stage_dir) / "predictions_a.csv", nrows=1))


def cells_from(stage_dir: str | Path, suffix: str = "") -> dict[str, tuple]:
    """The matrix's (labels, outputs) per cell, each predictions file checked against its test manifest
    (``suffix``: one classifier repeat's files, ``_r<r>``: lib.evaluate.repeats)."""
    stage_dir = Path(stage_dir)
    return {k: arrays(read_predictions(stage_dir / f"predictions_{k}{suffix}.csv", pd.read_csv(stage_dir / TESTS[k])))
            for k in CELLS}


def detection_from(stage_dir: str | Path) -> tuple:
    """(is_synthetic, P(synthetic), class labels) of the detector's predictions."""
    d = pd.read_csv(Path(stage_dir) / "predictions_det.csv")
    return (d["source"] == "synthetic").to_numpy().astype(int), d["score"].to_numpy(float), d["label"].to_numpy()


def recompute_from_predictions(stage_dir: str | Path) -> dict:
    """Every metric, ratio and interval again, from the saved predictions and test manifests only."""
    row = read(stage_dir)
    if row.get("repeats", 1) > 1:           # classifier repeats: the mean of the repeats' estimates
        from . import repeats

        return repeats.matrix([cells_from(stage_dir, repeats.suffix(r, row["repeats"])) for r in range(row["repeats"])],
                              row["param.classifier.threshold"], row["param.classifier.bootstrap"], row["bootstrap_seed"],
                              detection_from(stage_dir), classes_from(stage_dir))
    return metrics.matrix(cells_from(stage_dir), threshold=row["param.classifier.threshold"],
                          n_boot=row["param.classifier.bootstrap"], seed=row["bootstrap_seed"],
                          detection=detection_from(stage_dir), classes=classes_from(stage_dir))


def metric_table(row: dict) -> pd.DataFrame:
    """The matrix's cells side by side: one row per metric, one column per cell."""
    names = [k[2:] for k in row if k.startswith("a_") and all(f"{c}_{k[2:]}" in row for c in CELLS)]
    return pd.DataFrame({metrics.CELL_NAMES[c]: [row[f"{c}_{n}"] for n in names] for c in CELLS}, index=names)
