"""The offline objectives' math against hand-computed values and known identities (rlhf_exp/core/preference.py,
core/losses.py:next_token_loss, objectives/sft.py:sft_collate)."""
import math

import pytest
import torch
import torch.nn.functional as F

from rlhf_exp.core.losses import IGNORE_INDEX, next_token_loss
from rlhf_exp.core.preference import (
    DPO_LOSS_TYPES, bradley_terry_loss, dpo_loss, implicit_reward_stats, kto_loss, kto_reference_point,
    pairwise_accuracy,
)
from rlhf_exp.objectives.sft import sft_collate

LOG2 = math.log(2.0)
SP1 = math.log1p(math.exp(-1.0))   # -log sigmoid(1) = 0.31326168751822286
SPm1 = math.log1p(math.exp(1.0))   # -log sigmoid(-1) = 1.3132616875182228


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ DPO family
@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 5.0])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_sigmoid_and_robust_equal_log2_at_equal_logratios(beta, eps):
    x = t(-3.0, 0.0, 2.5)
    for loss_type in ("sigmoid", "robust"):
        out = dpo_loss(x, x, beta, loss_type, eps)
        assert torch.allclose(out, torch.full_like(out, LOG2), atol=1e-12), loss_type


def test_sigmoid_hand_values():
    # beta * (1 - (-1)) = 1 with beta = 0.5
    assert dpo_loss(t(1.0), t(-1.0), 0.5, "sigmoid").item() == pytest.approx(SP1, abs=1e-12)
    # conservative DPO: 0.9 * -log s(1) + 0.1 * -log s(-1)
    assert dpo_loss(t(1.0), t(-1.0), 0.5, "sigmoid", 0.1).item() == pytest.approx(0.9 * SP1 + 0.1 * SPm1, abs=1e-12)
    # the gradient at h = 0 is -beta / 2 on the chosen log-ratio and +beta / 2 on the rejected one
    c, r = t(0.3).requires_grad_(), t(0.3).requires_grad_()
    dpo_loss(c, r, 0.2).sum().backward()
    assert c.grad.item() == pytest.approx(-0.1) and r.grad.item() == pytest.approx(0.1)


def test_ipo_target_is_one_over_two_beta():
    beta = 0.25                                     # target 1 / (2 beta) = 2
    assert dpo_loss(t(2.0), t(0.0), beta, "ipo").item() == pytest.approx(0.0)
    assert dpo_loss(t(0.0), t(0.0), beta, "ipo").item() == pytest.approx(4.0)
    assert dpo_loss(t(1.0), t(-2.0), beta, "ipo").item() == pytest.approx(1.0)   # h = 3
    # the minimum over h is at the target
    hs = torch.linspace(-1, 5, 601, dtype=torch.float64)
    losses = dpo_loss(hs, torch.zeros_like(hs), beta, "ipo")
    assert hs[losses.argmin()].item() == pytest.approx(2.0, abs=1e-9)


def test_hinge_hand_values():
    out = dpo_loss(t(1.0, 2.0, -2.0, 0.0), t(0.0, 0.0, 0.0, 0.0), 0.5, "hinge")
    assert torch.allclose(out, t(0.5, 0.0, 2.0, 1.0))


def test_robust_hand_value_and_unbiasedness():
    # eps = 0.1, beta h = 1: (0.9 * -log s(1) - 0.1 * -log s(-1)) / 0.8
    v = dpo_loss(t(1.0), t(-1.0), 0.5, "robust", 0.1).item()
    assert v == pytest.approx((0.9 * SP1 - 0.1 * SPm1) / 0.8, abs=1e-12)
    assert v == pytest.approx(0.18826168751822286, abs=1e-12)
    # eps = 0 is DPO
    assert dpo_loss(t(0.7), t(-0.4), 0.3, "robust", 0.0).item() == pytest.approx(dpo_loss(t(0.7), t(-0.4), 0.3).item())
    # unbiased: with labels flipped with probability eps, the expected robust loss is the clean DPO loss
    h, eps, beta = t(0.8, -1.5, 3.0), 0.3, 0.7
    zero = torch.zeros_like(h)
    expected = (1 - eps) * dpo_loss(h, zero, beta, "robust", eps) + eps * dpo_loss(zero, h, beta, "robust", eps)
    assert torch.allclose(expected, dpo_loss(h, zero, beta, "sigmoid"), atol=1e-12)


def test_dpo_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="sigmoid, ipo, hinge, robust"):
        dpo_loss(t(0.0), t(0.0), 0.1, "nope")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(t(0.0), t(0.0), 0.1, "robust", 0.5)
    assert set(DPO_LOSS_TYPES) == {"sigmoid", "ipo", "hinge", "robust"}


def test_implicit_reward_stats():
    s = implicit_reward_stats(t(1.0, -1.0, 0.5), t(0.0, 0.0, 0.5), beta=0.5)
    assert s["rewards/chosen"].item() == pytest.approx(0.5 * (1.0 - 1.0 + 0.5) / 3)
    assert s["rewards/rejected"].item() == pytest.approx(0.5 * 0.5 / 3)
    assert s["rewards/margin"].item() == pytest.approx(0.5 * (1.0 - 1.0 + 0.0) / 3)
    assert s["rewards/accuracy"].item() == pytest.approx((1 + 0 + 0.5) / 3)   # a tie counts half


# ------------------------------------------------------------------------------------------------ Bradley-Terry
def test_bradley_terry_loss_and_accuracy_on_a_toy_batch():
    c, r = t(2.0, 0.0, -1.0, 1.0), t(0.0, 0.0, 1.0, -1.0)
    # diffs 2, 0, -2, 2 -> mean(log(1 + e^-d))
    want = (math.log1p(math.exp(-2)) + LOG2 + math.log1p(math.exp(2)) + math.log1p(math.exp(-2))) / 4
    assert bradley_terry_loss(c, r).item() == pytest.approx(want, abs=1e-12)
    assert pairwise_accuracy(c, r).item() == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    # a margin asks for a larger gap: diffs 1, 0, -2, 1
    m = t(1.0, 0.0, 0.0, 1.0)
    want_m = (2 * SP1 + LOG2 + math.log1p(math.exp(2))) / 4
    assert bradley_terry_loss(c, r, m).item() == pytest.approx(want_m, abs=1e-12)
    # centring: + coef * mean((c + r)^2) = 0.01 * (4 + 0 + 0 + 0) / 4
    assert bradley_terry_loss(c, r, center_coef=0.01).item() == pytest.approx(want + 0.01, abs=1e-12)


def test_bradley_terry_is_shift_invariant_without_centring():
    c, r = t(0.3, 1.2), t(-0.4, 0.9)
    assert bradley_terry_loss(c + 5, r + 5).item() == pytest.approx(bradley_terry_loss(c, r).item(), abs=1e-12)
    assert bradley_terry_loss(c + 5, r + 5, center_coef=0.01).item() > bradley_terry_loss(c, r, center_coef=0.01).item()


# ------------------------------------------------------------------------------------------------ KTO
def test_kto_loss_hand_values():
    beta, z0 = 1.0, 0.5
    r = t(1.5, -0.5, 0.5)
    d = torch.tensor([True, False, True])
    s1 = 1 - 1 / (1 + math.exp(-1.0))     # 1 - sigmoid(1) = 0.2689414213699951
    out = kto_loss(r, d, z0, beta, desirable_weight=2.0, undesirable_weight=1.0)
    # desirable 1.5: 2 * (1 - s(1.5 - 0.5)); undesirable -0.5: 1 - s(0.5 + 0.5); desirable at z0: 2 * 0.5
    assert torch.allclose(out, t(2 * s1, s1, 1.0), atol=1e-12)
    # at r = z0 every example costs half its weight
    out = kto_loss(t(0.2, 0.2), torch.tensor([True, False]), 0.2, 0.3, 1.0, 3.0)
    assert torch.allclose(out, t(0.5, 1.5))


def test_kto_gradient_pushes_desirable_up_and_undesirable_down():
    r = t(0.0, 0.0).requires_grad_()
    kto_loss(r, torch.tensor([True, False]), 0.0, 0.5).sum().backward()
    assert r.grad[0] < 0 < r.grad[1]      # descent raises the desirable log-ratio and lowers the undesirable one
    assert r.grad[0].item() == pytest.approx(-0.5 * 0.25) and r.grad[1].item() == pytest.approx(0.5 * 0.25)


def test_kto_reference_point():
    assert kto_reference_point(t(0.4, 0.2)).item() == pytest.approx(0.3)
    assert kto_reference_point(t(0.2, -0.6)).item() == 0.0           # clipped at 0
    x = t(1.0).requires_grad_()
    assert not kto_reference_point(x).requires_grad                   # no gradient through z0
    # with a cross-process sum, the mean is over the global batch: here "another process" holds (0.9, 0.9, 0.9)
    other = torch.tensor([2.7, 3.0], dtype=torch.float64)
    assert kto_reference_point(t(0.1), reduce=lambda s: s + other).item() == pytest.approx(0.7)


# ------------------------------------------------------------------------------------------------ SFT
def test_sft_collate_masks_prompt_and_padding_and_keeps_eos():
    eos = 0
    ids, mask, labels = sft_collate([[5, 6], [7]], [[8, 9, eos], [10, eos]], pad_id=eos)
    assert ids.tolist() == [[5, 6, 8, 9, 0], [7, 10, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    X = IGNORE_INDEX
    assert labels.tolist() == [[X, X, 8, 9, 0], [X, 10, 0, X, X]]     # the EOS is a target once; padding never


def test_next_token_loss_takes_only_completion_tokens():
    torch.manual_seed(0)
    V = 5
    ids, mask, labels = sft_collate([[1, 2, 3]], [[4, 0]], pad_id=0)            # L = 5: prompt 1 2 3, completion 4 EOS
    logits = torch.randn(1, ids.shape[1] - 1, V, dtype=torch.float64, requires_grad=True)
    loss = next_token_loss(logits, labels)
    # hand: positions 2 and 3 predict the completion tokens 4 and 0
    lp = F.log_softmax(logits.detach(), -1)
    assert loss.item() == pytest.approx(-(lp[0, 2, 4] + lp[0, 3, 0]).item() / 2, abs=1e-12)
    loss.backward()
    assert torch.all(logits.grad[0, :2] == 0)                                 # prompt positions take no gradient
    assert torch.all(logits.grad[0, 2:].abs().sum(-1) > 0)
    # uniform logits: the loss is log V whatever the tokens
    assert next_token_loss(torch.zeros(1, 4, V), labels).item() == pytest.approx(math.log(V))


def test_next_token_loss_equals_the_build_scripts_original_formula():
    """The embedded policy was built with ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100) as targets (no prompt)."""
    torch.manual_seed(1)
    seqs = [[3, 4, 5, 0], [6, 7, 0]]
    ids, mask, labels = sft_collate([[], []], seqs, pad_id=0)
    logits = torch.randn(2, ids.shape[1], 9)[:, :-1]
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    old = F.cross_entropy(logits.reshape(-1, 9), target.reshape(-1), ignore_index=-100)
    assert torch.equal(next_token_loss(logits, labels), old)
