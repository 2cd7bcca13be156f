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


# ------------------------------------------------------------------------------------- the schema and the yaml files
def _composed_options(group):
    from rlhf_exp.config.validation import resolved

    return {option: resolved(compose([f"{group}={option}"]))[group] for option in
            sorted(f.stem for f in (Path(CONFIG_DIR) / group).glob("*.yaml"))}


@pytest.mark.parametrize("group", ["objective", "kl", "model", "reward_model", "dataset", "logger"])
def test_every_setting_the_schema_declares_is_in_a_shipped_yaml(group):
    """Validating every option (above) shows each yaml key is declared and each required one present; this is the
    other direction: every kind of the registry has a shipped option, and every setting is given by one of them."""
    from rlhf_exp.config.schema import GROUPS, settings_of

    g = GROUPS[group]
    options = _composed_options(group)
    for kind, block in g.kinds.items():
        of_kind = [c for c in options.values() if g.selector is None or c[g.selector] == kind]
        assert of_kind, f"{group}: no shipped option of {g.selector}={kind}"
        for key in settings_of(block):
            assert any(key in c for c in of_kind), f"{group}.{key} ({kind}) is in no shipped yaml"


def test_the_run_settings_of_config_yaml_are_exactly_the_schemas():
    from rlhf_exp.config.schema import GROUPS, Run, settings_of

    raw = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "config.yaml"), resolve=False)

    def keys(block, tree, prefix=""):
        out = set()
        for k, (f, tp) in settings_of(block).items():
            out.add(prefix + k)
            if hasattr(tp, "__dataclass_fields__"):
                out |= keys(tp, tree[k], f"{prefix}{k}.")
        return out

    def flat(tree, prefix=""):
        out = set()
        for k, v in tree.items():
            out.add(prefix + k)
            if isinstance(v, dict) and v:
                out |= flat(v, f"{prefix}{k}.")
        return out

    assert flat({k: v for k, v in raw.items() if k not in ("defaults", "hydra") and k not in GROUPS}) == keys(Run, raw)


def test_every_reward_and_dataset_kind_the_code_builds_has_a_schema():
    from rlhf_exp.config.schema import GROUPS
    from rlhf_exp.data.prompts import SOURCES
    from rlhf_exp.data.records import OFFLINE_SOURCES
    from rlhf_exp.rewards import REWARD_KINDS

    assert set(REWARD_KINDS) == set(GROUPS["reward_model"].kinds)
    assert set(SOURCES) == set(OFFLINE_SOURCES) == set(GROUPS["dataset"].kinds)


def test_docs_config_md_is_generated_from_the_schema_and_the_yaml():
    from rlhf_exp.config.docs import render

    committed = (Path(CONFIG_DIR).parent / "docs" / "config.md").read_text()
    assert committed == render(), "docs/config.md is out of date: python -m rlhf_exp.config.docs > docs/config.md"


# One row per group: a value out of range, and what the error must say (key, range, value).
OUT_OF_RANGE = [
    (["objective.entropy_coef=-0.1"], "objective.entropy_coef must be >= 0 (0 = off), got -0.1."),
    (["objective=dpo", "objective.max_length=0"], "objective.max_length must be an integer >= 1, got 0."),
    (["objective.loss_aggregation=mean"], "objective.loss_aggregation must be one of token-mean, seq-mean-token-mean"),
    (["kl=adaptive", "kl.target=0"], "kl.target must be > 0, got 0."),
    (["kl=fixed", "kl.kl_coef=-1"], "kl.kl_coef must be >= 0, got -1."),
    (["kl.estimator=k4"], "kl.estimator must be one of k1, k2, k3, abs, full or null, got 'k4'"),
    (["reward_model.max_length=0"], "reward_model.max_length must be an integer >= 1, got 0."),
    (["reward_model.output=probs"], "reward_model.output must be one of logit, prob, log_prob, got 'probs'"),
    (["reward_model=vader", "reward_model.field=all"], "reward_model.field must be one of compound, pos, neg, neu"),
    (["dataset.eval_size=0"], "dataset.eval_size must be an integer >= 1, got 0."),
    (["dataset.prompt_max_tokens=null"], "dataset.prompt_min_tokens=2 and dataset.prompt_max_tokens=None: set both"),
    (["dataset=files", "dataset.path=xlsx"], "dataset.path must be one of json, csv, parquet or null, got 'xlsx'"),
    (["generation.top_p=1.5"], "generation.top_p must be in (0, 1] (1 = off), got 1.5."),
    (["train.adam_betas=[1.5,0.9]"], "train.adam_betas must be two numbers in [0, 1), got [1.5, 0.9]."),
    (["train.adam_betas=[0.9]"], "train.adam_betas must be two numbers in [0, 1), got [0.9]."),
    (["train.lr_schedule=cosine_with_min_lr"], "train.lr_schedule must be one of constant, constant_with_warmup"),
    (["eval.every=-1"], "eval.every must be an integer >= 0 (0 = only at the start and the end), got -1."),
    (["model.lora.dropout=1.0"], "model.lora.dropout must be in [0, 1), got 1.0."),
    (["logger=wandb", "logger.init_timeout=0"], "logger.init_timeout must be > 0, got 0."),
    (["seed=-1"], "seed must be an integer in [0, 4294967296), got -1."),
]


@pytest.mark.parametrize("overrides,message", OUT_OF_RANGE, ids=[" ".join(o) for o, _ in OUT_OF_RANGE])
def test_a_value_out_of_range_in_any_group_names_the_key_the_value_and_the_range(overrides, message):
    from rlhf_exp.config import ConfigError

    with pytest.raises(ConfigError) as e:
        _validate(overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides,message", [
    (["reward_model=composite", "reward_model.parts.lenght.weight=0.2"],
     "Unknown config key 'reward_model.parts.lenght.weight': reward_model.parts has no 'lenght'. Did you mean length "
     "(reward_model.parts.length.weight=0.2)?"),
    (["kl=fixed", "kl.target=3"], "kl.target': kl=fixed has no 'target': target is a setting of kl=adaptive"),
    (["reward_model=function", "reward_model.label=LABEL_1"],
     "reward_model=function has no 'label': label is a setting of reward_model=distilbert_imdb"),
    (["logger=none", "logger.project=x"], "logger=none has no 'project': project is a setting of logger=wandb"),
    (["objective=grpo", "objective.group_sise=4"], "Did you mean group_size (objective.group_size=4)?"),
    (["dataset.prompt_colum=x"], "Did you mean prompt_column"),
], ids=["composite-part-typo", "kl-target-with-fixed", "label-with-function", "project-without-wandb",
        "objective-typo", "dataset-typo"])
def test_a_key_inside_a_group_that_the_chosen_option_lacks_is_named_before_hydra_composes(overrides, message):
    from rlhf_exp.config import ConfigError, check_overrides

    with pytest.raises(ConfigError) as e:
        check_overrides(overrides)
    assert message in str(e.value)


def test_added_keys_inside_groups_are_checked_after_composition():
    """``+kl.target=3`` with kl=fixed composes (Hydra adds it); validation names the controller that has it."""
    from rlhf_exp.config import ConfigError

    with pytest.raises(ConfigError, match="'kl.target'.*target is a setting of controller=adaptive only"):
        _validate(["kl=fixed", "+kl.target=3"])
    with pytest.raises(ConfigError, match="'reward_model.feild'.*Did you mean reward_model.field"):
        _validate(["reward_model=vader", "+reward_model.feild=pos"])


def test_an_inline_composite_part_takes_its_kinds_preset_and_is_checked_like_it():
    from rlhf_exp.config import ConfigError, complete_reward

    fmt = "+reward_model.parts.fmt={kind: function, fn: regex_match, weight: 0.5, kwargs: {pattern: x}}"
    _validate(["reward_model=composite", fmt])
    part = complete_reward({"kind": "function", "fn": "regex_match"})
    function_yaml = OmegaConf.to_container(compose(["reward_model=function"]).reward_model)
    assert part == {**function_yaml, "fn": "regex_match"}
    with pytest.raises(ConfigError, match="reward_model.parts.mood.field must be one of compound, pos, neg, neu"):
        _validate(["reward_model=composite", "+reward_model.parts.mood={kind: vader, weight: 0.1, field: all}"])
    with pytest.raises(ConfigError, match="reward_model.parts.mood.weight is missing"):
        _validate(["reward_model=composite", "+reward_model.parts.mood={kind: vader}"])
    with pytest.raises(ConfigError, match="reward_model.parts.length.weight must be a number, got 'big'"):
        _validate(["reward_model=composite", "reward_model.parts.length.weight=big"])


# ------------------------------------------------------------------------------------- settings the options ignore
def _validate_cli(overrides):
    """Validate as ``python -m rlhf_exp`` does: the overrides are what the user typed."""
    from rlhf_exp.config import validate

    return validate(compose(overrides), overrides=overrides)


REFUSED = [
    (["kl=none", "kl.kl_coef=0.5"], "kl.kl_coef must be 0 with kl=none"),
    (["kl=none", "kl.in_reward=true"], "kl.in_reward=True has no effect with kl=none"),
    (["model.lora.alpha=32"], "model.lora.alpha=32 has no effect here: model.lora.r=0 is full fine-tuning"),
    (["generation.vllm.importance_cap=3"], "generation.vllm.importance_cap=3 has no effect here"),
    (["train.warmup_steps=10"], "train.warmup_steps=10 has no effect with train.lr_schedule=constant"),
    (["dataset.prompt_min_tokens=null"], "set both (prompts are cut to a random length between them) or neither"),
]


@pytest.mark.parametrize("overrides,message", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_a_setting_the_chosen_options_ignore_is_refused_by_name(overrides, message):
    from rlhf_exp.config import ConfigError

    with pytest.raises(ConfigError) as e:
        _validate_cli(overrides)
    assert message in str(e.value)


@pytest.mark.parametrize("overrides", [
    ["model.lora.r=8", "model.lora.alpha=32"], ["train.warmup_steps=10", "train.lr_schedule=constant_with_warmup"],
    ["objective=dpo", "generation.top_k=5"], ["kl=fixed", "kl.kl_coef=0", "kl.track=false"],
    ["generation.vllm.importance_correction=false", "dataset.train_size=100"],
])
def test_the_same_settings_are_accepted_where_they_apply(overrides):
    assert _validate_cli(overrides) == []


@pytest.mark.parametrize("overrides,message", [
    (["objective=dpo", "kl.estimator=k3"], "kl.estimator=k3 has no effect here: offline objectives have no KL"),
    (["objective=dpo", "kl.kl_coef=0.5"], "kl.kl_coef=0.5 has no effect here: offline objectives have no KL"),
    (["objective=dpo", "train.epochs=3"], "train.epochs=3 has no effect here: offline objectives make one"),
    (["objective=sft", "reward.scale=2"], "reward.scale=2 has no effect here: reward preprocessing applies"),
    (["objective=sft", "dataset.train_size=100"], "dataset.train_size=100 has no effect here: offline runs"),
    (["dataset.offline_train_size=100"], "dataset.offline_train_size=100 has no effect here: online runs"),
    (["objective=dpo", "eval.do_sample=false", "generation.top_k=5"], "generation.top_k=5 has no effect here"),
    (["generation.vllm.enforce_eager=true"], "generation.vllm.enforce_eager=True has no effect here: vLLM engine"),
    (["kl.track=false"], "kl.track=False has no effect here: the KL enters the loss or the reward"),
    (["train.checkpoint_every=0", "train.keep_checkpoints=5"], "train.keep_checkpoints=5 has no effect here"),
])
def test_a_setting_of_the_other_kind_of_objective_or_of_speed_alone_is_warned_about(overrides, message, capsys):
    warnings = _validate_cli(overrides)
    assert len(warnings) == 1 and message in warnings[0]
    assert f"[rlhf_exp] warning: {warnings[0]}" in capsys.readouterr().err
