"""The error of a setting that cannot work, and the did-you-mean helper its messages use."""
from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A setting that cannot work, found before anything loads or any file is written. The message names the key
    and the fix; ``python -m rlhf_exp`` prints it as one line, without a traceback."""


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate ``name`` was most likely meant to be (a typo), or None."""
    hit = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return hit[0] if hit else None
