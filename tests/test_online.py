"""End-to-end runs of the online loop through `run()` with the real composed config, shrunk."""
import json

import pytest
import torch

from rlhf_exp.__main__ import run
from rlhf_exp.rewards import RewardError
from rlhf_exp.train.common import NonFiniteLossError
from tests.conftest import compose, objective_names

ONLINE_OBJECTIVES = objective_names("online")   # every yaml in conf/objective/ with kind: online

SMALL = ["logger=none", "train.batch_size=8", "train.mini_batch_size=4", "eval.every=0", "dataset.eval_size=8",
         "dataset.train_size=64", "generation.max_new_tokens=6", "train.save_model=false"]


def read_metrics(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


def test_default_ppo_learns_and_leaves_everything_behind(tmp_path):
    """A seeded short PPO run: eval reward rises with a wide margin; every step logs reward, KL and coefficient."""
    cfg = compose(["logger=none", "train.steps=30", "train.batch_size=32", "train.mini_batch_size=16",
                   "eval.every=0", "dataset.eval_size=64", "seed=0"])
    summary = run(cfg, tmp_path)
    start, end = summary["eval/reward_mean_start"], summary["eval/reward_mean_end"]
    # Measured on this task: ~0.3 -> ~2.0 in 30 steps (logit scale, +-3); a margin of 0.8 does not flake.
    assert end - start > 0.8, (start, end)
    rows = read_metrics(tmp_path)
    train_rows = [r for r in rows if r["step"] >= 1]
    assert [r["step"] for r in train_rows] == list(range(1, 31))
    for r in train_rows:
        for key in ("train/reward_mean", "train/kl", "train/kl_coef", "train/entropy", "train/loss/policy",
                    "train/loss/value", "train/clipfrac", "train/ratio_mean", "perf/samples_per_s"):
            assert key in r, key
    assert rows[0]["step"] == 0 and "eval/kl" in rows[0] and rows[0]["eval/kl"] == pytest.approx(0.0, abs=1e-6)
    assert "eval/reward_mean" in rows[-1] and "eval/distinct_2" in rows[-1]
    assert (tmp_path / "config_resolved.yaml").exists()
    assert (tmp_path / "samples.jsonl").read_text().count("\n") >= 8
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["status"] == "finished" and saved["steps"] == 30
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    assert (tmp_path / "policy" / "value_head.safetensors").exists()


def test_first_update_starts_from_ratio_one(tmp_path):
    """Before any update the rollout log-probs are the policy's: the first minibatch's ratio is 1."""
    cfg = compose(SMALL + ["train.steps=1", "train.epochs=1", "train.mini_batch_size=8"])
    run(cfg, tmp_path)
    r = read_metrics(tmp_path)[1]
    assert r["train/ratio_mean"] == pytest.approx(1.0, abs=1e-5) and r["train/clipfrac"] == 0.0


# The documented variants that are settings of an objective, not objectives of their own (README, objective
# table): name -> (objective, its overrides).
VARIANTS = {
    "gspo": ("ppo_seq", ["objective.ratio=mean", "objective.group_size=4", "objective.cliprange=3e-4",
                         "objective.cliprange_high=4e-4"]),
    "dual_clip_ppo": ("ppo", ["objective.clip_ratio_c=3.0"]),
    "dapo": ("grpo", ["objective.group_size=4", "objective.clip_high=0.28", "objective.loss_aggregation=token-mean",
                      "objective.dynamic_sampling.enable=true"]),
    "dr_grpo": ("grpo", ["objective.group_size=4", "objective.scale_rewards=none",
                         "objective.loss_aggregation=seq-mean-token-sum-norm"]),
}


def _objective_overrides(objective):
    if objective in VARIANTS:
        base, extra = VARIANTS[objective]
        return [f"objective={base}", *extra]
    extra = [f"objective={objective}"]
    if objective in ("grpo", "rloo"):
        extra.append("objective.group_size=4")
    if objective == "token_reinforce":
        extra.append("reward_model=tiny_sentiment_tokens")
    return extra


KL_OF = {name: ("fixed", "adaptive", "none")[i % 3] for i, name in enumerate(sorted(ONLINE_OBJECTIVES))}


@pytest.mark.parametrize("objective", sorted(ONLINE_OBJECTIVES) + sorted(VARIANTS))
def test_every_online_objective_runs(tmp_path, objective):
    """A 2-step smoke run per objective and documented variant (the KL controllers take turns): every step logs
    finite metrics."""
    kl = KL_OF.get(objective, "fixed")
    summary = run(compose(SMALL + _objective_overrides(objective) + [f"kl={kl}", "train.steps=2"]), tmp_path)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert {"train/reward_mean", "train/kl", "train/kl_coef", "train/entropy", "train/loss/total"} <= set(r)
        if kl == "none":
            assert r["train/kl_coef"] == 0.0
        for k, v in r.items():
            assert v is None or v == v, f"{k} is NaN"
    assert summary["objective"] == VARIANTS.get(objective, (objective,))[0]


@pytest.mark.parametrize("objective", sorted(ONLINE_OBJECTIVES) + sorted(VARIANTS))
def test_one_update_moves_the_rewarded_response_the_right_way(tmp_path, objective):
    """The cheapest learning check, through the real loop (train_step): one update on a batch where the first
    completion of each prompt group has reward 1 and the others 0 raises its sequence log-probability and lowers
    the others' on average; from the same starting point with the reward's sign flipped, the reverse. A sign error
    anywhere between the reward and the optimizer step fails this."""
    import copy

    from rlhf_exp.core.advantages import place_on_last_token
    from rlhf_exp.modeling import score_responses
    from rlhf_exp.rollout import sample_lengths
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.online import OnlineTrainer

    cfg = compose(SMALL + _objective_overrides(objective) + ["kl=none", "train.steps=1", "train.lr=1e-3", "seed=0"])
    trainer = OnlineTrainer(cfg, tmp_path, Tracker(tmp_path, cfg.logger, {}, "t", enabled=False))
    G = trainer.objective.group_size
    prompts = [p for p in trainer.sampler.next(trainer.local_batch // G) for _ in range(G)]
    lengths = sample_lengths(len(prompts), trainer.sampling, trainer.len_gen)
    batch, info = trainer.rollout(prompts, lengths, trainer.sampling)
    n = len(prompts)
    rewarded = torch.arange(n) % G == 0 if G > 1 else torch.arange(n) == 0
    start = copy.deepcopy(trainer.policy.state_dict()), copy.deepcopy(trainer.optimizer.state_dict())

    def logprobs():
        with torch.no_grad():
            out = score_responses(trainer.policy, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                                  batch["response_mask"], trainer.sampling.temperature)
        return (out.logprobs * batch["response_mask"]).sum(1)

    for sign in (1.0, -1.0):
        trainer.policy.load_state_dict(start[0])
        trainer.optimizer.load_state_dict(start[1])
        scored = {**batch, "raw_scores": sign * rewarded.float()}
        if "token_scores" in batch:   # per-token rewards: the whole score on the last token
            scored["token_scores"] = place_on_last_token(scored["raw_scores"], batch["response_mask"])

        def fixed_rollout(prompts, lengths, sampling, score_with_ref=True, entropy=True, scored=scored):
            if not sampling.do_sample:   # ReMax's greedy baseline: reward 0
                return {**scored, "raw_scores": torch.zeros(n)}, info
            return {k: v.clone() for k, v in scored.items()}, info

        trainer.rollout = fixed_rollout
        before = logprobs()
        trainer.train_step(1)
        delta = logprobs() - before
        chosen, others = delta[rewarded].mean().item(), delta[~rewarded].mean().item()
        assert sign * chosen > 0 and sign * (chosen - others) > 0, (sign, chosen, others)


def test_full_kl_estimator_in_reward_and_in_loss(tmp_path):
    """kl.estimator=full: the exact per-token KL over the vocabulary. At step 1's rollout the policy is the
    reference, so the logged penalty is 0 (up to float error); in the loss (grpo) the term loss/kl is active."""
    for obj, extra in (("ppo", []), ("grpo", ["objective.group_size=4"])):
        run(compose(SMALL + [f"objective={obj}", "kl=fixed", "kl.estimator=full", "train.steps=1"] + extra),
            tmp_path / obj)
        r = read_metrics(tmp_path / obj)[1]
        assert r["train/kl_penalty"] == pytest.approx(0.0, abs=1e-5)
        if obj == "grpo":
            assert "train/loss/kl" in r


def test_nan_loss_stops_with_a_clear_message_and_keeps_what_was_written(tmp_path, monkeypatch):
    from rlhf_exp.objectives.base import OnlineObjective

    original = OnlineObjective.policy_loss
    calls = {"n": 0}

    def sometimes_nan(self, out, mb):
        calls["n"] += 1
        loss, stats = original(self, out, mb)
        return (loss * float("nan") if calls["n"] > 4 else loss), stats   # step 1 has 4 updates (2 epochs x 2)

    monkeypatch.setattr(OnlineObjective, "policy_loss", sometimes_nan)
    cfg = compose(SMALL + ["train.steps=3", "train.epochs=2", "train.save_model=true"])
    with pytest.raises(NonFiniteLossError, match="step 2.*train.lr"):
        run(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1]                 # step 1's metrics were kept
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"].startswith("failed: NonFiniteLossError")
    assert (tmp_path / "policy" / "model.safetensors").exists()  # the last good policy is saved


def test_bad_reward_names_itself_and_the_problem(tmp_path, monkeypatch):
    from rlhf_exp.rewards.hf_classifier import HFClassifierReward

    monkeypatch.setattr(HFClassifierReward, "score", lambda self, p, c, **kw: [0.0] * (len(c) - 1))
    with pytest.raises(RewardError, match="tiny_sentiment.*exactly one number per completion"):
        run(compose(SMALL + ["train.steps=1"]), tmp_path / "a")
    monkeypatch.setattr(HFClassifierReward, "score", lambda self, p, c, **kw: [float("nan")] * len(c))
    with pytest.raises(RewardError, match="NaN or inf"):
        run(compose(SMALL + ["train.steps=1"]), tmp_path / "b")


def test_missing_model_path_says_what_to_set(tmp_path):
    from rlhf_exp.modeling import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError, match="model.path"):
        run(compose(SMALL + [f"model.path={tmp_path}/does_not_exist"]), tmp_path / "run")


def test_bad_settings_fail_before_loading(tmp_path):
    with pytest.raises(ValueError, match="mini_batch_size"):
        run(compose(SMALL + ["train.mini_batch_size=3"]), tmp_path / "a")
    with pytest.raises(ValueError, match="group_size"):
        run(compose(SMALL + ["objective=grpo", "objective.group_size=3"]), tmp_path / "b")
    with pytest.raises(ValueError, match="k1, k2, k3, abs, full"):
        run(compose(SMALL + ["kl.estimator=k9"]), tmp_path / "c")


def test_adaptive_coefficient_moves_toward_the_target(tmp_path):
    """With a target far below the KL reached, the coefficient grows every step; far above, it shrinks."""
    for target, direction in ((0.01, 1), (1000.0, -1)):
        d = tmp_path / str(target)
        run(compose(SMALL + ["train.steps=4", "kl=adaptive", f"kl.target={target}", "kl.horizon=100"]), d)
        coefs = [r["train/kl_coef"] for r in read_metrics(d)[1:]]
        diffs = [b - a for a, b in zip(coefs, coefs[1:])]
        assert all(x * direction > 0 for x in diffs[1:]), coefs   # step 1 starts at KL 0
    assert torch.isfinite(torch.tensor(coefs)).all()


def test_evaluate_only_a_saved_policy_against_its_reference(tmp_path):
    """train.steps=0 evaluates without training or saving; with model.ref_path set to the policy a run started
    from, the saved policy's reward and KL are exactly the training run's final evaluation."""
    from rlhf_exp.task import POLICY_DIR

    base = ["logger=none", "train.batch_size=8", "train.mini_batch_size=8", "eval.every=0", "dataset.eval_size=8",
            "dataset.train_size=64", "generation.max_new_tokens=6", "train.lr=1e-3"]
    trained = run(compose(base + ["train.steps=2"]), tmp_path / "train")
    assert trained["eval/kl_end"] > 0.01
    again = run(compose(base + ["train.steps=0", f"model.path={tmp_path / 'train' / 'policy'}",
                                f"model.ref_path={POLICY_DIR}"]), tmp_path / "eval")
    assert again["steps"] == 0 and again["status"] == "finished" and "policy_dir" not in again
    assert not (tmp_path / "eval" / "policy").exists()
    assert [r["step"] for r in read_metrics(tmp_path / "eval")] == [0]
    assert again["eval/reward_mean_start"] == pytest.approx(trained["eval/reward_mean_end"], abs=1e-4)
    assert again["eval/kl_start"] == pytest.approx(trained["eval/kl_end"], rel=1e-4)
    from rlhf_exp.train.evaluation import summary_line

    assert summary_line(again).startswith("evaluation only (") and "eval KL " in summary_line(again)


def test_reference_path_must_share_the_vocabulary(tmp_path, tiny_gpt2_dir):
    with pytest.raises(ValueError, match="same tokenizer"):
        run(compose(SMALL + ["train.steps=0", f"model.ref_path={tiny_gpt2_dir}"]), tmp_path)


def test_dynamic_sampling_drops_equal_reward_groups_and_refills(tmp_path, monkeypatch):
    """DAPO dynamic sampling through the loop: the first training rollout gets one reward for everything (both
    groups dropped), the next one varied rewards (kept); with max_tries=1 the batch is filled with the dropped
    groups instead, and the log says so."""
    from rlhf_exp.rewards.hf_classifier import HFClassifierReward

    calls = {"train": 0}

    def score(self, prompts, completions, **kw):
        if len(completions) != 8:            # evaluation (4 prompts)
            return [0.0] * len(completions)
        calls["train"] += 1
        return [0.0] * 8 if calls["train"] == 1 else [float(i % 2) for i in range(8)]

    monkeypatch.setattr(HFClassifierReward, "score", score)
    base = SMALL + ["objective=grpo", "objective.group_size=4", "objective.dynamic_sampling.enable=true",
                    "dataset.eval_size=4", "train.steps=1"]
    run(compose(base), tmp_path / "refill")
    r = read_metrics(tmp_path / "refill")[1]
    assert calls["train"] == 2
    assert (r["train/dynamic_sampling/dropped_groups"], r["train/dynamic_sampling/tries"],
            r["train/dynamic_sampling/filled_groups"]) == (2.0, 2.0, 0.0)
    assert r["train/reward_std"] > 0 and r["train/zero_std_group_frac"] == 0.0
    calls["train"] = 0
    run(compose(base + ["objective.dynamic_sampling.max_tries=1"]), tmp_path / "cap")
    r = read_metrics(tmp_path / "cap")[1]
    assert calls["train"] == 1
    assert (r["train/dynamic_sampling/dropped_groups"], r["train/dynamic_sampling/filled_groups"]) == (2.0, 2.0)
    assert r["train/zero_std_group_frac"] == 1.0


def test_mask_truncated_completions_in_the_loop(tmp_path, monkeypatch):
    """With every response flagged as cut at its length limit, mask_truncated_completions leaves nothing to learn
    from: zero gradient; without the option the same run has a gradient."""
    import rlhf_exp.rollout.collect as collect

    monkeypatch.setattr(collect, "ends_with_eos", lambda ids, mask, eos: torch.zeros(ids.shape[0], dtype=torch.bool))
    for flag in (True, False):
        run(compose(SMALL + ["objective=grpo", "objective.group_size=4", "train.steps=1",
                             f"objective.mask_truncated_completions={str(flag).lower()}"]), tmp_path / str(flag))
        r = read_metrics(tmp_path / str(flag))[1]
        assert r["train/truncated_frac"] == 1.0
        assert (r["train/grad_norm"] == 0.0) == flag, r["train/grad_norm"]


def test_reinforce_takes_one_optimizer_step_per_rollout_batch(tmp_path):
    """reinforce, kl_reinforce and token_reinforce have no importance ratio, so their default is one optimizer step
    per rollout batch (train.mini_batch_size=null: the whole batch); remax too."""
    from rlhf_exp.config import validate

    for name in ("reinforce", "kl_reinforce", "token_reinforce", "remax"):
        cfg = compose([f"objective={name}"])
        assert cfg.train.mini_batch_size is None and cfg.train.epochs == 1, name
        validate(cfg)
    cfg = compose(SMALL + ["objective=reinforce", "train.mini_batch_size=null", "train.steps=1"])
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.online import OnlineTrainer

    trainer = OnlineTrainer(cfg, tmp_path, Tracker(tmp_path, cfg.logger, {}, "t", enabled=False))
    steps = []
    original = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (steps.append(1), original(*a, **k))[1]
    trainer.train_step(1)
    assert trainer.mini_batch == 8 and len(steps) == 1


@pytest.mark.parametrize("objective", ["reinforce", "token_reinforce"])
def test_importance_weighting_in_the_loop_weights_the_later_minibatches(tmp_path, objective):
    """With 2 minibatches per rollout batch and importance_weighting=true, the second minibatch's samples come from
    the policy before the first step: their weights pi/pi_old differ from 1, and the logged mean shows it."""
    run(compose(SMALL + [f"objective={objective}", "train.mini_batch_size=4", "train.steps=1",
                         "objective.importance_weighting=true"]), tmp_path)
    r = read_metrics(tmp_path)[1]
    assert r["train/ratio_mean"] != 1.0 and abs(r["train/ratio_mean"] - 1.0) < 0.5, r["train/ratio_mean"]


def test_the_same_command_twice_gives_the_same_metrics(tmp_path):
    """Reproducibility on one CPU machine: two runs of one command log identical metrics (timings aside), for the
    default objective and for a group objective with dynamic sampling and an eval in the middle."""
    for extra in (["train.steps=2"], ["objective=grpo", "objective.group_size=4", "train.steps=3", "eval.every=2",
                                     "objective.dynamic_sampling.enable=true"]):
        rows = []
        for i in (0, 1):
            run(compose(SMALL + extra + ["seed=3"]), tmp_path / f"{len(extra)}_{i}")
            rows.append([{k: v for k, v in r.items() if not k.startswith("perf/")}
                         for r in read_metrics(tmp_path / f"{len(extra)}_{i}")])
        assert len(rows[0]) == len(rows[1]) > 2
        for a, b in zip(*rows):
            assert a == b
