"""Where the configs live, the OmegaConf resolvers of the yaml files (``${asset:...}``, ``${job_dirname:...}``) and
the config groups a user picks from."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent.parent
ASSETS_DIR = PACKAGE_DIR / "assets"
CONFIG_DIR = Path(os.environ.get("RLHF_EXP_CONFIG_DIR", PACKAGE_DIR.parent / "conf"))


def resolve_asset(relative: str) -> str:
    """Path of a file or folder shipped in ``rlhf_exp/assets`` (the OmegaConf resolver ``${asset:...}``)."""
    return str(ASSETS_DIR / relative)


def path_safe(text: str, max_len: int = 150) -> str:
    """``text`` as one readable path component: characters other than letters, digits and ``._=,+-`` become ``_``;
    past ``max_len`` characters it is cut and ends with 8 hex digits of its hash, so distinct texts stay distinct."""
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", str(text))
    if len(safe) > max_len:
        digest = hashlib.sha1(str(text).encode()).hexdigest()[:8]
        safe = f"{safe[:max_len - 9]}_{digest}"
    return safe


def job_dirname(head, overrides: str) -> str:
    """The name of a run folder (the ``${job_dirname:...}`` resolver of ``hydra.run.dir``/``hydra.sweep.subdir``):
    ``head`` (a job number, zero-padded to 3 digits, or a time) then ``_`` and the command-line overrides, e.g.
    ``003_kl.kl_coef=0.1,seed=0``; just ``head`` when there are no overrides."""
    head = f"{head:03d}" if isinstance(head, int) else str(head)
    return f"{head}_{path_safe(overrides)}" if overrides else head


if not OmegaConf.has_resolver("asset"):
    OmegaConf.register_new_resolver("asset", resolve_asset)
if not OmegaConf.has_resolver("job_dirname"):
    OmegaConf.register_new_resolver("job_dirname", job_dirname)


def config_groups() -> list[str]:
    """The config groups a user picks from (``conf/<group>/``), without Hydra's own."""
    return sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra")


def group_options(group: str) -> list[str]:
    """The options of one config group: the yaml files in ``conf/<group>/``."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
