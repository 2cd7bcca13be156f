"""The data types every dataset source produces: prompts for the online loop, records for the offline one."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class DatasetError(ValueError):
    """A dataset that cannot be used as configured (missing column, empty split, missing files)."""


@dataclass
class Prompt:
    ids: list[int]
    text: str
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptData:
    train: list[Prompt]
    eval: list[Prompt]


@dataclass
class OfflineData:
    """Train and held-out records (dicts with the fields of their format)."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
