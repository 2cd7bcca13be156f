"""The online objectives' math: hand-computed advantages and losses, and where the KL term sends the gradient."""
import pytest
import torch

from rlhf_exp.core import (
    MovingAverageBaseline, aggregate_loss, clipped_sequence_loss, discounted_returns, group_normalized_advantages,
    leave_one_out_baseline, per_token_kl, reinforce_loss, sequence_logprob,
)
from rlhf_exp.objectives import ONLINE_OBJECTIVES, build_online_objective
from rlhf_exp.modeling import ResponseOutput


def test_grpo_advantages_known_group_and_zero_std_group():
    r = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    adv = group_normalized_advantages(r, group_size=3, scale="group", eps=0.0 + 1e-4)
    # group 1: mean 2, unbiased std 1 -> (-1, 0, 1)/(1 + 1e-4); group 2: zero spread -> exactly 0, no NaN
    assert adv[:3].tolist() == pytest.approx([-1 / 1.0001, 0.0, 1 / 1.0001])
    assert adv[3:].tolist() == [0.0, 0.0, 0.0]
    none = group_normalized_advantages(r, 3, scale="none")
    assert none.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    batch = group_normalized_advantages(r, 3, scale="batch")
    assert batch.tolist() == pytest.approx((none / (r.std() + 1e-4)).tolist())
    with pytest.raises(ValueError, match="group, batch, none"):
        group_normalized_advantages(r, 3, scale="max")
    with pytest.raises(ValueError, match="groups of 4"):
        group_normalized_advantages(r, 4)


def test_rloo_baseline_is_mean_of_the_others():
    r = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    b = leave_one_out_baseline(r, 3)
    assert b.tolist() == pytest.approx([4.0, 3.5, 1.5, 1.5, 1.5, 0.0])
    assert (r - b).view(2, 3).sum(1).tolist() == pytest.approx([0.0, 0.0])   # LOO advantages sum to 0 per group
    with pytest.raises(ValueError, match="group_size >= 2"):
        leave_one_out_baseline(r, 1)


def test_sequence_level_clipping_both_sides():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    old = torch.zeros(4, 3)
    # sequence log-ratios: log 1.5 (A>0, clipped at 1.2), log 1.5 (A<0, unclipped), log 0.5 (A>0, unclipped),
    # log 0.5 (A<0, clipped at 0.8); spread over the real tokens of each row
    lr = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    lengths = mask.sum(1).float()
    new = (lr / lengths).unsqueeze(1).expand(4, 3) * mask
    new = new.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, stats = clipped_sequence_loss(new, old, adv, mask, clip_low=0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    g = new.grad
    assert g[0].abs().sum().item() == 0.0 and g[3].abs().sum().item() == 0.0     # clipped sequences: no gradient
    assert g[1, 0].item() == pytest.approx(1.5 / 4) and g[2, 0].item() == pytest.approx(-0.5 / 4)
    # the length-normalised (GSPO) ratio of the same rows is exp(mean log-ratio per token)
    _, s_mean = clipped_sequence_loss(new.detach(), old, adv, mask, ratio_reduction="mean")
    expect = torch.exp(lr / lengths).mean().item()
    assert s_mean["ratio_mean"].item() == pytest.approx(expect, rel=1e-5)


def test_token_rewards_masked_to_response_tokens():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 100.0], [0.5, 100.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    g = discounted_returns(rewards, mask, gamma=1.0)
    assert g.tolist() == [[6.0, 5.0, 3.0, 0.0], [0.5, 0.0, 0.0, 0.0]]
    g = discounted_returns(rewards, mask, gamma=0.5)
    assert g[0].tolist() == pytest.approx([1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0])
    logp = torch.zeros(2, 4, requires_grad=True)
    loss = reinforce_loss(logp, g, mask, "token-mean")
    loss.backward()
    assert (logp.grad[mask == 0] == 0).all()                 # padding gets no gradient, whatever its reward


def test_dr_grpo_constant_normaliser():
    x = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    # per-sequence length mean weighs the short response 3x more per token; the constant normaliser does not
    assert aggregate_loss(x, m, "seq-mean-token-mean").item() == pytest.approx(1.0)
    assert aggregate_loss(x, m, "seq-mean-token-sum-norm", normalizer=16).item() == pytest.approx(4 / (2 * 16))
    obj = build_online_objective({"name": "grpo", "group_size": 2, "loss_aggregation": "seq-mean-token-sum-norm"},
                                 {"estimator": None, "in_reward": None}, max_new_tokens=16)
    assert obj.aggregate(x, m).item() == pytest.approx(4 / 32)


def test_sequence_logprob_sum_and_mean():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert sequence_logprob(lp, m, "sum").tolist() == [-3.0, -3.0]
    assert sequence_logprob(lp, m, "mean").tolist() == [-1.5, -3.0]


def test_moving_average_baseline_uses_the_past_only():
    b = MovingAverageBaseline(decay=0.5)
    assert b(2.0) == 2.0            # first batch: its own mean
    assert b(4.0) == 2.0            # the baseline before this batch
    assert b(0.0) == pytest.approx(3.0)


# -------------------------------------------------------------------- where the KL term sends the gradient
def _toy_policy(seed=0, V=5):
    torch.manual_seed(seed)
    theta = torch.randn(V, requires_grad=True)
    ref = torch.randn(V)
    return theta, torch.log_softmax(ref, -1)


def _true_kl_grad(theta, ref_logp):
    logp = torch.log_softmax(theta, -1)
    kl = (logp.exp() * (logp - ref_logp)).sum()
    return torch.autograd.grad(kl, theta)[0]


@pytest.mark.parametrize("estimator,expect", [("k1", "zero"), ("k2", "kl"), ("k3", "reverse_kl")])
def test_kl_in_the_loss_gradient_per_estimator(estimator, expect):
    """On-policy samples, KL term in the loss: E[grad k1] = 0, E[grad k2] = grad KL(pi||ref),
    E[grad k3] = grad KL(ref||pi). This is why kl_reinforce defaults to k2 in the loss."""
    theta, ref_logp = _toy_policy()
    n = 400_000
    with torch.no_grad():
        a = torch.multinomial(torch.softmax(theta, -1), n, replacement=True)
    logp = torch.log_softmax(theta, -1)[a]
    loss = per_token_kl(estimator, logp, ref_logp[a]).mean()
    g = torch.autograd.grad(loss, theta)[0]
    if expect == "zero":
        target = torch.zeros_like(g)
    elif expect == "kl":
        target = _true_kl_grad(theta, ref_logp)
    else:
        p = torch.log_softmax(theta, -1)
        rkl = (ref_logp.exp() * (ref_logp - p)).sum()
        target = torch.autograd.grad(rkl, theta)[0]
    assert torch.allclose(g, target, atol=0.02), (g, target)


def test_kl_in_the_reward_gradient_is_the_kl_gradient():
    """KL in the reward: REINFORCE with reward -log(pi/ref) follows -grad KL(pi||ref) (up to sampling noise)."""
    theta, ref_logp = _toy_policy(1)
    n = 400_000
    with torch.no_grad():
        a = torch.multinomial(torch.softmax(theta, -1), n, replacement=True)
    logp = torch.log_softmax(theta, -1)[a]
    reward = -(logp.detach() - ref_logp[a])                 # beta = 1, k1 in the reward
    loss = -(reward * logp).mean()                          # REINFORCE
    g = torch.autograd.grad(loss, theta)[0]
    assert torch.allclose(g, _true_kl_grad(theta, ref_logp), atol=0.02)


def _batch(B=4, T=3, G=2):
    torch.manual_seed(0)
    mask = torch.ones(B, T)
    mask[1, 2] = 0
    return {
        "response_mask": mask, "scores": torch.tensor([1.0, 0.0, 2.0, 3.0]), "kl": torch.full((B, T), 0.5) * mask,
        "old_logprobs": torch.full((B, T), -1.0), "ref_logprobs": torch.full((B, T), -1.5),
        "old_values": torch.zeros(B, T),
    }


@pytest.mark.parametrize("name", sorted(ONLINE_OBJECTIVES))
def test_kl_placement_changes_the_gradient(name):
    """With the KL in the loss the KL coefficient changes the gradient through the loss term; in the reward it
    changes it through the advantages. Either way the coefficient matters, and kl_coef=0 removes it."""
    cfg = {"name": name, "group_size": 2, "baseline": "batch_mean"}
    grads = {}
    for in_reward in (True, False):
        for beta in (0.0, 1.0):
            obj = build_online_objective(cfg, {"estimator": "k2", "in_reward": in_reward}, max_new_tokens=3)
            batch = _batch()
            obj.compute_advantages(batch, beta)
            lp = torch.full((4, 3), -1.0, requires_grad=True)
            out = ResponseOutput(logprobs=lp, values=torch.zeros(4, 3, requires_grad=True),
                                 entropy=torch.zeros(4, 3))
            loss, _ = obj.loss(out, batch, beta)
            grads[(in_reward, beta)] = torch.autograd.grad(loss, lp)[0]
    # beta = 0: where the KL goes does not matter
    assert torch.allclose(grads[(True, 0.0)], grads[(False, 0.0)])
    # beta = 1 in the loss: k2's gradient (log pi - log pi_ref) * 1 = 0.5 per token, added on top of beta = 0
    assert not torch.allclose(grads[(False, 1.0)], grads[(False, 0.0)])
    # beta = 1 in the reward: the responses have different lengths, so the summed KL penalty differs between them
    # and moves the advantages
    assert not torch.allclose(grads[(True, 1.0)], grads[(True, 0.0)])


def test_objective_defaults_follow_convention():
    kl = {"estimator": None, "in_reward": None}
    expect = {"ppo": (True, "k1"), "ppo_seq": (True, "k1"), "reinforce": (True, "k1"), "kl_reinforce": (False, "k2"),
              "token_reinforce": (True, "k1"), "grpo": (False, "k3"), "rloo": (True, "k1"),
              "reinforce_pp": (True, "k1")}
    for name, (in_reward, est) in expect.items():
        obj = build_online_objective({"name": name, "group_size": 2}, kl)
        assert (obj.kl_in_reward, obj.kl_estimator) == (in_reward, est), name
    obj = build_online_objective({"name": "grpo", "group_size": 2}, {"estimator": "k1", "in_reward": True})
    assert (obj.kl_in_reward, obj.kl_estimator) == (True, "k1")
    with pytest.raises(ValueError, match="group_size >= 2"):
        build_online_objective({"name": "grpo", "group_size": 1}, kl)
    with pytest.raises(ValueError, match="Valid:"):
        build_online_objective({"name": "nope"}, kl)


def test_reinforce_pp_group_baseline_applies_to_token_rewards_too():
    """The group baseline removes each group's mean total task reward, whether it comes as a sequence score or as
    per-token rewards (then on the last token)."""
    obj = build_online_objective({"name": "reinforce_pp", "group_size": 2, "group_baseline": True},
                                 {"estimator": "k1", "in_reward": True})
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    seq = {"response_mask": mask, "scores": torch.tensor([1.0, 3.0]), "kl": torch.zeros(2, 3)}
    tok = {"response_mask": mask, "scores": torch.tensor([1.0, 3.0]), "kl": torch.zeros(2, 3),
           "token_scores": torch.tensor([[0.5, 0.5, 0.0], [1.0, 1.0, 1.0]])}
    # sequence: rewards [0, -1 | 0, 0, 1] -> returns [-1, -1 | 1, 1, 1], mean 0.2
    assert obj.compute_advantages(seq, 0.0)["returns_mean"].item() == pytest.approx(0.2)
    # per token: totals 1 and 3, baseline 2 on the last token: rewards [0.5, -1.5 | 1, 1, -1]
    # -> returns [-1, -1.5 | 1, 0, -1], mean -0.5 (without the baseline it would be 1.5)
    assert obj.compute_advantages(tok, 0.0)["returns_mean"].item() == pytest.approx(-0.5)
