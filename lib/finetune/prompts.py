"""The prompts of a run and the label slugs of its folder and file names (one home for stages 03 and 04)."""
from __future__ import annotations

import re

from ..core.config import Config


def slug(label: str) -> str:
    """A label as a folder or file name part: 'No Finding' -> 'no-finding'."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def prompt_for(cfg: Config, label: str) -> str:
    """The instance prompt DreamBooth trains with and generation uses: the template filled with the label's
    word (and the optional identifier token)."""
    ft = cfg.finetune
    word = ft.label_words.get(label, label)
    if ft.identifier:
        word = f"{ft.identifier} {word}"
    return ft.prompt_template.format(label=word)
