"""Every yaml in conf/ composes with the real Hydra config, and bad names fail with the valid options listed."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlhf_exp.config import CONFIG_DIR
from tests.conftest import compose

GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((Path(CONFIG_DIR) / g).glob("*.yaml"))]


def test_default_is_ppo_with_adaptive_kl_on_the_embedded_task():
    cfg = compose()
    assert cfg.objective.name == "ppo" and cfg.kl.controller == "adaptive"
    assert cfg.model.name == "tiny_reviews" and cfg.dataset.kind == "tiny_reviews"
    assert Path(cfg.model.path).name == "policy"


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group, option):
    cfg = compose([f"{group}={option}"])
    OmegaConf.to_container(cfg, resolve=True)


def test_unknown_option_lists_the_valid_ones():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as e:
        compose(["objective=nope"])
    assert "Available options" in str(e.value) and "ppo" in str(e.value)


def test_unknown_key_is_rejected():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="train.not_a_key"):
        compose(["train.not_a_key=1"])
