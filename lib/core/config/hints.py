"""Hints in error messages: the closest name to a mistyped one, every dotted key, a type in words."""
from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Literal

from .schema import Config


def type_name(tp) -> str:
    """A type annotation in words, as an error message says what a key takes."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union:
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


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


def is_number(text: str) -> bool:
    """Text YAML 1.1 left a string that Python reads as a number (1e-4)."""
    try:
        float(text)
        return True
    except ValueError:
        return False
