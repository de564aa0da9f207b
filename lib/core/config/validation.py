"""Value checks of a built Config: ranges, and keys that must agree across sections.

The schema (lib/core/config/schema.py) has checked names and types; this checks the values. A step that
alone knows some allowed values (shape names, backbones) registers a check on its section
(lib/core/config/checks.py), run here where that section is checked.
"""
from __future__ import annotations

import re

from . import checks
from .schema import Config, ParamError

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
    bad = [s for s in cfg.development_seeds if not 0 <= s <= SEED_MAX]
    if bad:
        raise ParamError(f"development_seeds {bad} must be whole numbers from 0 to {SEED_MAX} (numpy's seed range).")


def _flat_items(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and k != "label_words":
            yield from _flat_items(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


EARLY = ("data", "selection", "classifier")   # sections whose registered checks run beside the section's own


def validate(cfg: Config) -> None:
    """Every value check, in a fixed order (the first fault is the error); ParamError names the key."""
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
                   ("classifier.n_test", c.n_test), ("classifier.bootstrap", c.bootstrap),
                   ("classifier.repeats", c.repeats)):
        if v < 1:
            raise ParamError(f"{key} = {v} must be at least 1.")
    if not 0.0 < c.val_fraction < 0.5:
        raise ParamError(f"classifier.val_fraction = {c.val_fraction} must be in (0, 0.5).")
    if not 0.0 < c.threshold < 1.0:
        raise ParamError(f"classifier.threshold = {c.threshold} must be in (0, 1).")
    checks.run(cfg, "classifier")     # classifier.arch and .weights: lib/evaluate/backbones.py
    for key, v in (("generation.cpu_threads", g.cpu_threads), ("classifier.cpu_threads", c.cpu_threads)):
        if v is not None and v < 1:
            raise ParamError(f"{key} = {v} must be at least 1 (or null for torch's default).")
    if c.input_size < 32:
        raise ParamError(f"classifier.input_size = {c.input_size} must be at least 32 (DenseNet downsamples 32x).")
    _validate_reference(cfg)
    _validate_fidelity(cfg)
    _validate_mixing(cfg)
    _validate_transfer(cfg)
    checks.run(cfg, *(s for s in checks.SECTIONS if s not in EARLY))


def _validate_data(cfg: Config) -> None:
    """Which keys each data source reads (lib/data/domains.py for folder, csv and shapes)."""
    d = cfg.data
    if d.phantom_modes and d.source != "phantom":
        raise ParamError(f"data.phantom_modes = true draws phantoms through acquisition modes; data.source = "
                         f"{d.source!r} reads its images as they are. Remove data.phantom_modes (or use "
                         f"data.source: phantom).")
    if not 0.0 <= d.mode_conspicuity <= 1.0:
        raise ParamError(f"data.mode_conspicuity = {d.mode_conspicuity} is the share of a finding's contrast kept in the "
                         f"rare modes: give a number in [0, 1] (1.0 draws the modes unchanged).")
    if d.mode_conspicuity != 1.0 and not d.phantom_modes:
        raise ParamError(f"data.mode_conspicuity = {d.mode_conspicuity} changes how findings look in the rare acquisition "
                         f"modes, but data.phantom_modes is off. Set data.phantom_modes: true or remove data.mode_conspicuity.")
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
    checks.run(cfg, "data")     # e.g. the shape names of the shapes source: lib/data/shapes.py



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
    """The transfer section's sizes (lib/analyze/transfer.py); its set names are judged by the reference registry
    (lib/generate/references.py, a registered check), which knows the kinds."""
    t = cfg.transfer
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
    if not g.exaggerate > 1.0:
        raise ParamError(f"generation.exaggerate = {g.exaggerate} must be greater than 1 (it multiplies the "
                         "strength of every finding; 1 would redraw the originals).")
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
    _validate_equal_updates(f, g)
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


def _validate_equal_updates(f, g) -> None:
    """The equal-updates control: ungated training for the gated counterpart's trained count, joint layout."""
    if f.control != "equal-updates":
        if f.updates is not None:
            raise ParamError(f"finetune.updates = {f.updates} is read only by finetune.control: equal-updates "
                             f"(control is {f.control!r}); remove it, or set the control.")
        return
    if g.enabled:
        raise ParamError("finetune.control = equal-updates is ungated training: set gating.enabled: false. Its gated "
                         "counterpart is the same point with gating.enabled: true and finetune.control: none, whose "
                         "trained update count (stage 03's train_summary.json) it copies.")
    if f.model_layout != "joint":
        raise ParamError("finetune.control = equal-updates needs finetune.model_layout: joint: a per-label gated run "
                         "trains a different number of updates per model, and the control copies one count.")
    if f.updates is not None and f.updates < 1:
        raise ParamError(f"finetune.updates = {f.updates} must be at least 1 (or null: the gated run's trained count).")


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
    checks.run(cfg, "selection")      # the method names and each method's needs: lib/tuningset/selection.py
    tuned = cfg.finetune.control != "no-fine-tune" and cfg.generation.kind == "diffusion"
    if tuned and cfg.finetune.method not in s.methods:
        raise ParamError(f"finetune.method = {cfg.finetune.method!r} is not among selection.methods = {s.methods}, "
                         "so stage 02 would write no tuning set for it; add it there or pick one of those.")
    if not 0.5 <= s.pseudo_label_threshold <= 1.0:
        raise ParamError(f"selection.pseudo_label_threshold = {s.pseudo_label_threshold} must be in [0.5, 1.0]: "
                         "it is the least confidence (the larger class output, normalised) an external image's "
                         "pseudo-label needs; with two classes 0.5 keeps every image.")
    if s.external_dir and "external" not in s.methods:
        raise ParamError(f"selection.external_dir = {s.external_dir!r} is read only by the 'external' selection "
                         "method; add 'external' to selection.methods or remove the folder.")
