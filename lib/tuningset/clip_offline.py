"""A small general-purpose CLIP, pre-trained offline on the out-of-domain shapes corpus.

It plays the part of a web-trained CLIP that has never seen a chest X-ray: an open_clip model (a small
ViT image tower and a small text tower, open_clip's own classes) trained contrastively on
``diffusion_model.shapes_corpus`` images and captions. It is built once under
``models/clip-offline-<key>/`` and loaded back like any open_clip checkpoint file, through
``open_clip.create_model(OFFLINE_MODEL, pretrained=<that .pt file>)``. A user selects it with

    embedding:
      clip_model: ViT-Tiny-P4-32
      clip_pretrained: offline       # or the path of the .pt file
      clip_image_size: 32            # its native size (null works too)

About a tenth of the coloured captions (e.g. one colour pair with one shape) never appear in training,
so ``retrieval`` can report accuracy on unseen compositions as well as on new images.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..core import atomic, paths
from ..core.progress import tqdm

OFFLINE_MODEL = "ViT-Tiny-P4-32"
OFFLINE_TAG = "offline"
VERSION = 1                # bump when training changes what the weights mean
DEFAULT_STEPS = 250
BATCH = 128
CHECKPOINT = "open_clip_model.pt"
ARCH = {   # an open_clip model config: 32 px ViT with 4 px patches (64 tokens), 2-layer text tower
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 128, "layers": 4, "head_width": 32,
                   "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2,
                 "mlp_ratio": 2.0},
}
EVAL_SEED = 10_007         # corpus seed of the retrieval images (training draws from seeds 0, 1, ...)


class OfflineClipError(ValueError):
    """A CLIP checkpoint that is missing or does not fit the model it is loaded into."""


# ------------------------------------------------------------------------------------ registration
def register() -> str:
    """Make OFFLINE_MODEL an open_clip model name (its config json under models/), return the name."""
    import open_clip

    if OFFLINE_MODEL in open_clip.list_models():
        return OFFLINE_MODEL
    cfg = paths.MODELS / "open_clip_configs" / f"{OFFLINE_MODEL}.json"
    text = json.dumps(ARCH, indent=2, sort_keys=True) + "\n"
    if not cfg.is_file() or cfg.read_text() != text:
        atomic.write_text(cfg, text)
    open_clip.add_model_config(cfg)
    return OFFLINE_MODEL


def create(seed: int = 0):
    """An untrained OFFLINE_MODEL (seeded), built through open_clip's API."""
    import open_clip

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)   # open_clip warns "initialized randomly": here that is the point
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return open_clip.create_model(register())
    finally:
        root.setLevel(level)


# ------------------------------------------------------------------------------------------- cache
def offline_key(steps: int = DEFAULT_STEPS, seed: int = 0) -> str:
    blob = json.dumps([VERSION, OFFLINE_MODEL, ARCH, steps, BATCH, seed], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def offline_dir(steps: int = DEFAULT_STEPS, seed: int = 0) -> Path:
    return paths.MODELS / f"clip-offline-{offline_key(steps, seed)}"


def build(steps: int = DEFAULT_STEPS, seed: int = 0, out_dir=None, progress: bool = True) -> Path:
    """The checkpoint file of the offline CLIP, trained on first use (one process at a time)."""
    out = paths.resolve(out_dir) if out_dir is not None else offline_dir(steps, seed)
    ckpt = out / CHECKPOINT
    with atomic.exclusive(out.parent / f".{out.name}.lock", what=f"the offline CLIP build ({out.name})"):
        if not ckpt.is_file():
            _build(out, steps, seed, progress)
    return ckpt


def _build(out: Path, steps: int, seed: int, progress: bool) -> None:
    from ..core.compute import cpu_threads

    start = time.perf_counter()
    with cpu_threads(1, gpu_too=True):      # trained on the CPU whatever the machine
        model = train(steps, seed, progress)
    seconds = time.perf_counter() - start
    atomic.save_torch(out / CHECKPOINT, model.state_dict())   # a plain open_clip state dict
    acc = retrieval(model)
    atomic.write_json(out / "clip_offline.json", {
        "model": OFFLINE_MODEL, "arch": ARCH, "version": VERSION, "steps": steps, "batch": BATCH, "seed": seed,
        "build_seconds": round(seconds, 1), "retrieval": acc,
        "corpus": "diffusion_model.shapes_corpus (procedural shapes, out-of-domain; no chest X-rays)"})


def resolve_pretrained(model_name: str, pretrained: str | None, progress: bool = True) -> str | None:
    """What open_clip gets as ``pretrained``: 'offline' -> the cached checkpoint (built on first use), a
    checkpoint path -> that file (checked), a tag or None -> unchanged."""
    if model_name == OFFLINE_MODEL:
        register()
    if pretrained == OFFLINE_TAG:
        if model_name != OFFLINE_MODEL:
            raise OfflineClipError(f"embedding.clip_pretrained: {OFFLINE_TAG} is the offline CLIP {OFFLINE_MODEL}, "
                                   f"not {model_name!r}; set embedding.clip_model: {OFFLINE_MODEL}.")
        return str(build(DEFAULT_STEPS, progress=progress))
    if pretrained is not None and is_path(pretrained):
        local = paths.resolve(pretrained)
        if not local.is_file():
            raise OfflineClipError(f"CLIP checkpoint {local} does not exist (embedding.clip_pretrained); expected an "
                                   f"open_clip state dict of model {model_name!r}, or clip_pretrained: "
                                   f"{OFFLINE_TAG} for the offline {OFFLINE_MODEL}.")
        return str(local)
    return pretrained


def is_path(pretrained: str) -> bool:
    """A checkpoint path rather than an open_clip tag such as 'laion2b_s34b_b79k'."""
    return "/" in pretrained or "\\" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))


def pretrained_id(pretrained: str | None) -> str | None:
    """What the weights are, for cache keys: 'offline' names its build key, a path its size and mtime."""
    if pretrained == OFFLINE_TAG:
        return f"{OFFLINE_TAG}:{offline_key(DEFAULT_STEPS)}"
    if pretrained is not None and is_path(pretrained):
        local = paths.resolve(pretrained)
        st = local.stat() if local.is_file() else None
        return f"{local}:{st.st_size}:{st.st_mtime_ns}" if st else str(local)
    return pretrained


def mismatch_message(path: str, model_name: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"CLIP checkpoint {path} does not fit open_clip model {model_name!r} ({first}). It holds another "
            f"architecture: set embedding.clip_model to the model it was saved from (the offline CLIP is "
            f"{OFFLINE_MODEL}).")


# ------------------------------------------------------------------------------------------ training
def heldout_caption(caption: str) -> bool:
    """About 1 in 10 coloured captions are never trained on (unseen compositions for the report)."""
    if "black and white" in caption:
        return False
    return int(hashlib.sha256(caption.encode()).hexdigest(), 16) % 10 == 0


def training_corpus(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """n corpus images and captions at the model's size, held-out captions left out."""
    from ..finetune.diffusion_model import shapes_corpus

    size = ARCH["vision_cfg"]["image_size"]
    imgs, caps = shapes_corpus(int(n * 1.15) + 16, size, seed)
    keep = [i for i, c in enumerate(caps) if not heldout_caption(c)][:n]
    return imgs[keep], [caps[i] for i in keep]


def normalize(model, x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> the model's input, with the mean and std the embedder uses."""
    import open_clip

    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
    std = torch.tensor(pre.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1)
    return (x - mean) / std


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with the same caption is a positive: the corpus repeats
    captions within a batch, and calling those negatives would punish the right answer."""
    logits = scale * img @ txt.T
    target = same / same.sum(1, keepdim=True)
    ce = lambda lg: -(target * lg.log_softmax(1)).sum(1).mean()  # noqa: E731
    return (ce(logits) + ce(logits.T)) / 2


def train(steps: int = DEFAULT_STEPS, seed: int = 0, progress: bool = True):
    """Contrastive pre-training of a fresh OFFLINE_MODEL on the shapes corpus; returns it in eval mode."""
    import open_clip

    model = create(seed)
    tok = open_clip.get_tokenizer(OFFLINE_MODEL)
    imgs, caps = training_corpus(min(max(2048, steps * BATCH // 4), 16384), seed)
    x_all = normalize(model, torch.from_numpy(imgs))
    ids_all = tok(caps)
    cap_id = torch.as_tensor(np.unique(caps, return_inverse=True)[1])
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=0.05)
    warm = max(steps // 10, 1)   # linear warm-up, then cosine decay to zero
    lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 0.5 * (1 + np.cos(np.pi * s / steps))))
    model.train()
    for _ in tqdm(range(steps), desc="pre-training offline CLIP (out-of-domain shapes)", mininterval=2,
                  disable=not progress):
        idx = torch.randint(len(x_all), (BATCH,), generator=g)
        img = model.encode_image(x_all[idx], normalize=True)
        txt = model.encode_text(ids_all[idx], normalize=True)
        same = (cap_id[idx][:, None] == cap_id[idx][None, :]).float()
        loss = contrastive_loss(img, txt, model.logit_scale.exp().clamp(max=100), same)
        opt.zero_grad(); loss.backward(); opt.step(); lr.step()
    return model.eval()


# -------------------------------------------------------------------------------------------- report
@torch.inference_mode()
def encode(model, images: np.ndarray, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised image and caption embeddings of an in-memory model (images N x 3 x H x W in [0, 1])."""
    import open_clip

    x = normalize(model, torch.as_tensor(images).float())
    img = model.encode_image(x, normalize=True).numpy()
    txt = model.encode_text(open_clip.get_tokenizer(OFFLINE_MODEL)(captions), normalize=True).numpy()
    return img, txt


def _topk(sim: np.ndarray, k: int) -> float:
    """Share of rows whose own column (the diagonal) ranks in the top k."""
    rank = (sim > np.diag(sim)[:, None]).sum(1)
    return float((rank < k).mean())


def retrieval(model, n: int = 100, seed: int = EVAL_SEED) -> dict:
    """Top-1/top-5 image->text and text->image accuracy on new images, one per distinct caption, for
    captions seen in training and for held-out (never trained) compositions; chance is k / n."""
    from ..finetune.diffusion_model import shapes_corpus

    imgs, caps = shapes_corpus(4000, ARCH["vision_cfg"]["image_size"], seed)
    first = {}
    for i, c in enumerate(caps):
        first.setdefault(c, i)
    out = {}
    for name, want in (("seen_captions", False), ("heldout_captions", True)):
        idx = [i for c, i in first.items() if heldout_caption(c) == want][:n]
        img, txt = encode(model, imgs[idx], [caps[i] for i in idx])
        sim = img @ txt.T
        out[name] = {"n": len(idx), "chance_top1": 1 / len(idx), "chance_top5": min(5 / len(idx), 1.0),
                     **{f"{d}_top{k}": _topk(s, k) for d, s in (("i2t", sim), ("t2i", sim.T)) for k in (1, 5)}}
    return out


def phantom_images(n: int = 100, size: int = 64, seed: int = 0) -> np.ndarray:
    """n phantoms (N x 1 x H x W), half without findings and half with one random finding."""
    from ..data.phantoms import FINDINGS, draw

    r = np.random.default_rng(seed)
    rows = [([] if i % 2 == 0 else [FINDINGS[r.integers(len(FINDINGS))]]) for i in range(n)]
    return np.stack([draw(f"{i:08d}_000.png", str(i), f, size=size, seed=seed) for i, f in enumerate(rows)])[:, None]


def _quantiles(values: np.ndarray, qs=(0.05, 0.25, 0.5, 0.75, 0.95)) -> dict:
    return {f"q{int(q * 100):02d}": float(np.quantile(values, q)) for q in qs}


def cosine_report(embed, phantoms: np.ndarray, corpus: np.ndarray, samples: np.ndarray | None = None,
                  generated: np.ndarray | None = None) -> dict:
    """Quantiles of image-image cosines for the sets a gating threshold sits between: ``samples`` of the base
    model and ``generated`` images of a fine-tuned one. ``embed`` maps N x C x H x W images in [0, 1] to
    L2-normalised rows (e.g. ClipEmbedder.embed)."""
    p = embed(phantoms)
    pp = p @ p.T
    out = {"phantom-phantom": _quantiles(pp[~np.eye(len(p), dtype=bool)])}
    if generated is not None:
        out["generated-phantom"] = _quantiles((embed(generated) @ p.T).ravel())
    if samples is not None:
        out["base_sample-phantom"] = _quantiles((embed(samples) @ p.T).ravel())
    out["corpus-phantom"] = _quantiles((embed(corpus) @ p.T).ravel())
    return out
