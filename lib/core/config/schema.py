"""The parameter schema: one dataclass per section, with the defaults and what each key means.

A parameter file only states what it changes from these defaults; lib/core/config/loading.py reads it into
a Config, lib/core/config/validation.py checks the values.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal, Optional


class ParamError(ValueError):
    """A parameter file or override that does not fit the schema."""


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
    phantom_modes: bool = False             # phantoms drawn through long-tailed acquisition modes (lib/data/phantoms.py)
    mode_conspicuity: float = 1.0           # with phantom_modes: the rare modes' findings at this share of their contrast
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
    control: Literal["none", "random-skip", "equal-updates", "no-fine-tune"] = "none"
    prompt_template: str = "an image of {label} chest X-ray"
    label_words: dict[str, str] = field(default_factory=lambda: {"No Finding": "Healthy",
                                                                 "Unhealthy": "Unhealthy"})
    identifier: Optional[str] = None        # optional rare token, DreamBooth style
    model_layout: Literal["joint", "per-label"] = "joint"
    steps: int = 200
    updates: Optional[int] = None           # equal-updates control: batches trained, all ungated; None = the gated
                                            # run's trained count (stage 03's train_summary.json "trained")
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
    # Stage 03's sampling without gradients (the gate's samples, validation images): null = under the training's
    # mixed precision, as before; bf16 = under bf16 autocast, also on the CPU, where oneDNN runs the tiny UNet's
    # inference ~2x faster (benchmarks/results/bench_point_profile.txt). Training itself stays as mixed_precision says.
    sampling_precision: Optional[Literal["fp32", "bf16", "fp16"]] = None
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
    pool: int = 1                           # score against the last `pool` fresh draws' images (1 = the latest only)
    common_noise: bool = False              # every fresh draw starts from the same noise (common random numbers)
    offset_draws: int = 0                   # full-step draws on the gate's own noise that measure the few-step
    #                                       sampler's score bias, which is then subtracted (0 = no correction)
    offset_every: int = 1                   # take them at every offset_every-th fresh draw (spread over the run)
    offset_steps: int = 50                  # DDIM steps of those draws (the naive gate's)
    score_offset: float = 0.0               # a fixed few-step score bias subtracted from every score when no
    #                                       offset draws are measured: the mean cheap-minus-naive score of a
    #                                       development seed's record (benchmarks/bench_gating.py --record)


@dataclass
class GenerationConfig:
    n_per_label: int = 300                  # thesis: 10,000
    scheduler: Literal["dpm", "ddim", "ddpm", "euler", "pndm"] = "dpm"
    steps: int = 20
    guidance_scale: float = 3.0
    batch_size: int = 64
    negative_prompt: Optional[str] = None
    cpu_threads: Optional[int] = None       # torch CPU threads while generating; None = torch's default
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"   # the pipeline calls' autocast: bf16 ~2x faster on CPUs with
    #                                       bf16 units (images within 1/255 of fp32's on average); fp16 needs a GPU
    # What writes the synthetic set: the diffusion model, or a reference that calibrates the metrics
    # (lib/generate/references.py): real held-out images, shuffled labels, a collapsed set, phantoms redrawn
    # without or with stronger findings, the base model's VAE round trip, or any folder of images. The kinds
    # are the registry's (lib.generate.references.GENERATORS), which checks the name when the file loads.
    kind: str = "diffusion"
    unique_images: int = 5                  # collapsed: unique images per class, repeated to fill n_per_label
    exaggerate: float = 2.0                 # exaggerated: finding strength factor (> 1)
    folder: Optional[str] = None            # folder kind: one sub-folder of images per class
    shuffled_fraction: Optional[float] = None  # partly-shuffled kind: share of each class's images whose labels are
    #                                       permuted (0 = real-holdout's set, 1 = label-shuffled's); null otherwise


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
    val_fraction: float = 0.15              # carved from the training source of each direction, whole patients to
    #                                       one side (a synthetic image: its own), stratified by class
    augment: bool = True                    # light: flip, small shift, brightness/contrast
    threshold: float = 0.5                  # score above it -> "Unhealthy" (two classes; k > 2: the largest output)
    n_train_per_class: int = 300            # both directions train on this many per class
    n_test: int = 600                       # thesis: 10,000 (real and synthetic test sets)
    bootstrap: int = 200                    # resamples for AUROC and FTER confidence intervals
    cpu_threads: Optional[int] = None       # torch CPU threads while training; None = torch's default
    repeats: int = 1                        # each classifier of stage 05 (direction a and the real baseline) trained R
    #                                       times (other seeds and validation splits), outputs averaged per image
    #                                       (lib/evaluate/repeats.py); 1 is in no stage key, so keys stay as they were


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
    development_seeds: list[int] = field(default_factory=list)   # seeds these parameters were tuned on: results
    #                                 at them are not evidence, and the analysis warns when it reports one
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
        d.pop("development_seeds")           # a record of how the parameters were chosen, computes nothing
        if not d["data"]["phantom_modes"]:   # the default phantom world: keys as before the field existed
            d["data"].pop("phantom_modes")
        if d["data"]["mode_conspicuity"] == 1.0:   # the modes as first drawn: keys as before the field existed
            d["data"].pop("mode_conspicuity")
        if d["generation"]["shuffled_fraction"] is None:   # unset (every kind but partly-shuffled): keys as before
            d["generation"].pop("shuffled_fraction")
        if d["finetune"]["updates"] is None:   # unset (every run but equal-updates): keys as before
            d["finetune"].pop("updates")
        if d["finetune"]["sampling_precision"] is None:   # unset: stage 03 samples as before the field existed
            d["finetune"].pop("sampling_precision")
        if d["generation"]["precision"] == "fp32":   # the default: stage 04 generates as before the field existed
            d["generation"].pop("precision")
        for name in ("num_processes", "tensorboard"):   # how stage 03 runs and logs, not what it computes
            d["finetune"].pop(name)
        g = d["gating"]
        for name, default in (("pool", 1), ("common_noise", False), ("offset_draws", 0), ("score_offset", 0.0)):
            if g[name] == default:   # today's gate: the same keys as before the fields existed
                g.pop(name)
        if "offset_draws" not in g:   # no bias correction: its cadence and steps compute nothing
            g.pop("offset_every"), g.pop("offset_steps")
        if d["classifier"]["repeats"] == 1:   # one classifier, as before the field existed: the same keys
            d["classifier"].pop("repeats")

        def pick(name: str):
            node = d
            for part in name.split("."):
                node = node[part]
            return node

        blob = json.dumps({s: pick(s) for s in sections}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]
