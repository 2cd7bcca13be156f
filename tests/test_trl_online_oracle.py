"""Our online objectives against TRL's trainers on the same batch (TRL as an oracle).

TRL generates and scores the batch (``_generate_and_score_completions``: its completion masks, its group
advantages, its reference log-probs); we recompute everything from the same token ids with our code (our
rewards on the decoded completions, our advantages, our log-probs of the old, current and reference policies,
our loss) and compare advantages, loss and the gradient on every parameter. The current policy differs from the
one that sampled (so ratios are not 1 and clipping is exercised) and from the reference (so the KL is not 0).

Tolerances: float32 on CPU; advantages to 1e-5, loss to rel 1e-5, each gradient to 1e-5 of the largest gradient
entry (the two sides compute the same sums in a different order; left- vs right-padding of the prompt is handled by
the position ids on both sides).
"""
import copy

import pytest
import torch

trl = pytest.importorskip("trl")
if int(trl.__version__.split(".")[0]) < 1:  # pragma: no cover
    pytest.skip("TRL < 1.0: a different trainer API", allow_module_level=True)

from datasets import Dataset  # noqa: E402

from rlhf_exp.modeling import PolicyModel, load_causal_lm, load_tokenizer, score_responses  # noqa: E402
from rlhf_exp.task import POLICY_DIR  # noqa: E402
from tests.conftest import objective_from_yaml  # noqa: E402

G, N_PROMPTS, T_MAX = 4, 2, 6
PROMPTS = ["the film was", "this movie is"]


def count_e(completions, **kwargs):
    """A deterministic reward on the text, varied enough that groups have spread."""
    return [float(c.count("e")) - 0.5 * c.count(" ") for c in completions]


def _perturbed(model, scale, seed):
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return m.eval()


@pytest.fixture(scope="module")
def models():
    tok = load_tokenizer(str(POLICY_DIR))
    ref = load_causal_lm(str(POLICY_DIR)).eval()
    old = _perturbed(ref, 0.02, 0)      # the policy that sampled
    new = _perturbed(old, 0.01, 1)      # the policy being optimised (a few updates later)
    return tok, ref, old, new


def _args(cls, tmp_path, **kw):
    return cls(output_dir=str(tmp_path), per_device_train_batch_size=G * N_PROMPTS, num_generations=G,
               max_completion_length=T_MAX, bf16=False, gradient_checkpointing=False, report_to=[], use_cpu=True,
               save_strategy="no", seed=0, **kw)


def _trl_batch(trainer, old):
    """TRL's generated and scored batch, sampled from ``old``; the trainer's model is ``old`` on return."""
    trainer.model.load_state_dict(old.state_dict())
    trainer.model.eval()
    torch.manual_seed(0)
    rows = [{"prompt": p} for p in PROMPTS for _ in range(G)]
    return trainer._generate_and_score_completions(rows)


def _grads(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def _ours(tok, ref, old, new, batch, objective, kl_coef, **settings):
    """Our objective (``objective=<objective>`` with ``settings``) on TRL's token ids: (advantages, loss, flat
    gradient)."""
    pids, pmask = batch["prompt_ids"], batch["prompt_mask"]
    rids, rmask = batch["completion_ids"], batch["completion_mask"]
    texts = tok.batch_decode(rids * rmask + tok.pad_token_id * (1 - rmask), skip_special_tokens=True)
    obj = objective_from_yaml(objective, max_new_tokens=T_MAX, **settings)
    with torch.no_grad():
        old_lp = score_responses(PolicyModel(old), pids, pmask, rids, rmask).logprobs
        ref_lp = score_responses(PolicyModel(ref), pids, pmask, rids, rmask).logprobs
    ours = {"prompt_ids": pids, "prompt_mask": pmask, "response_ids": rids, "response_mask": rmask,
            "old_logprobs": old_lp, "ref_logprobs": ref_lp, "kl": (old_lp - ref_lp) * rmask,
            "scores": torch.tensor(count_e(texts))}
    obj.compute_advantages(ours, kl_coef)
    model = copy.deepcopy(new)
    out = score_responses(PolicyModel(model), pids, pmask, rids, rmask)
    loss, _ = obj.loss(out, ours, kl_coef)
    loss.backward()
    return ours["advantages"], float(loss), _grads(model)


def _assert_grads_close(ours, theirs):
    scale = theirs.abs().max()
    assert scale > 0
    assert (ours - theirs).abs().max() <= 1e-5 * scale, float((ours - theirs).abs().max() / scale)


@pytest.mark.parametrize("beta,bias_correction", [(0.0, False), (0.1, False), (0.1, True)])
@pytest.mark.parametrize("loss_type,aggregation", [("grpo", "seq-mean-token-mean"), ("dr_grpo", "seq-mean-token-sum-norm"),
                                                   ("dapo", "token-mean")])
def test_grpo_matches_trl_grpo_trainer(models, tmp_path, loss_type, aggregation, beta, bias_correction):
    """objective=grpo with loss_aggregation = TRL's loss_type (grpo: per-sequence token mean; dr_grpo: the constant
    max_completion_length normaliser; dapo: token mean over the batch) and kl.estimator k3 in the loss with
    kl_coef = TRL's beta (TRL's per-token KL is k3, aggregated like the policy term), with and without TRL's
    use_bias_correction_kl (our objective.kl_bias_correction: the KL term times pi/pi_old)."""
    from trl import GRPOConfig, GRPOTrainer

    tok, ref, old, new = models
    trainer = GRPOTrainer(model=copy.deepcopy(old), reward_funcs=[count_e], processing_class=tok,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]),
                          args=_args(GRPOConfig, tmp_path, beta=beta, loss_type=loss_type, epsilon=0.2,
                                     use_bias_correction_kl=bias_correction))
    if trainer.ref_model is not None:
        trainer.ref_model.load_state_dict(ref.state_dict())
    batch = _trl_batch(trainer, old)
    assert batch["completion_mask"].sum() > 0
    # the ratio pi_new / pi_old: TRL's old log-probs of the sampling policy, then the current policy's weights
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    att = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        batch["old_per_token_logps"] = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, att, batch["completion_ids"].shape[1])[0]
        if beta:
            batch["ref_per_token_logps"] = trainer._get_per_token_logps_and_entropies(
                trainer.ref_model, ids, att, batch["completion_ids"].shape[1])[0]
    trainer.model.load_state_dict(new.state_dict())
    trainer.model.eval()
    trainer.model.zero_grad()
    theirs = trainer._compute_loss(trainer.model, batch)
    theirs.backward()

    adv, loss, grads = _ours(tok, ref, old, new, batch, "grpo", beta, group_size=G, scale_rewards="group",
                             clip_low=0.2, loss_aggregation=aggregation, kl_bias_correction=bias_correction)
    assert torch.allclose(adv[:, 0] * (batch["completion_mask"][:, 0] > 0), batch["advantages"], atol=1e-5)
    assert loss == pytest.approx(float(theirs), rel=1e-5, abs=1e-7)
    _assert_grads_close(grads, _grads(trainer.model))


def test_rloo_matches_trl_rloo_trainer(models, tmp_path):
    """objective=rloo against TRL's RLOOTrainer (beta = our kl_coef, k1 summed over the sequence in the reward):
    the leave-one-out advantages agree, and so does the gradient of the on-policy update (current policy = the one
    that sampled). The loss *values* differ by design: TRL's per-sequence surrogate is ``-A * pi/pi_old`` (1 at
    ratio 1), ours the sum over the response's tokens of the token surrogate (``-A * len`` at ratio 1); their
    gradients are both ``-A * grad log pi(y|x)``. Off-policy (ratio != 1) they differ too: TRL clips the sequence
    ratio, we clip each token's ratio."""
    from trl import RLOOConfig, RLOOTrainer

    tok, ref, old, _ = models
    beta = 0.1
    trainer = RLOOTrainer(model=copy.deepcopy(old), reward_funcs=[count_e], processing_class=tok,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]),
                          args=_args(RLOOConfig, tmp_path, beta=beta))
    trainer.ref_model.load_state_dict(ref.state_dict())
    batch = _trl_batch(trainer, old)
    trainer.model.zero_grad()
    theirs = trainer._compute_loss(trainer.model, batch)
    theirs.backward()
    adv, loss, grads = _ours(tok, ref, old, old, batch, "rloo", beta, group_size=G,
                             loss_aggregation="seq-mean-token-sum")
    assert torch.allclose(adv[:, 0] * (batch["completion_mask"][:, 0] > 0), batch["advantages"], atol=1e-5)
    lengths = batch["completion_mask"].sum(1).float()
    assert float(theirs) == pytest.approx(float(-batch["advantages"].mean()), abs=1e-6)
    assert loss == pytest.approx(float(-(batch["advantages"] * lengths).mean()), rel=1e-5, abs=1e-6)
    _assert_grads_close(grads, _grads(trainer.model))


def test_rloo_seq_matches_trl_rloo_trainer_off_policy(models, tmp_path):
    """objective=rloo_seq, the yaml-only composition leave_one_out + clipped_sequence, is TRL's RLOOTrainer: the
    leave-one-out advantages, the loss value (the clipped surrogate on the sequence ratio, mean over sequences) and
    the gradient agree with the current policy moved away from the one that sampled (ratios != 1)."""
    from trl import RLOOConfig, RLOOTrainer

    tok, ref, old, new = models
    beta = 0.1
    trainer = RLOOTrainer(model=copy.deepcopy(old), reward_funcs=[count_e], processing_class=tok,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]),
                          args=_args(RLOOConfig, tmp_path, beta=beta, epsilon=0.2))
    trainer.ref_model.load_state_dict(ref.state_dict())
    batch = _trl_batch(trainer, old)               # old_logps: the sampling policy's
    trainer.model.load_state_dict(new.state_dict())
    trainer.model.eval()
    trainer.model.zero_grad()
    theirs = trainer._compute_loss(trainer.model, batch)
    theirs.backward()
    adv, loss, grads = _ours(tok, ref, old, new, batch, "rloo_seq", beta, group_size=G)
    assert adv.dim() == 1 and torch.allclose(adv, batch["advantages"], atol=1e-5)
    assert loss == pytest.approx(float(theirs), rel=1e-5, abs=1e-7)
    _assert_grads_close(grads, _grads(trainer.model))
