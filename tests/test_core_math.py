"""The math layer against hand-computed values and known identities."""
import math

import pytest
import torch

from rlhf_exp.core import (
    AdaptiveKLController, FixedKLController, NoKLController, aggregate_loss, clipped_policy_loss, clipped_value_loss,
    entropy_from_logits, full_kl_from_logits, gae, kl_shaped_token_rewards, logprobs_from_logits, make_kl_controller,
    masked_mean, masked_var, masked_whiten, per_token_kl, place_on_last_token, sequence_rewards,
)

L2 = math.log(2.0)


# ------------------------------------------------------------------------------------------------ masked ops
def test_masked_mean_ignores_padding_and_defines_empty():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, -50.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    assert masked_mean(x, m, dim=1).tolist() == pytest.approx([1.5, 3.0])
    assert masked_mean(x, torch.zeros_like(m)).item() == 0.0


def test_masked_var_unbiased_matches_torch():
    x = torch.tensor([[1.0, 2.0, 4.0, 9.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    assert masked_var(x, m).item() == pytest.approx(torch.tensor([1.0, 2.0, 4.0]).var().item())
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(torch.tensor([1.0, 2.0, 4.0]).var(unbiased=False).item())


def test_whiten_zero_mean_unit_std_and_zero_on_padding():
    torch.manual_seed(0)
    x = torch.randn(4, 6) * 3 + 5
    m = torch.ones(4, 6)
    m[0, 4:] = 0
    w = masked_whiten(x, m)
    assert masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(w, m).item() == pytest.approx(1.0, abs=1e-5)
    assert (w[0, 4:] == 0).all()
    kept = masked_whiten(x, m, shift_mean=False)
    assert masked_mean(kept, m).item() == pytest.approx(masked_mean(x, m).item(), abs=1e-5)


def test_whiten_degenerate_cases_are_defined():
    one = masked_whiten(torch.tensor([[3.0, 7.0]]), torch.tensor([[1, 0]]))
    assert torch.isfinite(one).all() and one.tolist() == [[0.0, 0.0]]
    const = masked_whiten(torch.full((2, 3), 4.0), torch.ones(2, 3))
    assert torch.isfinite(const).all() and (const == 0).all()
    empty = masked_whiten(torch.randn(2, 3), torch.zeros(2, 3))
    assert torch.isfinite(empty).all()


# ------------------------------------------------------------------------------------------------ advantages
def test_gae_hand_computed():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.5)
    # delta = [-0.3, 0.2, 0.6]; A2 = 0.6, A1 = 0.2 + 0.5*0.6 = 0.5, A0 = -0.3 + 0.5*0.5 = -0.05
    assert adv.tolist()[0] == pytest.approx([-0.05, 0.5, 0.6])
    assert ret.tolist()[0] == pytest.approx([0.45, 0.7, 1.0])


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    torch.manual_seed(0)
    r, v = torch.randn(5, 7), torch.randn(5, 7)
    m = torch.ones(5, 7)
    m[1, 4:] = 0
    m[3, 1:] = 0
    adv, ret = gae(r, v, m, gamma=1.0, lam=1.0)
    rm = r * m
    to_go = rm.flip(1).cumsum(1).flip(1)
    assert torch.allclose(adv, (to_go - v) * m, atol=1e-5)
    assert torch.allclose(ret, to_go * m, atol=1e-5)


def test_gae_lambda_zero_is_td_error_and_padding_does_not_leak():
    r = torch.tensor([[1.0, 2.0, 99.0]])
    v = torch.tensor([[0.5, 1.5, 123.0]])      # garbage at the padded position
    m = torch.tensor([[1, 1, 0]])
    adv, _ = gae(r, v, m, gamma=0.9, lam=0.0)
    # delta0 = 1 + 0.9*1.5 - 0.5 = 1.85; delta1 = 2 + 0 - 1.5 = 0.5 (value after the last token is 0)
    assert adv.tolist()[0] == pytest.approx([1.85, 0.5, 0.0])


def test_rewards_on_last_token_with_kl_penalty():
    scores = torch.tensor([2.0, -1.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert place_on_last_token(scores, m).tolist() == [[0, 0, 2.0], [-1.0, 0, 0]]
    r = kl_shaped_token_rewards(scores, kl, m, kl_coef=0.5)
    assert r.tolist()[0] == pytest.approx([-0.05, -0.1, 2.0 - 0.15])
    assert r.tolist()[1] == pytest.approx([-1.0 - 0.25, 0.0, 0.0])
    tok = torch.tensor([[0.5, 0.5, 1.0], [3.0, 9.0, 9.0]])     # per-token task rewards replace the score
    r = kl_shaped_token_rewards(scores, kl, m, kl_coef=0.0, token_scores=tok)
    assert r.tolist() == [[0.5, 0.5, 1.0], [3.0, 0.0, 0.0]]
    assert sequence_rewards(scores, kl, m, 0.5).tolist() == pytest.approx([2.0 - 0.3, -1.0 - 0.25])
    assert sequence_rewards(scores, kl, m, 0.0, token_scores=tok).tolist() == pytest.approx([2.0, 3.0])


# ------------------------------------------------------------------------------------------------ KL
def test_kl_estimators_hand_values():
    lp = torch.tensor([[L2, -L2, 0.0]])
    ref = torch.zeros(1, 3)
    assert per_token_kl("k1", lp, ref).tolist()[0] == pytest.approx([L2, -L2, 0.0])
    assert per_token_kl("k2", lp, ref).tolist()[0] == pytest.approx([0.5 * L2 ** 2, 0.5 * L2 ** 2, 0.0])
    # k3 = r - 1 - log r with r = pi_ref/pi: r = 1/2 -> 1/2 - 1 + log 2 ; r = 2 -> 2 - 1 - log 2
    assert per_token_kl("k3", lp, ref).tolist()[0] == pytest.approx([L2 - 0.5, 1 - L2, 0.0])
    assert per_token_kl("abs", lp, ref).tolist()[0] == pytest.approx([L2, L2, 0.0])
    with pytest.raises(ValueError, match="k1, k2, k3, abs, full"):
        per_token_kl("k4", lp, ref)
    with pytest.raises(ValueError, match="full"):
        per_token_kl("full", lp, ref)


def test_k1_can_be_negative_k2_k3_abs_never():
    torch.manual_seed(0)
    lr = torch.randn(1000) * 3
    assert (per_token_kl("k1", lr, torch.zeros_like(lr)) < 0).any()
    for est in ("k2", "k3", "abs"):
        assert (per_token_kl(est, lr, torch.zeros_like(lr)) >= 0).all()


def test_k1_and_k3_are_unbiased_and_full_is_exact():
    torch.manual_seed(0)
    logits, ref_logits = torch.randn(1, 1, 6), torch.randn(1, 1, 6)
    exact = full_kl_from_logits(logits, ref_logits).item()
    p, q = logits.softmax(-1)[0, 0], ref_logits.softmax(-1)[0, 0]
    assert exact == pytest.approx((p * (p.log() - q.log())).sum().item(), rel=1e-5)
    assert exact >= 0
    a = torch.multinomial(p, 200_000, replacement=True)
    lp, lq = p.log()[a], q.log()[a]
    for est in ("k1", "k3"):
        assert per_token_kl(est, lp, lq).mean().item() == pytest.approx(exact, abs=0.02)
    assert full_kl_from_logits(logits, logits).abs().max().item() < 1e-6


def test_adaptive_controller_direction_and_size():
    c = AdaptiveKLController(kl_coef=0.1, target=1.0, horizon=100)
    c.update(current_kl=2.0, n_steps=10)            # error clipped to +0.2 -> x (1 + 0.2 * 10 / 100)
    assert c.value == pytest.approx(0.1 * 1.02)
    c = AdaptiveKLController(kl_coef=0.1, target=1.0, horizon=100)
    c.update(current_kl=0.5, n_steps=10)            # error -0.5 clipped to -0.2
    assert c.value == pytest.approx(0.1 * 0.98)
    c = AdaptiveKLController(kl_coef=0.1, target=1.0, horizon=100)
    c.update(current_kl=1.1, n_steps=10)            # error 0.1 inside the clip
    assert c.value == pytest.approx(0.1 * 1.01)
    c.update(current_kl=1.0, n_steps=10)            # on target: unchanged
    assert c.value == pytest.approx(0.1 * 1.01)


def test_fixed_and_none_controllers_and_factory_errors():
    f = FixedKLController(0.05)
    f.update(100.0, 64)
    assert f.value == 0.05
    n = NoKLController()
    n.update(100.0, 64)
    assert n.value == 0.0
    assert isinstance(make_kl_controller("adaptive", 0.1, 6, 10000), AdaptiveKLController)
    with pytest.raises(ValueError, match="fixed, adaptive, none"):
        make_kl_controller("pid", 0.1)


# ------------------------------------------------------------------------------------------------ losses
def test_logprobs_and_entropy_from_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    labels = torch.randint(0, 5, (2, 3))
    expect = torch.log_softmax(logits, -1).gather(2, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logprobs_from_logits(logits, labels), expect, atol=1e-6)
    assert entropy_from_logits(torch.zeros(1, 1, 8)).item() == pytest.approx(math.log(8))
    peaked = torch.tensor([[[100.0, 0.0, 0.0]]])
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_clipped_policy_loss_both_sides():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    m = torch.ones(1, 4)
    new.requires_grad_(True)
    loss, stats = clipped_policy_loss(new, old, adv, m, clip_low=0.2)
    # per token: max(-A r, -A clip(r)) = [-1.2 (clipped), 1.5, -0.5, 0.8 (clipped)]
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    loss.backward()
    g = new.grad[0]
    assert g[0].item() == 0.0 and g[3].item() == 0.0          # clipped tokens give no gradient
    assert g[1].item() == pytest.approx(-(-1.0) * 1.5 / 4)    # d(-A r)/dlogp = -A r
    assert g[2].item() == pytest.approx(-(1.0) * 0.5 / 4)


def test_clipped_policy_loss_asymmetric_and_ratio_one():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.25, 1.25]]))
    adv = torch.ones(1, 2)
    loss_sym, s_sym = clipped_policy_loss(new, old, adv, torch.ones(1, 2), 0.2)
    loss_asym, s_asym = clipped_policy_loss(new, old, adv, torch.ones(1, 2), 0.2, clip_high=0.28)
    assert s_sym["clipfrac"].item() == 1.0 and loss_sym.item() == pytest.approx(-1.2)
    assert s_asym["clipfrac"].item() == 0.0 and loss_asym.item() == pytest.approx(-1.25)
    same = torch.randn(3, 4)
    _, s = clipped_policy_loss(same, same, torch.randn(3, 4), torch.ones(3, 4))
    assert s["ratio_mean"].item() == 1.0 and s["clipfrac"].item() == 0.0 and s["approx_kl"].item() == 0.0


def test_clipped_value_loss_hand_computed():
    v = torch.tensor([[1.0, 0.1]])
    old = torch.tensor([[0.0, 0.0]])
    ret = torch.tensor([[2.0, 0.0]])
    loss, stats = clipped_value_loss(v, old, ret, torch.ones(1, 2), clip=0.2)
    # token 0: (1-2)^2 = 1, clipped V = 0.2 -> (0.2-2)^2 = 3.24 -> 3.24; token 1: 0.01 both ways
    assert loss.item() == pytest.approx(0.5 * (3.24 + 0.01) / 2)
    assert stats["value_clipfrac"].item() == pytest.approx(0.5)
    plain, _ = clipped_value_loss(v, old, ret, torch.ones(1, 2), clip=None)
    assert plain.item() == pytest.approx(0.5 * (1.0 + 0.01) / 2)


def test_loss_aggregations_hand_computed():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate_loss(x, m, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate_loss(x, m, "seq-mean-token-mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate_loss(x, m, "seq-mean-token-sum").item() == pytest.approx((6.0 + 4.0) / 2)
    assert aggregate_loss(x, m, "seq-mean-token-sum-norm", normalizer=5).item() == pytest.approx(10 / (2 * 5))
    with pytest.raises(ValueError, match="token-mean"):
        aggregate_loss(x, m, "sum")
