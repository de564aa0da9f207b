"""Reference generators for stage 04: synthetic sets whose right answer is known, to calibrate the metrics.

Each kind writes a set in exactly the stage-04 format (``manifest.csv`` with the generation manifest's
columns plus ``source_image_id``, and ``generation_summary.json``), so stages 05 and 06 treat it like
any synthetic set:

- ``real-holdout``: n unseen real images per class, copied byte for byte (TR should be about 1);
- ``label-shuffled``: the same images with their labels permuted (AUROC about 0.5);
- ``partly-shuffled``: the same images with the labels of ``generation.shuffled_fraction`` of each class permuted
  (the dose-response series: 0 is real-holdout's set, 1 label-shuffled's; TR should fall from about 1 to 0);
- ``collapsed``: ``generation.unique_images`` images per class, each repeated to fill n (mode collapse);
- ``findings-erased``: held-out phantom rows redrawn with their findings erased, labels kept (signal removed): each
  image is its source pixel for pixel except where the findings are (lib.data.phantoms.draw's ``erase``: the same
  random draws), and the rows hold as many AP images in every class (reference_sources.view_balanced), so neither
  the pixels nor the view carry the label;
- ``exaggerated``: the same view-balanced rows redrawn with every finding ``generation.exaggerate`` times stronger
  (pixel for pixel its source elsewhere, as ``finding_scale`` changes no random draw);
- ``vae-roundtrip``: the same images through the base model's VAE (encode, latent mode, decode): the
  ceiling of any latent generator built on that VAE;
- ``folder``: any folder of images with one sub-folder per class (a GAN's output, another generator's),
  referenced in place; a near-copy of a real test image in it (re-encoded, resized) is refused before
  the manifest is written (lib.generate.reference_sources.check_folder, lib.data.leakage).

Every kind works for the run's classes (lib.data.domains.classes), two or more; ``findings-erased`` and
``exaggerated`` redraw phantoms and so need the phantom source. The held-out images are stage 01's
*tuning* pool: no classifier ever sees it and no reference generator tuned on it. Every kind draws the same rows (chosen per class at random, seeded by the run seed), so the
references are paired with each other; the two redrawn kinds take view-balanced rows instead (the same for
both, mostly the others' rows). A kind whose output changed carries a version (VERSIONS) in its stage keys. Everything is checked before the first file is written, so an
error leaves the folder as it was; files already on disk are kept (a killed run resumes) and the
manifest is written last.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image

from ..core import atomic, compute, config, fingerprints, paths, provenance
from ..data import domains, images, phantoms
from . import manifest
from . import reference_sources as sources
from ..finetune.prompts import slug
from ..core.config import Config
from ..data.nih import DataError
from ..core.progress import tqdm

log = logging.getLogger(__name__)


def is_reference(cfg: Config) -> bool:
    """Whether stage 04 builds a reference set instead of sampling the diffusion model."""
    return cfg.generation.kind in GENERATORS


# Kinds whose output changed after their stage keys were first recorded (issue 23): the version joins the keys of
# the stages it changes, so their old folders are not reused. The redrawn kinds' images (pixel-paired with their
# source, view-balanced rows) change stage 04 and all after it; collapsed's split (by content, unique test images,
# NaN where not estimable: lib.evaluate.evaluation.split_synthetic) changes stage 05 (06 is keyed with it) and the
# transfer matrix, which splits the same way.
VERSIONS = {"findings-erased": ("r2", None), "exaggerated": ("r2", None),
            "collapsed": ("r2", ("05_classifier", "06_fter_analysis", "08_transfer"))}


def version(cfg: Config, stage: str, sections: list[str]) -> str | None:
    """The kind's version tag for this stage's key (None: the key as before)."""
    tag, changed = VERSIONS.get(cfg.generation.kind, (None, None))
    if tag is None or "generation" not in sections or (changed is not None and stage not in changed):
        return None
    return f"{cfg.generation.kind}-{tag}"


fingerprints.register_reference(is_reference, version)   # a reference's stage keys skip stages 02-03 (lib.core.stages)


def manifest_columns() -> list[str]:
    """The stage-04 manifest's columns plus the source each image came from."""
    return [*manifest.MANIFEST_COLUMNS, "source_image_id"]


# ---------------------------------------------------------------------------------- the registry
@dataclass
class Request:
    """What a generator's ``rows`` is given; ``params`` starts as kind, n_per_label and seed, and the generator
    adds every other parameter its set depends on (the set's hash and generation_summary.json record them)."""
    cfg: Config
    runs_root: Path | str
    params: dict
    progress: bool = False


@dataclass(frozen=True)
class Generator:
    """A reference kind (generation.kind). ``rows(request)`` plans the set and writes nothing: one row per image
    with label, index, source_image_id, source_path, source_hash and file (the path under the stage folder it
    will be written to, or, for a set kept where it is, the image's own path). ``write(todo, out_dir, request,
    bar)`` writes the planned files not on disk yet (None: the images stay where they are). ``check(cfg)`` says
    at load time what a run must change, or None; ``vet(cfg, rows, out_dir, runs_root)`` refuses a planned set
    before anything is written; ``source(cfg)`` is what generation_summary.json names as the images' source."""
    rows: Callable[[Request], pd.DataFrame]
    write: Callable | None = None
    check: Callable[[Config], str | None] | None = None
    vet: Callable | None = None
    source: Callable[[Config], str] = lambda cfg: "pools.tuning"


GENERATORS: dict[str, Generator] = {}


def register(kind: str, write: Callable | None = None, check: Callable[[Config], str | None] | None = None,
             vet: Callable | None = None, source: Callable[[Config], str] | None = None):
    """Decorator: ``rows(request) -> DataFrame`` becomes the reference generator ``kind`` (see Generator)."""
    def add(rows: Callable[[Request], pd.DataFrame]):
        if kind in GENERATORS or kind == "diffusion":
            raise ValueError(f"generation.kind {kind!r} is registered twice (or is the diffusion model's).")
        GENERATORS[kind] = Generator(rows, write, check, vet, source or Generator.source)
        return rows
    return add


def generator(kind: str) -> Generator:
    if kind not in GENERATORS:
        raise ValueError(f"generation.kind = {kind!r} is not a reference kind; references are "
                         f"{', '.join(GENERATORS)}.")
    return GENERATORS[kind]


@config.checks.register("generation")
def problems(cfg: Config) -> list[str]:
    """generation.kind against the registry, and the kind's own check: lib.core.config reports the first at load
    time (a check registered there), and stage 04 again before it plans."""
    kind = cfg.generation.kind
    if cfg.generation.shuffled_fraction is not None and kind != "partly-shuffled":
        return [f"generation.shuffled_fraction = {cfg.generation.shuffled_fraction} is only read by generation.kind = "
                f"'partly-shuffled' (kind is {kind!r}); set the kind or remove the fraction."]
    if kind == "diffusion":
        return []
    if kind not in GENERATORS:
        return [f"generation.kind = {kind!r} is not allowed;{config.did_you_mean(kind, ['diffusion', *GENERATORS])} "
                f"use 'diffusion' or a reference kind: {', '.join(GENERATORS)}."]
    wrong = GENERATORS[kind].check(cfg) if GENERATORS[kind].check else None
    return [wrong] if wrong else []


@config.checks.register("transfer")
def transfer_sets(cfg: Config) -> list[str]:
    """transfer.sets: distinct names among real, synthetic and the reference kinds (lib.analyze.transfer)."""
    sets, allowed = cfg.transfer.sets, ["real", "synthetic", *GENERATORS]
    bad = [s for s in sets if s not in allowed]
    if bad or not sets or len(set(sets)) != len(sets):
        return [f"transfer.sets = {sets}: name distinct sets among {', '.join(allowed)}."
                f"{config.did_you_mean(bad[0], allowed) if bad else ''}"]
    return []


def from_pool(rows: pd.DataFrame) -> pd.DataFrame:
    """Held-out pool rows (``holdout``) as a set's rows, each image keeping its class."""
    df = rows.rename(columns={"image_id": "source_image_id"})
    df["label"] = df["source_label"]
    return df


def with_files(df: pd.DataFrame, keep_suffix: bool) -> pd.DataFrame:
    """Each source's content hash, and the file each row becomes: images/<class>/<class>_<index>, with the
    source's suffix (copies) or .png (images drawn here)."""
    hashes = {p: provenance.file_hash(p) for p in df["source_path"].unique()}
    df["source_hash"] = df["source_path"].map(hashes)
    suffix = [Path(p).suffix.lower() or ".png" for p in df["source_path"]] if keep_suffix else [".png"] * len(df)
    df["file"] = [f"images/{slug(lab)}/{slug(lab)}_{i:06d}{s}"
                  for lab, i, s in zip(df["label"], df["index"], suffix)]
    return df


def pool_rows(req: Request, keep_suffix: bool) -> pd.DataFrame:
    """generation.n_per_label held-out tuning-pool images per class, the same rows for every kind, as a set's
    rows (files named for copies with ``keep_suffix``, else for PNGs drawn here)."""
    return with_files(from_pool(sources.holdout(req.cfg, req.runs_root)), keep_suffix)


def copies(todo: pd.DataFrame, out_dir: Path, req: Request, bar) -> None:
    """Write each row as a byte copy of its source image."""
    for _, row in todo.iterrows():
        _copy(row["source_path"], out_dir / row["file"])
        bar.update(1)


def _needs_phantoms(cfg: Config) -> str | None:
    if cfg.data.source != "phantom":
        return (f"generation.kind = {cfg.generation.kind!r} redraws phantoms and needs data.source = 'phantom' "
                f"(got {cfg.data.source!r}); real X-rays cannot be redrawn.")
    return None


def _redrawn(todo: pd.DataFrame, out_dir: Path, req: Request, bar) -> None:
    scale = None if req.cfg.generation.kind == "findings-erased" else req.cfg.generation.exaggerate
    for _, row in todo.iterrows():
        _save(out_dir / row["file"], _redraw(row, req.cfg, scale))
        bar.update(1)


def _phantom_rows(req: Request) -> pd.DataFrame:
    """The view-balanced held-out rows, to be redrawn: the phantom generator's parameters are the set's too."""
    if (wrong := _needs_phantoms(req.cfg)) is not None:
        raise DataError(wrong)
    df = with_files(from_pool(sources.view_balanced(req.cfg, req.runs_root)), keep_suffix=False)
    d = req.cfg.data
    req.params.update(phantom_version=phantoms.GENERATOR_VERSION, image_size=d.image_size,
                      phantom_seed=d.phantom_seed, textbook=d.phantom_textbook, rows="view-balanced",
                      redraw="pixel-paired", **({"modes_version": phantoms.MODES_VERSION} if d.phantom_modes else {}),
                      **({"mode_conspicuity": d.mode_conspicuity} if d.mode_conspicuity != 1.0 else {}))
    return df


@register("real-holdout", write=copies)
def _real_holdout(req: Request) -> pd.DataFrame:
    return pool_rows(req, keep_suffix=True)


@register("label-shuffled", write=copies)
def _label_shuffled(req: Request) -> pd.DataFrame:
    return with_files(sources.shuffled(from_pool(sources.holdout(req.cfg, req.runs_root)), 1.0, req.cfg), True)


def _fraction_set(cfg: Config) -> str | None:
    f = cfg.generation.shuffled_fraction
    if f is None or not 0.0 <= f <= 1.0:
        return (f"generation.kind = 'partly-shuffled' needs generation.shuffled_fraction between 0 and 1 (got {f}): "
                "the share of each class's held-out images whose labels are permuted (0: real-holdout's set, "
                "1: label-shuffled's).")
    return None


@register("partly-shuffled", write=copies, check=_fraction_set)
def _partly_shuffled(req: Request) -> pd.DataFrame:
    """The dose-response series: real-holdout's images, a share of each class's labels permuted (label-free)."""
    fraction = float(req.cfg.generation.shuffled_fraction)
    req.params["shuffled_fraction"] = fraction
    return with_files(sources.shuffled(from_pool(sources.holdout(req.cfg, req.runs_root)), fraction, req.cfg), True)


def _unique_fits(cfg: Config) -> str | None:
    g = cfg.generation
    if g.unique_images > g.n_per_label:
        return (f"generation.unique_images = {g.unique_images} is more than generation.n_per_label = "
                f"{g.n_per_label}; a collapsed set repeats unique_images images per class to fill n_per_label, "
                "so unique_images must be at most n_per_label.")
    return None


@register("collapsed", write=copies, check=_unique_fits)
def _collapsed(req: Request) -> pd.DataFrame:
    g, n = req.cfg.generation, req.cfg.generation.n_per_label
    if not 1 <= g.unique_images <= n:
        raise DataError(f"generation.unique_images = {g.unique_images} must be between 1 and "
                        f"generation.n_per_label = {n}.")
    src = sources.holdout(req.cfg, req.runs_root, g.unique_images, "generation.unique_images")
    req.params["unique_images"] = g.unique_images
    df = pd.concat([grp.iloc[[i % len(grp) for i in range(n)]].assign(index=range(n))
                    for _, grp in src.groupby("source_label", sort=False)], ignore_index=True)
    return with_files(from_pool(df), keep_suffix=True)


@register("findings-erased", write=_redrawn, check=_needs_phantoms)
def _findings_erased(req: Request) -> pd.DataFrame:
    return _phantom_rows(req)


@register("exaggerated", write=_redrawn, check=_needs_phantoms)
def _exaggerated(req: Request) -> pd.DataFrame:
    df = _phantom_rows(req)
    req.params["exaggerate"] = req.cfg.generation.exaggerate
    return df


def _vae_write(todo: pd.DataFrame, out_dir: Path, req: Request, bar) -> None:
    if len(todo):
        with compute.cpu_threads(req.cfg.generation.cpu_threads):
            _vae_roundtrip(todo, out_dir, req.cfg, req.params["base"], bar)


@register("vae-roundtrip", write=_vae_write)
def _vae_rows(req: Request) -> pd.DataFrame:
    df = pool_rows(req, keep_suffix=False)
    req.params["resolution"] = req.cfg.model.resolution
    req.params["base"], req.params["vae_hash"] = _vae_source(req.cfg, req.progress)
    return df


def _folder_set(cfg: Config) -> str | None:
    if not cfg.generation.folder:
        return ("generation.kind = 'folder' needs generation.folder: a folder with one sub-folder of images per "
                "class (e.g. 'No Finding/' and 'Unhealthy/').")
    return None


@register("folder", check=_folder_set, source=lambda cfg: str(paths.resolve(cfg.generation.folder)),
          vet=lambda cfg, df, out_dir, runs_root: sources.check_folder(cfg, df, out_dir, runs_root))
def _folder(req: Request) -> pd.DataFrame:
    return sources.from_folder(req.cfg)


# -------------------------------------------------------------------------------------- the plan
def _vae_source(cfg: Config, progress: bool) -> tuple[str, str]:
    """(the base pipeline holding the VAE, a hash of the VAE's weights)."""
    from ..finetune import diffusion_model

    base = diffusion_model.base_for(cfg.model, seed=cfg.seed, progress=progress)
    vae = Path(base) / "vae"
    return base, manifest.model_hash(str(vae)) if vae.is_dir() else f"{base}@{cfg.model.revision or 'main'}"


def plan(cfg: Config, runs_root="runs", progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Every row of the reference set, and the parameters its hash covers; checks everything, writes nothing.

    Columns: label, index, image_id, file, seed, source_image_id, source_path, source_hash (+ the pool's
    patient, view and findings for the holdout kinds)."""
    kind = cfg.generation.kind
    req = Request(cfg, runs_root, {"kind": kind, "n_per_label": cfg.generation.n_per_label, "seed": cfg.seed},
                  progress)
    df = generator(kind).rows(req)
    df["image_id"] = [f"ref-{kind}_{slug(lab)}_{i:06d}" for lab, i in zip(df["label"], df["index"])]
    df["seed"] = [manifest.image_seed(cfg.seed, lab, int(i)) for lab, i in zip(df["label"], df["index"])]
    return df.reset_index(drop=True), req.params


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
    """The row's phantom again, with its own random draws: findings erased when scale is None, else every
    finding x scale."""
    d = cfg.data
    findings = [] if row["findings"] == "No Finding" else str(row["findings"]).split("|")
    arr = phantoms.draw(row["source_image_id"], str(row["patient"]), findings, row["view"], d.image_size,
                        d.phantom_seed, d.phantom_textbook, finding_scale=1.0 if scale is None else scale,
                        erase=scale is None, mode=row.get("mode") if d.phantom_modes else None,   # its mode too
                        conspicuity=d.mode_conspicuity)
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


def _write(df: pd.DataFrame, out_dir: Path, cfg: Config, params: dict, runs_root, progress: bool) -> int:
    """Write every planned file not on disk yet; the number written."""
    kind, write = cfg.generation.kind, generator(cfg.generation.kind).write
    if write is None:
        return 0
    todo = df[[not (out_dir / f).exists() for f in df["file"]]]
    bar = tqdm(total=len(todo), desc=f"reference {kind}", disable=not progress, mininterval=2)
    write(todo, out_dir, Request(cfg, runs_root, params, progress), bar)
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
    wrong = problems(cfg)
    if wrong:
        raise DataError(" ".join(wrong))
    gen = generator(kind)
    df, params = plan(cfg, runs_root, progress)
    if gen.vet is not None:
        gen.vet(cfg, df, out_dir, runs_root)
    ref_hash = reference_hash(df, params)
    # A resumed run must continue with the same sources (a folder's content may have changed).
    lock = out_dir / "reference_lock.json"
    if lock.exists() and json.loads(lock.read_text()).get("model_hash") != ref_hash:
        raise DataError(f"{out_dir} was started from other source images ({lock}); delete the folder to start over.")
    atomic.write_json(lock, {"kind": kind, "model_hash": ref_hash})
    _clean_partial(out_dir)
    t0 = time.perf_counter()
    written = _write(df, out_dir, cfg, params, runs_root, progress)
    seconds = time.perf_counter() - t0

    manifest = df.assign(
        path=[str(f) if gen.write is None else images.relpath(out_dir / f) for f in df["file"]],
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
               "source": gen.source(cfg),
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
