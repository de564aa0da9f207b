"""Stage 04: per-image seeds, resume after a kill, and the tiny chain phantoms -> model -> FTER."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lib.core import atomic, compute, config, stages
from lib.data import curation
from lib.finetune import diffusion_model, dreambooth
from lib.evaluate import evaluation, results
from lib.generate import generation
from lib.tuningset import selection
from test_evaluation import sklearn_fter


def tiny_stage03(cfg, runs_root):
    """Stage 01 for real; stage 02's tuning set from the tuning pool; stage 03 = an untrained tiny SD model."""
    d01 = stages.run_stage(cfg, "01_data_curation", curation.run, runs_root, progress=False)
    d02 = stages.stage_dir(cfg, "02_clustering", runs_root)
    atomic.write_csv(d02 / f"tuning_{cfg.finetune.method}.csv", curation.load_pools(d01)["tuning"])
    stages.mark_done(d02, cfg, "02_clustering")
    d03 = stages.stage_dir(cfg, "03_dreambooth", runs_root)
    diffusion_model.build_tiny(resolution=cfg.model.resolution, pretrain_steps=0, seed=0,
                               out_dir=d03 / "model", progress=False)
    stages.mark_done(d03, cfg, "03_dreambooth")
    return d03


def small(**extra):
    return config.load("params/smoke.yaml", {"generation.n_per_label": 6, "generation.batch_size": 4,
                                              "generation.steps": 2, **extra})


def test_plan_seeds_are_unique_stable_and_prompts_follow_the_template():
    cfg = small()
    p = generation.plan(cfg)
    assert len(p) == 12 and p["seed"].is_unique and p["file"].is_unique and p["image_id"].is_unique
    assert (generation.plan(cfg)["seed"] == p["seed"]).all()
    assert (generation.plan(small(seed=1))["seed"] != p["seed"]).all()
    assert set(p["prompt"]) == {cfg.finetune.prompt_template.format(label=w)
                                for w in cfg.finetune.label_words.values()}


def test_resume_after_kill_loses_and_duplicates_nothing(runs_root, tmp_path):
    cfg = small()
    tiny_stage03(cfg, runs_root)
    out = stages.stage_dir(cfg, "04_generation", runs_root)
    out.mkdir(parents=True)
    with pytest.raises(generation.Interrupted):
        generation.run(cfg, out, runs_root, progress=False, max_batches=3)  # killed after 10 of 12 images (4+2, then 4)
    done = sorted(p.name for p in (out / "images").rglob("*.png"))
    assert len(done) == 10 and not (out / "manifest.csv").exists()
    # A kill in the middle of a write leaves a temporary file, never a half PNG under the image's name.
    (out / "images" / "unhealthy" / ".unhealthy_000005.png.abc.tmp").write_bytes(b"half")
    stamp = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    generation.run(cfg, out, runs_root, progress=False)
    m = pd.read_csv(out / "manifest.csv")
    assert len(m) == 12 and m["file"].is_unique and m["seed"].is_unique
    assert m.groupby("label").size().to_dict() == {"No Finding": 6, "Unhealthy": 6}
    assert sorted(p.name for p in (out / "images").rglob("*") if p.is_file()) == sorted(m["file"].map(lambda f: f.split("/")[-1]))
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())  # finished images were not redrawn
    # The resumed set equals an uninterrupted run's, image for image.
    other = tmp_path / "straight"
    other.mkdir()
    generation.run(cfg, other, runs_root, progress=False)
    m2 = pd.read_csv(other / "manifest.csv")
    assert (m2[["image_id", "seed", "prompt"]] == m[["image_id", "seed", "prompt"]]).all().all()
    for f in m["file"]:
        a = np.asarray(Image.open(out / f), dtype=int); b = np.asarray(Image.open(other / f), dtype=int)
        assert np.abs(a - b).max() <= 1, f


def test_any_single_image_regenerates_from_its_seed(runs_root):
    cfg = small()
    tiny_stage03(cfg, runs_root)
    out = stages.run_stage(cfg, "04_generation", generation.run, runs_root, progress=False)
    m = pd.read_csv(out / "manifest.csv")
    row = m.iloc[7]  # drawn in the second batch, next to other images
    again = generation.regenerate(row, cfg, runs_root)
    saved = np.asarray(Image.open(out / row["file"]), dtype=int)
    assert np.abs(again.astype(int) - saved).max() <= 1
    other = np.asarray(Image.open(out / m.iloc[6]["file"]), dtype=int)
    assert np.abs(again.astype(int) - other).max() > 10  # a different seed is a different image


def test_tiny_end_to_end_phantoms_to_fter(runs_root, tmp_path):
    """Phantoms -> pools -> spectral-CLIP tuning set -> a tiny SD model fine-tuned for a few steps -> synthetic
    set -> both directions -> FTER, which scikit-learn recomputes from the saved predictions."""
    cfg = small(**{"generation.n_per_label": 24, "generation.batch_size": 24, "classifier.n_train_per_class": 20,
                   "classifier.n_test": 40, "classifier.epochs": 2, "model.tiny_pretrain_steps": 0,
                   "finetune.steps": 3, "finetune.batch_size": 4, "finetune.validation_every": 100,
                   "finetune.checkpoint_every": 100, "embedding.cache_dir": str(tmp_path / "emb-cache")})
    for stage, fn in (("01_data_curation", curation.run), ("02_clustering", selection.run),
                      ("03_dreambooth", dreambooth.run), ("04_generation", generation.run)):
        stages.run_stage(cfg, stage, fn, runs_root, progress=False)
    d03 = stages.stage_dir(cfg, "03_dreambooth", runs_root)
    assert len(pd.read_csv(d03 / "loss_log.csv")) == 3                 # it was fine-tuned, not a stand-in
    out = stages.run_stage(cfg, "05_classifier", evaluation.run, runs_root, progress=False)
    row = results.read(out)
    assert 0.0 <= row["a_auroc"] <= 1.0 and 0.0 <= row["b_auroc"] <= 1.0
    assert row["fter"] == pytest.approx(sklearn_fter(out), rel=1e-12)
    assert row["generator_hash"] and row["method"] == results.method_name(cfg)


def test_bf16_generation_is_its_own_stage_and_draws_the_fp32_images_within_a_few_levels(runs_root):
    """generation.precision (issue 24): bf16 autocast halves stage 04 on CPUs with bf16 units; the images must stay
    those of fp32 (same seeds), and fp32, the default, must keep the stage keys every earlier run was filed under."""
    fp32, bf16 = small(), small(**{"generation.precision": "bf16"})
    assert stages.key(fp32, "04_generation") != stages.key(bf16, "04_generation")
    assert stages.key(fp32, "03_dreambooth") == stages.key(bf16, "03_dreambooth")
    sampled = small(**{"finetune.sampling_precision": "bf16"})   # the gate's and validation's samples: stage 03 on
    assert stages.key(sampled, "03_dreambooth") != stages.key(fp32, "03_dreambooth")
    tiny_stage03(fp32, runs_root)        # stages 01-03 are shared: their keys do not hold generation.precision
    out = {c.generation.precision: stages.run_stage(c, "04_generation", generation.run, runs_root, progress=False)
           for c in (fp32, bf16)}
    m = pd.read_csv(out["fp32"] / "manifest.csv")
    a = np.stack([np.asarray(Image.open(out["fp32"] / f), dtype=int) for f in m["file"]])
    b = np.stack([np.asarray(Image.open(out["bf16"] / f), dtype=int) for f in m["file"]])
    assert np.abs(a - b).mean() < 2 and np.abs(a - b).max() <= 16      # bf16 rounding, not other images
    assert np.abs(a - np.roll(b, 1, axis=0)).mean() > 5                 # another seed's image is far off
    with pytest.raises(config.ParamError, match="generation.precision = fp16 needs a GPU"):
        compute.autocast("fp16", "cpu", "generation.precision")     # no fast CPU path: refused, with what to set
