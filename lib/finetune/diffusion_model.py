"""The base text-to-image model: any diffusers Stable Diffusion checkpoint, or a tiny one built offline.

The tiny model has the Stable Diffusion architecture (AutoencoderKL, UNet2DConditionModel, CLIP text
encoder and a CLIP BPE tokenizer built from the vocabulary open_clip ships). It is pre-trained briefly
on an *out-of-domain* corpus of procedurally drawn coloured shapes and textures with captions, so it
plays a general pre-trained model that has never seen a chest X-ray. It is written with
``save_pretrained`` under ``models/tiny-sd-<key>/`` and always loaded back through the same
``StableDiffusionPipeline.from_pretrained`` call a real checkpoint goes through.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..core import atomic, paths
from ..core.compute import cpu_threads, device as default_device
from ..core.progress import tqdm

TINY_VERSION = 4
TINY_MERGES = 6000          # BPE merges kept for the tiny tokenizer (the full CLIP list has 48,894)
TINY_MAX_TOKENS = 24        # text length of the tiny encoder (CLIP: 77)


class ModelNotFoundError(OSError):
    """A base model id or folder that cannot be loaded."""


# ------------------------------------------------------------------------------------------ tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode map (needed to write a byte-level BPE vocabulary)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tokenizer(out_dir: Path, n_merges: int = TINY_MERGES, max_length: int = TINY_MAX_TOKENS):
    """A CLIP tokenizer from open_clip's bundled BPE merges (no download), truncated to n_merges."""
    import open_clip
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1: 1 + n_merges]
    merges = [tuple(m.split()) for m in merges if m.strip()]
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer(vocab=str(out_dir / "vocab.json"), merges=str(out_dir / "merges.txt"),
                        model_max_length=max_length)
    return tok


# ------------------------------------------------------------------------------------- architecture
def tiny_components(resolution: int = 32, vocab_size: int | None = None, seed: int = 0) -> dict:
    """Untrained tiny SD components: VAE 2x down (32 px -> 16x16x4 latents), 2-level UNet, 2-layer text encoder.

    A 4x VAE (8x8 latents) halves the UNet's cost but does not learn to reconstruct in a CPU-minute."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=resolution,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                        mid_block_add_attention=False)
    # Cross-attention on the coarse level only: attention over 16x16 tokens would double the step time.
    unet = UNet2DConditionModel(sample_size=resolution // 2, in_channels=4, out_channels=4,
                                block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=64, attention_head_dim=4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size or 49408, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        max_position_embeddings=TINY_MAX_TOKENS, projection_dim=64,
                                        bos_token_id=vocab_size - 2 if vocab_size else 49406,
                                        eos_token_id=vocab_size - 1 if vocab_size else 49407,
                                        pad_token_id=vocab_size - 1 if vocab_size else 49407))
    # SD's scaled-linear betas with v-prediction (as SD 2.x): at high noise an epsilon target carries almost
    # no signal, so a few hundred CPU steps never learn the global layout; a v target does.
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, prediction_type="v_prediction", clip_sample=False, steps_offset=1)
    return {"vae": vae, "unet": unet, "text_encoder": text, "scheduler": sched}


# --------------------------------------------------------------------------- out-of-domain corpus
_COLORS = {"red": (0.9, 0.15, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.3, 0.9),
           "yellow": (0.95, 0.85, 0.1), "purple": (0.6, 0.2, 0.75), "orange": (1.0, 0.55, 0.05),
           "white": (0.97, 0.97, 0.97), "black": (0.05, 0.05, 0.05), "gray": (0.5, 0.5, 0.5),
           "pink": (1.0, 0.6, 0.75)}
_SHAPES = ["circle", "square", "triangle", "ring", "stripes", "checkerboard", "dots", "gradient", "blob", "cross",
           "speckle"]


def _shape_mask(shape: str, r: np.random.Generator, size: int) -> np.ndarray:
    lin = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(lin, lin, indexing="ij")
    cx, cy, s = r.uniform(-0.35, 0.35), r.uniform(-0.35, 0.35), r.uniform(0.3, 0.65)
    soft = lambda d: 1 / (1 + np.exp(np.clip(d * size / 2, -40, 40)))  # noqa: E731
    if shape == "circle":
        return soft(np.hypot(x - cx, y - cy) - s)
    if shape == "square":
        return soft(np.maximum(abs(x - cx), abs(y - cy)) - s * 0.8)
    if shape == "triangle":
        return soft(np.maximum.reduce([-(y - cy) - s * 0.7, (y - cy) + 2 * abs(x - cx) - s]))
    if shape == "ring":
        return soft(abs(np.hypot(x - cx, y - cy) - s * 0.8) - 0.12)
    if shape == "cross":
        return soft(np.minimum(np.maximum(abs(x - cx) - 0.12, abs(y - cy) - s),
                               np.maximum(abs(y - cy) - 0.12, abs(x - cx) - s)))
    if shape == "stripes":
        a = r.uniform(0, np.pi)
        return (np.sin((x * np.cos(a) + y * np.sin(a)) * r.uniform(6, 14)) > 0).astype(float)
    if shape == "checkerboard":
        f = r.integers(2, 6)
        return ((np.floor((x + 1) * f) + np.floor((y + 1) * f)) % 2).astype(float)
    if shape == "dots":
        f = r.uniform(5, 10)
        return soft(np.hypot(np.sin(x * f), np.sin(y * f)) - 0.5)
    if shape == "gradient":
        a = r.uniform(0, 2 * np.pi)
        return np.clip((x * np.cos(a) + y * np.sin(a) + 1) / 2, 0, 1)
    from scipy import ndimage

    if shape == "speckle":   # fine grain, so the VAE also learns texture
        f = ndimage.gaussian_filter(r.standard_normal((size, size)), r.uniform(0.5, 1.5))
        return np.clip(0.5 + f / (f.std() + 1e-8) * 0.25, 0, 1)
    # blob: a smooth random field thresholded softly

    f = ndimage.gaussian_filter(r.standard_normal((size, size)), size / 8)
    return soft(-(f / (f.std() + 1e-8)) * 0.15)


def shapes_corpus(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """n coloured RGB images in [0, 1] (N x 3 x H x W) with captions like 'a red circle on a blue background'."""
    r = np.random.default_rng(seed)
    names = list(_COLORS)
    imgs, caps = np.empty((n, 3, size, size), np.float32), []
    for i in range(n):
        shape = _SHAPES[r.integers(len(_SHAPES))]
        fg, bg = r.choice(len(names), 2, replace=False)
        m = _shape_mask(shape, r, size)[None]
        img = m * np.array(_COLORS[names[fg]])[:, None, None] + (1 - m) * np.array(_COLORS[names[bg]])[:, None, None]
        if r.random() < 0.3:   # some black-and-white pictures, so grayscale input is not new to the VAE
            img = np.repeat(img.mean(0, keepdims=True) * r.uniform(0.6, 1.4), 3, 0)
            caps.append(f"a black and white {shape}")
        else:
            caps.append(f"a {names[fg]} {shape} on a {names[bg]} background")
        imgs[i] = np.clip(img + 0.03 * r.standard_normal(img.shape), 0, 1)
    return imgs, caps


# -------------------------------------------------------------------------------------- pre-training
def _pretrain_vae(vae, x_all: torch.Tensor, steps: int, g: torch.Generator, bar) -> None:
    """Reconstruction (+ a tiny KL) on random half-size crops: the VAE is convolutional, and crops make
    its training 4x cheaper."""
    import torch.nn.functional as F

    res = x_all.shape[-1]
    crop, bs = max(res // 2, 16), 32
    opt = torch.optim.AdamW(vae.parameters(), 2e-3)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.1)
    vae.train()
    for _ in range(steps):
        i, j = torch.randint(res - crop + 1, (2,), generator=g).tolist()
        x = x_all[torch.randint(len(x_all), (bs,), generator=g)][:, :, i:i + crop, j:j + crop]
        post = vae.encode(x).latent_dist
        # Decode the posterior mean: training and sampling only ever use the mean, and sampling noise
        # of unit variance would swamp a few hundred steps of training.
        rec = vae.decode(post.mean).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(); loss.backward(); opt.step(); lr.step()
        bar.update(1)
    vae.eval().requires_grad_(False)


def _pretrain(comp: dict, tokenizer, steps: int, resolution: int, seed: int, progress: bool) -> None:
    """Out-of-domain pre-training: the VAE learns to reconstruct, then UNet + text encoder learn the captions."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    vae, unet, text, sched = comp["vae"], comp["unet"], comp["text_encoder"], comp["scheduler"]
    imgs, caps = shapes_corpus(max(512, 8 * steps), resolution, seed)
    x_all = torch.from_numpy(imgs) * 2 - 1
    bar = tqdm(total=2 * steps, desc="pre-training tiny base model (out-of-domain shapes)",
               mininterval=2, disable=not progress)
    _pretrain_vae(vae, x_all, steps, g, bar)
    with torch.no_grad():
        lat = torch.cat([vae.encode(x_all[i:i + 256]).latent_dist.mean for i in range(0, len(x_all), 256)])
    # SD convention: latents scaled to unit variance by the VAE's scaling_factor.
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    lat = lat * vae.config.scaling_factor
    ids_all = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                      return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, 1e-3)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.1)
    unet.train(); text.train()
    bs = 16
    for _ in range(steps):
        idx = torch.randint(len(lat), (bs,), generator=g)
        ids = ids_all[idx].clone()
        ids[torch.rand(bs, generator=g) < 0.1] = empty[0]   # caption dropout: teaches the unconditional branch
        z = lat[idx]
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (bs,), generator=g)
        pred = unet(sched.add_noise(z, noise, t), t, text(ids)[0]).sample
        loss = F.mse_loss(pred, sched.get_velocity(z, noise, t))
        opt.zero_grad(); loss.backward(); opt.step(); lr.step()
        bar.update(1)
    bar.close()
    unet.eval(); text.eval()


def tiny_key(resolution: int, pretrain_steps: int, seed: int) -> str:
    blob = json.dumps([TINY_VERSION, TINY_MERGES, resolution, pretrain_steps, seed])
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def tiny_dir(resolution: int = 32, pretrain_steps: int = 0, seed: int = 0) -> Path:
    return paths.MODELS / f"tiny-sd-{tiny_key(resolution, pretrain_steps, seed)}"


def build_tiny(resolution: int = 32, pretrain_steps: int = 0, seed: int = 0, out_dir=None,
               progress: bool = True) -> Path:
    """Build (once) and save a tiny SD pipeline folder; pretrain_steps=0 gives an untrained model quickly."""
    if resolution % 8:
        raise ValueError(f"tiny model resolution {resolution} must be a multiple of 8.")
    out = paths.resolve(out_dir) if out_dir is not None else tiny_dir(resolution, pretrain_steps, seed)
    # Parallel sweep points wait for one build instead of each building (and replacing) the same model.
    with atomic.exclusive(out.parent / f".{out.name}.lock"):
        return out if (out / "model_index.json").exists() else _build_tiny(out, resolution, pretrain_steps, seed, progress)


def _build_tiny(out: Path, resolution: int, pretrain_steps: int, seed: int, progress: bool) -> Path:
    from diffusers import StableDiffusionPipeline

    with tempfile.TemporaryDirectory() as tmp, cpu_threads(1, gpu_too=True):   # built on the CPU
        tok = build_tokenizer(Path(tmp) / "tok")
        comp = tiny_components(resolution, vocab_size=len(tok), seed=seed)
        if pretrain_steps > 0:
            _pretrain(comp, tok, pretrain_steps, resolution, seed, progress)
        pipe = StableDiffusionPipeline(**comp, tokenizer=tok, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        # Write next to the target, then rename: a killed build never leaves a half model behind.
        with atomic.atomic_dir(out, replace=True) as staging:
            pipe.save_pretrained(staging)
            (staging / "tiny_sd.json").write_text(json.dumps(
                {"version": TINY_VERSION, "resolution": resolution, "pretrain_steps": pretrain_steps,
                 "seed": seed, "corpus": "procedural coloured shapes and textures (out-of-domain)"}, indent=2))
    return out


# ------------------------------------------------------------------------------------------- loading
def resolve_base(base: str, resolution: int | None = None, pretrain_steps: int | None = None,
                 seed: int = 0, progress: bool = True) -> str:
    """'tiny' -> the cached tiny model folder (built on first use); a local folder -> its absolute path;
    anything else is taken as a Hugging Face model id."""
    if base == "tiny":
        from ..core.config import ModelConfig

        d = ModelConfig()
        return str(build_tiny(resolution or d.resolution,
                              d.tiny_pretrain_steps if pretrain_steps is None else pretrain_steps, seed,
                              progress=progress))
    local = paths.resolve(base)
    if local.exists():
        if not (local / "model_index.json").exists():
            raise ModelNotFoundError(f"{local} exists but is not a diffusers pipeline folder (no model_index.json).")
        return str(local)
    if base.startswith((".", "/", "~")) or base.startswith(("models/", "runs/")) or base.count("/") > 1:
        raise ModelNotFoundError(f"model folder {local} does not exist. Give an existing local pipeline folder, "
                                 "a Hugging Face id such as 'stable-diffusion-v1-5/stable-diffusion-v1-5', "
                                 "or 'tiny' for the model built offline.")
    return base


def base_for(model_cfg, seed: int = 0, progress: bool = True) -> str:
    """The base model a ModelConfig names, as a loadable id or folder (tiny built with its settings)."""
    if model_cfg.base == "tiny":
        return str(build_tiny(model_cfg.resolution, model_cfg.tiny_pretrain_steps, seed, progress=progress))
    return resolve_base(model_cfg.base)


def load_pipeline(base: str, revision: str | None = None, device=None, dtype=None):
    """A StableDiffusionPipeline (safety_checker=None) from 'tiny', a Hugging Face id or a local folder."""
    from diffusers import StableDiffusionPipeline

    src = resolve_base(str(base))
    device = torch.device(device) if device is not None else default_device()
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        pipe = StableDiffusionPipeline.from_pretrained(src, revision=revision, dtype=dtype,
                                                       safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"could not load the base model {base!r}{f' (revision {revision})' if revision else ''}: {exc}\n"
            "This machine may be offline or the id may be misspelt. Download the checkpoint where there is "
            "internet (e.g. `huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 "
            "--local-dir models/sd15`), copy it here and set model.base to that folder (model.base: "
            "models/sd15), or use model.base: tiny for the model built offline.") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """Pipeline output (N x 3 x H x W in [0, 1]) -> N x H x W grayscale, as the phantoms are stored."""
    return images.float().mean(1).clamp(0, 1)
