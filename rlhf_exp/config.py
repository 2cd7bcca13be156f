"""Where the configs live, the ``${asset:...}`` resolver, and checks of a composed config before anything loads."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
CONFIG_DIR = Path(os.environ.get("RLHF_EXP_CONFIG_DIR", Path(__file__).resolve().parent.parent / "conf"))



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

ONLINE, OFFLINE = "online", "offline"


def validate(cfg: DictConfig) -> None:
    """Fail early, with the option to change, on settings that would only break minutes into a run."""
    t = cfg.train
    if int(t.steps) < 0:
        raise ValueError(f"train.steps must be >= 0 (0 = evaluate only), got {t.steps}.")
    for key in ("batch_size", "mini_batch_size", "epochs"):
        if key == "mini_batch_size" and t[key] is None:   # null: the whole per-process batch
            continue
        if int(t[key]) < 1:
            raise ValueError(f"train.{key} must be >= 1, got {t[key]}.")
    if float(t.lr) <= 0:
        raise ValueError(f"train.lr must be > 0, got {t.lr}.")
    if cfg.objective.get("kind") not in (ONLINE, OFFLINE):
        raise ValueError(f"objective.kind must be 'online' or 'offline', got {cfg.objective.get('kind')!r} "
                         f"in objective={cfg.objective.get('name')}.")
    if int(cfg.eval.every) < 0:
        raise ValueError(f"eval.every must be >= 0 (0 = only at the start and the end), got {cfg.eval.every}.")
