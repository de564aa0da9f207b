"""Reading a parameter set: the YAML file and its ``base:`` chain, dotted-key overrides, and the typed
Config built from them (unknown keys and wrong types refused, naming the key), then validated."""
from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .. import paths
from .hints import did_you_mean, is_number, type_name
from .schema import Config, ParamError
from .validation import validate


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
        raise ParamError(f"override {dotted} = null: {dotted} cannot be null (it takes {type_name(tp)}); give a "
                         "value, or leave the override out to keep the parameter file's.")



def _check_value(key: str, value: Any, tp) -> Any:
    """``value`` as the type ``tp`` takes (an int where a float is asked becomes a float), or ParamError."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ParamError(f"{key} = {value!r} is not allowed;{did_you_mean(value, typing.get_args(tp))} "
                             f"use {type_name(tp)}.")
        return value
    if origin is typing.Union:
        for arg in typing.get_args(tp):
            try:
                return _check_value(key, value, arg)
            except ParamError:
                continue
        raise ParamError(f"{key} = {value!r} has the wrong type; expected {type_name(tp)}.")
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
        if tp is float and isinstance(value, str) and is_number(value):   # YAML 1.1 reads 1e-4 as a string
            hint = f" YAML reads {value} as text: write it with a dot, e.g. {float(value):.1e}."
        raise ParamError(f"{key} = {value!r} has the wrong type; expected {type_name(tp)}.{hint}")
    return value



def _build(cls, values: dict, prefix: str):
    """The dataclass ``cls`` from a mapping, section by section; an unknown key is refused with the closest."""
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



def from_dict(raw: dict) -> Config:
    """A validated Config from a mapping of sections (a parameter file as read, overrides applied)."""
    cfg = _build(Config, raw, "")
    validate(cfg)
    return cfg


def load(path: str | Path, overrides: dict | None = None) -> Config:
    """Load and validate a parameter file, with optional dotted-key overrides (from papermill cells)."""
    return from_dict(apply_overrides(read_yaml(path), overrides))
