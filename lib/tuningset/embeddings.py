"""Image embeddings for clustering and gating: pixel vectors, CLIP (open_clip), optional XRV features.

Every embedder has a ``key`` that hashes its whole configuration; embeddings are cached on disk under
``data/cache/embeddings/<key>/load<size>/``, one vector per image content hash. A rerun, or a later
notebook (the gating step embeds the same tuning images), finds them there; a different embedder
configuration has a different key and therefore never reads another configuration's vectors.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import atomic, compute, paths
from ..data import images
from ..core.config import EmbeddingConfig
from ..core.progress import tqdm

log = logging.getLogger(__name__)
KINDS = ("pixel", "clip", "xrv")
INIT_SEED = 0          # random-weight CLIP is built under this seed, so every process gets the same model
_FORMAT = 1            # bump when the stored vectors of an embedder change meaning


class EmbeddingError(ValueError):
    """Embeddings that cannot be computed or trusted; the message says what to fix."""


class EmbedderUnavailable(EmbeddingError):
    """An optional embedder whose weights are not on disk (nothing is downloaded implicitly)."""


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _check_finite(vectors: np.ndarray, what: str) -> np.ndarray:
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise EmbeddingError(f"{int(bad.sum())} of {len(vectors)} {what} contain NaN or inf (rows "
                             f"{np.flatnonzero(bad)[:5].tolist()}); check those images and the model's weights.")
    return vectors


def _l2(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class _Embedder:
    """Common part: a config dict (what the vectors depend on), its key, batched embedding."""

    kind = ""
    batch_size = 64

    def __init__(self, config: dict):
        self._keyed(config)

    def _keyed(self, config: dict) -> str:
        self.config = {"kind": self.kind, "format": _FORMAT, **config}
        self.key = f"{self.kind}-{_digest(self.config)}"
        return self.key

    def _embed_batch(self, x):  # x: B x C x H x W float tensor in [0, 1]
        raise NotImplementedError

    def embed(self, images, progress: bool = False) -> np.ndarray:
        """N x 1|3 x H x W tensor (or N x H x W array) in [0, 1] -> N x D float32 array."""
        import torch

        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).float()
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise EmbeddingError(f"images must be N x 1|3 x H x W, got shape {tuple(x.shape)}.")
        out = []
        starts = range(0, len(x), self.batch_size)
        with torch.inference_mode():
            for s in tqdm(starts, desc=f"{self.kind} embeddings", disable=not progress, mininterval=2):
                out.append(self._embed_batch(x[s: s + self.batch_size]))
        dim = out[0].shape[1] if out else 0
        return _check_finite(np.concatenate(out) if out else np.zeros((0, dim), np.float32),
                             f"{self.kind} embeddings")


class PixelEmbedder(_Embedder):
    """Downsampled grayscale images, flattened (area averaging, so no aliasing)."""

    kind = "pixel"

    def __init__(self, size: int, batch_size: int = 256):
        super().__init__({"pixel_size": int(size)})
        self.size, self.batch_size = int(size), batch_size

    def _embed_batch(self, x):
        import torch.nn.functional as F

        g = F.interpolate(x.mean(dim=1, keepdim=True), size=(self.size, self.size), mode="area")
        return g.flatten(1).numpy().astype(np.float32)


def _clip_config(emb_cfg: EmbeddingConfig) -> dict:
    """What CLIP vectors depend on (batch size and cache folder do not)."""
    from .clip_offline import pretrained_id

    return {"model": emb_cfg.clip_model, "pretrained": pretrained_id(emb_cfg.clip_pretrained),
            "image_size": emb_cfg.clip_image_size,
            "init_seed": INIT_SEED if emb_cfg.clip_pretrained is None else None}


class ClipEmbedder(_Embedder):
    """open_clip image tower; real weights when ``clip_pretrained`` names them, random weights otherwise."""

    kind = "clip"

    def __init__(self, emb_cfg: EmbeddingConfig, device=None):
        super().__init__(_clip_config(emb_cfg))
        import open_clip
        import torch

        from . import clip_offline

        self.batch_size = emb_cfg.batch_size
        self.random_weights = emb_cfg.clip_pretrained is None
        kw = {"force_image_size": emb_cfg.clip_image_size} if emb_cfg.clip_image_size else {}
        try:   # 'offline' -> the cached offline CLIP's checkpoint (built on first use); paths are checked
            pretrained = clip_offline.resolve_pretrained(emb_cfg.clip_model, emb_cfg.clip_pretrained)
        except clip_offline.OfflineClipError as exc:
            raise EmbeddingError(str(exc)) from exc
        try:
            # Seeded so that random weights are the same model in every process (cache and gating agree).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(INIT_SEED)
                model = open_clip.create_model(emb_cfg.clip_model, pretrained=pretrained, **kw)
        except Exception as exc:  # unknown name, no network, missing file: say what to change
            if pretrained is not None and clip_offline.is_path(pretrained):
                raise EmbeddingError(clip_offline.mismatch_message(pretrained, emb_cfg.clip_model, exc)) from exc
            raise EmbeddingError(
                f"could not build CLIP {emb_cfg.clip_model!r} with pretrained={emb_cfg.clip_pretrained!r}: {exc}. "
                "Check embedding.clip_model against open_clip.list_models(); offline, set "
                "embedding.clip_pretrained: null (random weights), or clip_model: ViT-Tiny-P4-32 with "
                "clip_pretrained: offline (a small CLIP pre-trained here on shapes), or put the weights in the HF cache first."
            ) from exc
        self.device = device or compute.device()
        self.model = model.visual.eval().to(self.device)
        size = self.model.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        pre = getattr(self.model, "preprocess_cfg", {}) or {}
        self.mean = torch.tensor(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1).to(self.device)
        self.std = torch.tensor(pre.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1).to(self.device)

    def _embed_batch(self, x):
        import torch
        import torch.nn.functional as F

        x = x.to(self.device)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", antialias=True, align_corners=False)
        x = (x.clamp(0, 1) - self.mean) / self.std
        cuda = self.device.type == "cuda"
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=cuda):
            feats = self.model(x)
        return _l2(feats.float().cpu().numpy())


class XrvEmbedder(_Embedder):
    """torchxrayvision DenseNet ``features2`` (1024-d), only when its weights file is already on disk."""

    kind = "xrv"

    def __init__(self, emb_cfg: EmbeddingConfig, device=None):
        super().__init__({"weights": emb_cfg.xrv_weights})
        import torchxrayvision as xrv

        name = emb_cfg.xrv_weights
        if not name or name not in xrv.models.model_urls:
            raise EmbedderUnavailable(f"embedding.xrv_weights = {name!r}; set it to a torchxrayvision DenseNet "
                                      "weights name such as 'densenet121-res224-all'.")
        local = Path(xrv.utils.get_cache_dir()) / Path(xrv.models.model_urls[name]["weights_url"]).name
        if not local.is_file():
            raise EmbedderUnavailable(f"XRV weights {name!r} are not on disk ({local}); download "
                                      f"{xrv.models.model_urls[name]['weights_url']} there, or drop the xrv method.")
        self.batch_size = emb_cfg.batch_size
        self.device = device or compute.device()
        self.model = xrv.models.DenseNet(weights=name).eval().to(self.device)

    def _embed_batch(self, x):
        import torch.nn.functional as F

        x = F.interpolate(x.mean(dim=1, keepdim=True).to(self.device), size=(224, 224), mode="bilinear",
                          align_corners=False)
        return _l2(self.model.features2(x * 2048.0 - 1024.0).float().cpu().numpy())  # XRV's [-1024, 1024] range


@lru_cache(maxsize=4)
def _clip_cached(model: str, pretrained: str | None, image_size: int | None) -> ClipEmbedder:
    return ClipEmbedder(EmbeddingConfig(clip_model=model, clip_pretrained=pretrained, clip_image_size=image_size))


def clip_embedder(emb_cfg: EmbeddingConfig) -> ClipEmbedder:
    """The CLIP embedder for this config (``.embed(images)``, ``.key``), built once per process and shared."""
    emb = _clip_cached(emb_cfg.clip_model, emb_cfg.clip_pretrained, emb_cfg.clip_image_size)
    emb.batch_size = emb_cfg.batch_size
    return emb


def clip_key(emb_cfg: EmbeddingConfig) -> str:
    """The cache key of the CLIP embedder for this config, without building the model."""
    return _Embedder.__new__(ClipEmbedder)._keyed(_clip_config(emb_cfg))


def embedder(kind: str, emb_cfg: EmbeddingConfig):
    if kind == "pixel":
        return PixelEmbedder(emb_cfg.pixel_size)
    if kind == "clip":
        return clip_embedder(emb_cfg)
    if kind == "xrv":
        return XrvEmbedder(emb_cfg)
    raise EmbeddingError(f"unknown embedding kind {kind!r}; use one of {', '.join(KINDS)}.")


# ------------------------------------------------------------------------------------------ cache
_HEX16 = re.compile(r"^[0-9a-f]{16}$")


def content_hashes(df: pd.DataFrame) -> list[str]:
    """The manifest's content hashes; recomputed from the files where the manifest has none (ids are not content)."""
    have = df["hash"].astype(str).tolist() if "hash" in df else [""] * len(df)
    ids = df["image_id"].astype(str).tolist() if "image_id" in df else [None] * len(df)
    return [h if _HEX16.match(h) and h != i else images.content_hash(paths.resolve(p).read_bytes())
            for h, i, p in zip(have, ids, df["path"])]


class Cache:
    """Vectors of one embedder at one load size, keyed by image content hash; append-only shards."""

    def __init__(self, root: str | Path, key: str, config: dict, size: int):
        self.dir = paths.resolve(root) / key / f"load{int(size)}"
        self.config = {**config, "load_size": int(size)}
        meta = self.dir / "config.json"
        if meta.exists():
            stored = json.loads(meta.read_text())
            if stored != json.loads(json.dumps(self.config, default=str)):
                raise EmbeddingError(f"embedding cache {self.dir} was written by another embedder config "
                                     f"({stored}), not {self.config}; delete that folder.")
        else:
            atomic.write_json(meta, self.config)

    def load(self) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for shard in sorted(self.dir.glob("part-*.npz")):
            with np.load(shard, allow_pickle=False) as z:
                found.update(zip(z["hashes"].tolist(), z["vectors"]))
        return found

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        if not hashes:
            return
        target = self.dir / f"part-{_digest(sorted(hashes))}.npz"
        with atomic.atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, hashes=np.asarray(hashes), vectors=vectors.astype(np.float32))


def embed_manifest(df: pd.DataFrame, kind: str, emb_cfg: EmbeddingConfig, size: int, progress: bool = True,
                   stats: dict | None = None) -> np.ndarray:
    """N x D embeddings of a manifest's images (loaded at ``size``), computing only what the cache lacks.

    ``stats``, when given, receives {"cached": ..., "computed": ..., "key": ...}.
    """
    if kind not in KINDS:
        raise EmbeddingError(f"unknown embedding kind {kind!r}; use one of {', '.join(KINDS)}.")
    hashes = content_hashes(df)
    emb = PixelEmbedder(emb_cfg.pixel_size, emb_cfg.batch_size) if kind == "pixel" else embedder(kind, emb_cfg)
    cache = Cache(emb_cfg.cache_dir, emb.key, emb.config, size)
    stored = cache.load()
    todo = list(dict.fromkeys(h for h in hashes if h not in stored))   # unique, in manifest order
    first_path = dict(zip(hashes, df["path"]))
    chunk = max(emb_cfg.batch_size * 8, 256)   # load images a chunk at a time (bounded memory at NIH scale)
    bar = tqdm(total=len(todo), desc=f"{kind} embeddings", disable=not progress or not todo, mininterval=2)
    for s in range(0, len(todo), chunk):
        part = todo[s: s + chunk]
        vectors = emb.embed(images.load_stack([first_path[h] for h in part], size))
        cache.add(part, vectors)
        stored.update(zip(part, vectors))
        bar.update(len(part))
    bar.close()
    if stats is not None:
        stats.update(cached=len(set(hashes)) - len(todo), computed=len(todo), key=emb.key)
    log.info("%s embeddings: %d cached, %d computed (%s)", kind, len(set(hashes)) - len(todo), len(todo), emb.key)
    out = np.stack([stored[h] for h in hashes]).astype(np.float32) if hashes else np.zeros((0, 0), np.float32)
    return _check_finite(out, f"{kind} embeddings from the cache")


def describe(kind: str, emb_cfg: EmbeddingConfig) -> str:
    """One line on where the vectors come from; random CLIP weights are said plainly (no model is built)."""
    if kind == "pixel":
        return f"pixel: grayscale images downsampled to {emb_cfg.pixel_size}x{emb_cfg.pixel_size}, flattened."
    if kind == "clip":
        size = f"{emb_cfg.clip_image_size} px" if emb_cfg.clip_image_size else "its native size"
        if emb_cfg.clip_pretrained is None:
            return (f"clip: open_clip {emb_cfg.clip_model} at {size} with RANDOM weights (embedding.clip_pretrained "
                    "is null, the offline default). These CLIP embeddings carry no pre-trained semantics; set "
                    "embedding.clip_pretrained (e.g. laion2b_s34b_b79k) for real CLIP features.")
        if emb_cfg.clip_pretrained == "offline":
            return (f"clip: open_clip {emb_cfg.clip_model} at {size}, pre-trained offline on the out-of-domain shapes "
                    "corpus (lib/tuningset/clip_offline.py; never on chest X-rays).")
        return f"clip: open_clip {emb_cfg.clip_model} at {size}, pretrained weights {emb_cfg.clip_pretrained!r}."
    return f"xrv: torchxrayvision DenseNet features2, weights {emb_cfg.xrv_weights!r}."
