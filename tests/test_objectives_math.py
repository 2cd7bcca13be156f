"""The online objectives' math: hand-computed advantages and losses, and where the KL term sends the gradient."""
import pytest
import torch

from rlhf_exp.core import (
    MovingAverageBaseline, aggregate_loss, clipped_sequence_loss, discounted_returns, group_normalized_advantages,
    leave_one_out_baseline, per_token_kl, reinforce_loss, sequence_logprob,
)
from rlhf_exp.modeling import ResponseOutput
from rlhf_exp.objectives import ObjectiveConfigError
from tests.conftest import objective_from_yaml, objective_names


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
    obj = objective_from_yaml("grpo", group_size=2, loss_aggregation="seq-mean-token-sum-norm", max_new_tokens=16)
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


def _token_weights(aggregation, mask):
    """d(aggregated loss)/d(per-token loss) by hand, for the 4 x 3 batch of ``_batch`` (row 1 has 2 tokens)."""
    B, T = mask.shape
    if aggregation == "token-mean":
        w = torch.full((B, T), 1.0 / mask.sum())
    elif aggregation == "seq-mean-token-sum":
        w = torch.full((B, T), 1.0 / B)
    elif aggregation == "seq-mean-token-mean":
        w = (1.0 / (B * mask.sum(1, keepdim=True))).expand(B, T)
    else:  # seq-mean-token-sum-norm, normaliser max_new_tokens = T
        w = torch.full((B, T), 1.0 / (B * T))
    return w * mask


@pytest.mark.parametrize("name", objective_names("online"))
def test_kl_placement_gradient_direction_and_value(name):
    """Where the KL goes, and what it does to the gradient of the per-token log-probs (lp = -1, ref = -1.5, so
    log pi - log pi_ref = 0.5 on every real token; row 1 is one token shorter than the others).

    * beta = 0: the placement does not matter.
    * KL in the loss (k2): the gradient gains exactly ``beta * (log pi - log pi_ref) * w_t = 0.5 w_t`` per real token
      (``w_t`` the aggregation's token weight), positive: a descent step lowers log pi towards the reference.
    * KL in the reward: rows 0 and 1 tie on the task score, the summed penalty is 0.5 per token, so the short row 1
      is penalised less than row 0; the change of the gradient makes a descent step raise row 1's log-prob relative
      to row 0's. (The exact value for reinforce: the next test.)
    """
    grads = {}
    for in_reward in (True, False):
        for beta in (0.0, 1.0):
            obj = objective_from_yaml(name, kl={"estimator": "k2", "in_reward": in_reward}, max_new_tokens=3,
                                      group_size=1 if name == "remax" else 2)
            batch = _batch()
            batch["scores"] = torch.tensor([1.0, 1.0, 2.0, 3.0])   # rows 0 and 1 tie on the task reward
            batch["baseline_scores"] = torch.tensor([0.5, 0.5, 1.0, 1.0])
            obj.compute_advantages(batch, beta)
            lp = torch.full((4, 3), -1.0, requires_grad=True)
            out = ResponseOutput(logprobs=lp, values=torch.zeros(4, 3, requires_grad=True),
                                 entropy=torch.zeros(4, 3))
            loss, _ = obj.loss(out, batch, beta)
            grads[(in_reward, beta)] = torch.autograd.grad(loss, lp)[0]
    mask = _batch()["response_mask"]
    assert torch.allclose(grads[(True, 0.0)], grads[(False, 0.0)])
    in_loss = grads[(False, 1.0)] - grads[(False, 0.0)]
    expect = 0.5 * _token_weights(obj.loss_aggregation, mask)
    assert torch.allclose(in_loss, expect, atol=1e-6), (in_loss, expect)
    assert (in_loss[mask.bool()] > 0).all()
    in_reward = (grads[(True, 1.0)] - grads[(True, 0.0)]).sum(dim=1)
    assert in_reward[1] < in_reward[0] - 1e-4, in_reward


def test_kl_in_the_reward_gradient_value_for_reinforce():
    """reinforce, batch-mean baseline, seq-mean-token-sum: R_i = s_i - 0.5 * len_i, lengths (3, 2, 3, 3), so the
    KL moves the advantages by -0.5 * (len_i - 2.75) = (-0.125, 0.375, -0.125, -0.125) and the gradient of each
    token of row i by -dA_i / 4."""
    grads = []
    for beta in (0.0, 1.0):
        obj = objective_from_yaml("reinforce", kl={"estimator": "k2", "in_reward": True}, baseline="batch_mean",
                                  loss_aggregation="seq-mean-token-sum")
        batch = _batch()
        obj.compute_advantages(batch, beta)
        lp = torch.full((4, 3), -1.0, requires_grad=True)
        loss, _ = obj.loss(ResponseOutput(logprobs=lp), batch, beta)
        grads.append(torch.autograd.grad(loss, lp)[0])
    d_adv = torch.tensor([-0.125, 0.375, -0.125, -0.125])
    expect = (-d_adv / 4).unsqueeze(1) * _batch()["response_mask"]
    assert torch.allclose(grads[1] - grads[0], expect, atol=1e-6)


def test_objective_defaults_follow_convention():
    """Where each objective's yaml puts the KL (kl.in_reward / kl.estimator null: the objective's kl_in_reward and
    kl_estimator), and what the kl block overrides."""
    expect = {"ppo": (True, "k1"), "ppo_seq": (True, "k1"), "reinforce": (True, "k1"), "kl_reinforce": (False, "k2"),
              "token_reinforce": (True, "k1"), "grpo": (False, "k3"), "rloo": (True, "k1"),
              "reinforce_pp": (True, "k1"), "remax": (True, "k1")}
    for name, (in_reward, est) in expect.items():
        obj = objective_from_yaml(name)
        assert (obj.kl_in_reward, obj.kl_estimator) == (in_reward, est), name
    obj = objective_from_yaml("grpo", kl={"estimator": "k1", "in_reward": True})
    assert (obj.kl_in_reward, obj.kl_estimator) == (True, "k1")
    with pytest.raises(ObjectiveConfigError, match="group_size >= 2"):
        objective_from_yaml("grpo", group_size=1)
    with pytest.raises(ObjectiveConfigError, match="objective.estimator must be one of .*group_normalized"):
        objective_from_yaml("grpo", estimator="nope")


def test_reinforce_pp_group_baseline_applies_to_token_rewards_too():
    """The group baseline removes each group's mean total task reward, whether it comes as a sequence score or as
    per-token rewards (then on the last token)."""
    obj = objective_from_yaml("reinforce_pp", kl={"estimator": "k1", "in_reward": True}, group_size=2,
                              group_baseline=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    seq = {"response_mask": mask, "scores": torch.tensor([1.0, 3.0]), "kl": torch.zeros(2, 3)}
    tok = {"response_mask": mask, "scores": torch.tensor([1.0, 3.0]), "kl": torch.zeros(2, 3),
           "token_scores": torch.tensor([[0.5, 0.5, 0.0], [1.0, 1.0, 1.0]])}
    # sequence: rewards [0, -1 | 0, 0, 1] -> returns [-1, -1 | 1, 1, 1], mean 0.2
    assert obj.compute_advantages(seq, 0.0)["returns_mean"].item() == pytest.approx(0.2)
    # per token: totals 1 and 3, baseline 2 on the last token: rewards [0.5, -1.5 | 1, 1, -1]
    # -> returns [-1, -1.5 | 1, 0, -1], mean -0.5 (without the baseline it would be 1.5)
    assert obj.compute_advantages(tok, 0.0)["returns_mean"].item() == pytest.approx(-0.5)


# -------------------------------------------------------------------- options from verl / TRL / DAPO / ReMax
def test_clipped_policy_loss_ignores_inf_and_nan_at_padding():
    """A padded position may hold anything (an inf log-prob, a NaN); the loss and its gradient stay finite and equal
    to the loss without it. A huge real log-ratio is clamped at 20 before exp (verl), so the loss stays finite."""
    from rlhf_exp.core.losses import clipped_policy_loss

    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    old = torch.tensor([[-1.0, -1.0, float("-inf")], [-1.0, -1.0, float("nan")]])
    for bad in (float("inf"), float("nan"), 1e30):
        lp = torch.tensor([[-1.0, -1.0, bad], [-1.0, -1.0, bad]], requires_grad=True)
        loss, stats = clipped_policy_loss(lp, old, adv, mask)
        (g,) = torch.autograd.grad(loss, lp)
        # ratio 1 on the 3 real tokens: token-mean of (-1, -1, +1) = -1/3
        assert loss.item() == pytest.approx(-1 / 3) and torch.isfinite(g).all()
        assert g[mask == 0].abs().sum() == 0 and torch.isfinite(stats["ratio_mean"])
    lp = torch.tensor([[1e4, -1.0, 0.0], [-1.0, -1.0, 0.0]], requires_grad=True)   # a real log-ratio of ~1e4
    loss, _ = clipped_policy_loss(lp, old.nan_to_num(0.0), adv, mask, clip_ratio_c=3.0)
    assert torch.isfinite(loss)


def test_dual_clip_caps_negative_advantages_only():
    """verl's compute_policy_loss_vanilla: for A < 0, L = min(max(-A r, -A clip(r)), -A c); for A > 0 unchanged.
    Tokens (ratio, A): (5, -1) -> min(5, 3) = 3, capped, no gradient; (2, -1) -> 2 (below c), gradient -A r = 2 per
    unit log-ratio; (5, +1) -> max(-5, -1.2) = -1.2 (ordinary clip); (0.5, -1) -> max(0.5, 0.8) = 0.8."""
    from rlhf_exp.core.losses import clipped_policy_loss

    ratio = torch.tensor([[5.0, 2.0, 5.0, 0.5]])
    adv = torch.tensor([[-1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    lp = ratio.log().clone().requires_grad_(True)
    loss, stats = clipped_policy_loss(lp, torch.zeros(1, 4), adv, mask, 0.2, None, "token-mean", None, 3.0)
    assert loss.item() == pytest.approx((3.0 + 2.0 - 1.2 + 0.8) / 4, rel=1e-6)
    (g,) = torch.autograd.grad(loss, lp)
    assert g.tolist()[0] == pytest.approx([0.0, 2.0 / 4, 0.0, 0.0], abs=1e-6)
    assert stats["clipfrac_lower"].item() == pytest.approx(0.25)
    plain, _ = clipped_policy_loss(lp.detach(), torch.zeros(1, 4), adv, mask)
    assert plain.item() == pytest.approx((5.0 + 2.0 - 1.2 + 0.8) / 4, rel=1e-6)
    with pytest.raises(ObjectiveConfigError, match="objective.clip_ratio_c must be a number > 1 or null, got 1.0"):
        objective_from_yaml("ppo", clip_ratio_c=1.0)
    obj = objective_from_yaml("grpo", group_size=2, clip_ratio_c=3.0, loss_aggregation="token-mean")
    _, st = obj.loss(ResponseOutput(logprobs=lp.detach()), {"old_logprobs": torch.zeros(1, 4), "advantages": adv,
                                                             "response_mask": mask, "ref_logprobs": lp.detach()}, 0.0)
    assert st["loss/policy"].item() == pytest.approx(loss.item(), rel=1e-6)


def test_mask_truncated_completions_removes_them_from_every_loss_term():
    """Row 1 did not end with EOS: with mask_truncated_completions its tokens take no loss (policy, KL, entropy)
    and its log-probs get no gradient; the other rows' log-prob gradient is unchanged (seq-mean-token-mean divides
    by all 4 rows, as TRL's GRPOTrainer does for loss_type grpo)."""
    kl = {"estimator": "k3", "in_reward": False}
    grads = {}
    for flag in (False, True):
        obj = objective_from_yaml("grpo", kl=kl, group_size=2, mask_truncated_completions=flag, entropy_coef=0.1,
                                  loss_aggregation="seq-mean-token-mean")
        batch = _batch()
        batch["ends_with_eos"] = torch.tensor([1.0, 0.0, 1.0, 1.0])
        obj.compute_advantages(batch, 0.1)
        lp = torch.full((4, 3), -1.2, requires_grad=True)
        ent = torch.full((4, 3), 2.0, requires_grad=True)
        loss, _ = obj.loss(ResponseOutput(logprobs=lp, entropy=ent), batch, 0.1)
        grads[flag] = torch.autograd.grad(loss, (lp, ent))
    assert grads[False][0][1].abs().sum() > 0 and grads[False][1][1].abs().sum() > 0
    assert grads[True][0][1].abs().sum() == 0 and grads[True][1][1].abs().sum() == 0
    for i in (0, 2, 3):
        assert torch.allclose(grads[True][0][i], grads[False][0][i])
    # sequence-level losses too: the truncated row's advantage is zeroed, so it adds nothing, not even a constant
    obj = objective_from_yaml("ppo_seq", kl={"estimator": "k1", "in_reward": True}, mask_truncated_completions=True,
                              whiten_advantages=False)
    mb = {"response_mask": torch.ones(2, 2), "old_logprobs": torch.zeros(2, 2), "ref_logprobs": torch.zeros(2, 2),
          "advantages": torch.tensor([2.0, 3.0]), "ends_with_eos": torch.tensor([1.0, 0.0])}
    loss, _ = obj.loss(ResponseOutput(logprobs=torch.zeros(2, 2)), mb, 0.0)
    assert loss.item() == pytest.approx(-2.0 / 2)
    with pytest.raises(KeyError, match="ends_with_eos"):
        obj.loss(ResponseOutput(logprobs=torch.zeros(2, 2)), {k: v for k, v in mb.items() if k != "ends_with_eos"},
                 0.0)


def test_remax_advantage_is_reward_to_go_minus_the_greedy_reward():
    """verl's compute_remax_outcome_advantage: A_t = sum_{k>=t} r_k - b, with r the KL-shaped token rewards
    (score on the last token, -beta * kl_t everywhere) and b the greedy response's task reward."""
    from rlhf_exp.core.advantages import remax_advantages

    obj = objective_from_yaml("remax")
    batch = _batch()                                      # kl 0.5 per real token; row 1 has 2 tokens
    batch["baseline_scores"] = torch.tensor([0.5, 0.5, 1.0, 4.0])
    obj.compute_advantages(batch, kl_coef=1.0)
    # row 0: score 1, token rewards (-0.5, -0.5, 0.5) -> returns (-0.5, 0, 0.5) -> minus 0.5
    assert batch["advantages"][0].tolist() == pytest.approx([-1.0, -0.5, 0.0])
    # row 1: score 0, two tokens (-0.5, -0.5) -> returns (-1, -0.5), minus 0.5, padding 0
    assert batch["advantages"][1].tolist() == pytest.approx([-1.5, -1.0, 0.0])
    assert batch["advantages"][3].tolist() == pytest.approx([3 - 1.5 - 4, 3 - 1.0 - 4, 3 - 0.5 - 4])
    assert remax_advantages(torch.zeros(1, 2), torch.tensor([1.0]), torch.tensor([[1, 0]])).tolist() == [[-1.0, 0.0]]
    with pytest.raises(ObjectiveConfigError, match="group_size must be 1"):
        objective_from_yaml("remax", group_size=2)
    with pytest.raises(KeyError, match="baseline_scores"):
        obj.compute_advantages(_batch(), 0.0)


def test_dynamic_sampling_helpers():
    from rlhf_exp.objectives.dynamic_sampling import concat_rollouts, group_rows, select_rows, varied_groups

    assert varied_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0]), 2).tolist() == [False, True, False]
    assert group_rows(torch.tensor([1, 2]), 2).tolist() == [2, 3, 4, 5]
    a = {"prompt_ids": torch.tensor([[7, 8]]), "prompt_mask": torch.tensor([[1, 1]]),
         "response_ids": torch.tensor([[5]]), "response_mask": torch.tensor([[1]]),
         "old_logprobs": torch.tensor([[-1.0]]), "raw_scores": torch.tensor([0.5])}
    b = {"prompt_ids": torch.tensor([[9]]), "prompt_mask": torch.tensor([[1]]),
         "response_ids": torch.tensor([[3, 4]]), "response_mask": torch.tensor([[1, 1]]),
         "old_logprobs": torch.tensor([[-2.0, -3.0]]), "raw_scores": torch.tensor([1.5])}
    c = concat_rollouts([a, b], pad_id=0)
    assert c["prompt_ids"].tolist() == [[7, 8], [0, 9]] and c["prompt_mask"].tolist() == [[1, 1], [0, 1]]
    assert c["response_ids"].tolist() == [[5, 0], [3, 4]] and c["response_mask"].tolist() == [[1, 0], [1, 1]]
    assert c["old_logprobs"].tolist() == [[-1.0, 0.0], [-2.0, -3.0]] and c["raw_scores"].tolist() == [0.5, 1.5]
    assert select_rows(c, torch.tensor([1]))["response_ids"].tolist() == [[3, 4]]
    with pytest.raises(ObjectiveConfigError, match="dynamic_sampling.enable=true needs objective.group_size >= 2"):
        objective_from_yaml("ppo_seq", rollout_hooks=["dynamic_sampling"],
                            **{"+dynamic_sampling": "{enable: true, max_tries: 4}"})


def test_reinforce_importance_weighting_scales_each_sequence_by_its_ratio():
    """importance_weighting: the gradient of row i is w_i times the plain one, w_i = exp(sum_t (lp - old)) over its
    real tokens (row 0: exp(0.2 + 0.1) ; row 1: exp(-0.3), its padded position ignored even if it holds inf)."""
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    old = torch.tensor([[-1.0, -1.0], [-1.0, float("-inf")]])
    lp0 = torch.tensor([[-0.8, -0.9], [-1.3, 5.0]])
    mb = {"response_mask": mask, "old_logprobs": old, "advantages": torch.tensor([1.0, -2.0])}
    grads = {}
    for flag in (False, True):
        obj = objective_from_yaml("reinforce", importance_weighting=flag, loss_aggregation="seq-mean-token-sum")
        lp = lp0.clone().requires_grad_(True)
        loss, _ = obj.loss(ResponseOutput(logprobs=lp), mb, 0.0)
        grads[flag] = torch.autograd.grad(loss, lp)[0]
    w = torch.tensor([torch.tensor(0.3).exp(), torch.tensor(-0.3).exp()])
    assert torch.allclose(grads[False], torch.tensor([[-0.5, -0.5], [1.0, 0.0]]))
    assert torch.allclose(grads[True], grads[False] * w.unsqueeze(1))


def test_token_reinforce_importance_weighting_scales_each_responses_tokens_by_its_sequence_ratio():
    """token_reinforce importance_weighting: token-mean loss over the 3 real tokens, -sum(A_t * w_i * lp_t) / 3, so
    d loss / d lp_t = -A_t * w_i / 3 with w_i = exp(sum_t (lp - old)) over row i's real tokens: row 0 exp(0.2 + 0.1) =
    1.3498588, row 1 exp(-0.3) = 0.7408182 (its padded position ignored even though old holds -inf there)."""
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    old = torch.tensor([[-1.0, -1.0], [-1.0, float("-inf")]])
    lp0 = torch.tensor([[-0.8, -0.9], [-1.3, 5.0]])
    mb = {"response_mask": mask, "old_logprobs": old, "advantages": torch.tensor([[1.0, 0.5], [-2.0, 0.0]])}
    out = {}
    for flag in (False, True):
        obj = objective_from_yaml("token_reinforce", importance_weighting=flag, loss_aggregation="token-mean")
        lp = lp0.clone().requires_grad_(True)
        loss, stats = obj.loss(ResponseOutput(logprobs=lp), mb, 0.0)
        out[flag] = (loss.item(), torch.autograd.grad(loss, lp)[0], stats)
    # plain: -(1 * -0.8 + 0.5 * -0.9 + -2 * -1.3) / 3 = -0.45
    assert out[False][0] == pytest.approx(-0.45, abs=1e-6)
    assert torch.allclose(out[False][1], torch.tensor([[-1 / 3, -0.5 / 3], [2 / 3, 0.0]]))
    assert "ratio_mean" not in out[False][2]
    # weighted: -(1.3498588 * (-0.8 - 0.45) + 0.7408182 * 2.6) / 3 = -0.0796013
    assert out[True][0] == pytest.approx(-0.0796013, abs=1e-6)
    assert torch.allclose(out[True][1], torch.tensor([[-0.4499529, -0.2249765], [0.4938788, 0.0]]), atol=1e-6)
    assert float(out[True][2]["ratio_mean"]) == pytest.approx((1.3498588 + 0.7408182) / 2, abs=1e-6)
