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
def test_every_option_composes_resolves_and_validates(group, option):
    from rlhf_exp.config import validate

    cfg = compose([f"{group}={option}"])
    OmegaConf.to_container(cfg, resolve=True)
    validate(cfg)


def test_unknown_option_lists_the_valid_ones():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as e:
        compose(["objective=nope"])
    assert "Available options" in str(e.value) and "ppo" in str(e.value)


def test_unknown_key_is_rejected():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="train.not_a_key"):
        compose(["train.not_a_key=1"])


# ------------------------------------------------------------------------------------- checks before a run starts
def _validate(overrides):
    from rlhf_exp.config import validate

    validate(compose(overrides))


@pytest.mark.parametrize("overrides,message", [
    (["objectiv=ppo"], "Did you mean objective=? (options: dpo, grpo"),
    (["+objectiv=ppo"], "Did you mean objective=?"),
    (["+trian.steps=3"], "Did you mean train?"),
    (["+train.stepz=3"], "Did you mean train.steps?"),
    (["++eval.evry=3"], "Did you mean eval.every?"),
], ids=["group-typo", "group-typo-plus", "section-typo", "key-typo-plus", "key-typo-plusplus"])
def test_unknown_keys_are_rejected_with_the_closest_name(overrides, message):
    from rlhf_exp.config import ConfigError, check_overrides

    with pytest.raises(ConfigError) as e:
        check_overrides(overrides)
    assert message in str(e.value) and overrides[0].lstrip("+").split("=")[0] in str(e.value)


def test_keys_declared_in_yaml_and_group_fields_are_accepted():
    from rlhf_exp.config import check_overrides

    check_overrides(["objective=grpo", "train.steps=3", "+reward_model.kwargs.target=12", "hydra/launcher=slurm",
                     "reward_model@reward_model.parts.x=vader", "kl.kl_coef=0.1,0.2", "hydra.run.dir=x",
                     "~reward_model.parts.length", "objective.cliprange=0.1", "seed=1"])


def test_a_stray_key_in_the_composed_config_is_rejected():
    """What ``+objectiv=ppo`` composes (also from a sweep or config file) fails validation, not only on the CLI."""
    from rlhf_exp.config import ConfigError

    with pytest.raises(ConfigError, match="'objectiv'.*Did you mean objective="):
        _validate(["+objectiv=ppo"])
    with pytest.raises(ConfigError, match="'generation.temprature'.*Did you mean generation.temperature"):
        _validate(["+generation.temprature=0.5"])


# One row per bad value: the override and what the error must say (the key, the requirement, the fix).
BAD_VALUES = [
    (["train.steps=abc"], "train.steps must be an integer, got 'abc' (a string)"),
    (["train.steps=1.5"], "train.steps must be an integer, got 1.5 (a number)"),
    (["train.lr=fast"], "train.lr must be a number, got 'fast'"),
    (["eval.do_sample=maybe"], "eval.do_sample must be true or false, got 'maybe'"),
    (["train.steps=-1"], "train.steps must be an integer >= 0 (0 = evaluate only), got -1"),
    (["eval.batch_size=0"], "eval.batch_size must be an integer >= 1, got 0"),
    (["train.forward_batch_size=0"], "train.forward_batch_size must be an integer >= 1, got 0"),
    (["reward.clip=-1"], "reward.clip must be > 0 or null"),
    (["reward.clip=0"], "reward.clip must be > 0 or null"),
    (["train.max_grad_norm=0"], "train.max_grad_norm must be > 0"),
    (["train.max_grad_norm=-1"], "train.max_grad_norm must be > 0"),
    (["generation.temperature=0"], "generation.temperature must be > 0 (training rollouts always sample; for "
                                   "greedy evaluation set eval.do_sample=false)"),
    (["generation.top_p=0"], "generation.top_p must be in (0, 1]"),
    (["generation.min_new_tokens=9", "generation.max_new_tokens=8"], "generation.min_new_tokens (9) must be <="),
    (["reward.scale=0"], "reward.scale must be non-zero"),
    (["train.mixed_precision=fp8"], "train.mixed_precision must be one of no, bf16, fp16"),
    (["train.mixed_precision=fp16", "device=cpu"], "train.mixed_precision=fp16 needs a CUDA GPU (device=cpu)"),
    (["reward_model=function", "+reward_model.kwargs.targt=12"],
     "reward_model.kwargs.targt: target_length takes no argument 'targt' (its arguments: target, unit). "
     "Did you mean target?"),
    (["reward_model=function", "reward_model.fn=regex_match", "+reward_model.kwargs.patern=x"],
     "Did you mean pattern?"),
    (["reward_model=composite", "+reward_model.parts.length.kwargs.unti=words"],
     "reward_model.parts.length.kwargs.unti: target_length takes no argument 'unti'"),
]


@pytest.mark.parametrize("overrides,message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_values_fail_up_front_naming_the_key(overrides, message):
    from rlhf_exp.config import ConfigError

    with pytest.raises(ConfigError) as e:
        _validate(overrides)
    assert message in str(e.value)


def test_fp16_on_an_auto_device_without_cuda_is_rejected():
    import torch

    from rlhf_exp.config import ConfigError

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: fp16 is valid here")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU \\(no CUDA device is visible\\)"):
        _validate(["train.mixed_precision=fp16"])


def test_a_users_own_reward_function_keeps_its_kwargs():
    """Only the shipped functions' arguments are known; an imported one gets whatever kwargs the config gives."""
    _validate(["reward_model=function", "reward_model.fn=tests.test_rewards:label_reward", "+reward_model.kwargs.x=1"])


ONLINE = ["ppo", "ppo_seq", "reinforce", "kl_reinforce", "token_reinforce", "grpo", "rloo", "reinforce_pp", "remax"]


@pytest.mark.parametrize("objective", ONLINE)
def test_adaptive_kl_starts_from_the_objectives_own_coefficient_unless_the_command_line_sets_one(objective):
    """kl=adaptive's initial kl.kl_coef is objective.adaptive_kl_coef (each online objective states it in its yaml);
    kl.kl_coef=<x> on the command line wins; kl=fixed keeps its own 0.1."""
    from rlhf_exp.core.kl import make_kl_controller

    cfg = compose([f"objective={objective}", "kl=adaptive"])
    own = cfg.objective.adaptive_kl_coef
    assert isinstance(own, float) and own > 0
    assert cfg.kl.kl_coef == own
    k = cfg.kl
    assert make_kl_controller(k.controller, k.kl_coef, k.target, k.horizon).value == own
    assert compose([f"objective={objective}", "kl=adaptive", "kl.kl_coef=0.37"]).kl.kl_coef == 0.37
    assert compose([f"objective={objective}", "kl=fixed"]).kl.kl_coef == 0.1


def test_adaptive_kl_coefficient_defaults_to_0_2_for_an_objective_that_sets_none():
    cfg = compose(["objective=ppo", "kl=adaptive", "~objective.adaptive_kl_coef"])
    assert "adaptive_kl_coef" not in cfg.objective and cfg.kl.kl_coef == 0.2


@pytest.mark.parametrize("objective", ONLINE)
def test_adaptive_kl_horizon_is_the_objectives_own_else_1000(objective):
    """kl=adaptive's kl.horizon is objective.adaptive_kl_horizon where the objective's yaml sets one (ppo_seq:
    2000), else 1000; kl.horizon=<n> on the command line wins, and the controller is built with it."""
    from rlhf_exp.core.kl import make_kl_controller

    cfg = compose([f"objective={objective}", "kl=adaptive"])
    expected = {"ppo_seq": 2000}.get(objective, 1000)
    assert cfg.objective.get("adaptive_kl_horizon", 1000) == expected and cfg.kl.horizon == expected
    k = cfg.kl
    ctl = make_kl_controller(k.controller, k.kl_coef, k.target, k.horizon)
    ctl.update(2 * k.target, 100)              # KL twice the target: the error is clipped at 0.2
    assert ctl.value == pytest.approx(k.kl_coef * (1 + 0.2 * 100 / expected))
    assert compose([f"objective={objective}", "kl=adaptive", "kl.horizon=300"]).kl.horizon == 300
