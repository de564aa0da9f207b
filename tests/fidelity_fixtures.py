"""Helpers for the fidelity and memorization tests: phantom image sets on disk, in manifest form."""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from lib.core import config
from lib.data import images, phantoms
from lib.data.nih import LABELS


def phantom_set(folder, prefix: str, n_per_label: int, size: int = 32) -> pd.DataFrame:
    """n_per_label phantoms of each class, one new patient each, as PNGs: columns image_id, path, label, hash."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in LABELS:
        for i in range(n_per_label):
            name = f"{prefix}_{label[0]}{i}"
            arr = phantoms.draw(name, f"patient-{name}", [] if label == "No Finding" else ["Effusion"], size=size)
            path = folder / f"{name}.png"
            Image.fromarray((arr * 255).round().astype(np.uint8)).save(path)
            rows.append({"image_id": path.name, "path": str(path), "label": label,
                         "hash": images.content_hash(path.read_bytes())})
    return pd.DataFrame(rows)


def fidelity_cfg(tmp_path, **overrides):
    """Smoke parameters with cheap pixel features (8 x 8 = 64 dims) and small metric settings."""
    base = {"fidelity.extractor": "pixel", "embedding.pixel_size": 8, "embedding.cache_dir": str(tmp_path / "cache"),
            "fidelity.kid_subset_size": 20, "fidelity.kid_subsets": 10, "fidelity.kid_bootstrap_subsets": 2,
            "fidelity.bootstrap": 20, "fidelity.diversity_pairs": 30, "fidelity.fid_dims": 8}
    return config.load("params/smoke.yaml", {**base, **overrides})
