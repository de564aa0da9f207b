"""The thesis path rehearsed on the CPU: params/thesis.yaml's own code, Stable Diffusion v1.5-size models.

No download: the SD1.5-architecture components (full-size UNet, VAE, ViT-L/14 text encoder, a CLIP BPE
tokenizer with the full 49,408-token vocabulary from open_clip's bundled merges) are built from their configs
with random weights and written as a local diffusers folder, so ``model.base: <that folder>`` goes through
the suite's real loading code (lib.finetune.diffusion_model.load_pipeline). Everything else is params/thesis.yaml
loaded by lib.core.config with overrides only (OVERRIDES below): phantom data through stages 01-02 with small
pools, two fine-tuning steps at 64 px with prior preservation, gradient checkpointing, bf16 autocast, active
gating, once with LoRA and once fine-tuning the full UNet, a few images from stage 04, and a few batches of
DenseNet-121 at 224 px through lib.evaluate.classifier.

Each part runs in a process of its own, so its peak resident memory (ru_maxrss) is its own:

    .venv/bin/python benchmarks/rehearse_thesis.py [--work DIR] [--keep] [--skip-full] [--out FILE]

Full fine-tuning needs 12.8 GiB for the UNet's fp32 weights, gradients and AdamW's two moments (16 bytes x 860M
parameters; 15.1 GiB peak measured on the CPU, benchmarks/results/rehearse_thesis.txt); it is skipped, with the
number, when less than 1.15 times that is free. --reprint --work DIR prints a kept run's report again.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARAMS = "params/thesis.yaml"
RESOLUTION = 64                      # 8x8 latents: the full-size UNet at the smallest size its 3 downsamplings take
FULL_MERGES = 48894                  # CLIP's BPE list: 256 bytes x 2 + 48,894 merges + 2 specials = 49,408 tokens
# Only sizes change, plus what this machine cannot have: no NIH images (phantoms), no pre-trained weights
# (the thesis's ViT-B-32 with random weights, from a checkpoint file written here, for embeddings and the
# gate, so the gate's quantile rule instead of the absolute 0.3, which random-weight cosines near 1 always
# exceed; no ImageNet DenseNet), no GPU (bf16 named, not "auto"). model.base, embedding.clip_pretrained and
# embedding.cache_dir point into the work folder (overrides_for).
OVERRIDES = {
    "experiment": "rehearse",
    "data.source": "phantom", "data.image_size": 128, "data.phantom_n": 400,
    "pools.tuning": 100, "pools.train": 140, "pools.test": 100,
    "cluster.k": 2, "selection.per_label": 4,
    "model.resolution": RESOLUTION,
    "finetune.steps": 2, "finetune.batch_size": 2, "finetune.num_class_images": 2,
    "finetune.mixed_precision": "bf16",
    "finetune.validation_images": 1, "finetune.validation_steps": 2,
    "gating.enabled": True, "gating.mode": "quantile", "gating.warmup_batches": 4,
    "gating.n_images": 2, "gating.sampler_steps": 2, "gating.resolution": RESOLUTION,
    "generation.n_per_label": 2, "generation.steps": 2, "generation.batch_size": 2,
    "classifier.weights": "none", "classifier.epochs": 1,
}
RUNS = {"lora": {"finetune.lora": True, "finetune.learning_rate": 1e-4}, "full": {}}
CLASSIFIER_IMAGES = 56               # 85% trained: 48 images, 3 batches of the thesis's 16
CLIP_FILE = "clip-vit-b-32-random.pt"
FULL_FT_BYTES_PER_PARAM = 16         # fp32 weights + gradients + AdamW's exp_avg and exp_avg_sq


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def peak_rss() -> int:
    """This process's peak resident set size in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def overrides_for(work: Path, run: str | None = None) -> dict:
    return {**OVERRIDES, "model.base": str(work / "sd15-random"), "embedding.clip_pretrained": str(work / CLIP_FILE),
            "embedding.cache_dir": str(work / "cache"), **(RUNS[run] if run else {})}


def cfg_for(work: Path, run: str | None = None):
    from lib.core import config

    return config.load(PARAMS, overrides_for(work, run))


# ----------------------------------------------------------------------------------------- the parts
def sd15_components(seed: int = 0) -> dict:
    """Untrained Stable Diffusion v1.5 components from their published configs."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.18215)
    text = CLIPTextModel(CLIPTextConfig(   # openai/clip-vit-large-patch14's text tower
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    sched = PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
                          set_alpha_to_one=False)
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": sched}


def write_random_clip(path: Path, model_name: str) -> int:
    """The thesis's open_clip model with random weights as a checkpoint file (embedding.clip_pretrained: a path)."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(model_name, pretrained=None)
    torch.save(model.state_dict(), path)
    return sum(p.numel() for p in model.visual.parameters())


def part_base(work: Path) -> dict:
    """Write the random SD1.5-architecture pipeline folder the other parts load as model.base."""
    from diffusers import StableDiffusionPipeline

    from lib.finetune import diffusion_model

    t0 = time.perf_counter()
    out = work / "sd15-random"
    with tempfile.TemporaryDirectory() as tmp:
        tok = diffusion_model.build_tokenizer(Path(tmp) / "tok", n_merges=FULL_MERGES, max_length=77)
        comp = sd15_components()
        if len(tok) != comp["text_encoder"].config.vocab_size:
            raise RuntimeError(f"tokenizer has {len(tok)} tokens, the text encoder {comp['text_encoder'].config.vocab_size}")
        pipe = StableDiffusionPipeline(**comp, tokenizer=tok, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        built = time.perf_counter() - t0
        pipe.save_pretrained(out)
    counts = {k: sum(p.numel() for p in comp[k].parameters()) for k in ("unet", "vae", "text_encoder")}
    counts["clip"] = write_random_clip(work / CLIP_FILE, cfg_for(work).embedding.clip_model)
    return {"folder": str(out), "parameters": counts, "clip_model": cfg_for(work).embedding.clip_model, "tokens": len(tok), "build_seconds": built,
            "save_seconds": time.perf_counter() - t0 - built}


def part_data(work: Path) -> dict:
    """Stages 01-02 on the phantoms (curation, embeddings, clustering, the tuning sets)."""
    from lib.data import curation
    from lib.tuningset import selection
    from lib.core import stages

    cfg, root, t = cfg_for(work), work / "runs", {}
    for stage, fn in (("01_data_curation", curation.run), ("02_clustering", selection.run)):
        t0 = time.perf_counter()
        stages.run_stage(cfg, stage, fn, root)
        t[stage] = time.perf_counter() - t0
    tuning = len(__import__("pandas").read_csv(stages.stage_dir(cfg, "02_clustering", root)
                                               / f"tuning_{cfg.finetune.method}.csv"))
    return {"seconds": t, "tuning_images": tuning}


def part_finetune(work: Path, run: str) -> dict:
    """Stage 03 (the thesis's trainer) then stage 04 (a few images from the fine-tuned model)."""
    import pandas as pd

    from lib.finetune import dreambooth
    from lib.generate import generation
    from lib.core import stages

    cfg, root = cfg_for(work, run), work / "runs"
    t0 = time.perf_counter()
    d03 = stages.run_stage(cfg, "03_dreambooth", dreambooth.run, root)
    t03 = time.perf_counter() - t0
    summary = json.loads((d03 / "train_summary.json").read_text())
    loss, gate = pd.read_csv(d03 / "loss_log.csv"), pd.read_csv(d03 / "gating_log.csv")
    rss03 = peak_rss()
    t0 = time.perf_counter()
    d04 = stages.run_stage(cfg, "04_generation", generation.run, root)
    gen = generation.summary(d04)
    part = summary["parts"]["model"]
    return {"stage03_seconds": t03, "fit_seconds": part["wall_seconds_this_session"],
            "train_step_seconds": loss["train_seconds"].round(2).tolist(), "loss": loss["loss"].round(4).tolist(),
            "loss_prior": loss["loss_prior"].round(4).tolist(),
            "gate_seconds": gate["seconds"].round(2).tolist(), "skipped": int(summary["skipped"]),
            "mixed_precision": summary["mixed_precision"], "stage03_peak_rss": rss03,
            "stage04_seconds": time.perf_counter() - t0, "generated": gen["n_images"],
            "generation_seconds": gen["seconds_this_call"], "model_gib": folder_bytes(d03 / "model") / 2**30}


def part_classifier(work: Path) -> dict:
    """A few batches of CheXNet's DenseNet-121 at 224 px (lib.evaluate.classifier.train, one epoch)."""
    from lib.evaluate import classifier
    from lib.data import curation
    from lib.core import stages

    cfg, root = cfg_for(work), work / "runs"
    c = cfg.classifier
    pool = curation.load_pools(stages.require(cfg, "01_data_curation", root))["train"]
    pool = pool.groupby("label", group_keys=False).head(CLASSIFIER_IMAGES // 2)
    data = classifier.TensorSet.from_manifest(pool, c.input_size)
    res = classifier.train(data, c, cfg.seed, progress=False)
    batches = -(-res.n_train // c.batch_size)
    return {"arch": c.arch, "input_size": c.input_size, "batch_size": c.batch_size, "n_train": res.n_train,
            "n_val": res.n_val, "batches": batches, "seconds": res.seconds,
            "parameters": sum(p.numel() for p in res.model.parameters())}


def folder_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(part: str, work: Path, out: Path) -> None:
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    if part == "base":
        res = part_base(work)
    elif part == "data":
        res = part_data(work)
    elif part in RUNS:
        res = part_finetune(work, part)
    elif part == "classifier":
        res = part_classifier(work)
    else:
        raise SystemExit(f"unknown part {part!r}")
    # The machine is shared: the load average and CPU time / wall time say how much of it this part had.
    res.update(wall_seconds=time.perf_counter() - t0, cpu_seconds=cpu_seconds(), peak_rss=peak_rss(),
               load=(load0, os.getloadavg()[0]))
    out.write_text(json.dumps(res))


# ------------------------------------------------------------------------------------------- parent
def run_part(part: str, work: Path) -> dict:
    out = work / f"{part}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", part, "--work", str(work), "--result", str(out)]
    print(f"-- {part} ...", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0 or not out.exists():
        return {"failed": f"exit status {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode < 0 else "")}
    return json.loads(out.read_text())


def share(r: dict) -> str:
    """How much of the shared machine a part had: its CPU time against its wall time, and the load average."""
    return (f"CPU {r['cpu_seconds']:.0f} s in {r['wall_seconds']:.0f} s wall, load average "
            f"{r['load'][0]:.1f} -> {r['load'][1]:.1f}")


def report(res: dict) -> list[str]:
    import platform

    import torch

    lines = [f"Thesis path rehearsed on the CPU ({PARAMS} + overrides), started {res['_started']}",
             f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; MemAvailable at start {gib(res['_mem_start'])}",
             "overrides: " + ", ".join(f"{k}={v}" for k, v in OVERRIDES.items()),
             f"runs: lora -> {RUNS['lora']}; full -> the UNet's every weight (thesis: learning rate 5e-6)", ""]
    b = res.get("base", {})
    if "failed" in b:
        return lines + [f"base: FAILED ({b['failed']})"]
    p = b["parameters"]
    lines.append(f"base (random SD1.5 architecture): UNet {p['unet'] / 1e6:.0f}M, VAE {p['vae'] / 1e6:.0f}M, text encoder "
                 f"{p['text_encoder'] / 1e6:.0f}M parameters, tokenizer {b['tokens']} tokens; CLIP {b['clip_model']} image tower "
                 f"{p['clip'] / 1e6:.0f}M (embeddings and gate); built {b['build_seconds']:.1f} s, "
                 f"saved {b['save_seconds']:.1f} s; peak RSS {gib(b['peak_rss'])}; {share(b)}")
    d = res.get("data", {})
    lines.append(f"stages 01-02 (phantoms): " + ("FAILED " + d["failed"] if "failed" in d else
                 f"{', '.join(f'{k} {v:.1f} s' for k, v in d['seconds'].items())}; {d['tuning_images']} tuning images; "
                 f"peak RSS {gib(d['peak_rss'])}; {share(d)}"))
    for run in RUNS:
        r = res.get(run)
        if r is None:
            lines.append(f"{run}: not run ({res['_skipped']})")
            continue
        if "failed" in r:
            lines.append(f"{run}: FAILED ({r['failed']})")
            continue
        lines.append(f"{run} fine-tuning (stage 03, mixed precision {r['mixed_precision']}): train steps "
                     f"{', '.join(f'{s:.1f}' for s in r['train_step_seconds'])} s; gate {', '.join(f'{s:.1f}' for s in r['gate_seconds'])} s "
                     f"({r['skipped']} skipped); loss {r['loss']} prior {r['loss_prior']}; stage 03 {r['stage03_seconds']:.1f} s "
                     f"(loading, class images, validation and saving included); peak RSS {gib(r['stage03_peak_rss'])}; "
                     f"model folder {r['model_gib']:.2f} GiB")
        lines.append(f"{run} generation (stage 04): {r['generated']} images in {r['generation_seconds']:.1f} s "
                     f"({r['generation_seconds'] / max(r['generated'], 1):.1f} s per image), stage 04 {r['stage04_seconds']:.1f} s; "
                     f"peak RSS of the part {gib(r['peak_rss'])}; {share(r)}")
    c = res.get("classifier", {})
    lines.append("classifier: " + ("FAILED " + c["failed"] if "failed" in c else
                 f"{c['arch']} ({c['parameters'] / 1e6:.1f}M) at {c['input_size']} px, batch {c['batch_size']}: "
                 f"one epoch of {c['batches']} training batches ({c['n_train']} images) and validation ({c['n_val']}), model "
                 f"build included, in {c['seconds']:.1f} s: at most {c['seconds'] / c['batches']:.1f} s per batch; "
                 f"peak RSS {gib(c['peak_rss'])}; {share(c)}"))
    if "parameters" in b:
        need = FULL_FT_BYTES_PER_PARAM * b["parameters"]["unet"]
        full = res.get("full", {})
        lines.append(f"full fine-tuning memory: {FULL_FT_BYTES_PER_PARAM} bytes x {b['parameters']['unet'] / 1e6:.0f}M UNet "
                     f"parameters = {gib(need)} (fp32 weights, gradients, AdamW's two moments) before the frozen parts, "
                     "activations and the libraries" + (f"; measured peak {gib(full['peak_rss'])}" if "peak_rss" in full else ""))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", help="folder for the base model and the runs (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--skip-full", action="store_true", help="leave out full fine-tuning")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rehearse_thesis.txt"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--reprint", action="store_true", help="print the report of the run kept in --work again")
    args = ap.parse_args()
    if args.child:
        return child(args.child, Path(args.work), Path(args.result))
    if args.reprint:
        if not args.work or not (Path(args.work) / "rehearse.json").exists():
            raise SystemExit("--reprint needs --work DIR of a finished run (it holds rehearse.json)")
        return write_report(json.loads((Path(args.work) / "rehearse.json").read_text()), args.out)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="rehearse-thesis-"))
    work.mkdir(parents=True, exist_ok=True)
    res = {"_mem_start": available_memory(), "_started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "_skipped": None}
    try:
        for part in ("base", "data", "lora", "full", "classifier"):
            if part == "full":
                need = FULL_FT_BYTES_PER_PARAM * res["base"]["parameters"]["unet"]
                have = available_memory()
                if args.skip_full or have < need * 1.15:
                    res["_skipped"] = ("asked to skip" if args.skip_full else
                                       f"needs about {gib(need)} for weights, gradients and AdamW state, "
                                       f"{gib(have)} available")
                    continue
            res[part] = run_part(part, work)
            if part == "base" and "failed" in res[part]:
                break
        (work / "rehearse.json").write_text(json.dumps(res))
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    write_report(res, args.out)


def write_report(res: dict, out: str) -> None:
    from lib.core import atomic

    lines = report(res)
    print("\n".join(lines))
    atomic.write_text(out, "\n".join(lines) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
