"""Reference generators for stage 04: synthetic sets whose right answer is known, to calibrate the metrics.

Each kind writes a set in exactly the stage-04 format (``manifest.csv`` with the generation manifest's
columns plus ``source_image_id``, and ``generation_summary.json``), so stages 05 and 06 treat it like
any synthetic set:

- ``real-holdout``: n unseen real images per class, copied byte for byte (TR should be about 1);
- ``label-shuffled``: the same images with their labels permuted (AUROC about 0.5);
- ``collapsed``: ``generation.unique_images`` images per class, each repeated to fill n (mode collapse);
- ``findings-erased``: the same phantom rows redrawn with no finding, labels kept (signal removed);
- ``exaggerated``: the same phantom rows redrawn with every finding ``generation.exaggerate`` times stronger;
- ``vae-roundtrip``: the same images through the base model's VAE (encode, latent mode, decode): the
  ceiling of any latent generator built on that VAE;
- ``folder``: any folder of images with one sub-folder per class (a GAN's output, another generator's),
  referenced in place; a near-copy of a real test image in it (re-encoded, resized) is refused before
  the manifest is written (``check_folder``, lib.data.leakage).

Every kind works for the run's classes (lib.data.domains.classes), two or more; ``findings-erased`` and
``exaggerated`` redraw phantoms and so need the phantom source. The held-out images are stage 01's
*tuning* pool: no classifier ever sees it and no reference generator tuned on it. Every kind draws the same rows (chosen per class at random, seeded by the run seed), so the
references are paired with each other. Everything is checked before the first file is written, so an
error leaves the folder as it was; files already on disk are kept (a killed run resumes) and the
manifest is written last.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..core import atomic, compute, paths, provenance, stages
from ..data import curation, domains, images, leakage, phantoms
from . import generation
from ..core.config import Config
from ..data.images import IMAGE_SUFFIXES, is_image
from ..data.nih import DataError
from ..core.progress import tqdm

log = logging.getLogger(__name__)
KINDS = ("real-holdout", "label-shuffled", "collapsed", "findings-erased", "exaggerated", "vae-roundtrip", "folder")
_SALT = 0x5EF  # keeps the references' random streams apart from the pipeline's other uses of the run seed


def is_reference(cfg: Config) -> bool:
    """Whether stage 04 builds a reference set instead of sampling the diffusion model."""
    return cfg.generation.kind in KINDS


def manifest_columns() -> list[str]:
    """The stage-04 manifest's columns plus the source each image came from."""
    return [*generation.MANIFEST_COLUMNS, "source_image_id"]


# ------------------------------------------------------------------------------------ the sources
def holdout(cfg: Config, runs_root="runs", need: int | None = None,
            what: str = "generation.n_per_label") -> pd.DataFrame:
    """``need`` (default n_per_label) held-out tuning-pool rows per class, chosen at random (seeded by the
    run seed) and the same rows for every kind; a clear error when a class has fewer."""
    need = cfg.generation.n_per_label if need is None else need
    pool = curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))["tuning"]
    parts = []
    for li, label in enumerate(domains.classes(cfg)):
        rows = pool[pool["label"] == label].sort_values("image_id").reset_index(drop=True)
        if len(rows) < need:
            raise DataError(
                f"generation.kind = {cfg.generation.kind!r} needs {need} held-out '{label}' images per class "
                f"({what} = {need}), but stage 01's tuning pool holds only {len(rows)}; lower {what} "
                f"or raise pools.tuning (now {cfg.pools.tuning}).")
        order = np.random.default_rng([cfg.seed, li, _SALT]).permutation(len(rows))[:need]
        parts.append(rows.iloc[order].assign(source_label=label, index=range(need)))
    out = pd.concat(parts, ignore_index=True)
    out["source_path"] = [str(paths.resolve(p)) for p in out["path"]]
    return out


def scan_folder(cfg: Config) -> dict[str, list[Path]]:
    """label -> the image files of its sub-folder of generation.folder (sorted), one sub-folder for each of the
    run's classes; every mistake is an error that says what to put where."""
    g = cfg.generation
    classes = domains.classes(cfg)
    names = _listed([repr(x) for x in classes])
    slugs = _listed([repr(generation.slug(x)) for x in classes])
    how = (f"generation.folder needs one sub-folder per class, named after the class ({names}, case-insensitive, "
           f"or {slugs}), each holding that class's images ({', '.join(IMAGE_SUFFIXES)}).")
    if not g.folder:
        raise DataError(f"generation.kind = 'folder' but generation.folder is not set. {how}")
    root = paths.resolve(g.folder)
    if not root.is_dir():
        raise DataError(f"generation.folder {root} does not exist or is not a folder. {how}")
    by_slug = {generation.slug(label): label for label in classes}
    found: dict[str, Path] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = by_slug.get(generation.slug(sub.name))
        if label is None:
            raise DataError(f"generation.folder {root}: sub-folder '{sub.name}' names no class. {how}")
        if label in found:
            raise DataError(f"generation.folder {root}: sub-folders '{found[label].name}' and '{sub.name}' both "
                            f"name class '{label}'; keep one. {how}")
        found[label] = sub
    if not found:
        raise DataError(f"generation.folder {root} has no class sub-folder (it is empty, or its images are not "
                        f"sorted by class). {how}")
    missing = [label for label in classes if label not in found]
    if missing:
        raise DataError(f"generation.folder {root} has no sub-folder for class(es) {missing}; every class of the "
                        f"run ({names}) is needed. {how}")
    files = {}
    for label, sub in found.items():
        files[label] = sorted(p for p in sub.iterdir() if is_image(p))
        if not files[label]:
            raise DataError(f"generation.folder {root}: sub-folder '{sub.name}' (class '{label}') holds no image. "
                            f"{how}")
    return files


def _listed(items: list[str]) -> str:
    """'a and b', 'a, b and c'."""
    return " and ".join(items) if len(items) < 3 else f"{', '.join(items[:-1])} and {items[-1]}"


def _from_folder(cfg: Config) -> pd.DataFrame:
    """min(n_per_label, available) images per class of generation.folder, seeded, hashed by content."""
    rows = []
    for li, (label, files) in enumerate(scan_folder(cfg).items()):
        take = min(cfg.generation.n_per_label, len(files))
        if take < cfg.generation.n_per_label:
            log.warning("generation.folder: class '%s' has %d images, fewer than generation.n_per_label = %d; "
                        "using all of them.", label, len(files), cfg.generation.n_per_label)
        order = np.random.default_rng([cfg.seed, li, _SALT]).permutation(len(files))[:take]
        for i, j in enumerate(order):
            p = files[j].resolve()
            h = images.check_and_hash(p)
            if h is None:
                raise DataError(f"generation.folder: {p} cannot be read as an image; remove or replace it.")
            rows.append({"label": label, "index": i, "source_image_id": f"{p.parent.name}/{p.name}",
                         "source_path": str(p), "source_hash": h, "file": str(p)})
    return pd.DataFrame(rows)


def check_folder(cfg: Config, df: pd.DataFrame, out_dir: Path, runs_root="runs") -> pd.DataFrame:
    """The imported images against the real test pool, by look (lib.data.leakage): a re-encoded or resized copy of a
    test image is refused (data.near_duplicates: warn only warns), naming each file and its test twin in
    near_duplicates.csv and .png, the only files a refused import leaves in its folder."""
    pools = curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))
    return leakage.check_near_duplicates(pools["test"], df.assign(path=df["file"]),
                                         f"generation.folder ({paths.resolve(cfg.generation.folder)})",
                                         Path(out_dir) / "near_duplicates.png", cfg.data.near_duplicates,
                                         reference=pools["train"])


# -------------------------------------------------------------------------------------- the plan
def _vae_source(cfg: Config, progress: bool) -> tuple[str, str]:
    """(the base pipeline holding the VAE, a hash of the VAE's weights)."""
    from ..finetune import diffusion_model

    base = diffusion_model.base_for(cfg.model, seed=cfg.seed, progress=progress)
    vae = Path(base) / "vae"
    return base, generation.model_hash(str(vae)) if vae.is_dir() else f"{base}@{cfg.model.revision or 'main'}"


def plan(cfg: Config, runs_root="runs", progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Every row of the reference set, and the parameters its hash covers; checks everything, writes nothing.

    Columns: label, index, image_id, file, seed, source_image_id, source_path, source_hash (+ the pool's
    patient, view and findings for the holdout kinds)."""
    g, kind = cfg.generation, cfg.generation.kind
    if kind not in KINDS:
        raise ValueError(f"generation.kind = {kind!r} is not a reference kind; references are {', '.join(KINDS)}.")
    n = g.n_per_label
    params: dict = {"kind": kind, "n_per_label": n, "seed": cfg.seed}
    if kind == "folder":
        df = _from_folder(cfg)
    else:
        if kind in ("findings-erased", "exaggerated") and cfg.data.source != "phantom":
            raise DataError(f"generation.kind = {kind!r} redraws phantoms and needs data.source = 'phantom' "
                            f"(got {cfg.data.source!r}).")
        if kind == "collapsed":
            if not 1 <= g.unique_images <= n:
                raise DataError(f"generation.unique_images = {g.unique_images} must be between 1 and "
                                f"generation.n_per_label = {n}.")
            src = holdout(cfg, runs_root, g.unique_images, "generation.unique_images")
            params["unique_images"] = g.unique_images
            df = pd.concat([grp.iloc[[i % len(grp) for i in range(n)]].assign(index=range(n))
                            for _, grp in src.groupby("source_label", sort=False)], ignore_index=True)
        else:
            df = holdout(cfg, runs_root)
        df = df.rename(columns={"image_id": "source_image_id"})
        df["label"] = df["source_label"]
        if kind == "label-shuffled":
            classes = domains.classes(cfg)
            rng = np.random.default_rng([cfg.seed, len(classes), _SALT])
            df["label"] = rng.permutation(df["source_label"].to_numpy())
            df["index"] = df.groupby("label", sort=False).cumcount()
            df = df.sort_values(["label", "index"], key=lambda s: s.map(classes.index) if s.name == "label" else s,
                                ignore_index=True)
        hashes = {p: provenance.file_hash(p) for p in df["source_path"].unique()}
        df["source_hash"] = df["source_path"].map(hashes)
        if kind in ("findings-erased", "exaggerated"):
            d = cfg.data
            params.update(phantom_version=phantoms.GENERATOR_VERSION, image_size=d.image_size,
                          phantom_seed=d.phantom_seed, textbook=d.phantom_textbook)
            if kind == "exaggerated":
                params["exaggerate"] = g.exaggerate
        if kind == "vae-roundtrip":
            params["resolution"] = cfg.model.resolution
            params["base"], params["vae_hash"] = _vae_source(cfg, progress)
        if kind in ("real-holdout", "label-shuffled", "collapsed"):
            suffix = [Path(p).suffix.lower() or ".png" for p in df["source_path"]]
        else:
            suffix = [".png"] * len(df)
        df["file"] = [f"images/{generation.slug(lab)}/{generation.slug(lab)}_{i:06d}{s}"
                      for lab, i, s in zip(df["label"], df["index"], suffix)]
    df["image_id"] = [f"ref-{kind}_{generation.slug(lab)}_{i:06d}" for lab, i in zip(df["label"], df["index"])]
    df["seed"] = [generation.image_seed(cfg.seed, lab, int(i)) for lab, i in zip(df["label"], df["index"])]
    return df.reset_index(drop=True), params


def reference_hash(df: pd.DataFrame, params: dict) -> str:
    """The set's identity: kind, parameters and which source content sits at which (label, index); no paths
    (a base model's folder is named by its weights' hash), no timings."""
    ident = {k: v for k, v in params.items() if k != "base"}
    return provenance.hash_strings([f"params={json.dumps(ident, sort_keys=True, default=str)}",
                                    *(f"{lab}|{int(i)}|{h}" for lab, i, h in
                                      zip(df["label"], df["index"], df["source_hash"]))])


# ------------------------------------------------------------------------------------- writing
def _copy(src: str, dst: Path) -> None:
    with atomic.atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _save(path: Path, arr: np.ndarray) -> None:
    atomic.save_image(path, Image.fromarray(arr, mode="L"))


def _redraw(row, cfg: Config, scale: float | None) -> np.ndarray:
    """The row's phantom again: no finding when scale is None, else every finding x scale."""
    d = cfg.data
    findings = [] if scale is None or row["findings"] == "No Finding" else str(row["findings"]).split("|")
    arr = phantoms.draw(row["source_image_id"], str(row["patient"]), findings, row["view"], d.image_size,
                        d.phantom_seed, d.phantom_textbook, finding_scale=1.0 if scale is None else scale)
    return (arr * 255).round().astype(np.uint8)


def _vae_roundtrip(todo: pd.DataFrame, out_dir: Path, cfg: Config, base: str, bar) -> None:
    """Encode -> latent mode -> decode, batched, on accelerate's device; grayscale PNGs at model.resolution."""
    import torch
    from accelerate import PartialState
    from diffusers import AutoencoderKL

    local = Path(base).is_dir()
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae", revision=None if local else cfg.model.revision)
    dev = PartialState().device
    vae = vae.to(dev).eval().requires_grad_(False)
    res = cfg.model.resolution
    # Activations grow with the pixel count: at 512 px keep a batch of about 8 (fp32, the ceiling's fidelity).
    bs = max(1, min(cfg.generation.batch_size, int(8 * (512 / res) ** 2)))
    with torch.no_grad():
        for start in range(0, len(todo), bs):
            chunk = todo.iloc[start:start + bs]
            x = torch.from_numpy(images.load_stack(chunk["source_path"].tolist(), res)).to(dev)
            x = (x * 2 - 1)[:, None].expand(-1, 3, -1, -1).contiguous()
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample
            gray = ((y.float().clamp(-1, 1) + 1) / 2).mean(1)
            for f, a in zip(chunk["file"], (gray * 255).round().to(torch.uint8).cpu().numpy()):
                _save(out_dir / f, a)
            bar.update(len(chunk))
    del vae


def reconstruction_error(manifest: pd.DataFrame, size: int, classes: list[str] | None = None) -> dict:
    """The VAE ceiling's pixel error, read back from the files: each round trip against its source image at
    ``size`` (model.resolution, where the VAE worked), intensities in [0, 1]. MSE, MAE and PSNR (dB, of the
    mean MSE), overall and per label (the run's classes; default: the order the labels give)."""
    def errors(rows):
        src = images.load_stack(rows["source_path"].tolist(), size)
        out = images.load_stack([str(paths.resolve(p)) for p in rows["path"]], size)
        d = (out - src).reshape(len(rows), -1)
        return (d ** 2).mean(1), np.abs(d).mean(1)

    def summary(mse, mae):
        m = float(mse.mean())
        return {"mse": m, "mae": float(mae.mean()), "psnr_db": float(10 * np.log10(1 / m)) if m > 0 else float("inf"),
                "n": int(len(mse))}

    mse, mae = errors(manifest)
    out = {"all": summary(mse, mae)}
    for label in domains.order(manifest["label"]) if classes is None else classes:
        idx = (manifest["label"] == label).to_numpy()
        if idx.any():
            out[label] = summary(mse[idx], mae[idx])
    return out


def _write(df: pd.DataFrame, out_dir: Path, cfg: Config, params: dict, progress: bool) -> int:
    """Write every planned file not on disk yet; the number written."""
    kind = cfg.generation.kind
    if kind == "folder":
        return 0
    todo = df[[not (out_dir / f).exists() for f in df["file"]]]
    bar = tqdm(total=len(todo), desc=f"reference {kind}", disable=not progress, mininterval=2)
    if kind == "vae-roundtrip":
        if len(todo):
            with compute.cpu_threads(cfg.generation.cpu_threads):
                _vae_roundtrip(todo, out_dir, cfg, params["base"], bar)
    else:
        for _, row in todo.iterrows():
            if kind in ("real-holdout", "label-shuffled", "collapsed"):
                _copy(row["source_path"], out_dir / row["file"])
            else:
                scale = None if kind == "findings-erased" else cfg.generation.exaggerate
                _save(out_dir / row["file"], _redraw(row, cfg, scale))
            bar.update(1)
    bar.close()
    return len(todo)


def _clean_partial(out_dir: Path) -> None:
    """Temporary files left by a kill mid-write are not images; remove them."""
    if (out_dir / "images").exists():
        for p in (out_dir / "images").rglob(".*.tmp"):
            p.unlink(missing_ok=True)


def build(cfg: Config, out_dir, runs_root="runs", progress: bool = True) -> dict:
    """Stage 04 for a reference kind: plan (every check first), write the missing images, then the manifest
    and generation_summary.json. Returns the summary."""
    out_dir = Path(out_dir)
    kind = cfg.generation.kind
    df, params = plan(cfg, runs_root, progress)
    if kind == "folder":
        check_folder(cfg, df, out_dir, runs_root)
    ref_hash = reference_hash(df, params)
    # A resumed run must continue with the same sources (a folder's content may have changed).
    lock = out_dir / "reference_lock.json"
    if lock.exists() and json.loads(lock.read_text()).get("model_hash") != ref_hash:
        raise DataError(f"{out_dir} was started from other source images ({lock}); delete the folder to start over.")
    atomic.write_json(lock, {"kind": kind, "model_hash": ref_hash})
    _clean_partial(out_dir)
    t0 = time.perf_counter()
    written = _write(df, out_dir, cfg, params, progress)
    seconds = time.perf_counter() - t0

    manifest = df.assign(
        path=[str(f) if kind == "folder" else images.relpath(out_dir / f) for f in df["file"]],
        prompt="", model=kind, model_hash=ref_hash, scheduler="", steps="", guidance_scale="",
        hash=[images.content_hash((out_dir / f).read_bytes()) for f in df["file"]])
    # the source patient, where there is one, lets stage 05 hold out whole patients
    manifest = manifest[manifest_columns() + (["patient"] if "patient" in manifest else [])]
    atomic.write_csv(out_dir / "manifest.csv", manifest)
    classes = domains.classes(cfg)
    counts = manifest["label"].value_counts().reindex(classes, fill_value=0)
    summary = {"model": kind, "models": {label: kind for label in classes}, "model_hash": ref_hash,
               "kind": kind, "reference": True, "n_images": len(manifest),
               "n_per_label": {label: int(c) for label, c in counts.items()},
               "unique_images": int(manifest["hash"].nunique()),
               "source": str(paths.resolve(cfg.generation.folder)) if kind == "folder" else "pools.tuning",
               "params": {k: v for k, v in params.items() if k != "base"},
               "base_model": params.get("base"),
               "generated_this_call": written, "seconds_this_call": round(seconds, 2),
               "images_per_second": round(written / seconds, 2) if written and seconds else None,
               "prompts": {label: "" for label in classes}, "train_summary": {}}
    if kind == "vae-roundtrip":          # the ceiling of any generator that decodes through this VAE
        summary["reconstruction"] = reconstruction_error(manifest.assign(source_path=df["source_path"].to_numpy()),
                                                         cfg.model.resolution, classes)
    atomic.write_json(out_dir / "generation_summary.json", summary)
    return summary
