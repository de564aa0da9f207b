"""Parameter sets: one declared schema, one loader.

A parameter file is YAML with the sections below. Anything not in the schema, or of the wrong
type, stops the run with an error that names the key and what is allowed. Defaults live here, so a
parameter file only states what it changes.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from . import paths


class ParamError(ValueError):
    """A parameter file or override that does not fit the schema."""


# --------------------------------------------------------------------------------------------- schema
@dataclass
class DataConfig:
    source: Literal["phantom", "nih", "folder", "csv", "shapes"] = "phantom"   # folder/csv/shapes: lib/data/domains.py
    nih_root: Optional[str] = None          # folder holding images/ or images_0XX/images/
    csv: Optional[str] = None               # nih: Data_Entry_2017*.csv (None -> torchxrayvision's copy);
                                            # csv: a table of path, label and an optional group id
    folder: Optional[str] = None            # source folder: an ImageFolder, one sub-folder of images per class
    classes: Optional[list[str]] = None     # folder/csv/shapes: the classes, in label-index order (None: all, sorted)
    views: list[str] = field(default_factory=lambda: ["PA", "AP"])
    official_split: bool = True             # honour train_val_list.txt / test_list.txt when present
    image_size: int = 64                    # size images are loaded at (and phantoms drawn at)
    phantom_n: int = 2000                   # how many real metadata rows get a phantom (shapes: images in all)
    phantom_textbook: bool = False          # typical, single-finding, clean phantoms (Experiment 5)
    phantom_seed: int = 0                   # the phantom (or shapes) data set's own seed (pools use the run seed)
    check_images: bool = True               # open every image once to exclude corrupt ones
    max_missing_fraction: float = 0.01      # more images named in the CSV but absent on disk stop curation
    near_duplicates: Literal["refuse", "warn"] = "refuse"  # a near-copy of a real test image in a training
    #                                       source (folder import, external folder, another pool): lib/data/leakage.py


@dataclass
class PoolsConfig:
    tuning: int = 400                       # images in the generator's tuning pool
    train: int = 800                        # real training pool
    test: int = 600                         # real test pool (thesis: 10,000)


@dataclass
class EmbeddingConfig:
    pixel_size: int = 16                    # side of the downsampled grayscale vector
    clip_model: str = "ViT-B-32"
    clip_pretrained: Optional[str] = None   # e.g. "laion2b_s34b_b79k"; None = random weights (offline);
    # "offline" (with clip_model ViT-Tiny-P4-32) = a small CLIP pre-trained here on shapes; or a .pt path
    clip_image_size: Optional[int] = 64     # None = the model's native size
    batch_size: int = 64
    xrv_weights: Optional[str] = None       # torchxrayvision DenseNet weights name, used only if on disk
    cache_dir: str = "data/cache/embeddings"  # vectors keyed by embedder config and image content hash


@dataclass
class ClusterConfig:
    k: int = 10                             # clusters per label (the method name picks spectral or k-means)
    n_neighbors: int = 15                   # sparse kNN affinity for large n
    exact_below: int = 3000                 # exact (dense) rbf affinity below this many points
    solver: Literal["amg", "lobpcg"] = "amg"  # eigensolver of the sparse path
    pca_dims: int = 64                      # sparse path: kNN search in this many PCA dims (0 = all)
    silhouette_sample: int = 5000           # silhouette on at most this many points per label


@dataclass
class SelectionConfig:
    methods: list[str] = field(default_factory=lambda: ["random", "spectral-pixel", "spectral-clip"])
    per_label: int = 100                    # tuning images per label (thesis: 500 and 1,000)
    quota: Literal["equal", "proportional"] = "equal"   # equal: same count per cluster, duplicates if short
    external_dir: Optional[str] = None      # method "external": a folder of unlabelled images (e.g. textbook cases),
                                            # pseudo-labelled by a classifier trained on the real training pool
    pseudo_label_threshold: float = 0.8     # external: images whose pseudo-label confidence is below it are dropped


@dataclass
class ModelConfig:
    base: str = "tiny"                      # "tiny" (built offline) or a Hugging Face id / local path
    revision: Optional[str] = None
    resolution: int = 32                    # training and generation resolution
    tiny_pretrain_steps: int = 300          # out-of-domain pre-training of the tiny base model (0 = untrained)


@dataclass
class FinetuneConfig:
    method: str = "spectral-clip"           # which tuning set (a selection method, or "textbook")
    control: Literal["none", "random-skip", "no-fine-tune"] = "none"
    prompt_template: str = "an image of {label} chest X-ray"
    label_words: dict[str, str] = field(default_factory=lambda: {"No Finding": "Healthy",
                                                                 "Unhealthy": "Unhealthy"})
    identifier: Optional[str] = None        # optional rare token, DreamBooth style
    model_layout: Literal["joint", "per-label"] = "joint"
    steps: int = 200
    batch_size: int = 16
    learning_rate: float = 2e-4
    lr_warmup_steps: int = 0
    noise_offset: float = 0.0               # diffusers' --noise_offset: per-channel constant added to the noise,
                                            # so the model can learn an image mean far from the base's (dark X-rays)
    zero_terminal_snr: bool = False         # Lin et al. 2024: rescale the schedule to zero SNR at the last step and
                                            # sample with trailing timesteps (v-prediction bases only); without it the
                                            # samples keep the base's mean brightness (X-rays come out too bright)
    prior_preservation: bool = False
    num_class_images: int = 32
    class_prompt: str = "an image of chest X-ray"
    prior_loss_weight: float = 1.0
    lora: bool = False
    lora_rank: int = 8
    train_text_encoder: bool = False
    gradient_checkpointing: bool = False
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    validation_every: int = 100
    validation_images: int = 4              # per label, fixed seeds, saved under validation/
    validation_steps: int = 20              # DPM-Solver steps for validation and class images
    validation_guidance: float = 3.0
    cpu_threads: Optional[int] = None       # torch CPU threads while training; None = torch's default
    num_processes: int = 1                  # > 1: notebook 03 hands training to `accelerate launch` (lib/finetune/multiprocess.py);
                                            # same global batches and gate decisions, so no stage key holds it
    tensorboard: bool = True                # live logs in <stage 03>/tb/ (lib/finetune/tracking.py; `make board`); no key holds it


@dataclass
class GatingConfig:
    enabled: bool = False
    threshold: float = 0.3                  # thesis: skip when similarity > 0.3
    mode: Literal["absolute", "quantile"] = "absolute"
    skip_fraction: float = 0.3              # target skip rate in quantile mode
    warmup_batches: int = 10                # quantile mode: window of recent scores the threshold rolls over;
                                            # absolute mode: skipping all or none of these first batches warns
    aggregation: Literal["mean-pairwise", "centroid", "max"] = "mean-pairwise"
    n_images: int = 4                       # images generated per gate
    every_k: int = 1                        # gate every k batches
    sampler_steps: int = 8                  # few-step sampler at gating time
    resolution: Optional[int] = None        # None = training resolution
    guidance_scale: float = 3.0             # classifier-free guidance of the gating samples
    skip_rate: Optional[float] = None       # random-skip control; None = take it from the gated run


@dataclass
class GenerationConfig:
    n_per_label: int = 300                  # thesis: 10,000
    scheduler: Literal["dpm", "ddim", "ddpm", "euler", "pndm"] = "dpm"
    steps: int = 20
    guidance_scale: float = 3.0
    batch_size: int = 64
    negative_prompt: Optional[str] = None
    cpu_threads: Optional[int] = None       # torch CPU threads while generating; None = torch's default
    # What writes the synthetic set: the diffusion model, or a reference that calibrates the metrics
    # (lib/generate/references.py): real held-out images, shuffled labels, a collapsed set, phantoms redrawn
    # without or with stronger findings, the base model's VAE round trip, or any folder of images.
    kind: Literal["diffusion", "real-holdout", "label-shuffled", "collapsed", "findings-erased", "exaggerated",
                  "vae-roundtrip", "folder"] = "diffusion"
    unique_images: int = 5                  # collapsed: unique images per class, repeated to fill n_per_label
    exaggerate: float = 2.0                 # exaggerated: finding strength factor (> 1)
    folder: Optional[str] = None            # folder kind: one sub-folder of images per class


@dataclass
class ClassifierConfig:
    weights: str = "none"                   # none (random, offline) | imagenet (torchvision's / timm's pre-trained
                                            # weights, from the cache or downloaded) | a weights file's path
    arch: str = "densenet121"               # densenet121 (CheXNet, torchvision) | densenet-mini (offline CPU stand-in)
                                            # | a preset: resnet50, efficientnet-b0/-b1, convnext-t/-s, densenet121-timm
                                            # | any timm model name (lib/evaluate/backbones.py)
    input_size: int = 64                    # 224 for real runs
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 1e-3             # CheXNet: Adam 1e-3, x0.1 on a validation-loss plateau
    lr_decay: float = 0.1
    lr_patience: int = 1
    patience: int = 3                       # early stopping on validation loss
    val_fraction: float = 0.15              # carved from the training source of each direction
    augment: bool = True                    # light: flip, small shift, brightness/contrast
    threshold: float = 0.5                  # score above it -> "Unhealthy" (two classes; k > 2: the largest output)
    n_train_per_class: int = 300            # both directions train on this many per class
    n_test: int = 600                       # thesis: 10,000 (real and synthetic test sets)
    bootstrap: int = 200                    # resamples for AUROC and FTER confidence intervals
    cpu_threads: Optional[int] = None       # torch CPU threads while training; None = torch's default


@dataclass
class FidelityConfig:
    """Fidelity, diversity and memorization of a synthetic set (lib/evaluate/features.py, lib/evaluate/fidelity.py, lib/evaluate/memorization.py)."""
    extractor: Literal["clip", "inception", "xrv", "classifier", "pixel"] = "clip"
    inception_weights: Optional[str] = None  # None = <torch hub dir>/checkpoints/weights-inception-2015-12-05-6726825d.pth
    cache_dir: Optional[str] = None         # None = embedding.cache_dir (CLIP/pixel vectors shared with stage 02)
    fid_dims: Optional[int] = None          # FID on this many principal components of the real features (None = all)
    kid_subset_size: int = 1000             # images per KID subset (at most the smaller set's size)
    kid_subsets: int = 100                  # subsets averaged for KID
    kid_bootstrap_subsets: int = 10         # subsets averaged in each bootstrap replicate
    prdc_k: int = 5                         # k of the k-NN balls of precision/recall/density/coverage
    diversity_pairs: int = 500              # random image pairs per class for (MS-)SSIM diversity
    bootstrap: int = 200                    # bootstrap replicates (images resampled) for every CI
    copy_threshold: float = 0.2             # copy: nearest-tuning distance < this x median real-to-real NN distance
    memorization_extractor: Literal["same", "clip", "inception", "xrv", "classifier", "pixel"] = "pixel"
    #                                       the space copies are judged in ("same": fidelity.extractor). Pixels by
    #                                       default: a classifier's features discard the within-class detail that
    #                                       tells two patients apart (smoke calibration, seed 1: a real image of
    #                                       another patient at 0.195x the real-to-real scale, flagged as a copy)
    montage_pairs: int = 8                  # closest synthetic-tuning pairs drawn
    trace: Literal["pixel", "clip", "none"] = "pixel"   # features of the KID trace at fine-tuning validation


@dataclass
class MixingConfig:
    """Training sets that mix real and synthetic images (lib/analyze/mixing.py, notebook 07): Schaudt et al.'s
    augmentation brackets with random oversampling (seed 001) and fixed-size mixing ratios (seed 003)."""
    brackets: list[int] = field(default_factory=lambda: [100, 250, 500, 750, 1000])  # synthetic images added per
    #                                       class to the real training sample (001: +100 ... +10,000)
    oversample: bool = True                 # also the real sample randomly oversampled to each bracket's total
    ratios: list[list[float]] = field(default_factory=lambda: [[1.0, 0.0], [0.7, 0.3], [0.5, 0.5], [0.3, 0.7],
                                                               [0.0, 1.0]])   # real:synthetic shares, each pair sums to 1
    total_per_class: Optional[int] = None   # a ratio's training-set size per class; None = classifier.n_train_per_class


@dataclass
class TransferConfig:
    """The source x target matrix (lib/analyze/transfer.py, notebook 08, seed 002's Tables 5.8-5.14): train on each set,
    test on every set; the diagonal trains and tests on disjoint parts of one set."""
    sets: list[str] = field(default_factory=lambda: ["real", "real-holdout", "synthetic"])  # "real" (the real
    #                                       pools), a reference kind of generation.kind, or "synthetic" (this point's
    #                                       stage 04)
    n_train_per_class: Optional[int] = None  # each source's training split per class; None = classifier.n_train_per_class
    n_test: Optional[int] = None            # each target's test split; None = classifier.n_test
    reference_n_per_label: Optional[int] = None  # images per class of a reference set built for the matrix;
    #                                       None = generation.n_per_label


@dataclass
class Config:
    experiment: str = "demo"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    pools: PoolsConfig = field(default_factory=PoolsConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    gating: GatingConfig = field(default_factory=GatingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Short stable hash of the named sections (top-level keys allowed, and dotted fields such as
        ``mixing.brackets``), for cache and stage keys."""
        d = self.to_dict()
        if "external" not in self.selection.methods:   # unused external settings stay out of every key
            for name in ("external_dir", "pseudo_label_threshold"):
                d["selection"].pop(name)
        d["data"].pop("near_duplicates")     # what a leak check does on a find, not what a stage computes
        for name in ("num_processes", "tensorboard"):   # how stage 03 runs and logs, not what it computes
            d["finetune"].pop(name)

        def pick(name: str):
            node = d
            for part in name.split("."):
                node = node[part]
            return node

        blob = json.dumps({s: pick(s) for s in sections}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------------- validation
def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _check_value(key: str, value: Any, tp) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ParamError(f"{key} = {value!r} is not allowed;{did_you_mean(value, typing.get_args(tp))} "
                             f"use {_type_name(tp)}.")
        return value
    if origin is typing.Union:
        for arg in typing.get_args(tp):
            try:
                return _check_value(key, value, arg)
            except ParamError:
                continue
        raise ParamError(f"{key} = {value!r} has the wrong type; expected {_type_name(tp)}.")
    if tp is type(None):
        if value is not None:
            raise ParamError(f"{key} must be null")
        return None
    if origin is list:
        if not isinstance(value, list):
            raise ParamError(f"{key} = {value!r} must be a list.")
        (item,) = typing.get_args(tp)
        return [_check_value(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamError(f"{key} = {value!r} must be a mapping.")
        return {str(k): _check_value(f"{key}.{k}", v, typing.get_args(tp)[1]) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        hint = ""
        if tp is float and isinstance(value, str) and _is_number(value):   # YAML 1.1 reads 1e-4 as a string
            hint = f" YAML reads {value} as text: write it with a dot, e.g. {float(value):.1e}."
        raise ParamError(f"{key} = {value!r} has the wrong type; expected {_type_name(tp)}.{hint}")
    return value


def did_you_mean(word, options, prefix: str = "") -> str:
    """' did you mean 'x'?' for the closest of ``options`` to a mistyped ``word`` (difflib), or ''."""
    if not isinstance(word, str):
        return ""
    texts = [o for o in options if isinstance(o, str)]
    close = difflib.get_close_matches(word, texts, n=1, cutoff=0.6) or \
        difflib.get_close_matches(word.lower(), [t.lower() for t in texts], n=1, cutoff=0.6)
    if not close:
        return ""
    match = next(t for t in texts if t.lower() == close[0].lower())
    return f" did you mean '{prefix}{match}'?"


def dotted_keys(cls=None, prefix: str = "") -> list[str]:
    """Every parameter as a dotted key (``gating.threshold``), for suggestions."""
    cls = cls or Config
    hints, out = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        out += dotted_keys(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else [f"{prefix}{f.name}"]
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _build(cls, values: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
        raise ParamError(f"unknown parameter '{prefix}{unknown[0]}' in {where};"
                         f"{did_you_mean(unknown[0], names, prefix)} allowed keys: {', '.join(names)}.")
    kwargs = {}
    for name in names:
        if name not in values:
            continue
        tp, v = hints[name], values[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ParamError(f"'{prefix}{name}' must be a section (a mapping), got {v!r}.")
            kwargs[name] = _build(tp, v, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(f"{prefix}{name}", v, tp)
    return cls(**kwargs)


SEED_MAX = 2**32 - 1      # numpy's RandomState and np.random.seed take seeds in [0, 2**32 - 1]
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _validate_experiment(name: str) -> None:
    """The experiment names one folder right under the runs root: no path, so nothing is written outside it."""
    if not EXPERIMENT_NAME.fullmatch(name):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "my-experiment"
        raise ParamError(f"experiment = {name!r} must be one folder name under the runs root (letters, digits, "
                         f"'.', '_', '-', starting with a letter or digit; no '/' and no '..'), e.g. {safe!r}.")


def _validate_seeds(cfg: Config) -> None:
    """Every seed (``seed``, ``data.phantom_seed``, any later ``*seed`` key) is an int numpy accepts."""
    for key, value in _flat_items(cfg.to_dict()):
        if key.split(".")[-1].endswith("seed") and isinstance(value, int) and not 0 <= value <= SEED_MAX:
            raise ParamError(f"{key} = {value} must be a whole number from 0 to {SEED_MAX} (numpy's seed range).")


def _flat_items(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and k != "label_words":
            yield from _flat_items(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _validate_ranges(cfg: Config) -> None:
    _validate_experiment(cfg.experiment)
    _validate_seeds(cfg)
    if not -1.0 <= cfg.gating.threshold <= 1.0:
        raise ParamError(f"gating.threshold = {cfg.gating.threshold} is outside [-1, 1]; "
                         "it is a cosine similarity.")
    if not 0.0 <= cfg.gating.skip_fraction < 1.0:
        raise ParamError(f"gating.skip_fraction = {cfg.gating.skip_fraction} must be in [0, 1).")
    if not 0.0 <= cfg.data.max_missing_fraction <= 1.0:
        raise ParamError(f"data.max_missing_fraction = {cfg.data.max_missing_fraction} must be in [0, 1].")
    if not 32 <= cfg.data.image_size <= 512:
        raise ParamError(f"data.image_size = {cfg.data.image_size} must be between 32 and 512.")
    for name in ("tuning", "train", "test"):
        if getattr(cfg.pools, name) < 1:
            raise ParamError(f"pools.{name} must be at least 1.")
    if cfg.selection.per_label < 1:
        raise ParamError("selection.per_label must be at least 1 (a quota of 0 selects nothing).")
    if cfg.cluster.k < 1:
        raise ParamError("cluster.k must be at least 1.")
    _validate_data(cfg)
    _validate_selection(cfg)
    _validate_finetune(cfg)
    g, c = cfg.generation, cfg.classifier
    for key, v in (("generation.n_per_label", g.n_per_label), ("generation.steps", g.steps),
                   ("generation.batch_size", g.batch_size), ("classifier.epochs", c.epochs),
                   ("classifier.batch_size", c.batch_size), ("classifier.n_train_per_class", c.n_train_per_class),
                   ("classifier.n_test", c.n_test), ("classifier.bootstrap", c.bootstrap)):
        if v < 1:
            raise ParamError(f"{key} = {v} must be at least 1.")
    if not 0.0 < c.val_fraction < 0.5:
        raise ParamError(f"classifier.val_fraction = {c.val_fraction} must be in (0, 0.5).")
    if not 0.0 < c.threshold < 1.0:
        raise ParamError(f"classifier.threshold = {c.threshold} must be in (0, 1).")
    _validate_backbone(cfg)
    for key, v in (("generation.cpu_threads", g.cpu_threads), ("classifier.cpu_threads", c.cpu_threads)):
        if v is not None and v < 1:
            raise ParamError(f"{key} = {v} must be at least 1 (or null for torch's default).")
    if c.input_size < 32:
        raise ParamError(f"classifier.input_size = {c.input_size} must be at least 32 (DenseNet downsamples 32x).")
    _validate_reference(cfg)
    _validate_fidelity(cfg)
    _validate_mixing(cfg)
    _validate_transfer(cfg)


def _validate_data(cfg: Config) -> None:
    """Which keys each data source reads (lib/data/domains.py for folder, csv and shapes)."""
    d = cfg.data
    if d.source in ("phantom", "nih") and d.classes is not None:
        raise ParamError(f"data.classes = {d.classes} is read by the folder, csv and shapes sources only; data.source "
                         f"= {d.source!r} has the classes 'No Finding' and 'Unhealthy'. Remove data.classes.")
    if d.classes is not None and (len(d.classes) < 2 or len(set(d.classes)) != len(d.classes)):
        raise ParamError(f"data.classes = {d.classes} must name two or more distinct classes.")
    if d.folder and d.source != "folder":
        raise ParamError(f"data.folder = {d.folder!r} is only read by data.source = 'folder' (source is {d.source!r}).")
    if d.source == "folder" and not d.folder:
        raise ParamError("data.source = 'folder' needs data.folder: a folder with one sub-folder of images per class.")
    if d.source == "csv" and not d.csv:
        raise ParamError("data.source = 'csv' needs data.csv: a CSV with columns path, label and optionally group.")
    if d.source == "shapes":
        from ..data.shapes import AVAILABLE

        bad = sorted(set(d.classes or []) - set(AVAILABLE))
        if bad:
            raise ParamError(f"data.classes {bad} are not shapes; the shapes domain draws {AVAILABLE}."
                             f"{did_you_mean(bad[0], AVAILABLE)}")


def _validate_backbone(cfg: Config) -> None:
    """classifier.arch: built in, a preset or a timm name (closest names suggested); classifier.weights."""
    from ..evaluate import backbones

    try:
        backbones.check(cfg.classifier.arch, cfg.classifier.weights)
    except backbones.BackboneError as exc:
        raise ParamError(str(exc)) from None


def _validate_mixing(cfg: Config) -> None:
    """The mixing section's own consistency; brackets against the synthetic set are checked by lib.analyze.mixing
    before anything trains (the set's size is known only once stage 04 has run)."""
    m = cfg.mixing
    if any(b < 1 for b in m.brackets) or len(set(m.brackets)) != len(m.brackets):
        raise ParamError(f"mixing.brackets = {m.brackets} must be distinct positive numbers of synthetic images "
                         "per class (the real-only baseline is always measured).")
    for i, r in enumerate(m.ratios):
        if len(r) != 2 or any(v < 0 for v in r) or abs(sum(r) - 1.0) > 1e-6:
            hint = f" (write {r[0]:g}:{r[1]:g} as [{r[0] / sum(r):g}, {r[1] / sum(r):g}])" \
                if len(r) == 2 and sum(r) > 0 and all(v >= 0 for v in r) else ""
            raise ParamError(f"mixing.ratios[{i}] = {r} must be a [real, synthetic] pair of shares >= 0 that sum "
                             f"to 1{hint}.")
    if len({tuple(r) for r in m.ratios}) != len(m.ratios):
        raise ParamError(f"mixing.ratios = {m.ratios} lists a ratio twice.")
    if m.total_per_class is not None and m.total_per_class < 2:
        raise ParamError(f"mixing.total_per_class = {m.total_per_class} must be at least 2 (or null for "
                         "classifier.n_train_per_class).")


def _validate_transfer(cfg: Config) -> None:
    """The transfer section: known, distinct set names and positive sizes (lib/analyze/transfer.py)."""
    t = cfg.transfer
    kinds = [k for k in typing.get_args(typing.get_type_hints(GenerationConfig)["kind"]) if k != "diffusion"]
    allowed = ["real", "synthetic"] + kinds
    bad = [s for s in t.sets if s not in allowed]
    if bad or not t.sets or len(set(t.sets)) != len(t.sets):
        raise ParamError(f"transfer.sets = {t.sets}: name distinct sets among {', '.join(allowed)}."
                         f"{did_you_mean(bad[0], allowed) if bad else ''}")
    for key, default in (("n_train_per_class", "classifier.n_train_per_class"), ("n_test", "classifier.n_test"),
                         ("reference_n_per_label", "generation.n_per_label")):
        v = getattr(t, key)
        if v is not None and v < 2:
            raise ParamError(f"transfer.{key} = {v} must be at least 2 (or null for {default}).")


def _validate_fidelity(cfg: Config) -> None:
    """Fidelity metric ranges (lib/evaluate/fidelity.py, lib/evaluate/memorization.py)."""
    f = cfg.fidelity
    if f.kid_subset_size < 2:
        raise ParamError(f"fidelity.kid_subset_size = {f.kid_subset_size} must be at least 2 (unbiased MMD needs "
                         "pairs).")
    for key in ("prdc_k", "kid_subsets", "kid_bootstrap_subsets", "diversity_pairs", "bootstrap", "montage_pairs"):
        if getattr(f, key) < 1:
            raise ParamError(f"fidelity.{key} = {getattr(f, key)} must be at least 1.")
    if f.fid_dims is not None and f.fid_dims < 1:
        raise ParamError(f"fidelity.fid_dims = {f.fid_dims} must be at least 1 (or null for every dimension).")
    if not 0.0 < f.copy_threshold < 1.0:
        raise ParamError(f"fidelity.copy_threshold = {f.copy_threshold} must be in (0, 1): a fraction of the median "
                         "distance between a real image and its nearest neighbour among other real images.")


def _validate_reference(cfg: Config) -> None:
    """The reference generator kinds of stage 04 (lib/generate/references.py)."""
    g = cfg.generation
    if g.unique_images < 1:
        raise ParamError(f"generation.unique_images = {g.unique_images} must be at least 1.")
    if g.kind == "collapsed" and g.unique_images > g.n_per_label:
        raise ParamError(f"generation.unique_images = {g.unique_images} is more than generation.n_per_label = "
                         f"{g.n_per_label}; a collapsed set repeats unique_images images per class to fill "
                         "n_per_label, so unique_images must be at most n_per_label.")
    if not g.exaggerate > 1.0:
        raise ParamError(f"generation.exaggerate = {g.exaggerate} must be greater than 1 (it multiplies the "
                         "strength of every finding; 1 would redraw the originals).")
    if g.kind in ("findings-erased", "exaggerated") and cfg.data.source != "phantom":
        raise ParamError(f"generation.kind = {g.kind!r} redraws phantoms and needs data.source = 'phantom' "
                         f"(got {cfg.data.source!r}); real X-rays cannot be redrawn.")
    if g.kind == "folder" and not g.folder:
        raise ParamError("generation.kind = 'folder' needs generation.folder: a folder with one sub-folder of "
                         "images per class (e.g. 'No Finding/' and 'Unhealthy/').")
    if g.folder and g.kind != "folder":
        raise ParamError(f"generation.folder = {g.folder!r} is only read by generation.kind = 'folder' "
                         f"(kind is {g.kind!r}); set the kind or remove the folder.")


def _validate_finetune(cfg: Config) -> None:
    """Model, fine-tuning and gating ranges (stage 03)."""
    m, f, g = cfg.model, cfg.finetune, cfg.gating
    if m.resolution < 16 or m.resolution % 8 or m.tiny_pretrain_steps < 0:
        raise ParamError(f"model.resolution = {m.resolution} must be a multiple of 8 (>= 16); "
                         "model.tiny_pretrain_steps must be >= 0.")
    for key, v in (("finetune.steps", f.steps), ("finetune.batch_size", f.batch_size),
                   ("finetune.checkpoint_every", f.checkpoint_every), ("finetune.keep_checkpoints", f.keep_checkpoints),
                   ("finetune.validation_every", f.validation_every), ("finetune.validation_steps", f.validation_steps),
                   ("finetune.lora_rank", f.lora_rank), ("gating.n_images", g.n_images), ("gating.every_k", g.every_k),
                   ("gating.sampler_steps", g.sampler_steps), ("gating.warmup_batches", g.warmup_batches)):
        if v < 1:
            raise ParamError(f"{key} = {v} must be at least 1.")
    if f.learning_rate <= 0 or f.lr_warmup_steps < 0 or f.num_class_images < 1 or f.validation_images < 0:
        raise ParamError("finetune.learning_rate must be > 0, lr_warmup_steps >= 0, num_class_images >= 1, "
                         "validation_images >= 0.")
    if not 0.0 <= f.noise_offset <= 1.0:
        raise ParamError(f"finetune.noise_offset = {f.noise_offset} must be between 0 and 1 (diffusers' scripts "
                         "use about 0.1; 0 turns it off).")
    if "{label}" not in f.prompt_template:
        raise ParamError(f"finetune.prompt_template = {f.prompt_template!r} must contain '{{label}}'.")
    if g.skip_rate is not None and not 0.0 <= g.skip_rate <= 1.0:
        raise ParamError(f"gating.skip_rate = {g.skip_rate} must be in [0, 1] (or null).")
    if g.resolution is not None and (g.resolution < 16 or g.resolution % 8):
        raise ParamError(f"gating.resolution = {g.resolution} must be a multiple of 8 (>= 16), or null.")
    if f.cpu_threads is not None and f.cpu_threads < 1:
        raise ParamError(f"finetune.cpu_threads = {f.cpu_threads} must be at least 1 (or null).")
    if f.num_processes < 1:
        raise ParamError(f"finetune.num_processes = {f.num_processes} must be at least 1 (1 trains in the notebook's "
                         "own process; more hand off to `accelerate launch`).")
    if f.num_processes > f.batch_size:
        raise ParamError(f"finetune.num_processes = {f.num_processes} exceeds finetune.batch_size = {f.batch_size}: "
                         "each process trains on its share of every batch, so some would get none. Use at most "
                         f"{f.batch_size} processes or a larger batch.")


def _validate_selection(cfg: Config) -> None:
    """Embedding, clustering and selection ranges (stage 02)."""
    e, c, s = cfg.embedding, cfg.cluster, cfg.selection
    if e.pixel_size < 2 or e.batch_size < 1:
        raise ParamError("embedding.pixel_size must be at least 2 and embedding.batch_size at least 1.")
    if e.clip_image_size is not None and e.clip_image_size < 16:
        raise ParamError(f"embedding.clip_image_size = {e.clip_image_size} must be at least 16 (or null).")
    if c.n_neighbors < 2 or c.exact_below < 0 or c.pca_dims < 0 or c.silhouette_sample < 10:
        raise ParamError("cluster.n_neighbors >= 2, cluster.exact_below >= 0, cluster.pca_dims >= 0 and "
                         "cluster.silhouette_sample >= 10 are required.")
    allowed = ["random", "textbook", "external"] + [f"{a}-{k}" for a in ("spectral", "kmeans")
                                                    for k in ("pixel", "clip", "xrv")]
    bad = [m for m in s.methods if m not in allowed]
    if bad or not s.methods:
        raise ParamError(f"selection.methods = {s.methods}: use one or more of {', '.join(allowed)}.")
    tuned = cfg.finetune.control != "no-fine-tune" and cfg.generation.kind == "diffusion"
    if tuned and cfg.finetune.method not in s.methods:
        raise ParamError(f"finetune.method = {cfg.finetune.method!r} is not among selection.methods = {s.methods}, "
                         "so stage 02 would write no tuning set for it; add it there or pick one of those.")
    if not 0.5 <= s.pseudo_label_threshold <= 1.0:
        raise ParamError(f"selection.pseudo_label_threshold = {s.pseudo_label_threshold} must be in [0.5, 1.0]: "
                         "it is the least confidence (the larger class output, normalised) an external image's "
                         "pseudo-label needs; with two classes 0.5 keeps every image.")
    if "textbook" in s.methods and cfg.data.source not in ("phantom", "nih"):
        raise ParamError(f"selection method 'textbook' picks typical X-ray cases (PA view, at most one finding) and "
                         f"needs data.source phantom or nih (got {cfg.data.source!r}); for another domain use "
                         "random, spectral-*/kmeans-* or external.")
    if "external" in s.methods and not s.external_dir:
        raise ParamError("selection.methods lists 'external' but selection.external_dir is not set: give the folder "
                         "of unlabelled images (e.g. textbook cases) to pseudo-label.")
    if s.external_dir and "external" not in s.methods:
        raise ParamError(f"selection.external_dir = {s.external_dir!r} is read only by the 'external' selection "
                         "method; add 'external' to selection.methods or remove the folder.")
    if s.quota == "equal" and s.per_label < c.k and any(m not in ("random", "textbook", "external")
                                                        for m in s.methods):
        raise ParamError(f"selection.per_label = {s.per_label} < cluster.k = {c.k} gives a quota of 0 per "
                         "cluster; raise selection.per_label to at least cluster.k or lower cluster.k.")


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "label_words":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_overrides(raw: dict, overrides: dict | None) -> dict:
    """Overrides use dotted keys (``{"gating.threshold": 0.5}``). ``None`` (``--set key=null``) sets a key
    that may be null and is refused, naming the key, for one that may not."""
    raw = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        if not isinstance(dotted, str) or not dotted or "" in dotted.split("."):
            raise ParamError(f"override {dotted!r}: write the key as dotted.key, e.g. gating.threshold.")
        if value is None:
            _refuse_null(dotted)
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ParamError(f"override '{dotted}': '{p}' is not a section.")
        node[leaf] = value
    return raw


def _refuse_null(dotted: str) -> None:
    """A null override of a key whose type has no null (an unknown key is left to the schema's own error)."""
    tp: Any = Config
    for part in dotted.split("."):
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints:
            return
        tp = hints[part]
    if dataclasses.is_dataclass(tp):
        raise ParamError(f"override {dotted} = null: '{dotted}' is a section; override its keys one by one.")
    if type(None) not in typing.get_args(tp):
        raise ParamError(f"override {dotted} = null: {dotted} cannot be null (it takes {_type_name(tp)}); give a "
                         "value, or leave the override out to keep the parameter file's.")


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A parameter file as a mapping, its ``base:`` chain merged under it; every fault names the file."""
    given, path = Path(path), paths.resolve(path)
    if not path.exists():
        where = "" if given.expanduser().is_absolute() else \
            f" (a relative path is resolved from the project root {paths.ROOT}, not the current directory)"
        raise ParamError(f"parameter file {path} not found{where}; the sets shipped are in params/ "
                         f"({', '.join(p.name for p in sorted(paths.PARAMS.glob('*.yaml')))}).")
    if path.is_dir():
        inside = ", ".join(p.name for p in sorted(path.glob("*.yaml"))[:8]) or "no .yaml files"
        raise ParamError(f"parameter file {path} is a folder ({inside}); give one .yaml file, e.g. params/smoke.yaml.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamError(f"{path} is not valid YAML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamError(f"cannot read parameter file {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamError(f"{path} must hold a mapping of sections, not {type(raw).__name__}.")
    # A file may start from another one: `base: params/demo.yaml`.
    base = raw.pop("base", None)
    if base is not None:
        raw = _deep_merge(_read_base(base, path, _chain + (path.resolve(),)), raw)
    return raw


def _read_base(base, path: Path, chain: tuple[Path, ...]) -> dict:
    """The file a ``base:`` names; one that (through others) includes itself is refused, naming the loop."""
    if not isinstance(base, str) or not base.strip():
        raise ParamError(f"base: {base!r} in {path} must be the path of another parameter file, "
                         "e.g. base: params/demo.yaml.")
    target = paths.resolve(base).resolve()
    if target in chain:
        loop = " -> ".join(str(p) for p in chain[chain.index(target):] + (target,))
        raise ParamError(f"base: {base} in {path} includes itself ({loop}); remove the `base:` line that closes "
                         "the loop.")
    return read_yaml(base, chain)


def from_dict(raw: dict) -> Config:
    cfg = _build(Config, raw, "")
    _validate_ranges(cfg)
    return cfg


def load(path: str | Path, overrides: dict | None = None) -> Config:
    """Load and validate a parameter file, with optional dotted-key overrides (from papermill cells)."""
    return from_dict(apply_overrides(read_yaml(path), overrides))
