"""Named pairs of a sweep file: comparisons a researcher names (``pairs:``), beside the automatic ones.

::

    pairs:
      - name: gate alone                 # the row's label in the paired-comparison table
        a: {finetune.method: spectral-clip, gating.enabled: true}
        b: {finetune.method: spectral-clip}
      - name: n5 vs n100
        a: {finetune.method: random, selection.per_label: 5}
        b: {finetune.method: random, selection.per_label: 100}

``a`` and ``b`` select points of the sweep by their parameter values (dotted keys, as in ``grid:``); every seed of
``a`` is paired with the same seed of ``b`` (leave ``seed`` out). A side must select one configuration: a point is
selected when its parameters have the given values, and when several configurations do (``{finetune.method:
spectral-clip}`` also matches the gated points and the controls on that tuning set), the one that differs from the
base file only in the given keys (and in what every point of the sweep shares: ``fixed:``, ``--set``) is meant;
if none does, name more keys. Each pair becomes a row of lib.analyze.comparisons's table, labelled by its name, with
the same columns (Δ, seed-level t-interval, p with Holm across the whole table, MDE, DeLong within seed); its
verdict says ``a > b`` or ``a < b``. lib.runs.sweeps.named_pairs hands them to the analysis with each side's finished
run folders (notebook 06's ``pairs``, the report CLI's --sweep).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ..core import config

KEYS = ("name", "a", "b")


@dataclass
class Pair:
    name: str
    a: dict                # the selectors as written (dotted key -> value)
    b: dict
    a_points: list[dict]   # the sweep's points each selects (override dicts, every seed)
    b_points: list[dict]

    def describe(self, side: str) -> str:
        """'finetune.method=random, selection.per_label=5': a side's selector as text."""
        return ", ".join(f"{k}={v}" for k, v in getattr(self, side).items())


def parse(given, base: str, points: list[dict], where: str) -> list[Pair]:
    """The ``pairs:`` entries of a sweep file (``where`` names it), each side resolved to the sweep's points;
    a ParamError naming the pair for a malformed entry, an unknown parameter or a side that selects nothing."""
    if not given:
        return []
    if not isinstance(given, list):
        raise config.ParamError(f"`pairs:` in {where} must be a list of {{name, a, b}} entries, got {given!r}.")
    flat = [_flat(base, p) for p in points]
    shared = {k for k in flat[0] if all(f[k] == flat[0][k] for f in flat)}
    at_base = _flat(base, {})
    out: list[Pair] = []
    for i, entry in enumerate(given):
        name = _entry(entry, i, where)
        if name in {p.name for p in out}:
            raise config.ParamError(f"pair name '{name}' appears twice in `pairs:` of {where}; names label the rows.")
        chosen = {s: _select(_selector(entry[s], name, s, where), points, flat, shared, at_base, name, s, where)
                  for s in ("a", "b")}
        seeds = [{flat[points.index(p)]["seed"] for p in chosen[s]} for s in ("a", "b")]
        if chosen["a"] == chosen["b"]:
            raise config.ParamError(f"pair '{name}' in {where}: `a:` and `b:` select the same points.")
        if not seeds[0] & seeds[1]:
            raise config.ParamError(f"pair '{name}' in {where}: `a:` runs seeds {sorted(seeds[0])} and `b:` seeds "
                                    f"{sorted(seeds[1])}; they share none, and seeds pair up by value.")
        out.append(Pair(name, dict(entry["a"]), dict(entry["b"]), chosen["a"], chosen["b"]))
    return out


def _entry(entry, i: int, where: str) -> str:
    """The pair's name, after checking the entry is {name, a, b}."""
    if not isinstance(entry, dict):
        raise config.ParamError(f"`pairs:` entry {i + 1} in {where} must be a mapping {{name, a, b}}, got {entry!r}.")
    unknown, missing = sorted(set(entry) - set(KEYS)), [k for k in KEYS if k not in entry]
    label = f"pair '{entry['name']}'" if isinstance(entry.get("name"), str) else f"`pairs:` entry {i + 1}"
    if unknown:
        raise config.ParamError(f"{label} in {where} has unknown key(s) {unknown};"
                                f"{config.did_you_mean(unknown[0], KEYS)} allowed: {', '.join(KEYS)}.")
    if missing:
        raise config.ParamError(f"{label} in {where} needs {', '.join(missing)}: a name (the row's label) and the "
                                "points a and b select, e.g. {name: gate alone, a: {gating.enabled: true}, "
                                "b: {gating.enabled: false}}.")
    if not isinstance(entry["name"], str) or not entry["name"].strip():
        raise config.ParamError(f"{label} in {where}: `name:` must be a non-empty text, got {entry['name']!r}.")
    return entry["name"]


def _selector(sel, name: str, side: str, where: str) -> dict:
    """A side's dotted keys, each a parameter of the schema (else the closest one is suggested)."""
    if not isinstance(sel, dict) or not sel:
        raise config.ParamError(f"pair '{name}' in {where}: `{side}:` must be a non-empty mapping of dotted "
                                f"parameters to values, e.g. {{finetune.method: random}}; got {sel!r}.")
    keys = config.dotted_keys()
    for k in sel:
        if k == "seed":
            raise config.ParamError(f"pair '{name}' in {where}: `{side}:` names seed; seeds pair up by themselves "
                                    "(each seed of a with the same seed of b): leave it out.")
        if k not in keys:
            raise config.ParamError(f"pair '{name}' in {where}: `{side}:` names unknown parameter '{k}';"
                                    f"{config.did_you_mean(k, keys)} use a dotted key of lib/core/config/schema.py "
                                    "such as finetune.method.")
    return sel


def _select(sel: dict, points, flat, shared: set, at_base: dict, name: str, side: str, where: str) -> list[dict]:
    """The points one side selects: one configuration, every seed of it (see the module docstring)."""
    hits = [i for i, f in enumerate(flat) if all(_same(f[k], v) for k, v in sel.items())]
    if not hits:
        raise config.ParamError(f"pair '{name}' in {where}: `{side}:` {_text(sel)} selects no point of the sweep; "
                                + "; ".join(_values_hint(k, v, flat) for k, v in sel.items()) + ".")
    if len({_identity(flat[i]) for i in hits}) > 1:
        plain = [i for i in hits if all(k in sel or k in shared or k == "seed" or f == at_base[k]
                                        for k, f in flat[i].items())]
        if not plain:
            varying = sorted({k for i in hits for k in flat[i] if k != "seed" and flat[i][k] != flat[hits[0]][k]})
            raise config.ParamError(
                f"pair '{name}' in {where}: `{side}:` {_text(sel)} selects {len({_identity(flat[i]) for i in hits})} "
                f"configurations that differ in " + ", ".join(
                    f"{k} ({', '.join(sorted({repr(flat[i][k]) for i in hits}))})" for k in varying)
                + f"; add the one you mean to `{side}:`.")
        hits = plain
    return [points[i] for i in hits]


def _values_hint(key: str, value, flat: list[dict]) -> str:
    present = sorted({repr(f[key]) for f in flat})
    hint = config.did_you_mean(value, [f[key] for f in flat]) if isinstance(value, str) else ""
    return f"its points have {key} in {{{', '.join(present)}}}" + (f" ({hint.strip()})" if hint else "")


def _text(sel: dict) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in sel.items()) + "}"


def _same(have, want) -> bool:
    if isinstance(have, (list, tuple)) and isinstance(want, (list, tuple)):
        return list(have) == list(want)
    return have == want and isinstance(have, bool) == isinstance(want, bool)   # True is no 1


def _identity(f: dict) -> str:
    """A configuration, seed aside."""
    return repr(sorted((k, repr(v)) for k, v in f.items() if k != "seed"))


@functools.lru_cache(maxsize=None)
def _keys() -> tuple[str, ...]:
    return tuple(config.dotted_keys())


def _flat(base: str, point: dict) -> dict:
    """Every parameter of a point as dotted key -> value (a random-skip control's null skip rate kept null)."""
    cfg = config.load(base, {k: v for k, v in point.items() if not (k == "gating.skip_rate" and v is None)})
    return {k: functools.reduce(getattr, k.split("."), cfg) for k in _keys()}
