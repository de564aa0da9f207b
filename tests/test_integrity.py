"""Integrity (issue 20, holes 1, 2, 8, 9 and part of 10): synthetic files checked by their bytes, images read
by bit depth, a resealed stage 04 that keeps stage 05 valid, folders that follow the umask, and clear errors
for an oversized image, a full disk and the temporary files a killed write leaves."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lib.core import atomic, provenance, stages
from lib.data import curation, images
from lib.finetune import diffusion_model
from lib.evaluate import evaluation
from lib.generate import generation
from lib.data.nih import DataError
from test_generation import small, tiny_stage03


# ------------------------------------------------------------------------ a sealed stage 04 and 05
def _stage05(cfg, out, runs_root=None):          # stands in for stage 05: it reads stage 04, as the real one does
    atomic.write_json(out / "results.json", {"auroc": 0.9})


@pytest.fixture
def sealed(runs_root):
    """Stages 01-04 of a tiny chain (12 images) and a stand-in stage 05 sealed on them."""
    cfg = small()
    tiny_stage03(cfg, runs_root)
    d04 = stages.run_stage(cfg, "04_generation", generation.run, runs_root, progress=False)
    d05 = stages.run_stage(cfg, "05_classifier", _stage05, runs_root)
    assert "04_generation" in json.loads((d05 / "DONE.json").read_text())["inputs"]
    return cfg, runs_root, d04, d05


def test_replaced_synthetic_images_are_refused_and_change_the_data_hash(sealed):
    cfg, runs_root, d04, d05 = sealed
    manifest = pd.read_csv(d04 / "manifest.csv")
    # a real training image copied over one synthetic file, one pixel changed in another
    train = curation.load_pools(stages.require(cfg, "01_data_curation", runs_root))["train"]
    copied, touched = d04 / manifest["file"][0], d04 / manifest["file"][7]
    Image.open(images.paths.resolve(train["path"][0])).convert("L").resize((32, 32)).save(copied)
    arr = np.asarray(Image.open(touched)).copy()
    arr[0, 0] = (int(arr[0, 0]) + 1) % 256
    Image.fromarray(arr).save(touched)

    with pytest.raises(stages.StageChanged, match=rf"{copied.name}.*changed.*{touched.name}.*changed"):
        stages.require(cfg, "04_generation", runs_root)
    assert not stages.is_done(d04) and not stages.is_done(d05)      # stage 05 built on it is no longer valid
    with pytest.raises(stages.StageChanged, match=copied.name):
        stages.run_stage(cfg, "05_classifier", _stage05, runs_root)
    # the record's data hash reads the files' bytes, not the manifest's column
    assert evaluation.data_hash(manifest) != provenance.hash_strings(manifest["hash"])
    copied.unlink()
    assert "was removed" in stages.changed(d04)


def test_the_data_hash_of_intact_files_equals_the_hash_of_their_manifest_column(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    df = pd.DataFrame({"path": [str(tmp_path / f"{i}.png") for i in range(3)]})
    df["hash"] = [images.content_hash(Path(p).read_bytes()) for p in df["path"]]
    assert evaluation.data_hash(df) == provenance.hash_strings(df["hash"])   # records stay comparable


def test_a_resealed_stage_04_keeps_its_summary_so_stage_05_stays_valid(sealed):
    cfg, runs_root, d04, d05 = sealed
    summary = (d04 / "generation_summary.json").read_bytes()
    (d04 / "DONE.json").unlink()                                    # deleted by hand: the stage is resumed
    assert stages.run_stage(cfg, "04_generation", generation.run, runs_root, progress=False) == d04
    assert stages.is_done(d04) and (d04 / "generation_summary.json").read_bytes() == summary
    assert stages.is_done(d05) and stages.require(cfg, "05_classifier", runs_root) == d05


def test_a_resealed_stage_03_keeps_its_logs_so_stage_04_stays_valid(tmp_path, runs_root):
    from dreambooth_fixtures import fake_stage02, tiny_cfg

    from lib.finetune import dreambooth

    cfg = tiny_cfg(tmp_path, **{"gating.enabled": False})
    fake_stage02(cfg, runs_root, tmp_path)
    d03 = stages.run_stage(cfg, "03_dreambooth", dreambooth.run, runs_root, progress=False)
    d04 = stages.run_stage(cfg, "04_generation", _stage05, runs_root)          # a stand-in reading stage 03
    logs = {f.name: f.read_bytes() for f in d03.iterdir() if f.suffix in (".csv", ".json") and f.name != "DONE.json"}
    (d03 / "DONE.json").unlink()
    stages.run_stage(cfg, "03_dreambooth", dreambooth.run, runs_root, progress=False)
    assert {f: (d03 / f).read_bytes() for f in logs} == logs       # loss_log.csv, train_summary.json: not retimed
    assert stages.is_done(d03) and stages.is_done(d04)


# ------------------------------------------------------------------------------------ bit depths
def test_images_are_read_by_bit_depth(tmp_path):
    ramp = np.linspace(0.0, 0.66, 32 * 32).reshape(32, 32)        # mean 0.33
    files = {"8.png": Image.fromarray(np.round(ramp * 255).astype(np.uint8)),
             "16.png": Image.fromarray(np.round(ramp * 65535).astype(np.uint16)),
             "16.tif": Image.fromarray(np.round(ramp * 65535).astype(np.uint16)),
             "float.tif": Image.fromarray(ramp.astype(np.float32))}
    for name, im in files.items():
        im.save(tmp_path / name)
    assert Image.open(tmp_path / "16.png").mode == "I;16" and Image.open(tmp_path / "float.tif").mode == "F"
    for name in files:
        full, small_ = images.load_gray(tmp_path / name), images.load_gray(tmp_path / name, 16)
        assert full.dtype == np.float32 and full.shape == (32, 32) and small_.shape == (16, 16), name
        assert abs(full.mean() - 0.33) < 2e-3 and abs(small_.mean() - 0.33) < 5e-3, (name, full.mean())
    Image.fromarray((ramp * 300).astype(np.float32)).save(tmp_path / "hounsfield.tif")   # floats not in [0, 1]
    with pytest.raises(DataError, match=r"hounsfield\.tif holds floating-point pixels .* scale it to \[0, 1\]"):
        images.load_gray(tmp_path / "hounsfield.tif")


def test_an_oversized_image_is_an_error_naming_the_file(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)             # 4096 pixels > 2 x 100: a "bomb"
    for read in (images.load_gray, images.check_and_hash):
        with pytest.raises(DataError, match=r"huge\.png is too large to read safely.*Downscale it"):
            read(tmp_path / "huge.png")


# ------------------------------------------------------------------------------------ umask
def test_model_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        model = diffusion_model.build_tiny(resolution=32, pretrain_steps=0, seed=0, out_dir=tmp_path / "model",
                                           progress=False)
        assert model.stat().st_mode & 0o777 == 0o755 and (model / "model_index.json").exists()
        with atomic.atomic_dir(tmp_path / "staged") as d:       # how stage 03 writes model/ (lib.finetune.trainer)
            (d / "x.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "staged" / "x.json").exists()
    assert (tmp_path / "staged").stat().st_mode & 0o777 == 0o755
    assert not list(tmp_path.glob(".*.tmp"))                         # no staging folder left


# ------------------------------------------------------------------------------------ full disk
def test_a_full_disk_names_the_path_and_leaves_no_file(tmp_path, monkeypatch):
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    target = tmp_path / "stage" / "results.json"
    with pytest.raises(OSError, match=rf"cannot write {target}: the disk is full.*Free space"):
        atomic.write_json(target, {"x": 1})
    assert list(target.parent.iterdir()) == []                      # neither the file nor its temporary sibling
    with pytest.raises(OSError, match="cannot write .*model: the disk is full"):
        with atomic.atomic_dir(tmp_path / "model") as d:
            (d / "weights.bin").write_text("w")
    assert list(tmp_path.iterdir()) == [target.parent]


# ------------------------------------------------------------------------------------ stale temporaries
KILLED_WRITE = """
import os, sys
from lib.core import atomic
with atomic.atomic_path(sys.argv[1]) as tmp:
    open(tmp, "wb").write(b"half a checkpoint")
    os._exit(9)                                   # killed mid-write: the rename never happens
"""


def _killed_write(target: Path) -> Path:
    subprocess.run([sys.executable, "-c", KILLED_WRITE, str(target)], cwd=images.paths.ROOT, check=False)
    left = list(target.parent.glob(f".{target.name}.*.tmp"))
    assert len(left) == 1 and not target.exists()
    return left[0]


def test_a_killed_write_leaves_a_temporary_file_the_next_write_removes(tmp_path):
    ckpt = tmp_path / "checkpoints" / "model"
    left = _killed_write(ckpt / "step_000006.pt")
    old = ckpt / ".step_000003.pt.abcd1234.tmp"                     # an older writer's name: judged by its age
    old.write_bytes(b"x")
    os.utime(old, (0, 0))
    live = ckpt / ".step_000009.pt.efgh5678.tmp"                    # an older writer's, written just now: kept
    live.write_bytes(b"x")
    atomic.write_json(ckpt / "other.json", {})
    assert not left.exists() and not old.exists() and live.exists()


def test_a_resumed_stage_removes_the_temporary_files_of_killed_writes(smoke_cfg, runs_root):
    def killed(cfg, out, runs_root=None):
        left.append(_killed_write(out / "checkpoints" / "model" / "step_000006.pt"))
        raise KeyboardInterrupt

    def resumed(cfg, out, runs_root=None):
        assert not left[0].exists()                                   # gone before the stage's code runs
        atomic.write_json(out / "summary.json", {"ok": True})

    left = []
    with pytest.raises(KeyboardInterrupt):
        stages.run_stage(smoke_cfg, "02_clustering", killed, runs_root)
    d = stages.run_stage(smoke_cfg, "02_clustering", resumed, runs_root)
    assert stages.is_done(d) and not list(d.rglob("*.tmp"))
