"""Phantoms drawn with the textbook option (lib.data.phantoms) into a temporary folder: the stand-in for an
external set of unlabelled textbook images, and for a synthetic set that shares no file with the pools."""
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lib.data import images, phantoms

FINDINGS = {"No Finding": [], "Unhealthy": ["Effusion"]}


def write(folder: Path, n_per_label: int, size: int = 32, prefix: str = "tb", textbook: bool = True) -> pd.DataFrame:
    """n_per_label phantoms per class written as PNGs directly in ``folder`` (no class sub-folders: the class
    is what a pseudo-labeller must find); returns image_id, path, label (the truth) and hash."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, findings in FINDINGS.items():
        for i in range(n_per_label):
            image_id = f"{prefix}_{label[:2].lower()}_{i:03d}"
            arr = phantoms.draw(image_id, f"{prefix}-patient-{label[:2]}-{i}", findings, "PA", size, seed=7,
                                textbook=textbook, finding_scale=2.0)
            path = folder / f"{image_id}.png"
            Image.fromarray(np.round(arr * 255).astype(np.uint8), mode="L").save(path)
            rows.append({"image_id": image_id, "path": str(path), "label": label,
                         "hash": images.content_hash(path.read_bytes())})
    return pd.DataFrame(rows)
