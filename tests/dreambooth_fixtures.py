"""Helpers for the stage-03 tests: a small finished stage 02 made of phantoms, and tiny configs."""
from __future__ import annotations

import pandas as pd
from PIL import Image

from lib.core import config, stages
from lib.data import images, phantoms

METHOD = "spectral-clip"


def tiny_cfg(tmp_path, **overrides):
    """Smoke parameters cut down to seconds: an untrained tiny model, 4 steps of batch 4, cheap gates."""
    base = {"model.tiny_pretrain_steps": 0, "finetune.method": METHOD, "finetune.steps": 4,
            "finetune.batch_size": 4, "finetune.validation_every": 100, "finetune.validation_images": 1,
            "finetune.validation_steps": 2, "finetune.checkpoint_every": 2, "finetune.keep_checkpoints": 2,
            "finetune.cpu_threads": 1, "gating.enabled": True, "gating.mode": "absolute",
            "gating.n_images": 2, "gating.sampler_steps": 2, "gating.every_k": 1,
            "embedding.cache_dir": str(tmp_path / "emb-cache")}
    return config.load("params/smoke.yaml", {**base, **overrides})


def fake_stage02(cfg, runs_root, tmp_path, n: int = 8) -> pd.DataFrame:
    """A sealed stage-02 folder holding tuning_<method>.csv of n phantoms (half each label)."""
    d = stages.stage_dir(cfg, "02_clustering", runs_root)
    d.mkdir(parents=True, exist_ok=True)
    img_dir = tmp_path / "phantoms"
    img_dir.mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        label = "No Finding" if i % 2 == 0 else "Unhealthy"
        arr = phantoms.draw(f"img{i}", f"p{i}", [] if label == "No Finding" else ["Effusion"], size=32)
        path = img_dir / f"img{i}.png"
        if not path.exists():
            Image.fromarray((arr * 255).round().astype("uint8")).save(path)
        rows.append({"image_id": f"img{i}.png", "path": str(path), "label": label, "patient": f"p{i}",
                     "hash": images.content_hash(path.read_bytes()), "cluster": i % 2, "duplicate": False})
    df = pd.DataFrame(rows)
    df.to_csv(d / f"tuning_{METHOD}.csv", index=False)
    if not stages.is_done(d):
        stages.mark_done(d, cfg, "02_clustering")
    return df
