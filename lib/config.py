"""Parameter sets: one declared schema, one loader.

A parameter file is YAML with the sections below. Anything not in the schema, or of the wrong
type, stops the run with an error that names the key and what is allowed. Defaults live here, so a
parameter file only states what it changes.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
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
    source: Literal["phantom", "nih"] = "phantom"
    nih_root: Optional[str] = None          # folder holding images/ or images_0XX/images/
    csv: Optional[str] = None               # Data_Entry_2017*.csv; None -> the copy torchxrayvision ships
    views: list[str] = field(default_factory=lambda: ["PA", "AP"])
    official_split: bool = True             # honour train_val_list.txt / test_list.txt when present
    image_size: int = 64                    # size images are loaded at (and phantoms drawn at)
    phantom_n: int = 2000                   # how many real metadata rows get a phantom
    phantom_textbook: bool = False          # typical, single-finding, clean phantoms (Experiment 5)
    phantom_seed: int = 0                   # the phantom data set's own seed (pools use the run seed)
    check_images: bool = True               # open every image once to exclude corrupt ones


@dataclass
class PoolsConfig:
    tuning: int = 400                       # images in the generator's tuning pool
    train: int = 800                        # real training pool
    test: int = 600                         # real test pool (thesis: 10,000)


@dataclass
class EmbeddingConfig:
    pixel_size: int = 16                    # side of the downsampled grayscale vector
    clip_model: str = "ViT-B-32"
    clip_pretrained: Optional[str] = None   # e.g. "laion2b_s34b_b79k"; None = random weights (offline)
    clip_image_size: Optional[int] = 64     # None = the model's native size
    batch_size: int = 64
    xrv_weights: Optional[str] = None       # torchxrayvision DenseNet weights name, used only if on disk


@dataclass
class ClusterConfig:
    algorithm: Literal["spectral", "kmeans"] = "spectral"
    k: int = 10                             # clusters per label
    n_neighbors: int = 15                   # sparse affinity for large n
    exact_below: int = 3000                 # exact rbf affinity below this many points


@dataclass
class SelectionConfig:
    methods: list[str] = field(default_factory=lambda: ["random", "spectral-pixel", "spectral-clip"])
    per_label: int = 100                    # tuning images per label (thesis: 500 and 1,000)
    quota: Literal["equal", "proportional"] = "equal"


@dataclass
class ModelConfig:
    base: str = "tiny"                      # "tiny" (built offline) or a Hugging Face id / local path
    revision: Optional[str] = None
    resolution: int = 32                    # training and generation resolution
    tiny_pretrain_steps: int = 300          # out-of-domain pre-training of the tiny base model


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
    validation_images: int = 4


@dataclass
class GatingConfig:
    enabled: bool = False
    threshold: float = 0.3                  # thesis: skip when similarity > 0.3
    mode: Literal["absolute", "quantile"] = "absolute"
    skip_fraction: float = 0.3              # target skip rate in quantile mode
    warmup_batches: int = 10                # quantile calibration window
    aggregation: Literal["mean-pairwise", "centroid", "max"] = "mean-pairwise"
    n_images: int = 4                       # images generated per gate
    every_k: int = 1                        # gate every k batches
    sampler_steps: int = 8                  # few-step sampler at gating time
    resolution: Optional[int] = None        # None = training resolution
    skip_rate: Optional[float] = None       # random-skip control; None = take it from the gated run


@dataclass
class GenerationConfig:
    n_per_label: int = 300                  # thesis: 10,000
    scheduler: str = "dpm"                  # dpm | ddim | ddpm | euler
    steps: int = 20
    guidance_scale: float = 3.0
    batch_size: int = 64


@dataclass
class ClassifierConfig:
    weights: Literal["imagenet", "none"] = "none"
    arch: str = "densenet121"
    input_size: int = 64                    # 224 for real runs
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 1e-3
    patience: int = 3
    val_fraction: float = 0.15
    n_train_per_class: int = 300            # both directions train on this many per class
    n_test: int = 600                       # thesis: 10,000 (real and synthetic test sets)
    bootstrap: int = 200


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Short stable hash of the named sections (top-level keys allowed), for cache and stage keys."""
        d = self.to_dict()
        blob = json.dumps({s: d[s] for s in sections}, sort_keys=True, default=str)
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
            raise ParamError(f"{key} = {value!r} is not allowed; use {_type_name(tp)}.")
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
        raise ParamError(f"{key} = {value!r} has the wrong type; expected {_type_name(tp)}.")
    return value


def _build(cls, values: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
        raise ParamError(f"unknown parameter '{prefix}{unknown[0]}' in {where}; allowed keys: {', '.join(names)}.")
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


def _validate_ranges(cfg: Config) -> None:
    if not -1.0 <= cfg.gating.threshold <= 1.0:
        raise ParamError(f"gating.threshold = {cfg.gating.threshold} is outside [-1, 1]; "
                         "it is a cosine similarity.")
    if not 0.0 <= cfg.gating.skip_fraction < 1.0:
        raise ParamError(f"gating.skip_fraction = {cfg.gating.skip_fraction} must be in [0, 1).")
    if not 32 <= cfg.data.image_size <= 512:
        raise ParamError(f"data.image_size = {cfg.data.image_size} must be between 32 and 512.")
    for name in ("tuning", "train", "test"):
        if getattr(cfg.pools, name) < 1:
            raise ParamError(f"pools.{name} must be at least 1.")
    if cfg.selection.per_label < 1:
        raise ParamError("selection.per_label must be at least 1 (a quota of 0 selects nothing).")
    if cfg.cluster.k < 1:
        raise ParamError("cluster.k must be at least 1.")


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "label_words":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_overrides(raw: dict, overrides: dict | None) -> dict:
    """Overrides use dotted keys (``{"gating.threshold": 0.5}``); ``None`` values mean 'keep the file's'."""
    raw = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ParamError(f"override '{dotted}': '{p}' is not a section.")
        node[leaf] = value
    return raw


def read_yaml(path: str | Path) -> dict:
    path = paths.resolve(path)
    if not path.exists():
        raise ParamError(f"parameter file {path} not found; the sets shipped are in params/ "
                         f"({', '.join(p.name for p in sorted(paths.PARAMS.glob('*.yaml')))}).")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ParamError(f"{path} must hold a mapping of sections, not {type(raw).__name__}.")
    # A file may start from another one: `base: params/demo.yaml`.
    base = raw.pop("base", None)
    if base is not None:
        raw = _deep_merge(read_yaml(base), raw)
    return raw


def from_dict(raw: dict) -> Config:
    cfg = _build(Config, raw, "")
    _validate_ranges(cfg)
    return cfg


def load(path: str | Path, overrides: dict | None = None) -> Config:
    """Load and validate a parameter file, with optional dotted-key overrides (from papermill cells)."""
    return from_dict(apply_overrides(read_yaml(path), overrides))
