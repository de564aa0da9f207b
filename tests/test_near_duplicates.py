"""Near-copies of real test images (issue 20, deliverable 3 and hole 5): re-encoded (JPEG quality 85) and
resized (+-3 px) copies are flagged wherever outside images enter (an imported folder, an external tuning
folder, another pool of a folder/csv source) and refused by default, naming each file and its test twin;
clean folders of other patients' phantoms and of the shapes domain give no flag; a train/<class>,
test/<class> folder is refused with a hint instead of becoming two classes."""
import logging
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from lib.core import config, paths, stages
from lib.data import curation, domains, leakage, shapes
from lib.tuningset import external
from lib.generate import generation, references
from lib.runs import runner
from lib.core.config import ParamError
from lib.data.leakage import LeakageError
from lib.data.nih import DataError

import textbook_phantoms


def reencode(src, dst: Path, shift: int = 3) -> Path:
    """Other bytes, same picture: resized by ``shift`` px a side, saved as JPEG at quality 85."""
    with Image.open(paths.resolve(src)) as im:
        im = im.convert("RGB" if im.mode == "RGB" else "L")
        im = im.resize((im.width + shift, im.height + shift), Image.BICUBIC)
    dst.parent.mkdir(parents=True, exist_ok=True)
    im.save(dst, "JPEG", quality=85)
    return dst


def pools_of(cfg, runs_root) -> dict:
    return curation.load_pools(stages.run_stage(cfg, "01_data_curation", curation.run, runs_root, progress=False))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Stage 01 of the smoke parameters (32-px phantoms: 100 test, 140 training, 100 tuning images)."""
    runs_root = tmp_path_factory.mktemp("nd") / "runs"
    return runs_root, pools_of(config.load("params/smoke.yaml"), runs_root)


def planted_copies(test: pd.DataFrame, folder: Path, n: int) -> dict[str, str]:
    """n re-encoded test images in folder/<class slug>/; copy path -> its test twin's path."""
    twins = {}
    for k in range(n):
        row = test.iloc[7 * k]
        dst = reencode(row["path"], folder / generation.slug(row["label"]) / f"copy{k}.jpg", 3 if k % 2 else -3)
        twins[str(dst)] = row["path"]
    return twins


# ---------------------------------------------------------------------------------- the measure
@pytest.mark.parametrize("params", ["params/smoke.yaml", "params/shapes.yaml"])
def test_reencoded_copies_are_flagged_and_other_patients_images_are_not(params, phantom, tmp_path):
    """The old 8x8 dHash paired phantoms of different patients by the thousand and ranked planted copies
    among them; here the whole tuning pool gives no pair, and 5 planted copies give exactly their 5 pairs."""
    pools = phantom[1] if "smoke" in params else pools_of(config.load(params), tmp_path / "runs")
    clean = pools["tuning"]["path"].tolist()
    assert leakage.near_duplicates(pools["test"], clean, reference=pools["train"]).empty
    twins = planted_copies(pools["test"], tmp_path / "planted", 5)
    pairs = leakage.near_duplicates(pools["test"], clean + list(twins), reference=pools["train"])
    assert sorted(zip(pairs["source_path"], pairs["test_path"])) == sorted(twins.items())
    assert (pairs["ratio"] < 0.5).all()                 # well inside the threshold, not at its edge


# ------------------------------------------------------------------------------ the folder path
def test_an_imported_folder_holding_a_reencoded_test_image_is_refused(phantom, tmp_path, caplog):
    runs_root, pools = phantom
    src = tmp_path / "gan"
    for label, rows in pools["tuning"].groupby("label"):
        for p in rows["path"].head(4):
            (src / generation.slug(label)).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(paths.resolve(p), src / generation.slug(label) / Path(p).name)
    twins = planted_copies(pools["test"], src, 1)
    cfg = config.load("params/smoke.yaml", {"generation.kind": "folder", "generation.folder": str(src),
                                            "generation.n_per_label": 5})
    out = tmp_path / "04"
    (copy, twin), = twins.items()
    with pytest.raises(LeakageError, match=r"copy0\.jpg ~ test \S*" + re.escape(Path(twin).name)
                       + r".*data\.near_duplicates: warn"):
        references.build(cfg, out, runs_root, progress=False)
    assert (out / "near_duplicates.png").exists() and not (out / "manifest.csv").exists()
    assert pd.read_csv(out / "near_duplicates.csv")["source_path"].str.endswith("copy0.jpg").all()
    # the one setting that turns the refusal into a warning
    warn = config.load("params/smoke.yaml", {"generation.kind": "folder", "generation.folder": str(src),
                                             "generation.n_per_label": 5, "data.near_duplicates": "warn"})
    with caplog.at_level(logging.WARNING, logger="lib.data.leakage"):
        references.build(warn, tmp_path / "04-warn", runs_root, progress=False)
    assert "copy0.jpg" in caplog.text and (tmp_path / "04-warn" / "manifest.csv").exists()
    # the copy removed, the refused folder builds and keeps no stale montage
    next(src.rglob("copy0.jpg")).unlink()
    references.build(cfg, out, runs_root, progress=False)
    assert (out / "manifest.csv").exists() and not (out / "near_duplicates.png").exists()


# ---------------------------------------------------------------------------- the external path
def test_an_external_folder_holding_a_reencoded_test_image_is_refused_before_the_labeller_trains(
        phantom, tmp_path, monkeypatch):
    """tuning_external.csv was checked by file bytes only: a re-encoded copy went through."""
    runs_root, pools = phantom

    class Reached(Exception):
        pass

    def labeller(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(external, "labeller", labeller)
    folder = tmp_path / "textbook"
    textbook_phantoms.write(folder, 5)
    cfg = config.load("params/smoke.yaml", {"selection.methods": ["random", "external"], "finetune.method": "external",
                                            "selection.external_dir": str(folder)})
    with pytest.raises(Reached):                       # clean: the check passes, the labeller is next
        external.candidates(cfg, tmp_path / "02", runs_root, progress=False)
    reencode(pools["test"]["path"].iloc[3], folder / "scan.jpg")
    with pytest.raises(LeakageError, match=r"external tuning folder.*scan\.jpg ~ test \S*"
                       + re.escape(Path(pools["test"]["path"].iloc[3]).name)):
        external.candidates(cfg, tmp_path / "02", runs_root, progress=False)
    assert (tmp_path / "02" / "near_duplicates.png").exists()


# ---------------------------------------------------------------------- a data source's own split
def test_a_folder_source_holding_an_image_twice_under_two_names_is_refused_in_stage_01(tmp_path):
    root = tmp_path / "imgs"
    for c in ("circle", "square", "triangle"):
        (root / c).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(shapes.draw(c, 100 + i, i, 32)).save(root / c / f"{i}.png")
        for i in range(8):                              # each image its own group: copies land in any pool
            reencode(root / c / f"{i}.png", root / c / f"{i}_copy.jpg")
    over = {"data.source": "folder", "data.folder": str(root), "pools.tuning": 30, "pools.train": 40,
            "pools.test": 40}
    with pytest.raises(LeakageError, match=r"tuning and training pools of .*_copy\.jpg"):
        stages.run_stage(config.load("params/shapes.yaml", over), "01_data_curation", curation.run,
                         tmp_path / "runs", progress=False)
    warn = config.load("params/shapes.yaml", {**over, "data.near_duplicates": "warn"})
    d01 = stages.run_stage(warn, "01_data_curation", curation.run, tmp_path / "runs", progress=False)
    flagged = pd.read_csv(d01 / "near_duplicates.csv")
    stem = lambda p: Path(p).stem.replace("_copy", "")       # noqa: E731  each flagged pair is an image and its copy
    assert len(flagged) and all(stem(t) == stem(s) and Path(t).parent.name == Path(s).parent.name
                                for t, s in zip(flagged["test_path"], flagged["source_path"]))


# ---------------------------------------------------------------------------------- hole 5
def test_a_train_test_split_folder_is_refused_with_a_hint(tmp_path):
    """It used to become two classes, 'train' and 'test'."""
    root = tmp_path / "split"
    for split, n in (("train", 6), ("test", 3)):
        for c in ("circle", "square"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(shapes.draw(c, i, i, 32)).save(root / split / c / f"{i}.png")
    cfg = config.load("params/smoke.yaml", {"data.source": "folder", "data.folder": str(root)})
    with pytest.raises(DataError, match=r"laid out in splits \('test', 'train'.*\['circle', 'square'\].*"
                                        r"Point data\.folder at one split .*data\.source: csv"):
        curation.curate(cfg, progress=False)
    # one split is an ordinary ImageFolder; a class that happens to be called "test" is still a class
    assert sorted(domains.read_folder(root / "train")["label"].unique()) == ["circle", "square"]
    plain = tmp_path / "plain"
    for c in ("test", "other"):
        (plain / c).mkdir(parents=True)
        shutil.copy(root / "test" / "circle" / "0.png", plain / c / "0.png")
    assert sorted(domains.read_folder(plain)["label"].unique()) == ["other", "test"]


# ---------------------------------------------------------------------------------- the setting
def test_the_setting_is_validated_and_changes_no_stage_key_nor_run():
    with pytest.raises(ParamError, match="data.near_duplicates"):
        config.load("params/smoke.yaml", {"data.near_duplicates": "ignore"})
    refuse, warn = config.load("params/smoke.yaml"), config.load("params/smoke.yaml", {"data.near_duplicates": "warn"})
    assert refuse.data.near_duplicates == "refuse"
    for stage in stages.ORDER:
        assert stages.key(refuse, stage) == stages.key(warn, stage)
    assert runner.params_hash(refuse) == runner.params_hash(warn)
