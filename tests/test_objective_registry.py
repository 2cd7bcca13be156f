"""Objectives as compositions (docs/objectives.md): the registries, the check of the objective block, and an
objective added as yaml only."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_exp.core.advantages import ADV_ESTIMATORS
from rlhf_exp.core.losses import POLICY_LOSSES
from rlhf_exp.objectives import ObjectiveConfigError, validate_objective
from rlhf_exp.objectives.hooks import ROLLOUT_HOOKS
from tests.conftest import compose, objective_from_yaml, objective_names

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", objective_names("online") + objective_names("offline"))
def test_every_objective_yaml_passes_its_check(name):
    validate_objective(compose([f"objective={name}"]).objective)


def test_every_registered_part_documents_its_settings():
    for registry in (ADV_ESTIMATORS, POLICY_LOSSES):
        for name in registry:
            entry = registry[name]
            assert entry.doc, name
            for p in entry.params:
                assert p.doc and p.requirement(), (name, p.name)
    for hook in ROLLOUT_HOOKS.values():
        assert hook.__doc__ and all(p.doc for p in hook.params)


def test_online_objectives_are_compositions_and_carry_no_policy_loss_of_their_own():
    """Each online objective's yaml names registered parts; the objectives package has no per-objective module."""
    used = set()
    for name in objective_names("online"):
        obj = compose([f"objective={name}"]).objective
        assert obj.estimator in ADV_ESTIMATORS and obj.policy_loss in POLICY_LOSSES, name
        used |= {obj.estimator, obj.policy_loss}
        assert not (ROOT / "rlhf_exp" / "objectives" / f"{name}.py").exists(), name
    assert used >= set(ADV_ESTIMATORS.names()) | set(POLICY_LOSSES.names())   # every part is used by a shipped yaml


@pytest.mark.parametrize("overrides, message", [
    (["objective=ppo", "objective.cliprange=-1"],
     "objective.cliprange must be a number > 0, got -1 (the ratio's clip range"),
    (["objective=ppo", "objective.gamma=abc"], "objective.gamma must be a number in [0, 1], got 'abc'"),
    (["objective=ppo", "~objective.lam"], "objective.lam is missing: GAE lambda; a number in [0, 1]"),
    (["objective=grpo", "+objective.clip_hihg=0.3"], "objective.clip_hihg is not a setting of objective=grpo"),
    (["objective=grpo", "+objective.clip_hihg=0.3"], "Did you mean objective.clip_high?"),
    (["objective=ppo", "+objective.clip_low=0.3"], "objective.cliprange and objective.clip_low are the same setting"),
    (["objective=reinforce", "objective.baseline=median"],
     "objective.baseline must be one of none, batch_mean, moving_average, value, got 'median'"),
    (["objective=rloo", "objective.group_size=1"], "objective=rloo needs objective.group_size >= 2"),
    (["objective=ppo_seq", "objective.estimator=gae"], "the estimator gae gives per-token advantages"),
    (["objective=remax", "objective.rollout_hooks=[]"], "add greedy_baseline to objective.rollout_hooks"),
    (["objective=grpo", "objective.rollout_hooks=[beam]"], "unknown hook 'beam'"),
    (["objective=grpo", "objective.dynamic_sampling.max_tries=0"],
     "objective.dynamic_sampling.max_tries must be an integer >= 1, got 0"),
    (["objective=reinforce_pp", "objective.group_baseline=true"], "group_baseline=true needs objective.group_size >= 2"),
    (["objective=dpo", "objective.label_smoothing=0.7"], "objective.label_smoothing must be a number in [0, 0.5)"),
    (["objective=dpo", "objective.loss_type=ipo", "objective.label_smoothing=0.1"],
     "label_smoothing applies to loss_type sigmoid (cDPO) and robust"),
    (["objective=kto", "objective.beta=0"], "objective.beta must be a number > 0, got 0"),
])
def test_the_objective_block_is_checked_with_the_key_and_the_range_named(overrides, message):
    with pytest.raises(ObjectiveConfigError) as e:
        validate_objective(compose(overrides).objective)
    assert message in str(e.value)


def test_a_bad_objective_setting_stops_the_entry_point_before_anything_loads(tmp_path):
    """Through python -m rlhf_exp: one line naming the key and the range, exit 1, no run folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    p = subprocess.run([sys.executable, "-m", "rlhf_exp", "logger=none", "objective=grpo", "objective.clip_high=-0.2",
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode != 0
    assert "objective.clip_high must be a number > 0 or null, got -0.2" in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_building_from_python_gives_what_the_yaml_gives():
    """objective=grpo as the yaml has it: group_size 8, seq-mean-token-mean, k3 in the loss (no second set of
    defaults in Python)."""
    grpo = objective_from_yaml("grpo")
    assert (grpo.group_size, grpo.loss_aggregation, grpo.kl_in_reward, grpo.kl_estimator) == (
        8, "seq-mean-token-mean", False, "k3")
    assert grpo.loss_params.cliprange == 0.2 and grpo.loss_params.cliprange_high is None
    from rlhf_exp.objectives import build_online_objective

    with pytest.raises(ObjectiveConfigError, match="objective.estimator is missing"):   # a partial block: no defaults
        build_online_objective({"name": "grpo", "kind": "online", "group_size": 2},
                               {"estimator": None, "in_reward": None})


def test_no_literal_defaults_for_objective_settings_in_objectives_or_train():
    """``cfg.get("key", default)`` is how a second set of defaults creeps back in: none in objectives/ and train/
    on config blocks (``batch.get`` of an optional batch key is not a config default)."""
    found = []
    for folder in ("objectives", "train"):
        for path in sorted((ROOT / "rlhf_exp" / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                        and len(node.args) == 2 and "cfg" in ast.unparse(node.func.value)
                        and path.name != "checkpoint.py"):
                    found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_the_yaml_only_objective_is_the_composition_it_names():
    """rloo_seq (Ahmadian et al. 2024, TRL's RLOOTrainer): rloo's estimator with ppo_seq's loss, from yaml alone."""
    rloo_seq, rloo, ppo_seq = (objective_from_yaml(n) for n in ("rloo_seq", "rloo", "ppo_seq"))
    assert rloo_seq.estimator is rloo.estimator and rloo_seq.policy_loss_fn is ppo_seq.policy_loss_fn
    assert not rloo_seq.token_level_policy_loss and rloo_seq.kl_in_reward and rloo_seq.group_size == 4
