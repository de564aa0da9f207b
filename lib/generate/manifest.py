"""The stage-04 manifest: what every generator of a synthetic set writes (lib.generate.generation, the reference
generators of lib.generate.references) and every later stage reads: its columns, each image's seed, the hash
that names the model which drew it, and the manifest read back checked.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from ..core import provenance
from ..data import domains, images
from ..data.nih import DataError

MANIFEST_COLUMNS = ["image_id", "path", "file", "label", "prompt", "seed", "index", "model", "model_hash",
                    "scheduler", "steps", "guidance_scale", "hash"]


def image_seed(run_seed: int, label: str, index: int) -> int:
    """A per-image seed, stable across runs, batch sizes and devices."""
    digest = hashlib.sha256(f"{run_seed}|{label}|{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


MODEL_FILES = (".safetensors", ".bin", ".json", ".txt", ".model")
NOT_MODEL = {"train_summary.json"}              # run records (timings, paths), not part of the model
PATH_KEYS = ("_name_or_path", "name_or_path", "_commit_hash")   # where a config says it was loaded from


def model_hash(path_or_id: str, revision: str | None = None) -> str:
    """Content hash of a local pipeline folder's weights and configs; id@revision for a hub model.

    Run records (train_summary.json) and the paths configs note they were loaded from are left out,
    so two runs that produce the same weights and configs give the same hash."""
    p = Path(path_or_id)
    if not p.is_dir():
        return f"{path_or_id}@{revision or 'main'}"
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in MODEL_FILES and f.name not in NOT_MODEL
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    return provenance.hash_strings(f"{f.relative_to(p).as_posix()}:{_model_file_hash(f)}" for f in files)


def _model_file_hash(f: Path) -> str:
    """A weights file's bytes; a JSON config's content without the paths it records."""
    if f.suffix == ".json":
        try:
            obj = json.loads(f.read_text())
        except (ValueError, UnicodeDecodeError):
            return provenance.file_hash(f)
        if isinstance(obj, dict):
            obj = {k: v for k, v in obj.items() if k not in PATH_KEYS}
        return images.content_hash(json.dumps(obj, sort_keys=True).encode())
    return provenance.file_hash(f)


def read_synthetic(path: str | Path, classes: list[str] | None = None) -> pd.DataFrame:
    """The stage-04 manifest, checked: not empty, the needed columns, every class present and no other."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"synthetic manifest {path} not found; run notebooks/04_generation.ipynb first.")
    df = pd.read_csv(path)
    if df.empty:
        raise DataError(f"synthetic manifest {path} is empty; stage 04 generated no image.")
    missing = [c for c in ("image_id", "path", "label") if c not in df.columns]
    if missing:
        raise DataError(f"synthetic manifest {path} lacks column(s) {missing}.")
    classes = classes or domains.order(df["label"])
    absent = [lab for lab in classes if not (df["label"] == lab).any()]
    if absent:
        raise DataError(f"the synthetic set {path} has no image of class {absent}; every class is needed. "
                        "Check generation.n_per_label and the prompts (finetune.label_words).")
    other = sorted(set(df["label"].astype(str)) - set(classes))
    if other:
        raise DataError(f"the synthetic set {path} has label(s) {other} that the real data do not have "
                        f"(classes {classes}); name the synthetic classes as the real ones.")
    return df
