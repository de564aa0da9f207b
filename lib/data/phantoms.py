"""Procedural chest X-ray phantoms: the embedded default data set.

Each phantom is drawn for one row of the real NIH metadata, so label frequencies, co-occurrences and
patient IDs are real. Anatomy (body habitus, heart size) is seeded by the patient, pose and exposure
by the image, so follow-up images of one patient look alike, which is what makes a patient-level
split matter. Findings are drawn with a random severity, some faint, so a classifier cannot reach
AUROC 1.0 trivially. The output has the NIH layout (``images/*.png`` and ``Data_Entry_2017.csv``),
so the same loader reads it as the real data.

Acquisition modes (``data.phantom_modes``; off by default, when every image and stage key is as before)
----------------------------------------------------------------------------------------------------------
Real chest X-rays come from a long tail of acquisition conditions. With modes on, each image gets one mode,
drawn per image (``sample_mode``: its own random stream, from the image id and the phantom seed) at these
prevalences, and recorded in the set's CSV (column ``Acquisition Mode``, the manifests' ``mode``):

=============  ==========  ===================================================  =========================================
mode           prevalence  what it does to the pixels                           findings it hides (RMS finding-vs-erased
                                                                                difference against normal's, 12 images)
=============  ==========  ===================================================  =========================================
normal         70%         nothing                                              -
devices        12%         opaque lines over the image: a midline tube, a       what lies under a line: Nodule 0.88,
                           central line from one clavicle to the heart, 2-4     Pneumothorax 0.86, Edema 0.91,
                           ECG discs with their wires (mean up)                 Consolidation 0.94
rotated        5%          turned 8-15 degrees; the hemithorax turned away is   unilateral dense findings on that side,
                           denser (a lateral ramp) under a film shoulder        Effusion above all 0.62, Hernia 0.55,
                                                                                Cardiomegaly 0.69, lung findings ~0.75
under_exposed  3%          too few photons: brighter (mean up), dense regions   dense findings: Effusion 0.70, Hernia
                           saturate white, more quantum noise                   0.49, Cardiomegaly 0.92, Mass 0.93;
                                                                                lung findings keep theirs
over_exposed   3%          burnt out: darker (mean down), all below a           lucent findings: Pneumothorax 0.71,
                           threshold goes black, the rest stretched             Emphysema 0.93; dense ones gain contrast
pediatric      2%          a small patient: the chest shrunk to 60-75% in the   every finding's area shrinks with the
                           middle of the frame, air around it                   chest: all ~0.67
collimated     3%          tight collimation: unexposed (white) borders, the    findings at the bases: Hernia 0.12,
                           lower one cutting into the bases, a lead marker      Effusion 0.69, Emphysema 0.66,
                                                                                Cardiomegaly 0.78
lateral_like   2%          both hemithoraces superimposed (the image averaged   unilateral findings' contrast halves:
                           with its mirror), as in a lateral projection         Consolidation 0.71, Effusion 0.71,
                                                                                Nodule 0.71; bilateral Edema 0.94,
                                                                                Emphysema 0.93 keep theirs
=============  ==========  ===================================================  =========================================

Common modes (normal) make 70% of images, ``devices`` 12%, the rare ones 2-5% each. A mode is drawn after the
default image and transforms it with its own random stream, so a mode-world image is its default image
(same pose, anatomy, findings) seen through the mode, and ``erase`` still pairs an image with its findings-free
twin through the same mode. The mode world has its own folders (phantom_dir's ``-modes<MODES_VERSION>`` tag) and
stage keys (``data.phantom_modes`` enters the data section only when true).

The pixel transforms above hide some findings partly (ratios 0.5-0.9). ``data.mode_conspicuity`` (default 1.0, the
world above, in no key) makes the interaction strong: in the rare modes (RARE_MODES, all but normal and devices) each
finding is shown at that share of its contrast, the image blended with its findings-erased twin before the mode is
applied, as findings are harder to see on rotated, badly exposed, collimated, pediatric and lateral films. Its set has
its own folder (``-c<value>``) and keys. ``params/sweeps/modes_faint.yaml`` runs it at 0.25.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from ..core import atomic, fingerprints, paths
from . import nih
from ..core.progress import tqdm

GENERATOR_VERSION = 4
fingerprints.register_source("phantom", f"p{GENERATOR_VERSION}")   # redrawn phantoms are new data
MODES_VERSION = 1        # redrawn modes are new data: in the mode world's folder tag
fingerprints.register_source("phantom+modes", f"p{GENERATOR_VERSION}m{MODES_VERSION}")   # and in its stage keys
MODE_PREVALENCE = {"normal": 0.70, "devices": 0.12, "rotated": 0.05, "under_exposed": 0.03,
                   "over_exposed": 0.03, "pediatric": 0.02, "collimated": 0.03, "lateral_like": 0.02}
MODES = list(MODE_PREVALENCE)
RARE_SHARE = 0.10        # a mode under this share is rare: by prevalence here, by the pool's own shares in selection
RARE_MODES = [m for m, p in MODE_PREVALENCE.items() if p < RARE_SHARE]
FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
            "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax"]


def _rng(*parts) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _smooth_noise(rng, size: int, sigma_frac: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=max(sigma_frac * size, 0.5))
    return field / (field.std() + 1e-8)


def _sigmoid_mask(d: np.ndarray, softness: float) -> np.ndarray:
    """Soft inside-mask from a signed 'distance' d (negative inside)."""
    return 1.0 / (1.0 + np.exp(np.clip(d / softness, -40, 40)))


class _Canvas:
    """Coordinates in [-1, 1] after the image's pose (shift, rotation, scale) is applied."""

    def __init__(self, size: int, shift, angle: float, scale: float):
        lin = (np.arange(size) + 0.5) / size * 2 - 1
        y, x = np.meshgrid(lin, lin, indexing="ij")
        c, s = np.cos(angle), np.sin(angle)
        x, y = x - shift[0], y - shift[1]
        self.x = (c * x + s * y) / scale
        self.y = (-s * x + c * y) / scale
        self.size = size
        self.soft = 2.0 / size  # one pixel of edge softness

    def ellipse(self, cx, cy, rx, ry) -> np.ndarray:
        d = np.sqrt(((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2) - 1.0
        return _sigmoid_mask(d * min(rx, ry), self.soft)


def _lungs(cv: _Canvas, a: dict) -> tuple[np.ndarray, np.ndarray]:
    """Right and left (patient's) lung masks with diaphragm domes; image left = patient right."""
    masks = []
    for side in (-1, 1):
        cx = side * a["lung_dx"]
        cy = (a["lung_top"] + a["dia_y"][side]) / 2
        ry = (a["dia_y"][side] - a["lung_top"]) / 2 + 0.08
        # Squarish superellipse, with the dome cutting the base: high in the middle, low at the angles.
        shape = (np.abs(cv.x - cx) / a["lung_w"]) ** 2.6 + (np.abs(cv.y - cy) / ry) ** 2.2 - 1.0
        dome = a["dia_y"][side] - a["dome_h"] * np.exp(-((cv.x - cx + side * 0.05) / (a["lung_w"] * 0.8)) ** 2)
        d = np.maximum(shape * 0.25, cv.y - dome)
        masks.append(_sigmoid_mask(d, cv.soft))
    return masks[0], masks[1]


def _anatomy(patient: str, textbook: bool) -> dict:
    r = _rng("anatomy", patient)
    spread = 0.4 if textbook else 1.0
    return {
        "body_w": 0.80 + 0.08 * spread * r.standard_normal(),
        "lung_dx": 0.36 + 0.03 * spread * r.standard_normal(),
        "lung_w": 0.26 + 0.025 * spread * r.standard_normal(),
        "lung_top": -0.62 + 0.04 * spread * r.standard_normal(),
        "dia_y": {-1: 0.42 + 0.04 * spread * r.standard_normal(), 1: 0.48 + 0.04 * spread * r.standard_normal()},
        "dome_h": 0.12 + 0.03 * spread * r.standard_normal(),
        "heart_w": 0.25 + 0.02 * spread * r.standard_normal(),
        "rib_gap": 0.125 + 0.01 * spread * r.standard_normal(),
        "tissue": 0.42 + 0.04 * spread * r.standard_normal(),
    }


def _add_findings(img, cv, lungs, a, findings, r, textbook, finding_scale: float = 1.0,
                  paint: bool = True) -> np.ndarray:
    """Each finding's random draws are made whatever ``paint`` says; only painting it is skipped, so an image
    drawn with paint=False consumes the stream exactly as its source did (lib.generate.references' pairing)."""
    right, left = lungs
    lung = np.clip(right + left, 0, 1)
    n = cv.size

    def severity():
        return r.uniform(0.75, 1.0) if textbook else r.uniform(0.35, 1.0)

    def pick_side():
        return (right, -1) if r.random() < 0.5 else (left, 1)

    for f in findings:
        s = severity() * finding_scale  # x1.0 is exact: the default draw is unchanged
        if f == "Cardiomegaly":
            pass  # drawn with the heart itself
        elif f == "Effusion":
            mask, side = pick_side()
            level = a["dia_y"][side] - s * 0.5
            fluid = _sigmoid_mask(level - cv.y + 0.05 * np.abs(cv.x - side * a["lung_dx"]), 0.04) * mask
            if paint:
                img = img + 0.81 * s * fluid
        elif f in ("Consolidation", "Infiltration", "Pneumonia"):
            mask, side = pick_side()
            cy = r.uniform(-0.3, 0.35)
            blob = cv.ellipse(side * a["lung_dx"] + r.uniform(-0.1, 0.1), cy, r.uniform(0.12, 0.22), r.uniform(0.12, 0.25))
            patch = np.clip(_smooth_noise(r, n, 0.03) * 0.5 + 0.8, 0, None) * blob * mask
            if paint:
                img = img + (0.58 if f != "Infiltration" else 0.47) * s * patch
        elif f in ("Nodule", "Mass"):
            mask, side = pick_side()
            rad = r.uniform(0.05, 0.08) if f == "Nodule" else r.uniform(0.08, 0.15)
            blob = cv.ellipse(side * a["lung_dx"] + r.uniform(-0.12, 0.12), r.uniform(-0.4, 0.3), rad, rad * r.uniform(0.8, 1.2))
            if paint:
                img = img + 0.63 * (0.5 + 0.5 * s) * blob * mask
        elif f == "Pneumothorax":
            mask, side = pick_side()
            edge = side * (a["lung_dx"] + a["lung_w"] * (1.0 - 0.6 * s))
            air = _sigmoid_mask(-(cv.x - edge) * side, cv.soft) * mask
            if paint:
                img = img - 0.3 * air * s + 0.18 * s * np.exp(-((cv.x - edge) * n / 2.5) ** 2) * mask
        elif f == "Atelectasis":
            mask, side = pick_side()
            band = np.exp(-((cv.y - r.uniform(0.05, 0.35) - 0.3 * (cv.x - side * a["lung_dx"])) / 0.06) ** 2)
            if paint:
                img = img + 0.54 * s * band * mask
        elif f == "Edema":
            hilum = np.exp(-(((np.abs(cv.x) - 0.22) / 0.18) ** 2 + ((cv.y + 0.05) / 0.35) ** 2))
            if paint:
                img = img + 0.45 * s * hilum * lung
        elif f == "Emphysema":
            if paint:
                img = img - 0.14 * s * lung
        elif f == "Fibrosis":
            reticular = np.abs(_smooth_noise(r, n, 0.012)) < 0.35
            base = _sigmoid_mask(0.05 - cv.y, 0.15)
            if paint:
                img = img + 0.27 * s * reticular * base * lung
        elif f == "Pleural_Thickening":
            rim = np.clip(lung - ndimage.grey_erosion(lung, size=max(2, n // 24)), 0, 1)
            if paint:
                img = img + 0.54 * s * rim
        elif f == "Hernia":
            bubble = cv.ellipse(r.uniform(-0.05, 0.1), a["dia_y"][1] - 0.12, 0.09, 0.07)
            if paint:
                img = img - 0.27 * s * bubble + 0.14 * s * cv.ellipse(0.02, a["dia_y"][1] - 0.05, 0.15, 0.1)
    return img


def sample_mode(image_index: str, seed: int = 0) -> str:
    """The image's acquisition mode, at MODE_PREVALENCE, from a stream of its own (the default draw is untouched)."""
    u = _rng("mode", seed, image_index).random()
    cum = np.cumsum(list(MODE_PREVALENCE.values()))
    return MODES[min(int(np.searchsorted(cum, u, side="right")), len(MODES) - 1)]


def _line(cv: _Canvas, xs, ys, width: float) -> np.ndarray:
    """A soft opaque polyline through the points (xs, ys) in canvas coordinates, as a [0, 1] mask."""
    mask = np.zeros_like(cv.x)
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((cv.x - x0) * dx + (cv.y - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0, 1)
        d = np.hypot(cv.x - x0 - t * dx, cv.y - y0 - t * dy) - width
        mask = np.maximum(mask, _sigmoid_mask(d, cv.soft))
    return mask


def _devices(img, cv, r):
    """A midline tube, a central line from one clavicle to the heart, ECG discs: opaque, they replace the pixels."""
    w = 0.015
    side = -1 if r.random() < 0.5 else 1
    mask = _line(cv, [0.01, 0.02 + r.uniform(-0.03, 0.03)], [-1.0, r.uniform(-0.35, -0.2)], w)
    mask = np.maximum(mask, _line(cv, [side * 0.5, side * 0.3, side * 0.1, 0.04 + r.uniform(-0.03, 0.03)],
                                  [-0.62, -0.55 + r.uniform(-0.05, 0.05), -0.3, r.uniform(-0.1, 0.15)], w))
    for _ in range(r.integers(2, 5)):    # ECG leads: a disc and its wire running out of the frame
        x, y = r.uniform(-0.6, 0.6), r.uniform(-0.6, 0.3)
        mask = np.maximum(mask, cv.ellipse(x, y, 0.04, 0.04))
        mask = np.maximum(mask, _line(cv, [x, x + r.uniform(-0.3, 0.3), np.sign(x) * 1.1], [y, y + 0.3, r.uniform(-0.2, 0.9)], w * 0.6))
    return np.maximum(img, 0.92 * mask)


def _rotated(img, cv, r):
    """Turned 8-15 degrees; the hemithorax turned away is denser, under a soft shoulder that compresses it."""
    side = -1 if r.random() < 0.5 else 1
    out = ndimage.rotate(img, side * r.uniform(8, 15), reshape=False, order=1, mode="nearest")
    ramp = np.clip(side * cv.x, 0, 1) * r.uniform(0.25, 0.4)
    return 0.75 * np.tanh((out + ramp) / 0.75)     # slope 1 in the lungs, a shoulder for dense pixels


def _pediatric(img, r):
    """A small patient: the chest shrunk to 60-75% in the middle of the frame, air around it."""
    n = img.shape[0]
    m = int(round(n * r.uniform(0.6, 0.75)))
    small = ndimage.zoom(img, m / n, order=1)[:m, :m]
    out = np.full_like(img, float(np.percentile(img[:, : max(1, n // 16)], 50)))
    o = (n - small.shape[0]) // 2
    out[o:o + small.shape[0], o:o + small.shape[1]] = small
    return out


def _collimated(img, cv, r):
    """Unexposed (white) borders, the lower one cutting into the bases, and a lead marker in an upper corner."""
    left, right, top = r.uniform(0.6, 0.8), r.uniform(0.6, 0.8), r.uniform(0.65, 0.85)
    bottom = r.uniform(0.2, 0.35)
    open_ = (cv.x > -left) & (cv.x < right) & (cv.y > -top) & (cv.y < bottom)
    out = np.where(open_, img, 0.95)
    mx = -0.85 if r.random() < 0.5 else 0.75
    marker = (cv.x > mx) & (cv.x < mx + 0.1) & (cv.y > -0.95) & (cv.y < -0.82)
    return np.where(marker, 1.0, out)


def apply_mode(img: np.ndarray, mode: str, image_index: str, seed: int = 0) -> np.ndarray:
    """The default image seen through an acquisition mode (module docstring), float32 in [0, 1]."""
    if mode not in MODE_PREVALENCE:
        raise ValueError(f"acquisition mode {mode!r} is not one of {MODES}")
    if mode == "normal":
        return img
    r = _rng("mode-pixels", seed, image_index)
    n = img.shape[0]
    cv = _Canvas(n, shift=(0.0, 0.0), angle=0.0, scale=1.0)     # the frame's own coordinates
    out = img.astype(np.float64)
    if mode == "devices":
        out = _devices(out, cv, r)
    elif mode == "rotated":
        out = _rotated(out, cv, r)
    elif mode == "under_exposed":
        out = np.clip(0.42 + 1.1 * out, 0, 1) + r.uniform(0.03, 0.06) * r.standard_normal(out.shape)
    elif mode == "over_exposed":
        t = r.uniform(0.15, 0.22)
        out = np.clip((out - t) / (1 - t), 0, 1)
    elif mode == "pediatric":
        out = _pediatric(out, r)
    elif mode == "collimated":
        out = _collimated(out, cv, r)
    elif mode == "lateral_like":
        out = 0.5 * (out + out[:, ::-1])
    return np.clip(out, 0, 1).astype(np.float32)


def draw(image_index: str, patient: str, findings: list[str], view: str = "PA", size: int = 64,
         seed: int = 0, textbook: bool = False, finding_scale: float = 1.0, erase: bool = False,
         mode: str | None = None, conspicuity: float = 1.0) -> np.ndarray:
    """One phantom as float32 in [0, 1], deterministic from its arguments.

    ``finding_scale`` multiplies every finding's severity (and Cardiomegaly's heart enlargement): the
    exaggerated reference set draws with it > 1; at 1.0 the image is bit-identical to the default.
    ``erase``: the image drawn with ``findings`` but none of them shown (no painted finding, no enlarged heart,
    no diaphragm a finding moved). Every random draw the findings make is still made, so pose, anatomy, markings,
    exposure and noise are the image's own: it differs from the default draw only where the findings are (the
    findings-erased reference; drawing with findings=[] instead shifts the random stream and redraws them all).
    ``mode``: an acquisition mode (module docstring) applied to the finished image; None (the default world) and
    "normal" leave it bit-identical.
    ``conspicuity``: in a rare mode (RARE_MODES), every finding shown at this share of its contrast (the image
    blended with its findings-erased twin), as findings are harder to see on portable, rotated or badly exposed films
    (``data.mode_conspicuity``; 1.0 changes nothing)."""
    if mode in RARE_MODES and conspicuity != 1.0 and not erase:
        kw = dict(view=view, size=size, seed=seed, textbook=textbook, finding_scale=finding_scale)
        shown, hidden = draw(image_index, patient, findings, **kw), draw(image_index, patient, findings, erase=True, **kw)
        return apply_mode(hidden + np.float32(conspicuity) * (shown - hidden), mode, image_index, seed)
    a = _anatomy(patient, textbook)
    r = _rng("image", seed, image_index)
    spread = 0.3 if textbook else 1.0
    cv = _Canvas(size, shift=spread * r.normal(0, 0.04, 2), angle=spread * r.normal(0, 0.05),
                 scale=1.0 + spread * r.normal(0, 0.05))
    if "Emphysema" in findings and not erase:  # hyper-inflation: flat, low domes
        a = {**a, "dome_h": a["dome_h"] * 0.4, "dia_y": {k: v + 0.08 for k, v in a["dia_y"].items()}}
    if "Atelectasis" in findings and r.random() < 0.5:  # volume loss raises one hemidiaphragm
        side = -1 if r.random() < 0.5 else 1
        if not erase:
            a = {**a, "dia_y": {**a["dia_y"], side: a["dia_y"][side] - 0.08}}

    # Thorax: a squarish superellipse with the shoulders, darker air outside.
    body_d = (np.abs(cv.x) / a["body_w"]) ** 3 + (np.abs(cv.y - 0.2) / 1.1) ** 2.5 - 1.0
    body = _sigmoid_mask(body_d * 0.3, cv.soft)
    img = 0.04 + a["tissue"] * body
    abdomen = _sigmoid_mask(np.minimum(a["dia_y"][-1], a["dia_y"][1]) - cv.y, 0.05) * body
    img = img + 0.10 * abdomen

    enlarged = (0.25 + 0.25 * r.random()) * finding_scale if "Cardiomegaly" in findings else 0.0
    heart_scale = 1.0 + (0.0 if erase else enlarged) + (0.08 if view == "AP" else 0.0)
    heart = cv.ellipse(0.07 + 0.05 * heart_scale, a["dia_y"][1] - 0.17 * heart_scale ** 0.5,
                       a["heart_w"] * heart_scale, 0.2 * heart_scale ** 0.5)
    mediastinum = _sigmoid_mask(np.abs(cv.x - 0.02) - 0.09 - 0.04 * (cv.y > -0.2), 0.02) * _sigmoid_mask(cv.y - a["dia_y"][1], 0.05)
    dense = np.clip(heart + mediastinum, 0, 1)

    lungs = _lungs(cv, a)
    lungs = tuple(m * (1 - dense) for m in lungs)  # the heart and mediastinum hide the lung behind them
    lung = np.clip(lungs[0] + lungs[1], 0, 1)
    vessels = 0.05 * np.exp(-((np.abs(cv.x) - 0.2) / 0.15) ** 2 - ((cv.y + 0.05) / 0.4) ** 2)
    markings = _smooth_noise(r, size, 0.015) * 0.03 + vessels
    img = img - 0.30 * lung + markings * lung + 0.08 * dense

    spine = _sigmoid_mask(np.abs(cv.x) - 0.055, 0.015) * body * _sigmoid_mask(-0.75 - cv.y, 0.05) * (1 - 0.6 * dense)
    vertebrae = 0.5 + 0.5 * np.cos(cv.y * np.pi / 0.08)
    img = img + (0.05 + 0.03 * vertebrae) * spine

    for side in (-1, 1):  # posterior ribs: arcs from the spine, rising then falling laterally
        ax = np.clip(cv.x * side, 0, None)
        for k in range(8):
            y0 = a["lung_top"] + 0.02 + k * a["rib_gap"]
            arc = y0 - 0.25 * ax + 0.55 * ax ** 2
            rib = np.exp(-((cv.y - arc) / 0.018) ** 2) * (ax > 0.06) * body
            img = img + 0.045 * rib
        clav = np.exp(-((cv.y - (-0.58 + 0.2 * (ax - 0.1))) / 0.02) ** 2) * (ax > 0.07) * (ax < 0.5)
        img = img + 0.06 * clav

    img = _add_findings(img, cv, lungs, a, findings, r, textbook, finding_scale, paint=not erase)

    # Exposure and detector: gain, gamma, blur, noise.
    gain = 1.0 + (0.05 if textbook else 0.15) * r.standard_normal()
    gamma = np.exp((0.05 if textbook else 0.2) * r.standard_normal())
    img = np.clip(img * gain, 0, 1) ** gamma
    img = ndimage.gaussian_filter(img, sigma=0.5 * size / 64)
    noise = (0.01 if textbook else r.uniform(0.01, 0.04)) * r.standard_normal(img.shape)
    img = np.clip(img + noise, 0, 1).astype(np.float32)
    return img if mode is None else apply_mode(img, mode, image_index, seed)


def sample_rows(meta: pd.DataFrame, n: int, seed: int, textbook: bool = False) -> pd.DataFrame:
    """Choose metadata rows to draw: whole patients, at random, until n images are reached.

    The textbook set keeps only typical cases: "No Finding" or exactly one finding, PA view.
    """
    if textbook:
        single = ~meta["Finding Labels"].str.contains(r"\|", regex=True)
        meta = meta[single & (meta["View Position"] == "PA")]
    rng = np.random.default_rng(seed)
    patients = rng.permutation(meta["Patient ID"].unique())
    counts = meta.groupby("Patient ID").size().reindex(patients).to_numpy()
    take = patients[: int(np.searchsorted(np.cumsum(counts), n) + 1)]
    rows = meta[meta["Patient ID"].isin(set(take))]
    return rows.sort_values("Image Index").head(n).reset_index(drop=True)


def phantom_dir(n: int, size: int, seed: int, textbook: bool, csv: str | Path | None = None,
                modes: bool = False, conspicuity: float = 1.0) -> Path:
    """data/phantoms/<tag>: the tag names everything the set is drawn from, a user's metadata CSV included."""
    tag = f"v{GENERATOR_VERSION}-n{n}-s{size}-seed{seed}" + ("-textbook" if textbook else "")
    tag += f"-modes{MODES_VERSION}" if modes else ""    # the mode world is other data
    tag += f"-c{conspicuity:g}" if modes and conspicuity != 1.0 else ""
    if csv is not None:   # another metadata file is other data (the bundled one keeps the plain tag)
        src = paths.resolve(csv)
        tag += "-csv" + hashlib.sha256(src.read_bytes() if src.is_file() else str(src).encode()).hexdigest()[:10]
    return paths.DATA / "phantoms" / tag


MODE_COLUMN = "Acquisition Mode"     # the mode world's CSV column (curation's manifest column ``mode``)


def _write_one(args) -> None:
    out, row, size, seed, textbook, conspicuity = args
    findings = [] if row["Finding Labels"] == "No Finding" else row["Finding Labels"].split("|")
    arr = draw(row["Image Index"], str(row["Patient ID"]), findings, row["View Position"], size, seed, textbook,
               mode=row.get(MODE_COLUMN), conspicuity=conspicuity)
    atomic.save_image(out, Image.fromarray((arr * 255).round().astype(np.uint8), mode="L"))


def generate(n: int = 2000, size: int = 64, seed: int = 0, textbook: bool = False,
             out_dir: str | Path | None = None, csv: str | Path | None = None, progress: bool = True,
             modes: bool = False, conspicuity: float = 1.0) -> Path:
    """Write an NIH-layout phantom set and return its folder; images already there are kept (resume).
    ``modes``: each image drawn through its acquisition mode, recorded in the CSV's MODE_COLUMN; ``conspicuity``:
    the rare modes' findings at that share of their contrast (draw)."""
    if not 32 <= size <= 512:
        raise ValueError(f"phantom size {size} must be between 32 and 512")
    out = paths.resolve(out_dir) if out_dir else phantom_dir(n, size, seed, textbook, csv, modes, conspicuity)
    entry = out / "Data_Entry_2017.csv"
    if entry.exists():
        return out
    rows = sample_rows(nih.read_metadata(csv), n, seed, textbook)
    if modes:
        rows[MODE_COLUMN] = [sample_mode(i, seed) for i in rows["Image Index"]]
    (out / "images").mkdir(parents=True, exist_ok=True)
    todo = [(out / "images" / r["Image Index"], r, size, seed, textbook, conspicuity)
            for _, r in rows.iterrows() if not (out / "images" / r["Image Index"]).exists()]
    for job in tqdm(todo, desc="phantoms", disable=not progress, mininterval=2):
        _write_one(job)
    atomic.write_csv(entry, rows)  # written last: its presence means the set is complete
    return out
