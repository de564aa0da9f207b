"""Pipeline stages and where their artefacts live.

Each stage's folder is keyed by a hash of exactly the parameter sections it (and the stages before
it) depends on. Changing the gating threshold therefore changes the keys of stages 03-05 only, and
curation, embeddings and clustering are found already done. For data.source nih, folder and csv the keys
also hold a fingerprint of the data on disk, so changed images or a changed CSV are new data; the steps
register how their inputs are fingerprinted in lib.core.fingerprints. A finished stage records a fingerprint of what it read and wrote (see the end of this
module); one whose files or inputs changed since is refused, never reused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

from . import atomic, fingerprints, paths, provenance
from .config import Config, FidelityConfig, GatingConfig

ORDER = ["01_data_curation", "02_clustering", "03_dreambooth", "04_generation", "05_classifier",
         "06_fter_analysis"]
_OWN = {
    "01_data_curation": ["seed", "data", "pools"],
    "02_clustering": ["embedding", "cluster", "selection"],
    "03_dreambooth": ["model", "finetune", "gating"],
    "04_generation": ["generation"],
    "05_classifier": ["classifier", "fidelity"],
    "06_fter_analysis": [],
}
# Stages no notebook owns, with every section they depend on: the real-trained classifier does not
# depend on the generator, so every method of one data, seed and classifier setting shares it.
_SIDE = {"05_real_baseline": ["seed", "data", "pools", "classifier"]}
# The related studies' training-set experiments (lib/analyze/mixing.py, notebook 07), keyed by their own fields of
# the mixing section: the brackets and the ratios read a synthetic set (stage 04) and the real baseline;
# oversampling reads the real baseline alone, so every generator of one data, seed and classifier shares it.
_MIXING = {"07_brackets": ["mixing.brackets"], "07_ratios": ["mixing.ratios", "mixing.total_per_class"],
           "07_oversampling": ["mixing.brackets"]}
_REAL_ONLY = ("07_oversampling",)
# The source x target matrix (lib/analyze/transfer.py, notebook 08): one stage per set, holding its train/test split
# and the classifier trained on it; the real pools' own stage reads stage 01 alone.
_TRANSFER = {"08_transfer": ["transfer.n_train_per_class", "transfer.n_test"],
             "08_transfer_real": ["transfer.n_train_per_class", "transfer.n_test"]}
# A reference generator (lib.generate.references) needs no tuning set and no fine-tuning: its stages skip 02-03.
_REFERENCE_SKIPS = ["embedding", "cluster", "selection", "model", "finetune", "gating"]
# Fidelity extractors that read the embedding section (lib.evaluate.features): a reference's stage 05 keeps it then.
_EMBEDDING_EXTRACTORS = ("clip", "pixel", "xrv")
# When the code computes something else from a section's unchanged parameters, the section's version goes up: every
# stage that reads the section gets a new key, and stages that do not read it keep theirs (a section at version 1 is
# in no key). classifier 2 (issue 23): every classifier's validation split is patient-disjoint, classifier.repeats 1
# included (by image before): 05_real_baseline, 05_classifier, 06, 07_*, 08_* and stage 02 with the external labeller.
SECTION_VERSIONS = {"classifier": 2}


def sections(stage: str, reference: bool = False) -> list[str]:
    """Every parameter section the stage depends on, its own and its upstream stages'."""
    if stage in _SIDE:
        return list(_SIDE[stage])
    if stage in _MIXING:
        reads = list(_SIDE["05_real_baseline"]) if stage in _REAL_ONLY else \
            sections("04_generation", reference) + ["classifier"]
        return reads + _MIXING[stage]
    if stage in _TRANSFER:
        reads = list(_SIDE["05_real_baseline"]) if stage == "08_transfer_real" else \
            sections("04_generation", reference) + ["classifier"]
        return reads + _TRANSFER[stage]
    if stage not in _OWN:
        raise KeyError(f"unknown stage {stage!r}; stages are "
                       f"{', '.join(ORDER + list(_SIDE) + list(_MIXING) + list(_TRANSFER))}")
    out: list[str] = []
    for s in ORDER[: ORDER.index(stage) + 1]:
        out += _OWN[s]
    if reference and stage in ("04_generation", "05_classifier"):
        out = [s for s in out if s not in _REFERENCE_SKIPS or s == "model"]   # vae-roundtrip uses model
    return out


def key(cfg: Config, stage: str, data: str | None = None) -> str:
    """``data``: the data fingerprint when the caller has it (fingerprints.data), else computed."""
    secs = sections(stage, fingerprints.is_reference(cfg))
    if "fidelity" in secs and "embedding" not in secs and cfg.fidelity.extractor in _EMBEDDING_EXTRACTORS:
        secs.append("embedding")        # the features of a reference's fidelity metrics depend on it
    # A selection method that reads files of its own (the external set, whose pseudo-labeller is trained in
    # stage 02 too) adds the sections it depends on, and its files are data: changed files make a new stage.
    methods = fingerprints.selection_inputs(cfg.selection.methods) if "selection" in secs else []
    secs += [s for s in dict.fromkeys(s for _, m in methods for s in m.sections) if s not in secs]
    base = _keyed(cfg).section_hash(*secs)
    versions = {s: v for s, v in sorted(SECTION_VERSIONS.items()) if s in secs and v != 1}
    if versions:
        base = hashlib.sha256(f"{base}|{json.dumps(versions, sort_keys=True)}".encode()).hexdigest()[:10]
    for _, method in methods:
        base = hashlib.sha256(f"{base}|{method.fingerprint(cfg)}".encode()).hexdigest()[:10]
    # Real data that changed on disk (images, CSV) under the same parameters is new data too.
    data = data or _data_fingerprint(cfg)
    if data:
        base = hashlib.sha256(f"{base}|{data}".encode()).hexdigest()[:10]
    # A reference kind whose output changed (lib.generate.references.VERSIONS) must not reuse the old folders.
    if tag := fingerprints.reference_version(cfg, stage, secs):
        base = hashlib.sha256(f"{base}|{tag}".encode()).hexdigest()[:10]
    # A new phantom (or shapes) generator is new data: it must not reuse stages built on the old one; the phantoms'
    # acquisition-mode world registers its own suffix (lib.data.phantoms: MODES_VERSION), so redrawn modes are new data.
    modes = cfg.data.source == "phantom" and cfg.data.phantom_modes
    return base + fingerprints.source_suffix(cfg.data.source + ("+modes" if modes else ""))


def unused_gating(cfg: Config) -> set[str]:
    """Gating fields that cannot change a decision of this run, so no stage key holds them.

    Gating means nothing to an ungated run (unless a random-skip control copies its rate), so a
    threshold sweep never redoes the ungated points; the absolute threshold means nothing in quantile
    mode, and the quantile window nothing in absolute mode.
    """
    g = cfg.gating
    if not (g.enabled or cfg.finetune.control == "random-skip"):
        return {f.name for f in dataclasses.fields(GatingConfig)} - {"enabled"}
    return {"threshold"} if g.mode == "quantile" else {"skip_fraction", "warmup_batches"}


def _keyed(cfg: Config) -> Config:
    """The config as stage keys see it: unused gating settings at their defaults; fidelity.trace (a
    diagnostic drawn during fine-tuning, no stage-05 number depends on it) and fidelity.cache_dir (where
    feature vectors are cached) at theirs."""
    default = GatingConfig()
    unused = {name: getattr(default, name) for name in unused_gating(cfg)}
    return dataclasses.replace(cfg, gating=dataclasses.replace(cfg.gating, **unused),
                               fidelity=dataclasses.replace(cfg.fidelity, trace=FidelityConfig().trace,
                                                            cache_dir=FidelityConfig().cache_dir))


def stage_dir(cfg: Config, stage: str, runs_root: str | Path = "runs") -> Path:
    """runs/<experiment>/stages/<stage>-<key>/: the artefacts of one stage for these parameters."""
    return paths.resolve(runs_root) / cfg.experiment / "stages" / f"{stage}-{key(cfg, stage)}"


def is_done(directory: Path) -> bool:
    """Sealed (DONE.json), and neither its files nor the upstream files it read changed since."""
    return (Path(directory) / "DONE.json").exists() and changed(directory) is None


def mark_done(directory: Path, cfg: Config, stage: str, **extra) -> Path:
    """Seal a stage: its parameters, code version and time. A sealed stage is never redone."""
    record = {"stage": stage, "key": key(cfg, stage), "params": cfg.to_dict(),
              "code_version": provenance.code_version(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "files": files_fingerprint(directory), **extra}
    if "inputs" not in record:
        record["inputs"] = inputs(cfg, stage, directory)
    return atomic.write_json(Path(directory) / "DONE.json", record, overwrite=False)


def _notebook_name(stage: str) -> str:
    """The notebook that runs a stage, as a path from the project root (its number picks it)."""
    found = sorted((paths.ROOT / "notebooks").glob(f"{stage[:2]}_*.ipynb"))
    return f"notebooks/{found[0].name}" if found else f"notebook {stage[:2]}"


def require(cfg: Config, stage: str, runs_root: str | Path = "runs") -> Path:
    """The folder of a finished upstream stage, or an error that says which notebook to run first."""
    d = stage_dir(cfg, stage, runs_root)
    if not (d / "DONE.json").exists():
        raise FileNotFoundError(f"stage {stage} has not finished for these parameters (looked in {d}). "
                                f"Run {_notebook_name(stage)} with the same params_file and overrides first, "
                                f"or `make run PARAMS=...` to run the whole pipeline.{_nearest_finished(cfg, stage, d)}")
    _refuse_if_changed(stage, d)
    return d


def run_stage(cfg: Config, stage: str, fn, runs_root: str | Path = "runs", **kwargs) -> Path:
    """Run ``fn(cfg, out_dir, runs_root=runs_root, **kwargs)`` unless this stage already finished for these parameters.

    A finished stage is reused, never overwritten; an unfinished one resumes in the same folder
    (its functions skip artefacts already written).
    """
    out = stage_dir(cfg, stage, runs_root)
    if (out / "DONE.json").exists():
        _refuse_if_changed(stage, out)
        print(f"{stage}: already finished for these parameters, reusing {paths_rel(out)}")
        return out
    out.mkdir(parents=True, exist_ok=True)
    atomic.clean_stale(out, recursive=True)      # temporary files of writes a kill interrupted
    started = start(cfg, stage, out)
    fn(cfg, out, runs_root=runs_root, **kwargs)
    moved = _input_changes(started, out.parent)
    if moved:
        raise StageChanged(f"the inputs of stage {stage} changed while it ran ({'; '.join(moved[:5])}); it is not "
                           f"sealed. Delete {out} and run it again.")
    mark_done(out, cfg, stage)        # records every input it read, those made while it ran included
    return out


def paths_rel(p: Path) -> str:
    try:
        return str(Path(p).relative_to(paths.ROOT))
    except ValueError:
        return str(p)


# ------------------------------------------------------------------------------------ fingerprints
# DONE.json records what a stage read (upstream folders and the content of their CSV/JSON files) and
# the content of its own CSV/JSON files; INPUTS.json records what it read when it started. A stage whose
# record no longer matches is refused, never reused. Artefacts in sub-folders are not fingerprinted, except
# the files a stage's manifest.csv lists with a content hash (stage 04's images): their bytes are compared
# with the hash (fingerprints.listed_hashes: lib.data.leakage's, cached by size and times), so a replaced image is
# a changed stage.
RECORDS = ("DONE.json", "INPUTS.json")
LISTING = "manifest.csv"
SHOW = 5


class StageChanged(RuntimeError):
    """A stage folder's files, or the upstream files it was computed from, changed after the fact."""


def _data_fingerprint(cfg: Config) -> str | None:
    return fingerprints.data(cfg)


def files_fingerprint(directory: Path) -> dict[str, str]:
    """Content hash of each CSV and JSON file directly in a stage folder (manifests, summaries, results)."""
    d = Path(directory)
    if not d.is_dir():
        return {}
    return {f.name: provenance.file_hash(f) for f in sorted(d.iterdir())
            if f.suffix in (".csv", ".json") and f.name not in RECORDS and not f.name.startswith(".") and f.is_file()}


def upstream(cfg: Config, stage: str) -> list[str]:
    """The stages a stage reads: those whose parameter sections are all among its own."""
    ref = fingerprints.is_reference(cfg)
    mine = set(sections(stage, ref))
    pool = [*ORDER[:4], *_SIDE] if stage in _MIXING or stage in _TRANSFER else [*ORDER[:-1], *_SIDE]   # 07/08: not 05
    return [u for u in pool if u != stage and set(sections(u, ref)) <= mine]


def inputs(cfg: Config, stage: str, directory: Path) -> dict:
    """Each finished upstream stage's folder name and files fingerprint (what this stage reads now)."""
    data = _data_fingerprint(cfg)
    parent, out = Path(directory).parent, {}
    for u in upstream(cfg, stage):
        d = parent / f"{u}-{key(cfg, u, data)}"
        if (d / "DONE.json").exists():
            out[u] = {"dir": d.name, "files": files_fingerprint(d)}
    return out


def _differences(recorded: dict[str, str], now: dict[str, str], where: str) -> list[str]:
    """Recorded files that changed or vanished (files added later are not the stage's inputs)."""
    return [f"{where}/{name} {'changed' if name in now else 'was removed'}"
            for name, h in recorded.items() if now.get(name) != h]


def listed_changes(directory: Path) -> list[str]:
    """The files a stage's manifest lists with a content hash (``path`` and ``hash`` columns) whose bytes on
    disk are no longer that hash, or that are gone; the manifest itself is fingerprinted like any CSV."""
    import pandas as pd

    m = Path(directory) / LISTING
    if not m.exists():
        return []
    df = pd.read_csv(m, usecols=lambda c: c in ("path", "hash"), dtype=str)
    if set(df.columns) != {"path", "hash"}:
        return []
    df = df.dropna()
    here = [paths.resolve(p).exists() for p in df["path"]]
    gone = [f"{p} (listed in {Path(directory).name}/{LISTING}) was removed" for p in df.loc[[not h for h in here], "path"]]
    kept = df[here]
    now = fingerprints.listed_hashes(kept["path"].tolist())
    moved = [f"{p} (listed in {Path(directory).name}/{LISTING}) changed" for p, h, n in
             zip(kept["path"], kept["hash"], now) if h != n]
    return gone + moved


def _input_changes(recorded: dict, parent: Path) -> list[str]:
    out = []
    for u, rec in recorded.items():
        d = parent / rec["dir"]
        if not (d / "DONE.json").exists():
            out.append(f"upstream stage folder {rec['dir']} is gone or no longer finished")
        else:
            out += _differences(rec.get("files", {}), files_fingerprint(d), rec["dir"]) + listed_changes(d)
    return out


def changed(directory: Path) -> str | None:
    """What changed in a sealed stage's files or inputs since it finished; None when nothing did.
    Stages sealed before fingerprints existed (no "files" in DONE.json) are taken as they are."""
    d = Path(directory)
    record = json.loads((d / "DONE.json").read_text())
    if "files" not in record:
        return None
    diffs = _differences(record["files"], files_fingerprint(d), d.name) + listed_changes(d) + \
        _input_changes(record.get("inputs", {}), d.parent)
    return _listing(diffs) if diffs else None


def _listing(diffs: list[str]) -> str:
    return "; ".join(diffs[:SHOW]) + (f" (and {len(diffs) - SHOW} more)" if len(diffs) > SHOW else "")


def _refuse_if_changed(stage: str, d: Path) -> None:
    what = changed(d)
    if what:
        raise StageChanged(f"stage {stage} in {d} finished, but since then {what}. Its results may no longer "
                           f"follow from its inputs, so they are not reused. Delete {d} to recompute the stage "
                           "(or restore the changed files).")


def start(cfg: Config, stage: str, out: Path) -> dict:
    """Record (or, on resume, check) the inputs an unfinished stage is computed from; returns them.

    A folder whose recorded inputs changed, or that holds artefacts but no record (its DONE.json and
    INPUTS.json were deleted, or an older version wrote it), is refused: its partial results may come
    from other inputs.
    """
    record = out / "INPUTS.json"
    if record.exists():
        recorded = json.loads(record.read_text())["inputs"]
        diffs = _input_changes(recorded, out.parent)
        if diffs:
            raise StageChanged(f"stage {stage} in {out} was started from other inputs: {'; '.join(diffs[:5])}. "
                               f"Its partial results would mix the two. Delete {out} to recompute the stage.")
        return recorded
    if any(out.iterdir()):
        raise StageChanged(f"stage {stage} in {out} holds artefacts but no record of the inputs they came from "
                           f"(no DONE.json or INPUTS.json). Delete {out} to recompute the stage.")
    current = inputs(cfg, stage, out)
    atomic.write_json(record, {"stage": stage, "key": key(cfg, stage), "inputs": current})
    return current


# ------------------------------------------------------------------------- one run configuration
# Interactive notebooks 01-05 must read the stages the notebook before them made. Each records the
# configuration it ran with in <runs_root>/notebook-session.json; a notebook of a later stage whose
# parameters would make it read another folder of that stage is refused, naming the differing keys.
# Batch runs (lib.runs.runner, SUITE_BATCH set) pass one params.yaml to every notebook, so they cannot drift.
SESSION = "notebook-session.json"


class ParamsDrift(ValueError):
    """A notebook's parameters differ from those the previous notebook ran with, in keys a stage it reads is keyed by."""


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "label_words":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(a: Config, b: Config, stage: str) -> dict[str, tuple]:
    """The dotted keys a ``stage`` folder is keyed by in which two configurations differ: {key: (a, b)}.
    Settings no stage key holds (unused gating fields, fidelity.trace) do not count."""
    secs = sections(stage, fingerprints.is_reference(a) or fingerprints.is_reference(b))
    fa, fb = _flat(_keyed(a).to_dict()), _flat(_keyed(b).to_dict())
    keys = [k for k in sorted(set(fa) | set(fb)) if k.split(".")[0] in secs]
    return {k: (fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k)}


def _describe(diffs: dict[str, tuple], there: str, here: str = "here", most: int = 6) -> str:
    items = [f"{k} ({there}: {a!r}, {here}: {b!r})" for k, (a, b) in list(diffs.items())[:most]]
    return ", ".join(items) + (f" and {len(diffs) - most} more" if len(diffs) > most else "")


def _nearest_finished(cfg: Config, stage: str, missing: Path) -> str:
    """For require's error: the finished folder of the same stage closest to these parameters, and how it differs."""
    from .config import from_dict

    best = None
    for done in sorted(missing.parent.glob(f"{stage}-*/DONE.json")):
        try:
            other = from_dict(json.loads(done.read_text())["params"])
        except Exception:          # a record of an older schema: not comparable
            continue
        diffs = differences(other, cfg, stage)
        if diffs and (best is None or len(diffs) < len(best[1])):
            best = (done.parent, diffs)
    if best is None:
        return ""
    return (f" The closest finished {stage} ({best[0].name}) was made with other parameters: "
            f"{_describe(best[1], 'there')}. If you meant that run, give this notebook the same params_file and "
            "overrides as the notebooks before it.")


def notebook_config(stage: str, params_file, overrides: dict | None = None, runs_root=None, figures_dir=None,
                    run_dir=None):
    """(config, runs root, figures folder) of a notebook's parameters cell: every notebook takes the same
    ``params_file`` and ``overrides``. For stages 01-05 run interactively, also the drift check above.

    ``runs_root`` None: $SUITE_RUNS_ROOT or runs/; ``figures_dir`` None: <runs_root>/<experiment>/figures.
    ``run_dir``: a finished run's folder (lib.core.run_folder): its params.yaml and runs root replace
    ``params_file`` and ``runs_root``, and figures go to <run_dir>/figures-lab (the run's own stay as made).
    """
    from .config import load

    if run_dir is not None:
        from . import run_folder

        if overrides:
            raise ValueError(f"run_dir {run_dir!r} opens a finished run as it ran; overrides {overrides!r} would make "
                             "another run: set overrides = {} (or leave run_dir = None and use params_file).")
        run = run_folder.open_run(run_dir)
        params_file, runs_root = run.params_file, runs_root or run.runs_root
        figures_dir = figures_dir or run.directory / "figures-lab"
    cfg = load(params_file, overrides)
    root = paths.runs_root(runs_root)
    figures = paths.resolve(figures_dir) if figures_dir else root / cfg.experiment / "figures"
    if stage in ORDER[:-1] and not os.environ.get("SUITE_BATCH"):
        check_session(cfg, stage, root, params_file, overrides)
    return cfg, root, figures


def check_session(cfg: Config, stage: str, runs_root, params_file=None, overrides=None) -> None:
    """Refuse (ParamsDrift) when the last notebook run under this runs root was an earlier stage whose
    folder these parameters would not find (they differ in keys it is keyed by); then record this one."""
    from .config import from_dict

    record = paths.resolve(runs_root) / SESSION
    last = None
    if record.exists():
        try:
            last = json.loads(record.read_text())
            last_cfg = from_dict(last["params"])
        except Exception:          # unreadable or of an older schema: start afresh
            last = None
    if last is not None and last.get("stage") in ORDER and ORDER.index(last["stage"]) < ORDER.index(stage):
        diffs = differences(last_cfg, cfg, last["stage"])
        if diffs:
            nb = last.get("notebook") or _notebook_name(last["stage"])
            raise ParamsDrift(
                f"this notebook ({_notebook_name(stage)}) would read stage {last['stage']} made with other parameters "
                f"than {nb} just ran with: {_describe(diffs, 'notebook ' + last['stage'][:2])}. Every notebook "
                f"takes the same params_file and overrides: set them here as there (params_file = "
                f"{last.get('params_file')!r}, overrides = {last.get('overrides')!r}), or rerun {nb} with this "
                "notebook's parameters first.")
    atomic.write_json(record, {"stage": stage, "notebook": _notebook_name(stage), "params_file": str(params_file),
                               "overrides": dict(overrides or {}), "params": cfg.to_dict(),
                               "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
