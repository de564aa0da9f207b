"""Stage 04: a synthetic set of N images per label from the fine-tuned model (or the base model).

Every image has its own seed, derived from (run seed, label, index) and recorded in the manifest, and
gets its own torch generator inside the batch, so ``regenerate`` reproduces any single image. The
plan (label, index, seed, file) is fixed before the first batch; files are written atomically and a
file on disk means that image is done, so a killed run resumes with the missing images only: no
duplicates, no gaps. The manifest is written last, from the plan.
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..core import atomic, compute, provenance, stages
from ..data import domains, images
from ..core.config import Config
from ..data.nih import DataError
from ..core.progress import tqdm
from ..finetune.prompts import prompt_for, slug
from . import manifest

log = logging.getLogger(__name__)


class Interrupted(RuntimeError):
    """A run stopped before every planned image was drawn (on purpose, or by a kill); it resumes."""


SCHEDULERS = {"dpm": "DPMSolverMultistepScheduler", "ddim": "DDIMScheduler", "ddpm": "DDPMScheduler",
              "euler": "EulerDiscreteScheduler", "pndm": "PNDMScheduler"}


# -------------------------------------------------------------------------------------- the plan
def plan(cfg: Config) -> pd.DataFrame:
    """Every image this stage will produce, fixed up front."""
    rows = []
    for label in domains.classes(cfg):
        prompt = prompt_for(cfg, label)
        for i in range(cfg.generation.n_per_label):
            file = f"images/{slug(label)}/{slug(label)}_{i:06d}.png"
            rows.append({"image_id": f"syn_{slug(label)}_{i:06d}", "file": file, "label": label,
                         "prompt": prompt, "seed": manifest.image_seed(cfg.seed, label, i), "index": i})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------- models
def models_for(cfg: Config, runs_root="runs") -> dict[str, str]:
    """Which pipeline draws each label: the models stage 03 recorded in train_summary.json (the base model
    for the no-fine-tune control), else its model/ or model_<label>/ folders."""
    from ..finetune import diffusion_model

    try:
        d03 = stages.require(cfg, "03_dreambooth", runs_root)
    except FileNotFoundError:
        if cfg.finetune.control != "no-fine-tune":
            raise
        base = diffusion_model.base_for(cfg.model, seed=cfg.seed, progress=False)
        return {label: base for label in domains.classes(cfg)}
    recorded = train_summary(str(d03)).get("models") or {}
    if all(label in recorded for label in domains.classes(cfg)):
        return {label: str(stages.paths.resolve(recorded[label])) if Path(stages.paths.resolve(recorded[label])).exists()
                else recorded[label] for label in domains.classes(cfg)}
    if cfg.finetune.model_layout == "joint":
        candidates = {label: [d03 / "model"] for label in domains.classes(cfg)}
    else:
        candidates = {label: [d03 / f"model_{slug(label)}", d03 / f"model_{label}"] for label in domains.classes(cfg)}
    out = {}
    for label, options in candidates.items():
        found = [p for p in options if (p / "model_index.json").exists()]
        if not found:
            raise FileNotFoundError(f"no fine-tuned pipeline for '{label}' in {d03} (looked for "
                                    f"{[p.name for p in options]}); rerun notebook 03 for these parameters.")
        out[label] = str(found[0])
    return out


def train_summary(model_path: str) -> dict:
    p = Path(model_path) / "train_summary.json"
    if not p.exists():
        p = Path(model_path).parent / "train_summary.json"
    return json.loads(p.read_text()) if p.exists() else {}


def set_scheduler(pipe, name: str):
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"generation.scheduler = {name!r}; use one of {', '.join(SCHEDULERS)}.")
    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)
    return pipe


def load(path: str, cfg: Config, device=None):
    from ..finetune import diffusion_model

    pipe = diffusion_model.load_pipeline(path, cfg.model.revision if cfg.finetune.control == "no-fine-tune" else None,
                                         device=device)
    return set_scheduler(pipe, cfg.generation.scheduler)


# ------------------------------------------------------------------------------------ generating
def _call(pipe, prompts: list[str], seeds: list[int], cfg: Config) -> np.ndarray:
    """One batched pipeline call, one CPU generator per image; N x H x W uint8 grayscale."""
    g, res = cfg.generation, cfg.model.resolution
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    with compute.autocast(g.precision, pipe.device, "generation.precision"):
        out = pipe(prompt=prompts, negative_prompt=[g.negative_prompt] * len(prompts) if g.negative_prompt else None,
                   num_inference_steps=g.steps, guidance_scale=g.guidance_scale, generator=gens,
                   height=res, width=res, output_type="pt").images
    gray = out.float().mean(1).clamp(0, 1)
    return (gray * 255).round().to(torch.uint8).cpu().numpy()


def _save(path: Path, arr: np.ndarray) -> None:
    atomic.save_image(path, Image.fromarray(arr, mode="L"))


def _clean_partial(out_dir: Path) -> int:
    """Temporary files left by a kill mid-write are not images; remove them."""
    stray = list((out_dir / "images").rglob(".*.tmp")) if (out_dir / "images").exists() else []
    for p in stray:
        p.unlink(missing_ok=True)
    return len(stray)


def generate(cfg: Config, out_dir: Path, models: dict[str, str], progress: bool = True,
             max_batches: int | None = None, pipes: dict | None = None) -> dict:
    """Generate every planned image that is not on disk yet. ``max_batches`` stops early (tests);
    ``pipes`` (label -> loaded pipeline) skips loading (benchmarks)."""
    out_dir = Path(out_dir)
    todo = plan(cfg)
    todo = todo[[not (out_dir / f).exists() for f in todo["file"]]]
    stats = {"generated": 0, "seconds": 0.0, "cleaned": _clean_partial(out_dir)}
    bs, batches = cfg.generation.batch_size, 0
    bar = tqdm(total=len(todo), desc="generating", disable=not progress, mininterval=2)
    with ThreadPoolExecutor(1) as writer:  # PNG encoding overlaps the next batch's denoising
        pending = []
        for label, rows in todo.groupby("label", sort=False):
            if rows.empty:
                continue
            pipe = pipes[label] if pipes and label in pipes else load(models[label], cfg)
            for start in range(0, len(rows), bs):
                if max_batches is not None and batches >= max_batches:
                    break
                chunk = rows.iloc[start:start + bs]
                t0 = time.perf_counter()
                arrs = _call(pipe, chunk["prompt"].tolist(), chunk["seed"].tolist(), cfg)
                stats["seconds"] += time.perf_counter() - t0
                pending += [writer.submit(_save, out_dir / f, a) for f, a in zip(chunk["file"], arrs)]
                stats["generated"] += len(chunk); batches += 1
                bar.update(len(chunk))
            del pipe
        for f in pending:
            f.result()
    bar.close()
    return stats


def write_manifest(cfg: Config, out_dir: Path, models: dict[str, str], hashes: dict[str, str]) -> pd.DataFrame:
    """The manifest, from the plan, once every planned file exists (an error names any gap)."""
    out_dir = Path(out_dir)
    df = plan(cfg)
    missing = [f for f in df["file"] if not (out_dir / f).exists()]
    if missing:
        raise DataError(f"{len(missing)} planned image(s) are missing, e.g. {missing[:3]}; "
                        "run the stage again to generate them.")
    g = cfg.generation
    df = df.assign(path=[images.relpath(out_dir / f) for f in df["file"]],
                   model=[images.relpath(models[lab]) for lab in df["label"]],
                   model_hash=[hashes[lab] for lab in df["label"]],
                   scheduler=g.scheduler, steps=g.steps, guidance_scale=g.guidance_scale,
                   hash=[images.content_hash((out_dir / f).read_bytes()) for f in df["file"]])
    atomic.write_csv(out_dir / "manifest.csv", df[manifest.MANIFEST_COLUMNS])
    return df[manifest.MANIFEST_COLUMNS]


def run(cfg: Config, out_dir, runs_root="runs", progress: bool = True, max_batches: int | None = None) -> dict:
    """Stage 04: plan, generate what is missing, write the manifest and a summary (a reference kind
    builds its set in lib.generate.references instead)."""
    from . import references

    if references.is_reference(cfg):
        return references.build(cfg, out_dir, runs_root, progress)
    out_dir = Path(out_dir)
    models = models_for(cfg, runs_root)
    # A resumed run must continue with the same model, or its two halves would differ.
    revision = cfg.model.revision if cfg.finetune.control == "no-fine-tune" else None   # as load() does
    ident = {label: manifest.model_hash(m, revision) for label, m in models.items()}
    lock = out_dir / "model_lock.json"
    if lock.exists() and json.loads(lock.read_text()) != ident:
        raise DataError(f"{out_dir} was started with another model ({lock}); delete the folder to start over.")
    atomic.write_json(lock, ident)
    with compute.cpu_threads(cfg.generation.cpu_threads):
        stats = generate(cfg, out_dir, models, progress, max_batches)
    if max_batches is not None and not all((out_dir / f).exists() for f in plan(cfg)["file"]):
        raise Interrupted(f"stopped after {max_batches} batch(es) as asked; run again to resume.")
    listed = write_manifest(cfg, out_dir, models, ident)
    label0 = domains.classes(cfg)[0]
    summary = {"model": images.relpath(models[label0]), "models": {k: images.relpath(v) for k, v in models.items()},
               "model_hash": provenance.hash_strings(ident.values()), "train_summary": train_summary(models[label0]),
               "n_images": len(listed), "generated_this_call": stats["generated"],
               "seconds_this_call": round(stats["seconds"], 2),
               "images_per_second": round(stats["generated"] / stats["seconds"], 2) if stats["seconds"] else None,
               "prompts": {lab: prompt_for(cfg, lab) for lab in domains.classes(cfg)}}
    return write_summary(out_dir, summary)


THIS_CALL = ("generated_this_call", "seconds_this_call", "images_per_second")   # what one call did, not the set


def write_summary(out_dir, summary: dict) -> dict:
    """Write generation_summary.json, unless it already describes this set: a stage resumed after it finished
    (its DONE.json deleted) draws nothing and would rewrite only this call's counters, and the changed file
    would make every sealed stage 05 built on the set look changed. Returns ``summary`` (this call's)."""
    path = Path(out_dir) / "generation_summary.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        strip = lambda d: {k: v for k, v in d.items() if k not in THIS_CALL}   # noqa: E731
        if isinstance(old, dict) and strip(old) == json.loads(json.dumps(strip(summary), default=str)):
            return summary
    atomic.write_json(path, summary)
    return summary


def read_manifest(stage_dir) -> pd.DataFrame:
    return manifest.read_synthetic(Path(stage_dir) / "manifest.csv")


def regenerate(row: pd.Series | dict, cfg: Config, runs_root="runs", pipe=None) -> np.ndarray:
    """Draw one manifest row's image again from its recorded seed and prompt (H x W uint8)."""
    if pipe is None:
        pipe = load(models_for(cfg, runs_root)[row["label"]], cfg)
    return _call(pipe, [row["prompt"]], [int(row["seed"])], cfg)[0]


def summary(stage_dir) -> dict:
    """generation_summary.json of a finished stage 04."""
    return json.loads((Path(stage_dir) / "generation_summary.json").read_text())


def regeneration_error(row: pd.Series | dict, cfg: Config, runs_root="runs") -> int:
    """Largest pixel difference (0-255) between a saved image and its regeneration from the manifest row."""
    again = regenerate(row, cfg, runs_root).astype(int)
    saved = np.round(images.load_gray(row["path"]) * 255).astype(int)
    return int(np.abs(again - saved).max())


def regeneration_report(row: pd.Series | dict, cfg: Config, runs_root="runs") -> str:
    """One line for notebook 04: the image regenerated from its seed, or why a reference set has none."""
    from . import references

    if references.is_reference(cfg):
        return (f"{row['image_id']}: a reference set ({cfg.generation.kind}) is built from real images "
                f"(source {row.get('source_image_id')}), not sampled from a seed; nothing to regenerate.")
    return f"{row['image_id']} seed {row['seed']} max |difference|: {regeneration_error(row, cfg, runs_root)}"
