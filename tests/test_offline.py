"""End-to-end runs of the offline objectives through `run()` with the real composed config, shrunk."""
import json
import math

import pytest

from rlhf_exp.__main__ import run
from rlhf_exp.train.evaluation import summary_line
from tests.conftest import compose, objective_from_yaml

SMALL = ["logger=none", "train.steps=2", "train.batch_size=4", "dataset.offline_train_size=16",
         "dataset.offline_eval_size=8", "dataset.eval_size=8", "dataset.train_size=16", "eval.every=0",
         "generation.max_new_tokens=6", "train.save_model=false"]
# What every online run's summary.json holds (rlhf_exp.train.history.RunHistory.summary).
ONLINE_SUMMARY_KEYS = {"status", "objective", "kl_controller", "steps", "wall_s", "eval/reward_mean_start",
                       "eval/reward_mean_end", "eval/kl_start", "eval/kl_end", "perf/samples_per_s_end",
                       "eval/reward/positive_frac_start", "eval/reward/positive_frac_end"}


def read_metrics(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


# First-step losses are known: before the first update the policy is the reference (log-ratios 0, z0 = 0).
FIRST_LOSS = {
    ("dpo", "sigmoid"): math.log(2), ("dpo", "ipo"): (1 / (2 * 0.1)) ** 2, ("kto", None): 0.5,
}


# Every DPO loss type is checked against hand values and against TRL in the math and oracle tests; through run()
# here: sigmoid and ipo (per-token mean log-ratios).
@pytest.mark.parametrize("objective,loss_type", [("sft", None), ("dpo", "sigmoid"), ("dpo", "ipo"), ("kto", None)])
def test_policy_objectives_run_and_report_like_online_runs(tmp_path, objective, loss_type):
    extra = [f"objective.loss_type={loss_type}"] if loss_type else []
    summary = run(compose(SMALL + [f"objective={objective}"] + extra), tmp_path)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    # the online loop's evaluation, at the start and the end
    assert rows[0]["eval/kl"] == pytest.approx(0.0, abs=1e-6) and "eval/reward_mean" in rows[0]
    assert rows[-1]["eval/kl"] > 0 and "eval/reward_mean" in rows[-1] and "eval/distinct_2" in rows[-1]
    loss = f"train/loss/{objective}"
    assert loss in rows[1] and math.isfinite(rows[2][loss])
    if (objective, loss_type) in FIRST_LOSS:
        assert rows[1][loss] == pytest.approx(FIRST_LOSS[objective, loss_type], rel=1e-5)
        assert rows[0][f"eval/loss/{objective}"] == pytest.approx(FIRST_LOSS[objective, loss_type], rel=1e-5)
    assert ONLINE_SUMMARY_KEYS <= set(summary)
    assert summary["steps"] == 2 and summary["kl_controller"] == "none" and summary["status"] == "finished"
    assert json.loads((tmp_path / "summary.json").read_text())["eval/kl_end"] == pytest.approx(summary["eval/kl_end"])
    assert summary_line(summary).startswith(f"{objective} (none KL), 2 steps")
    if objective == "sft":
        assert rows[0]["eval/loss/sft"] == pytest.approx(_build_eval_loss(8), rel=1e-5)


def _build_eval_loss(n):
    """The build script's held-out loss of the shipped policy on the first n held-out reviews."""
    from rlhf_exp.modeling import load_causal_lm, load_tokenizer
    from rlhf_exp.task import POLICY_DIR, reviews
    from rlhf_exp.task.build import encode, eval_lm

    tok = load_tokenizer(str(POLICY_DIR))
    seqs = [s + [tok.eos_token_id] for s in encode(tok, reviews.split_data("sft_eval", n, 0))]
    return eval_lm(load_causal_lm(str(POLICY_DIR)), seqs, tok.eos_token_id)


def test_dpo_precomputed_reference_logprobs_give_the_same_loss():
    """objective.precompute_ref_logprobs scores the training pairs under the reference once; the loss is the same
    as with the reference scored at each step (here for a policy that differs from the reference)."""
    import copy

    import torch

    from rlhf_exp.modeling import PolicyModel, load_causal_lm, load_tokenizer
    from rlhf_exp.objectives.offline_base import Context
    from rlhf_exp.task import POLICY_DIR, reviews

    tok = load_tokenizer(str(POLICY_DIR))
    ref = PolicyModel(load_causal_lm(str(POLICY_DIR))).eval()
    policy = copy.deepcopy(ref)
    with torch.no_grad():
        policy.lm.lm_head.weight.mul_(1.1)
    ctx = Context(device=torch.device("cpu"), pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    pairs = reviews.split_data("preference_train", 6, 0)
    for loss_type in ("sigmoid", "ipo"):
        live = objective_from_yaml("dpo", loss_type=loss_type)
        pre = objective_from_yaml("dpo", loss_type=loss_type, precompute_ref_logprobs=True)
        items_live, items_pre = live.encode(pairs, tok), pre.encode(pairs, tok)
        pre.prepare(items_pre, ref, ctx, batch_size=4)
        assert "ref_chosen" in items_pre[0] and "ref_chosen" not in items_live[0]
        with torch.no_grad():
            a, _ = live.loss(policy, ref, items_live, ctx)
            b, _ = pre.loss(policy, None, items_pre, ctx)           # no reference needed any more
        assert float(b) == pytest.approx(float(a), abs=1e-5) and float(a) != pytest.approx(math.log(2), abs=1e-3)


def test_reward_model_runs_saves_and_plugs_into_online_runs(tmp_path):
    """objective=reward saves a model that reward_model=learned loads (run dir or model dir) and scores exactly
    like the reward run scored its held-out pairs; a PPO step runs on it."""
    import torch

    from rlhf_exp.core.preference import pairwise_accuracy
    from rlhf_exp.data import load_offline_data
    from rlhf_exp.rewards import build_reward_model

    rm_dir = tmp_path / "rm"
    cfg = compose(SMALL + ["objective=reward", "train.steps=3", "train.save_model=true",
                           "dataset.offline_eval_size=32"])
    summary = run(cfg, rm_dir)
    rows = read_metrics(rm_dir)
    assert rows[0]["eval/loss/bt"] > 0 and 0 <= rows[-1]["eval/accuracy"] <= 1
    assert summary["reward_model_dir"] == str(rm_dir / "reward_model") and "eval/accuracy_end" in summary
    assert "policy_dir" not in summary and not (rm_dir / "policy").exists()

    pairs = load_offline_data(cfg.dataset, "preference").eval
    for path in (rm_dir, rm_dir / "reward_model"):
        rm = build_reward_model(compose(["reward_model=learned", f"reward_model.path={path}"]).reward_model)
        prompts = [p["prompt"] for p in pairs]
        chosen = rm(prompts, [p["chosen"] for p in pairs])
        rejected = rm(prompts, [p["rejected"] for p in pairs])
        assert chosen.extras == {}
        acc = pairwise_accuracy(chosen.scores, rejected.scores).item()
        assert acc == pytest.approx(summary["eval/accuracy_end"], abs=1e-6)
        assert torch.isfinite(chosen.scores).all()

    ppo = run(compose(["logger=none", "train.steps=1", "train.batch_size=4", "train.mini_batch_size=4",
                       "dataset.eval_size=4", "dataset.train_size=16", "eval.every=0", "train.save_model=false",
                       "generation.max_new_tokens=6",
                       "reward_model=learned", f"reward_model.path={rm_dir}"]), tmp_path / "ppo")
    assert ppo["objective"] == "ppo" and math.isfinite(ppo["eval/reward_mean_end"])


def test_learned_reward_path_errors_say_what_is_expected(tmp_path):
    from rlhf_exp.modeling import ModelNotAvailableError
    from rlhf_exp.rewards import build_reward_model

    with pytest.raises(ModelNotAvailableError, match="needs reward_model.path"):
        build_reward_model(compose(["reward_model=learned"]).reward_model)
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        build_reward_model(compose(["reward_model=learned", f"reward_model.path={tmp_path / 'x'}"]).reward_model)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ModelNotAvailableError, match="neither a reward run folder.*metrics.jsonl"):
        build_reward_model(compose(["reward_model=learned", f"reward_model.path={tmp_path}"]).reward_model)
    # a two-label classifier is not a scalar reward model
    from rlhf_exp.task import REWARD_DIR

    with pytest.raises(ValueError, match="num_labels=2"):
        build_reward_model(compose(["reward_model=learned", f"reward_model.path={REWARD_DIR}"]).reward_model)


def test_offline_objectives_default_to_no_kl_controller_and_validate_options(tmp_path):
    for name in ("sft", "reward", "dpo", "kto"):
        cfg = compose([f"objective={name}"])
        assert cfg.objective.kind == "offline" and cfg.kl.controller == "none"
    assert compose(["objective=dpo", "kl=fixed"]).kl.controller == "fixed"      # the command line wins
    with pytest.raises(ValueError, match="sigmoid, ipo, hinge, robust"):
        run(compose(SMALL + ["objective=dpo", "objective.loss_type=nope"]), tmp_path)
    with pytest.raises(ValueError, match="mini_batch_size"):
        run(compose(SMALL + ["objective=kto", "train.mini_batch_size=3"]), tmp_path)
    with pytest.raises(ValueError, match="at least 2"):
        run(compose(SMALL + ["objective=kto", "train.mini_batch_size=1"]), tmp_path)
