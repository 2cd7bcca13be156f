"""Where the configs live, the ``${asset:...}`` resolver, and checks of a composed config before anything loads."""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
CONFIG_DIR = Path(os.environ.get("RLHF_EXP_CONFIG_DIR", Path(__file__).resolve().parent.parent / "conf"))



def resolve_asset(relative: str) -> str:
    """Path of a file or folder shipped in ``rlhf_exp/assets`` (the OmegaConf resolver ``${asset:...}``)."""
    return str(ASSETS_DIR / relative)


if not OmegaConf.has_resolver("asset"):
    OmegaConf.register_new_resolver("asset", resolve_asset)

ONLINE, OFFLINE = "online", "offline"


def validate(cfg: DictConfig) -> None:
    """Fail early, with the option to change, on settings that would only break minutes into a run."""
    t = cfg.train
    for key in ("steps", "batch_size", "mini_batch_size", "epochs"):
        if int(t[key]) < 1:
            raise ValueError(f"train.{key} must be >= 1, got {t[key]}.")
    if float(t.lr) <= 0:
        raise ValueError(f"train.lr must be > 0, got {t.lr}.")
    if cfg.objective.get("kind") not in (ONLINE, OFFLINE):
        raise ValueError(f"objective.kind must be 'online' or 'offline', got {cfg.objective.get('kind')!r} "
                         f"in objective={cfg.objective.get('name')}.")
    if int(cfg.eval.every) < 0:
        raise ValueError(f"eval.every must be >= 0 (0 = only at the start and the end), got {cfg.eval.every}.")
