"""The offline CLIP (lib/tuningset/clip_offline.py): build time, held-out retrieval accuracy, and image-image cosines.

1. Build time at the default steps (one thread; a cached build prints the time it took when it was made).
2. Image->text and text->image top-1/top-5 on new corpus images, one per distinct caption, for captions
   seen in training and for held-out compositions never trained on; chance is k / n.
3. Quantiles of image-image cosines, embedded through the same ClipEmbedder the suite uses
   (clip_pretrained: offline): phantom-phantom, tiny-base-sample-phantom (the demo's tiny base model,
   prompted with the fine-tuning prompts, when it is already in models/) and corpus-image-phantom.
   A gating threshold on "too close to the real data" sits between these distributions.

    .venv/bin/python benchmarks/bench_clip.py [--fresh] [--n-phantoms 100]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from lib.tuningset import clip_offline, embeddings
from lib.finetune import diffusion_model
from lib.core.config import EmbeddingConfig, FinetuneConfig, ModelConfig


def base_samples(n: int, seed: int = 0) -> np.ndarray | None:
    """n samples of the demo's tiny base model (no fine-tuning), or None when it is not built yet."""
    m = ModelConfig()
    folder = diffusion_model.tiny_dir(m.resolution, m.tiny_pretrain_steps, seed)
    if not (folder / "model_index.json").exists():
        return None
    pipe = diffusion_model.load_pipeline(str(folder), device="cpu")
    ft = FinetuneConfig()
    prompts = [ft.prompt_template.format(label=w) for w in ft.label_words.values()]
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    out = pipe(prompt=prompts, num_inference_steps=20, height=m.resolution, width=m.resolution,
               generator=torch.Generator().manual_seed(seed), output_type="pt").images
    return diffusion_model.to_gray(out)[:, None].numpy()


def generated_images(stage04: str, n: int) -> np.ndarray:
    """n images (half per label) from a generation stage's manifest, N x 1 x H x W in [0, 1]."""
    import pandas as pd

    from lib.data import images
    from lib.core import paths

    d = paths.resolve(stage04)
    m = pd.read_csv(d / "manifest.csv")
    m = pd.concat([g.head(n // 2) for _, g in m.groupby("label")])
    return images.load_stack([str(d / f) for f in m["file"]], 32)[:, None]   # file: relative to the stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fresh", action="store_true", help="time a new build in a temporary folder")
    ap.add_argument("--n-phantoms", type=int, default=100)
    ap.add_argument("--generated", help="a fine-tuned model's images: a stage-04 folder (its manifest.csv) for "
                                        "generated-phantom cosines")
    args = ap.parse_args()
    torch.set_num_threads(1)

    if args.fresh:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            clip_offline.build(out_dir=tmp, progress=True)
            print(f"fresh build, {clip_offline.DEFAULT_STEPS} steps: {time.perf_counter() - start:.1f} s")
    ckpt = clip_offline.build(progress=True)
    meta = json.loads((ckpt.parent / "clip_offline.json").read_text())
    print(f"offline CLIP {clip_offline.OFFLINE_MODEL}: {ckpt}\n  built in {meta['build_seconds']} s "
          f"({meta['steps']} steps, batch {meta['batch']}, one thread)")

    print("\nretrieval on new corpus images (one per distinct caption):")
    for name, r in meta["retrieval"].items():
        print(f"  {name:17s} n={r['n']:3d}  i2t top1 {r['i2t_top1']:.2f} top5 {r['i2t_top5']:.2f}  "
              f"t2i top1 {r['t2i_top1']:.2f} top5 {r['t2i_top5']:.2f}  "
              f"(chance {r['chance_top1']:.3f} / {r['chance_top5']:.3f})")

    emb = embeddings.ClipEmbedder(EmbeddingConfig(clip_model=clip_offline.OFFLINE_MODEL, clip_pretrained="offline",
                                                  clip_image_size=None), device=torch.device("cpu"))
    phantoms = clip_offline.phantom_images(args.n_phantoms)
    corpus, _ = diffusion_model.shapes_corpus(args.n_phantoms, 32, seed=clip_offline.EVAL_SEED)
    samples = base_samples(args.n_phantoms)
    if samples is None:
        print("\n(the demo's tiny base model is not in models/: base-sample cosines skipped)")
    generated = generated_images(args.generated, args.n_phantoms) if args.generated else None
    report = clip_offline.cosine_report(emb.embed, phantoms, corpus, samples, generated)
    print(f"\nimage-image cosines ({args.n_phantoms} phantoms at 64 px, embedded at 32 px):")
    for pair, q in report.items():
        print(f"  {pair:20s} " + "  ".join(f"{k} {v:+.3f}" for k, v in q.items()))


if __name__ == "__main__":
    main()
