"""Trimmed minibatches (rlhf_exp.train.batching) give the loss and gradients of the padded ones.

Tolerance: float32 on CPU; loss to rel 1e-5, every gradient entry to 1e-5 of the largest gradient entry, log-probs
to 1e-5 (the same sums over different matrix shapes, so only the rounding differs).
"""
import copy

import pytest
import torch

from rlhf_exp.modeling import PolicyModel, load_causal_lm, score_responses
from rlhf_exp.rollout import pad_left, pad_right
from rlhf_exp.task import POLICY_DIR
from rlhf_exp.train.batching import padding_bounds, trim_padding
from tests.conftest import objective_from_yaml

PAD = 0


@pytest.fixture(scope="module")
def lm():
    return load_causal_lm(str(POLICY_DIR)).eval()


def _minibatch(extra_left=3, extra_right=4, seed=0):
    """A minibatch as the loop slices it from a bigger batch: prompts of 2-5 tokens left-padded and responses of
    1-6 tokens right-padded, plus ``extra_left``/``extra_right`` columns that are padding in every row (the longer
    rows of the full batch are in other minibatches)."""
    g = torch.Generator().manual_seed(seed)
    p_lens, r_lens = [2, 5, 3, 4], [6, 1, 3, 5]
    prompts = [torch.randint(10, 1000, (n,), generator=g).tolist() for n in p_lens]
    responses = [torch.randint(10, 1000, (n,), generator=g).tolist() for n in r_lens]
    pid, pm = pad_left(prompts, PAD)
    rid, rm = pad_right(responses, PAD)
    pid = torch.nn.functional.pad(pid, (extra_left, 0), value=PAD)
    pm = torch.nn.functional.pad(pm, (extra_left, 0), value=0)
    rid = torch.nn.functional.pad(rid, (0, extra_right), value=PAD)
    rm = torch.nn.functional.pad(rm, (0, extra_right), value=0)
    B, T = rid.shape
    mb = {"prompt_ids": pid, "prompt_mask": pm, "response_ids": rid, "response_mask": rm,
          "old_logprobs": -torch.rand(B, T, generator=g) * 3 * rm, "ref_logprobs": -torch.rand(B, T, generator=g) * 3 * rm,
          "advantages": torch.randn(B, T, generator=g) * rm, "returns": torch.randn(B, T, generator=g) * rm,
          "old_values": torch.randn(B, T, generator=g) * rm, "scores": torch.randn(B, generator=g)}
    return mb, prompts, responses


def test_padding_bounds_and_trim_shapes():
    mb, prompts, responses = _minibatch()
    first, end = padding_bounds(mb["prompt_mask"], mb["response_mask"])
    assert first == 3 and end == 6
    t = trim_padding(mb)
    assert t["prompt_ids"].shape == (4, 5) and t["response_ids"].shape == (4, 6)
    for k in ("old_logprobs", "ref_logprobs", "advantages", "returns", "old_values", "response_mask"):
        assert t[k].shape == (4, 6)
        assert torch.equal(t[k], mb[k][:, :6]) and mb[k][:, 6:].abs().sum() == 0
    assert t["scores"] is mb["scores"]
    # the real tokens are all kept
    assert t["prompt_mask"].sum() == mb["prompt_mask"].sum() and t["response_mask"].sum() == mb["response_mask"].sum()
    # already tight: unchanged; all-padding sides keep one column
    assert trim_padding(t)["prompt_ids"].shape == (4, 5)
    assert padding_bounds(torch.zeros(2, 3), torch.zeros(2, 4)) == (2, 1)


def test_trimmed_rows_score_like_unpadded_rows(lm):
    """Position ids stay right with left padding: each row of the trimmed minibatch has the log-probs of the same
    sequence scored alone without any padding."""
    mb, prompts, responses = _minibatch()
    t = trim_padding(mb)
    policy = PolicyModel(lm)
    with torch.no_grad():
        lp_pad = score_responses(policy, mb["prompt_ids"], mb["prompt_mask"], mb["response_ids"], mb["response_mask"]).logprobs
        lp_trim = score_responses(policy, t["prompt_ids"], t["prompt_mask"], t["response_ids"], t["response_mask"]).logprobs
        for i, (p, r) in enumerate(zip(prompts, responses)):
            one = score_responses(policy, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long),
                                  torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)).logprobs[0]
            assert torch.allclose(lp_trim[i, :len(r)], one, atol=1e-5)
            assert torch.allclose(lp_pad[i, :len(r)], one, atol=1e-5)


@pytest.mark.parametrize("objective,value_head,agg", [("ppo", True, "token-mean"), ("grpo", False, "seq-mean-token-mean"),
                                                       ("grpo", False, "seq-mean-token-sum-norm"),
                                                       ("rloo", False, "seq-mean-token-sum")])
def test_trimmed_minibatch_same_loss_and_gradients(lm, objective, value_head, agg):
    """The objective's loss (policy, value and KL terms) and the gradient of every parameter are those of the padded
    minibatch, with ratios != 1 (the old log-probs are not the policy's) so clipping is exercised."""
    mb, _, _ = _minibatch()
    torch.manual_seed(0)
    base = PolicyModel(copy.deepcopy(lm), value_head=value_head)
    obj = objective_from_yaml(objective, kl={"estimator": "k3", "in_reward": False}, max_new_tokens=16,
                              group_size=2 if objective != "ppo" else 1, loss_aggregation=agg)
    results = []
    for batch in (mb, trim_padding(mb)):
        model = copy.deepcopy(base)
        out = score_responses(model, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                              batch["response_mask"], return_values=value_head)
        loss, _ = obj.loss(out, batch, kl_coef=0.05)
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])))
    (l_pad, g_pad), (l_trim, g_trim) = results
    assert float(l_trim) == pytest.approx(float(l_pad), rel=1e-5, abs=1e-7)
    scale = g_pad.abs().max()
    assert scale > 0
    assert (g_trim - g_pad).abs().max() <= 1e-5 * scale


def test_adamw_impls_take_the_same_steps():
    """train.adamw_impl: foreach gives bit-identical parameters to the for-loop implementation, fused equal to 1e-6
    after 5 steps; an unknown name is an error naming the option."""
    from omegaconf import OmegaConf

    from rlhf_exp.train.optim import make_adamw

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    params = {}
    for impl in ("for-loop", "foreach", "fused"):
        m = copy.deepcopy(base)
        opt = make_adamw(m.parameters(), OmegaConf.create({"lr": 1e-2, "adam_betas": [0.9, 0.95], "adam_eps": 1e-8,
                                                           "weight_decay": 0.01, "adamw_impl": impl}))
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            m(torch.randn(4, 8, generator=g)).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
        params[impl] = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    assert torch.equal(params["foreach"], params["for-loop"])
    assert torch.allclose(params["fused"], params["for-loop"], atol=1e-6)
    assert not torch.equal(params["for-loop"], torch.cat([p.detach().reshape(-1) for p in base.parameters()]))
    with pytest.raises(ValueError, match="train.adamw_impl='adam'"):
        make_adamw(base.parameters(), OmegaConf.create({"lr": 1e-2, "adam_betas": [0.9, 0.95], "adam_eps": 1e-8,
                                                        "weight_decay": 0.0, "adamw_impl": "adam"}))


SKIP_CFG = ["logger=none", "train.batch_size=8", "train.mini_batch_size=null", "train.epochs=1", "eval.every=0",
            "dataset.eval_size=8", "dataset.train_size=64", "generation.max_new_tokens=6", "train.save_model=false",
            "kl=fixed", "kl.kl_coef=0.05", "seed=0"]


def _trainer(tmp_path, overrides, from_update=None):
    from tests.conftest import compose
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.common import seed_everything
    from rlhf_exp.train.online import OnlineTrainer

    cfg = compose(overrides)
    seed_everything(0)
    t = OnlineTrainer(cfg, tmp_path, Tracker(tmp_path, cfg.logger, {}, "t", enabled=False))
    if from_update is not None:
        t.old_logprobs_from_update = from_update
    return t


@pytest.mark.parametrize("objective", ["grpo", "rloo", "kl_reinforce"])
def test_old_logprobs_from_the_update_forward_give_the_same_updates(tmp_path, objective):
    """One optimizer step per batch, KL in the loss: the rollout skips its no-grad policy forward and the update's
    detached log-probs are the old log-probs (ratio exactly 1). Two steps of that path and of the full path (no-grad
    forward in the rollout) give the same parameters (to 1e-6 of the largest parameter: the same sums on different
    batch shapes), the same logged KL, entropy and losses (rel 1e-4)."""
    ov = SKIP_CFG + [f"objective={objective}"] + (["objective.group_size=4"] if objective != "kl_reinforce" else [])
    ov += ["kl.in_reward=false"] if objective == "rloo" else []
    runs = {}
    for name, flag in (("skip", None), ("full", False)):
        t = _trainer(tmp_path / name, ov, flag)
        policy_forwards = []
        real = t.rollouts.scorer.forward_chunks

        def counting(model, *a, _real=real, _t=t, **k):
            policy_forwards.append(model is _t.policy)
            return _real(model, *a, **k)

        t.rollouts.scorer.forward_chunks = counting
        ms = [t.train_step(s) for s in (1, 2)]
        runs[name] = (t, ms, sum(policy_forwards))
    (ts, ms_skip, n_skip), (tf, ms_full, n_full) = runs["skip"], runs["full"]
    assert ts.old_logprobs_from_update and not tf.old_logprobs_from_update
    assert n_skip == 0 and n_full == 2          # one no-grad policy forward per step saved
    assert all(m["train/ratio_mean"] == 1.0 for m in ms_skip if "train/ratio_mean" in m)
    ps = torch.cat([p.detach().reshape(-1) for p in ts.policy.parameters()])
    pf = torch.cat([p.detach().reshape(-1) for p in tf.policy.parameters()])
    assert (ps - pf).abs().max() <= 1e-6 * pf.abs().max()
    for a, b in zip(ms_skip, ms_full):
        for k in ("train/kl", "train/entropy", "train/loss/total", "train/loss/kl", "train/reward_mean"):
            if k in b:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


def test_old_logprobs_from_update_only_where_nothing_reads_them_earlier():
    """The condition: one optimizer step per batch, no critic, KL not in the reward, not the full-KL estimator, no
    dynamic sampling."""
    from rlhf_exp.train.batching import old_logprobs_from_update

    def obj(name, **kl):
        return objective_from_yaml(name, kl=kl, group_size=4)

    assert old_logprobs_from_update(obj("grpo"), 1, 32, 32)
    assert not old_logprobs_from_update(obj("grpo"), 2, 32, 32)            # a second epoch moves the policy
    assert not old_logprobs_from_update(obj("grpo"), 1, 16, 32)            # a second mini-batch too
    assert not old_logprobs_from_update(obj("ppo"), 1, 32, 32)             # critic values and KL in the reward
    assert not old_logprobs_from_update(obj("rloo"), 1, 32, 32)            # KL in the reward (rloo's default)
    assert old_logprobs_from_update(obj("rloo", in_reward=False), 1, 32, 32)
    assert not old_logprobs_from_update(obj("grpo", estimator="full"), 1, 32, 32)
    assert not old_logprobs_from_update(obj("grpo"), 1, 32, 32, separate_sampler=True)   # vLLM's correction
    dapo = objective_from_yaml("grpo", group_size=4, **{"dynamic_sampling.enable": True})
    assert not old_logprobs_from_update(dapo, 1, 32, 32)                # dynamic sampling concatenates scored rounds


@pytest.mark.parametrize("objective,kl", [("grpo", ["kl=fixed", "kl.kl_coef=0.0"]), ("ppo", ["kl=none"])])
def test_kl_track_false_skips_the_reference_forward_and_changes_no_update(tmp_path, objective, kl):
    """kl.track=false where the KL cannot matter (kl=none, or kl=fixed with coefficient 0): no reference forward in
    the rollout and no train/kl, and the same parameters and losses as with the reference pass (it draws nothing
    from the random streams). With kl=fixed and a coefficient > 0 the option is ignored."""
    ov = SKIP_CFG + [f"objective={objective}"] + (["objective.group_size=4"] if objective == "grpo" else []) + kl
    runs = {}
    for track in ("true", "false"):
        t = _trainer(tmp_path / track, ov + [f"kl.track={track}"])
        ref_forwards = []
        real = t.rollouts.scorer.forward_chunks

        def counting(model, *a, _real=real, _t=t, **k):
            ref_forwards.append(model is _t.rollouts.scorer.ref)
            return _real(model, *a, **k)

        t.rollouts.scorer.forward_chunks = counting
        runs[track] = (t, [t.train_step(s) for s in (1, 2)], sum(ref_forwards))
    (tt, mt, nt), (tf, mf, nf) = runs["true"], runs["false"]
    assert nt == 2 and nf == 0
    assert all("train/kl" in m for m in mt) and not any("train/kl" in m for m in mf)
    pt = torch.cat([p.detach().reshape(-1) for p in tt.policy.parameters()])
    pf = torch.cat([p.detach().reshape(-1) for p in tf.policy.parameters()])
    assert torch.equal(pt, pf)
    for a, b in zip(mt, mf):
        assert a["train/loss/total"] == b["train/loss/total"] and a["train/reward_mean"] == b["train/reward_mean"]
    used = _trainer(tmp_path / "used", SKIP_CFG + ["objective=grpo", "objective.group_size=4", "kl.track=false"])
    assert used.ref_in_rollout                   # kl=fixed kl_coef=0.05: the KL is used, the option is ignored


def test_token_budget_micro_batches_hand_example():
    from rlhf_exp.train.batching import token_budget_micro_batches

    # totals 10, 4, 12, 4, 3 -> order 2, 0, 1, 3, 4; budget 24: [2, 0] costs 2 x (6 + 6) = 24; [1, 3, 4] 3 x (2 + 2)
    p, r = [4, 2, 6, 1, 2], [6, 2, 6, 3, 1]
    assert token_budget_micro_batches(p, r, 24) == [[2, 0], [1, 3, 4]]
    # a row longer than the budget alone
    assert token_budget_micro_batches(p, r, 11) == [[2], [0], [1, 3], [4]]


@pytest.mark.parametrize("seed", range(5))
def test_token_budget_micro_batches_cover_every_row_once_within_budget(seed):
    from rlhf_exp.train.batching import token_budget_micro_batches

    g = torch.Generator().manual_seed(seed)
    n = 50
    p = torch.randint(1, 20, (n,), generator=g)
    r = torch.randint(0, 200, (n,), generator=g)
    budget = int(torch.randint(100, 2000, (1,), generator=g))
    mbs = token_budget_micro_batches(p, r, budget)
    assert sorted(i for mb in mbs for i in mb) == list(range(n))          # every row exactly once
    for mb in mbs:
        cost = len(mb) * (max(int(p[i]) for i in mb) + max(int(r[i]) for i in mb))
        assert cost <= budget or len(mb) == 1                              # only a single over-long row exceeds it
    assert mbs == token_budget_micro_batches(p.tolist(), r.tolist(), budget)   # deterministic, any input type
    totals = [int(p[i] + r[i]) for mb in mbs for i in mb]
    assert totals == sorted(totals, reverse=True)                          # length-sorted
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        token_budget_micro_batches(p, r, 0)
