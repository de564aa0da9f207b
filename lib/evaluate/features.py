"""Feature extractors for the fidelity, diversity and memorization metrics: one parameter, ``fidelity.extractor``.

- ``inception``: the FID Inception-v3 of torch-fidelity (2048-d pool features) through torchmetrics. Its
  weights are used only when on disk; nothing is downloaded, and the error names the file and the folder.
- ``clip``: the suite's CLIP (lib.tuningset.embeddings.clip_embedder with the run's EmbeddingConfig), L2-normalised.
- ``xrv``: torchxrayvision's DenseNet ``features2`` (lib.tuningset.embeddings.XrvEmbedder), weights on disk only.
- ``classifier``: the real-trained CheXNet's penultimate layer: DenseNet features, ReLU, global average
  pooling, i.e. what ``net.classifier`` reads (e.g. ``<05_real_baseline>/classifier_real.pt``).
- ``pixel``: grayscale pixels at ``embedding.pixel_size`` (no model; the cheap trace during fine-tuning).

**One resize rule.** Every image is read as grayscale and resized once, with PIL's bilinear filter (which
averages over the source pixels when it shrinks), straight to the extractor's input size (inception 299,
xrv 224, clip its image size, classifier ``classifier.input_size``, pixel ``embedding.pixel_size``);
extractors that take RGB get the gray channel replicated. Arrays (validation images) go through the same
PIL filter after rounding to 8 bits, so an array and its PNG give the same vector. No extractor resizes again.

Vectors are cached like the clustering embeddings (lib.tuningset.embeddings.Cache): under the extractor's key (a
hash of its whole configuration; for the classifier, of its weights' bytes) and the image content hash.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..core import atomic, compute, paths
from ..tuningset import embeddings
from ..data import images
from ..core.config import Config
from ..core.progress import tqdm

log = logging.getLogger(__name__)
EXTRACTORS = ("inception", "clip", "xrv", "classifier", "pixel")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


class FeatureUnavailable(embeddings.EmbedderUnavailable):
    """An extractor whose weights (or package) are not on this machine; the message says what to put where."""


# ------------------------------------------------------------------------------------------ resizing
def resize(stack, size: int) -> np.ndarray:
    """N x H x W images (uint8, or float in [0, 1]) -> N x size x size float32 in [0, 1], by the one rule:
    8-bit grayscale, PIL bilinear (as images.load_gray does for files)."""
    arr = np.asarray(stack)
    if arr.dtype != np.uint8:
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    out = np.empty((len(arr), size, size), np.float32)
    for i, im in enumerate(arr):
        pil = Image.fromarray(im)
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(pil, dtype=np.float32) / 255.0
    return out


# ---------------------------------------------------------------------------------------- extractors
def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def penultimate(model, x):
    """CheXNet's pooled features for a batch x (N x 1|3 x H x W in [0, 1]): the head's input, for any backbone
    (DenseNet's features, ReLU, average pooling; a timm model's pre-logits; lib.evaluate.classifier.CheXNet.penultimate)."""
    return model.penultimate(x)


def _head_key(model) -> str:
    """The state-dict key of a CheXNet's head weight (net.classifier.weight for DenseNet, e.g. net.fc.weight)."""
    head = model.head()
    return next(f"{name}.weight" for name, mod in model.named_modules() if mod is head)


class ClassifierFeatures(embeddings._Embedder):
    """The penultimate layer of a trained lib.evaluate.classifier.CheXNet, loaded from its state dict."""

    kind = "classifier"

    def __init__(self, weights: str | Path, arch: str, input_size: int, device=None):
        import torch

        from .classifier import CheXNet

        path = paths.resolve(weights)
        if not path.is_file():
            raise FeatureUnavailable(
                f"classifier weights {path} not found; fidelity.extractor = 'classifier' reads the real-trained "
                "classifier's state dict, which stage 05 writes as <05_real_baseline folder>/classifier_real.pt.")
        super().__init__({"weights_sha256": _file_digest(path), "arch": arch, "input_size": int(input_size)})
        state = torch.load(path, map_location="cpu")
        model = CheXNet(arch, "none", 2)
        model = CheXNet(arch, "none", int(state[_head_key(model)].shape[0]))   # the head's size, any backbone
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise embeddings.EmbeddingError(f"{path} is not a CheXNet state dict of arch {arch!r} "
                                            f"(classifier.arch): {str(exc)[:200]}") from exc
        self.device = device or compute.device()
        self.model = model.eval().to(self.device)
        self.input_size = int(input_size)

    def _embed_batch(self, x):
        return penultimate(self.model, x.to(self.device)).float().cpu().numpy()


def inception_weights(weights: str | None = None) -> Path:
    """Where the FID Inception weights are read from: fidelity.inception_weights, or torch hub's checkpoints."""
    import torch

    return paths.resolve(weights) if weights else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


class InceptionFeatures(embeddings._Embedder):
    """torch-fidelity's FID Inception-v3 (via torchmetrics' NoTrainInceptionV3), 2048-d, from a file on disk."""

    kind = "inception"
    input_size = 299

    def __init__(self, weights: str | None = None, device=None):
        path = inception_weights(weights)
        if not path.is_file():
            raise FeatureUnavailable(
                f"the FID Inception weights are not on disk: download {INCEPTION_FILE} from {INCEPTION_URL} and "
                f"save it as {path} (in the folder {path.parent}), or set fidelity.inception_weights to where it "
                "is. Nothing is downloaded here; offline, use fidelity.extractor: clip or classifier.")
        try:
            import torch_fidelity  # noqa: F401   (torchmetrics' FID Inception is torch-fidelity's network)
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as exc:
            raise FeatureUnavailable(f"the FID Inception weights are at {path}, but the network needs the package "
                                     f"torch-fidelity: pip install torch-fidelity ({exc}).") from exc
        super().__init__({"weights": INCEPTION_FILE, "bytes": path.stat().st_size})
        self.device = device or compute.device()
        self.model = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                        feature_extractor_weights_path=str(path)).eval().to(self.device)

    def _embed_batch(self, x):
        import torch

        rgb = (x.expand(-1, 3, -1, -1) * 255).round().to(torch.uint8)   # it takes 8-bit RGB
        return self.model(rgb.to(self.device)).float().cpu().numpy()


def extractor(cfg: Config, kind: str | None = None, classifier_weights: str | Path | None = None):
    """The extractor named by ``kind`` (default fidelity.extractor): ``.embed(N x H x W)``, ``.key``,
    ``.config`` and ``.input_size`` (the side images are resized to)."""
    kind = kind or cfg.fidelity.extractor
    emb = cfg.embedding
    if kind == "pixel":
        ex = embeddings.PixelEmbedder(emb.pixel_size, emb.batch_size)
        ex.input_size = emb.pixel_size
    elif kind == "clip":
        ex = embeddings.clip_embedder(emb)
        ex.input_size = int(ex.image_size[0])
    elif kind == "xrv":
        try:
            ex = embeddings.XrvEmbedder(emb)
        except embeddings.EmbedderUnavailable as exc:
            raise FeatureUnavailable(f"{exc} (fidelity.extractor = 'xrv' reads embedding.xrv_weights)") from exc
        ex.input_size = 224
    elif kind == "classifier":
        if classifier_weights is None:
            raise FeatureUnavailable("fidelity.extractor = 'classifier' needs the real-trained classifier's "
                                     "weights: pass classifier_weights=<05_real_baseline folder>/classifier_real.pt.")
        ex = ClassifierFeatures(classifier_weights, cfg.classifier.arch, cfg.classifier.input_size)
    elif kind == "inception":
        ex = InceptionFeatures(cfg.fidelity.inception_weights)
    else:
        raise embeddings.EmbeddingError(f"unknown feature extractor {kind!r}; use one of {', '.join(EXTRACTORS)}.")
    return ex


def embed_array(ex, stack) -> np.ndarray:
    """Features of in-memory images (N x H x W), resized by the one rule to the extractor's input size."""
    return ex.embed(resize(stack, ex.input_size))


def extract(df: pd.DataFrame, cfg: Config, ex=None, classifier_weights=None, progress: bool = False,
            stats: dict | None = None) -> np.ndarray:
    """N x D features of a manifest's images (columns path and, optionally, hash), through the cache."""
    if len(df) == 0:
        raise embeddings.EmbeddingError("no images to extract features from (an empty manifest).")
    ex = ex or extractor(cfg, classifier_weights=classifier_weights)
    hashes = embeddings.content_hashes(df)
    cache = embeddings.Cache(cfg.fidelity.cache_dir or cfg.embedding.cache_dir, ex.key, ex.config, ex.input_size)
    stored = cache.load()
    todo = list(dict.fromkeys(h for h in hashes if h not in stored))
    first_path = dict(zip(hashes, df["path"]))
    chunk = 512
    for s in tqdm(range(0, len(todo), chunk), desc=f"{ex.kind} features", disable=not progress or not todo):
        part = todo[s: s + chunk]
        vectors = ex.embed(images.load_stack([first_path[h] for h in part], ex.input_size))
        cache.add(part, vectors)
        stored.update(zip(part, vectors))
    if stats is not None:
        stats.update(cached=len(set(hashes)) - len(todo), computed=len(todo), key=ex.key)
    log.info("%s features: %d cached, %d computed (%s)", ex.kind, len(set(hashes)) - len(todo), len(todo), ex.key)
    return np.stack([stored[h] for h in hashes]).astype(np.float32)


# ------------------------------------------------------------------------------------- saved features
def save(path: str | Path, **arrays) -> Path:
    """Write named arrays (features, labels, ...) to one .npz, atomically: the metrics recompute from it."""
    def plain(v):   # text columns as fixed-width unicode: loadable without pickle
        v = np.asarray(v)
        return v.astype(str) if v.dtype == object else v

    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: plain(v) for k, v in arrays.items() if v is not None})
    return Path(path)


def load(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(paths.resolve(path), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
