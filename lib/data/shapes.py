"""A procedural second domain: coloured shapes on textured backgrounds, k classes (one per shape).

It exists so nothing in the suite is chest-specific by accident: data.source = "shapes" writes an
ImageFolder (``<class>/<image>.png``) plus ``labels.csv`` (path, label, group) and reads it through the
generic CSV source of lib/data/domains.py, the code path a user's own ImageFolder or CSV takes. A group is an
"object family" (one colour, size and background) drawn several times in every class, as a patient has
images of several findings: group-disjoint pools keep a family's look out of the test pool, and every
pool holds the classes in equal numbers. Images are RGB; the suite reads them as grayscale like every image.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from ..core import atomic, fingerprints, paths
from ..core import config
from ..core.progress import tqdm

SHAPES = ["circle", "square", "triangle"]          # the default classes
# star, hexagon and crescent are shapes the tiny base model's pre-training corpus never drew
# (lib.finetune.diffusion_model._SHAPES): a domain it has to be fine-tuned into, as the thesis's X-rays are for SD
AVAILABLE = SHAPES + ["cross", "ring", "star", "hexagon", "crescent"]
GENERATOR_VERSION = 4
fingerprints.register_source("shapes", f"s{GENERATOR_VERSION}")     # redrawn shapes are new data
PER_GROUP = 4                                      # images per object family and class


def _rng(*parts) -> np.random.Generator:
    return np.random.default_rng([int(hashlib.sha256(str(parts).encode()).hexdigest()[:8], 16)])


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "star":               # five points, inner radius 0.45 r
        a = angle + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2, 0.45 * r, r)
        return list(zip(cx + rad * np.cos(a), cy + rad * np.sin(a)))
    corners = {"square": 4, "triangle": 3, "hexagon": 6}[shape]
    a = angle + np.arange(corners) * 2 * np.pi / corners
    return list(zip(cx + r * np.cos(a), cy + r * np.sin(a)))


def draw(shape: str, group: int, index: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """One size x size x 3 uint8 image of ``shape``; the family (group) fixes colour, scale and background."""
    if shape not in AVAILABLE:
        raise ValueError(f"unknown shape {shape!r}; choose from {AVAILABLE}.")
    fam, r = _rng(seed, group), _rng(seed, shape, group, index)
    colour = tuple(int(c) for c in fam.integers(130, 256, 3))   # brighter than any background
    background = fam.uniform(20, 90)
    scale = fam.uniform(0.26, 0.38) * size
    noise = r.normal(0, 12, (size, size, 1)) + r.normal(0, 4, (size, size, 3))
    im = Image.new("RGB", (size, size), tuple(int(background) for _ in range(3)))
    d = ImageDraw.Draw(im)
    rad = scale * r.uniform(0.85, 1.15)
    cx, cy = r.uniform(rad + 1, size - rad - 1, 2)
    angle = r.uniform(0, 2 * np.pi)
    if shape == "circle":
        d.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=colour)
    elif shape == "ring":
        w = max(2, int(rad * 0.35))
        d.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], outline=colour, width=w)
    elif shape == "crescent":         # a disc with an offset disc of the background cut out
        d.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=colour)
        ox, oy = 0.5 * rad * np.cos(angle), 0.5 * rad * np.sin(angle)
        d.ellipse([cx + ox - 0.85 * rad, cy + oy - 0.85 * rad, cx + ox + 0.85 * rad, cy + oy + 0.85 * rad],
                  fill=tuple(int(background) for _ in range(3)))
    elif shape == "cross":
        w = max(2, rad * 0.35)
        for a in (angle, angle + np.pi / 2):
            dx, dy = rad * np.cos(a), rad * np.sin(a)
            d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour, width=int(w))
    else:
        d.polygon(_polygon(shape, cx, cy, rad, angle), fill=colour)
    # noise after drawing: a shape and the background (and a crescent's cut-out) share the texture
    arr = np.clip(np.asarray(im, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(arr, "RGB").filter(ImageFilter.GaussianBlur(0.4)))


def shapes_dir(n: int, size: int, seed: int, classes: list[str]) -> Path:
    tag = f"v{GENERATOR_VERSION}-n{n}-s{size}-seed{seed}-" + "-".join(classes)   # version: redrawn data is new data
    return paths.DATA / "shapes" / tag


def generate(n: int = 600, size: int = 32, seed: int = 0, classes: list[str] | None = None,
             out_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Write n images (split evenly over the classes) and labels.csv, and return the folder; labels.csv is
    written last, so its presence means the set is complete (a rerun resumes and keeps what is there)."""
    classes = list(classes or SHAPES)
    unknown = sorted(set(classes) - set(AVAILABLE))
    if unknown or len(classes) < 2:
        raise ValueError(f"data.classes = {classes} for the shapes domain: choose two or more of {AVAILABLE}.")
    if not 16 <= size <= 512:
        raise ValueError(f"shapes size {size} must be between 16 and 512")
    out = paths.resolve(out_dir) if out_dir else shapes_dir(n, size, seed, classes)
    table = out / "labels.csv"
    if table.exists():
        return out
    per = n // len(classes)
    rows = [{"path": f"{c}/{c}_{i:05d}.png", "label": c, "group": f"family-{i // PER_GROUP:04d}"}
            for c in classes for i in range(per)]
    for row in tqdm(rows, desc="shapes", disable=not progress, mininterval=2):
        target = out / row["path"]
        if not target.exists():
            c, i = row["label"], int(Path(row["path"]).stem.split("_")[-1])
            atomic.save_image(target, Image.fromarray(draw(c, i // PER_GROUP, i, size, seed), "RGB"))
    atomic.write_csv(table, pd.DataFrame(rows))
    return out


@config.checks.register("data")
def check_config(cfg) -> None:
    """data.classes of the shapes source: shapes drawn here (the closest name suggested), when params load."""
    if cfg.data.source != "shapes":
        return
    bad = sorted(set(cfg.data.classes or []) - set(AVAILABLE))
    if bad:
        raise config.ParamError(f"data.classes {bad} are not shapes; the shapes domain draws {AVAILABLE}."
                                f"{config.did_you_mean(bad[0], AVAILABLE)}")
