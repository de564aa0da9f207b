"""CheXNet: a DenseNet-121 with one sigmoid output per class, trained the CheXNet way.

CheXNet has one sigmoid per label, trained with binary cross-entropy; here there is one per class
(lib.data.nih.LABELS), so each class has a score of its own and a one-vs-rest AUROC of its own. The
binary score behind decisions and the overall AUROC is p(Unhealthy) / (p(No Finding) + p(Unhealthy)).

Adam at lr 1e-3, decayed x0.1 when the validation loss plateaus, early stopping on that loss, light
augmentation. The validation split is carved from the training source, never from a test set.
Images are preloaded once as a uint8 tensor on the device and batched by index, so data loading
costs almost nothing next to the network (see benchmarks/bench_classifier.py).
"""
from __future__ import annotations

import copy
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core import atomic, compute
from . import backbones
from ..data import images, nih
from ..core.config import ClassifierConfig
from ..data.leakage import LeakageError
from ..data.nih import DataError
from ..core.progress import tqdm

log = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------- model
class CheXNet(nn.Module):
    """Grayscale in [0, 1] -> 3 ImageNet-normalised channels -> a backbone -> one logit per class.

    The backbone is torchvision's DenseNet-121 (CheXNet's), the mini stand-in, or any registered or timm model
    (lib.evaluate.backbones: the presets of seed 001, your own, or a timm name)."""

    def __init__(self, arch: str = "densenet121", weights: str = "none", n_classes: int = 2):
        super().__init__()
        self.spec = backbones.backbone(arch)
        self.net, self.arch, self.n_classes = self.spec.build(weights, n_classes), arch, n_classes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        return self.net(x)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features the head reads (its input), for any backbone: DenseNet's features, ReLU and
        global average pooling; a timm model's pre-logits."""
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        return self.spec.features(self.net, x)

    def head(self) -> nn.Linear:
        """The final linear layer (one output per class)."""
        return self.spec.head(self.net)


def build(cfg: ClassifierConfig, n_classes: int = 2) -> CheXNet:
    return CheXNet(cfg.arch, cfg.weights, n_classes)


def _autocast(dev: torch.device):
    if dev.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


# -------------------------------------------------------------------------------------------- data
def load_images(paths_: list[str], size: int, workers: int = 4, progress: bool = False) -> torch.Tensor:
    """N x 1 x size x size uint8 tensor, decoded in threads (PIL releases the GIL while decoding)."""
    def one(p):
        return np.asarray(np.round(images.load_gray(p, size) * 255), dtype=np.uint8)

    out = np.empty((len(paths_), 1, size, size), dtype=np.uint8)
    with ThreadPoolExecutor(workers) as pool:
        for i, arr in enumerate(tqdm(pool.map(one, paths_), total=len(paths_), desc="loading images",
                                     disable=not progress, mininterval=2)):
            out[i, 0] = arr
    return torch.from_numpy(out)


def labels_of(manifest: pd.DataFrame, classes: list[str] | None = None) -> np.ndarray:
    """Class indices (0 .. k-1) of a manifest's "label" column, in the order of ``classes``."""
    classes = list(classes or nih.LABELS)
    unknown = sorted(set(manifest["label"]) - set(classes))
    if unknown:
        raise DataError(f"labels {unknown} are not in {classes}.")
    return manifest["label"].map({c: i for i, c in enumerate(classes)}).to_numpy().astype(np.int64)


def validation_groups(manifest: pd.DataFrame) -> np.ndarray:
    """The group of each image that a validation split keeps whole on one side (split_validation): its patient
    where the manifest records one (a real image, an oversampled copy of one, a reference drawn from real images),
    so that no patient is both trained on and validated on; otherwise its image id. A synthetic image has no
    patient, so each synthetic image is its own group (copies of one image share its id and stay together; a
    manifest without ids: its path). The prefixes keep a patient id apart from an image id spelt the same."""
    groups = "image:" + manifest["image_id" if "image_id" in manifest else "path"].astype(str)
    if "patient" in manifest:
        patient = manifest["patient"]
        groups = groups.where(patient.isna(), "patient:" + patient.astype(str))
    return groups.to_numpy(dtype=object)


@dataclass
class TensorSet:
    """Images (uint8, N x 1 x H x W) and class indices, kept on the training device; ``groups`` (from a manifest:
    validation_groups) is what train's validation split keeps whole, each image its own when None."""

    x: torch.Tensor
    y: torch.Tensor
    groups: np.ndarray | None = None

    @classmethod
    def from_manifest(cls, manifest: pd.DataFrame, size: int, dev=None, classes: list[str] | None = None
                      ) -> "TensorSet":
        if len(manifest) == 0:
            raise DataError("cannot build a data set from an empty manifest.")
        dev = dev or compute.device()
        x = load_images(manifest["path"].tolist(), size)
        return cls(x.to(dev), torch.from_numpy(labels_of(manifest, classes)).to(dev), validation_groups(manifest))

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx) -> "TensorSet":
        groups = None if self.groups is None else self.groups[np.asarray(idx, dtype=np.int64)]
        idx = torch.as_tensor(idx, device=self.x.device)
        return TensorSet(self.x[idx], self.y[idx], groups)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light, batched augmentation in place on a fresh float batch: horizontal flip, a shift of up to
    1/16 of the side (one per batch, wrapping round: one cheap copy) and brightness/contrast jitter."""
    n, _, h, _ = x.shape
    dev = x.device
    flip = (torch.rand(n, generator=gen) < 0.5).nonzero().squeeze(1).to(dev)
    if len(flip):
        x[flip] = x[flip].flip(-1)
    pad = max(1, h // 16)
    dy, dx = (int(v) for v in torch.randint(-pad, pad + 1, (2,), generator=gen))
    if dy or dx:
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    scale = (1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1)).to(dev)
    shift = (0.05 * (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1)).to(dev)
    return x.mul_(scale).add_(shift).clamp_(0, 1)


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float().div_(255.0)


def split_validation(y: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) index split of a training source, seeded, whole ``groups`` to one side
    (validation_groups: a patient, or an image with its copies; each image its own group when None).

    A group's stratum is its most frequent class (ties: the first class), so a patient with images of both classes
    falls wholly on one side. Each stratum holds out round(fraction x its images) images (at least one when it has
    two groups or more): its groups in a seeded order, each taken while it fits, so one patient with most of the
    images stays in training instead of emptying it (then the smallest group, when none fits). With one image per
    group this is the plain stratified image split."""
    y = np.asarray(y)
    codes, _ = pd.factorize(np.arange(len(y)) if groups is None else np.asarray(groups))   # first-appearance order
    classes = np.unique(y)
    counts = np.zeros((codes.max() + 1 if len(codes) else 0, len(classes)), dtype=np.int64)
    np.add.at(counts, (codes, np.searchsorted(classes, y)), 1)
    stratum, size = counts.argmax(axis=1), counts.sum(axis=1)
    rng = np.random.default_rng(seed)
    held = []
    for i in range(len(classes)):
        order = rng.permutation(np.flatnonzero(stratum == i))
        held += _fill(order, size, max(1, int(round(fraction * size[order].sum()))) if len(order) > 1 else 0)
    va = np.isin(codes, held)
    return np.flatnonzero(~va), np.flatnonzero(va)


def _fill(order: np.ndarray, size: np.ndarray, target: int) -> list[int]:
    """The groups, taken in ``order``, that fit into ``target`` images; the smallest one when none fits."""
    taken, n = [], 0
    for g in order:
        if n >= target:
            break
        if n + size[g] <= target:
            taken.append(int(g)); n += int(size[g])
    if not taken and target > 0:
        taken.append(int(order[np.argmin(size[order])]))
    return taken


def check_split(groups: np.ndarray | None, train_idx: np.ndarray, val_idx: np.ndarray) -> None:
    """No group (a patient, or an image with its copies) both trained on and validated on: the early-stopping
    loss would reward recognising the patient. Checked in code on every split, whatever grouping drew it."""
    if groups is None:
        return
    groups = np.asarray(groups)
    shared = sorted(set(groups[train_idx].tolist()) & set(groups[val_idx].tolist()))
    if shared:
        raise LeakageError(f"the classifier's validation split shares {len(shared)} group(s) with its training part, "
                           f"e.g. {shared[:5]}: images of one patient (or copies of one image) on both sides. "
                           "Split with split_validation and the training manifest's validation_groups.")


# --------------------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    model: CheXNet
    history: pd.DataFrame
    best_epoch: int
    stopped_early: bool
    n_train: int
    n_val: int
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed); np.random.seed(seed % 2**32); torch.manual_seed(seed)


def _targets(y: torch.Tensor, k: int) -> torch.Tensor:
    """One-hot float targets: one BCE target per output, as CheXNet trains one sigmoid per label."""
    return nn.functional.one_hot(y.long(), k).float()


@torch.no_grad()
def predict_outputs(model: nn.Module, data: TensorSet | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """N x k sigmoid outputs, one column per class, for every image in order."""
    x = data.x if isinstance(data, TensorSet) else data
    dev = next(model.parameters()).device
    model.eval()
    out = []
    with _autocast(dev):
        for i in range(0, len(x), batch_size):
            out.append(torch.sigmoid(model(to_float(x[i:i + batch_size].to(dev))).float()).cpu())
    k = model.n_classes if isinstance(model, CheXNet) else model.net.classifier.out_features
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, k))


def predict(model: nn.Module, data: TensorSet | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """The binary score (normalised probability of class 1, 'Unhealthy') of every image, in order."""
    from .metrics import score_of

    return score_of(predict_outputs(model, data, batch_size))


@torch.no_grad()
def _val_loss(model, val: TensorSet, batch_size: int) -> float:
    model.eval()
    dev = val.x.device
    total = 0.0
    with _autocast(dev):
        for i in range(0, len(val), batch_size):
            logits = model(to_float(val.x[i:i + batch_size])).float()
            target = _targets(val.y[i:i + batch_size], logits.shape[1])
            total += nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum").item()
    return total / max(len(val), 1)


def train(data: TensorSet, cfg: ClassifierConfig, seed: int, progress: bool = True,
          desc: str = "classifier", n_classes: int = 2, history_path=None) -> TrainResult:
    """Train on ``data`` with a validation split carved from it, stratified by class and seeded by ``seed``, whole
    ``data.groups`` (patients; a synthetic image each) to one side (split_validation, check_split); return the
    best-validation model. ``history_path``: a CSV rewritten after every epoch with the history so far (epoch,
    train and validation loss, learning rate)."""
    import time

    t0 = time.perf_counter()
    y = data.y.cpu().numpy()
    if len(np.unique(y)) < 2:
        raise DataError("the training data hold a single class; both labels are needed.")
    tr_idx, va_idx = split_validation(y, cfg.val_fraction, seed, data.groups)
    check_split(data.groups, tr_idx, va_idx)
    train_set, val_set = data.subset(tr_idx), data.subset(va_idx)
    seed_everything(seed)
    dev = data.x.device
    model = build(cfg, n_classes).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.lr_decay,
                                                       patience=cfg.lr_patience)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch, bad, rows = float("inf"), None, -1, 0, []
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not progress, mininterval=2)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(train_set), generator=gen).to(dev)
        run_loss = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x = to_float(train_set.x[idx])
            if cfg.augment:
                x = augment(x, gen)
            with _autocast(dev):
                logits = model(x).float()
            loss = nn.functional.binary_cross_entropy_with_logits(logits, _targets(train_set.y[idx], n_classes))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += loss.item() * len(idx)
        vloss = _val_loss(model, val_set, cfg.batch_size) if len(val_set) else run_loss / len(train_set)
        sched.step(vloss)
        rows.append({"epoch": epoch, "train_loss": run_loss / len(train_set), "val_loss": vloss,
                     "lr": opt.param_groups[0]["lr"]})
        if history_path is not None:
            atomic.write_csv(history_path, pd.DataFrame(rows))
        bar.set_postfix(val_loss=f"{vloss:.3f}")
        if vloss < best - 1e-4:
            best, best_epoch, bad = vloss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    stopped = len(rows) < cfg.epochs
    return TrainResult(model, pd.DataFrame(rows), best_epoch, stopped, len(train_set), len(val_set),
                       time.perf_counter() - t0)


def repeat_seed(seed: int, repeat: int) -> int:
    """The classifier seed of repeat ``repeat`` (classifier.repeats): repeat 0 keeps ``seed``, so one repeat
    trains exactly as before; the others are drawn from a hash of (seed, repeat), so they collide neither with
    each other nor with the small consecutive seeds the directions and runs use. The seed also draws the
    validation split (split_validation), so every repeat validates on another split."""
    if repeat == 0:
        return int(seed)
    import hashlib

    digest = hashlib.sha256(f"classifier-repeat|{int(seed)}|{int(repeat)}".encode()).hexdigest()
    return int(digest[:8], 16) % 2**31


def model_hash(model: nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
