"""What an online objective is: a composition of an advantage estimator, a policy loss and rollout hooks.

The online loop (``rlhf_exp.train.online``) is the same for every objective: sample prompts, generate, score,
compute log-probs of the policy and the reference, then ask the objective for advantages and run K epochs of
minibatch updates on the objective's loss. An objective is its yaml (``conf/objective/<name>.yaml``): the advantage
estimator it names (``estimator:``, the registry :data:`rlhf_exp.core.advantages.ADV_ESTIMATORS`), the policy loss
(``policy_loss:``, :data:`rlhf_exp.core.losses.POLICY_LOSSES`), its rollout hooks (``rollout_hooks:``,
:mod:`rlhf_exp.objectives.hooks`) and the values of every parameter they declare. :class:`OnlineObjective` puts them
together and adds what every objective shares: the KL term (in the reward or in the loss), the entropy bonus, masking
of truncated responses and the sampler's importance weights. docs/objectives.md.

A rollout batch is a ``dict[str, Tensor]`` with leading dimension ``B`` (sequences):

============== ========= =================================================================
key            shape     meaning
============== ========= =================================================================
prompt_ids     (B, P)    left-padded prompt tokens
prompt_mask    (B, P)    1 on real prompt tokens
response_ids   (B, T)    right-padded sampled response tokens (EOS included once)
response_mask  (B, T)    1 on real response tokens
old_logprobs   (B, T)    log-probs under the policy that sampled (temperature applied)
ref_logprobs   (B, T)    log-probs under the frozen reference
kl             (B, T)    per-token KL estimate with ``kl.estimator`` (sampling policy vs reference)
scores         (B,)      the task reward after the loop's preprocessing (scale/clip/normalise)
token_scores   (B, T)    per-token task rewards (only when the reward model gives them)
old_values     (B, T)    value estimates at rollout time (objectives with a critic)
group_ids      (B,)      index of the prompt group (``G`` completions of one prompt share it)
ends_with_eos  (B,)      1 where the response ended with EOS, 0 where it was cut at its length limit
baseline_scores (B,)     the task reward of the greedy response to the same prompt (the ``greedy_baseline``
                         rollout hook, ReMax), preprocessed like ``scores``
tis_weight     (B, T)    truncated importance weights ``min(pi_old / pi_sampler, C)`` of a separate sampler
                         (``generation.vllm.importance_correction``): they scale each token's policy term
============== ========= =================================================================

``compute_advantages`` adds ``advantages`` (and the targets of a critic: ``returns``, ``seq_returns``); ``loss`` sees
minibatches of that dict.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from rlhf_exp.core.advantages import ADV_ESTIMATORS, sequence_rewards
from rlhf_exp.core.kl import check_estimator, per_token_kl
from rlhf_exp.core.losses import POLICY_LOSSES, aggregate_loss, importance_ratio
from rlhf_exp.core.masked import Reduce, masked_mean
from rlhf_exp.core.registry import read_params
from rlhf_exp.core.state import check_keys
from rlhf_exp.modeling import ResponseOutput
from rlhf_exp.objectives.hooks import Rollout, RolloutContext, build_hook
from rlhf_exp.objectives.validation import validate_online

Batch = dict[str, torch.Tensor]
Stats = dict[str, torch.Tensor | float]


class OnlineObjective:
    """An online objective built from its config block (``cfg``: ``conf/objective/<name>.yaml`` as composed; checked
    first with :func:`~rlhf_exp.objectives.validation.validate_online`), the ``kl`` block (``kl.in_reward``,
    ``kl.estimator``: null = the objective's ``kl_in_reward``, ``kl_estimator``) and ``generation.max_new_tokens``
    (Dr. GRPO's constant normaliser). See the module docstring."""

    def __init__(self, cfg: Mapping[str, Any], kl_cfg: Mapping[str, Any], max_new_tokens: Optional[int] = None):
        validate_online(cfg)
        self.cfg = cfg
        self.name = str(cfg["name"])
        self.estimator = ADV_ESTIMATORS[cfg["estimator"]]
        self.policy_loss_fn = POLICY_LOSSES[cfg["policy_loss"]]
        self.estimator_params = read_params(self.estimator.params, cfg)
        self.loss_params = read_params(self.policy_loss_fn.params, cfg)
        # Dr. GRPO's constant loss normaliser: the longest possible response.
        self.max_new_tokens = max_new_tokens
        in_reward = kl_cfg["in_reward"]
        self.kl_in_reward = bool(cfg["kl_in_reward"]) if in_reward is None else bool(in_reward)
        self.kl_estimator = check_estimator(kl_cfg["estimator"] or cfg["kl_estimator"])
        self.entropy_coef = float(cfg["entropy_coef"])
        self.group_size = int(cfg["group_size"])
        self.loss_aggregation = str(cfg["loss_aggregation"])
        # TRL GRPOConfig.use_bias_correction_kl (its default since 1.x): the KL term in the loss times pi/pi_old
        self.kl_bias_correction = bool(cfg["kl_bias_correction"])
        # TRL GRPOConfig.mask_truncated_completions: responses cut at their length limit (no EOS) take no loss
        self.mask_truncated = bool(cfg["mask_truncated_completions"])
        self.hooks = [build_hook(name, cfg, self.group_size) for name in cfg["rollout_hooks"]]
        make_state = self.estimator.make_state
        self.estimator_state = make_state(self.estimator_params) if make_state is not None else None

    # ------------------------------------------------------------------ what the loop asks
    @property
    def needs_value(self) -> bool:
        """A value head is trained beside the policy (the estimator reads ``old_values``)."""
        return bool(self.estimator.needs_value(self.estimator_params))

    @property
    def token_level_policy_loss(self) -> bool:
        """The policy term is a sum of per-token terms ``-A_t * f(ratio_t)`` (advantages (B,) broadcast to tokens, or
        (B, T)), so a per-token importance weight scales it by scaling the advantages; False for sequence ratios."""
        return bool(self.policy_loss_fn.token_level(self.loss_params, self.estimator.level == "token"))

    @property
    def needs_policy_scored_rollout(self) -> bool:
        """A rollout hook needs the rollout's old log-probs before the update (they cannot come from the update's
        own forward: rlhf_exp.train.batching)."""
        return any(h.active and h.needs_policy_scores for h in self.hooks)

    @property
    def needs_entropy_grad(self) -> bool:
        return self.entropy_coef != 0.0

    @property
    def needs_full_logits(self) -> bool:
        """The ``full`` estimator in the loss needs the policy's logits over the vocabulary in the update."""
        return self.kl_estimator == "full" and not self.kl_in_reward

    # ------------------------------------------------------------------ the rollout
    def collect(self, ctx: RolloutContext, prompts: list, lengths: torch.Tensor) -> Rollout:
        """The step's rollout: the first active hook that gathers it (DAPO's dynamic sampling), else the plain one."""
        for hook in self.hooks:
            if hook.active:
                got = hook.collect(ctx, prompts, lengths)
                if got is not None:
                    return got
        batch, info = ctx.rollout(prompts, lengths)
        return Rollout(prompts, lengths, batch, info)

    def complete(self, ctx: RolloutContext, rollout: Rollout) -> dict[str, float]:
        """After the rewards are preprocessed: what the hooks add to the batch (ReMax's greedy baseline); their stats."""
        stats: dict[str, float] = {}
        for hook in self.hooks:
            if hook.active:
                stats.update(hook.complete(ctx, rollout))
        return stats

    # ------------------------------------------------------------------ advantages
    def compute_advantages(self, batch: Batch, kl_coef: float, reduce: Reduce = None) -> Stats:
        """Add ``advantages`` (and the critic's targets) to ``batch`` in place; return stats to log. A sequence-level
        estimator's advantages are broadcast to the response tokens for a loss that takes per-token advantages."""
        for key in self.estimator.requires:
            if key not in batch:
                raise KeyError(f"objective={self.name} (estimator {self.estimator.name}) needs batch[{key!r}], added "
                               f"by a rollout hook (objective.rollout_hooks).")
        out, stats = self.estimator.fn(batch, self.kl_in_reward_coef(kl_coef), self.group_size,
                                       self.estimator_params, reduce, self.estimator_state)
        if self.estimator.level == "sequence" and self.policy_loss_fn.advantages == "token":
            out["advantages"] = out["advantages"].unsqueeze(1) * batch["response_mask"]
        batch.update(out)
        return stats

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        """What the objective learns across steps: its estimator's state (a moving-average baseline), if any."""
        return {} if self.estimator_state is None else {"estimator": self.estimator_state.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        check_keys(state, self.state_dict(), f"objective={self.name}")
        if self.estimator_state is not None:
            self.estimator_state.load_state_dict(state["estimator"])

    # ------------------------------------------------------------------ shared
    def kl_in_reward_coef(self, kl_coef: float) -> float:
        """The coefficient applied inside the reward: ``kl_coef`` when the KL is in the reward, else 0."""
        return kl_coef if self.kl_in_reward else 0.0

    def sequence_rewards(self, batch: Batch, kl_coef: float) -> torch.Tensor:
        """``(B,)`` task reward minus ``kl_coef * sum_t kl_t`` when the KL is in the reward."""
        return sequence_rewards(batch["scores"], batch["kl"], batch["response_mask"], self.kl_in_reward_coef(kl_coef),
                                batch.get("token_scores"))

    def aggregate(self, loss_mat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return aggregate_loss(loss_mat, mask, self.loss_aggregation, self.max_new_tokens or mask.shape[1])

    @staticmethod
    def exclude_truncated(mb: Batch) -> Batch:
        """``mask_truncated_completions``: a copy of the minibatch in which responses that did not end with EOS
        (cut at their length limit) have an all-zero ``response_mask`` and zero ``advantages``, so that no term of
        the loss (policy, KL, entropy, value) sees them. As in TRL's GRPOTrainer they still count in the number of
        sequences a ``seq-mean-*`` aggregation divides by, and their rewards still entered the advantages of the
        others (group means, whitening) before this.

        ``mb["ends_with_eos"]``: ``(b,)`` 0/1, set by the loop.
        """
        if "ends_with_eos" not in mb:
            raise KeyError("objective.mask_truncated_completions=true needs the batch's 'ends_with_eos' (b,) flags.")
        keep = mb["ends_with_eos"].to(mb["response_mask"].dtype)
        out = dict(mb)
        out["response_mask"] = mb["response_mask"] * keep.unsqueeze(1)
        if "advantages" in mb:
            adv = mb["advantages"]
            out["advantages"] = adv * (keep if adv.dim() == 1 else keep.unsqueeze(1)).to(adv.dtype)
        return out

    def importance_corrected(self, mb: Batch) -> Batch:
        """Truncated importance sampling (``generation.vllm.importance_correction``): a copy of the minibatch whose
        ``advantages`` are multiplied per token by ``mb["tis_weight"]`` ``(b, T)`` (sequence advantages ``(b,)`` are
        broadcast to their tokens first). For a per-token clipped surrogate ``max(-A r, -A clip(r))`` (and its dual
        clip) a non-negative weight ``w`` gives ``w * max(...)``: verl's and TRL's ``pg_loss * tis_weight``. Only the
        policy term sees it (the KL, entropy and value terms do not use ``advantages``)."""
        if not self.token_level_policy_loss:
            raise ValueError(f"generation.vllm.importance_correction=true weights per-token policy terms; "
                             f"objective={self.name} here uses a sequence-level ratio. Set "
                             f"generation.vllm.importance_correction=false.")
        w = mb["tis_weight"]
        adv = mb["advantages"]
        out = dict(mb)
        out["advantages"] = (adv.unsqueeze(1) if adv.dim() == 1 else adv) * w.to(adv.dtype)
        return out

    def policy_loss(self, out: ResponseOutput, mb: Batch) -> tuple[torch.Tensor, Stats]:
        """The policy loss on a minibatch, plus ``vf_coef`` times the critic's loss when the estimator trains one.
        Stats: the loss's own, ``loss/policy`` (and ``loss/value``), detached."""
        pg, pstats = self.policy_loss_fn.fn(out.logprobs, mb["old_logprobs"], mb["advantages"], mb["response_mask"],
                                            self.loss_params, self.loss_aggregation, self.max_new_tokens)
        stats: Stats = dict(pstats)
        if not self.needs_value:
            stats["loss/policy"] = pg.detach()
            return pg, stats
        vf, vstats = self.estimator.value_loss(out.values, mb, self.estimator_params)
        stats.update(vstats)
        stats["loss/policy"], stats["loss/value"] = pg.detach(), vf.detach()
        return pg + self.estimator_params.vf_coef * vf, stats

    def loss(self, out: ResponseOutput, mb: Batch, kl_coef: float,
             ref_full_kl: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Stats]:
        """Total loss = objective loss (+ ``kl_coef`` * KL term when KL is in the loss) - ``entropy_coef`` * entropy.

        With ``kl_bias_correction`` (TRL's ``use_bias_correction_kl``, DeepSeek-V3.2) the per-token KL term is
        multiplied by the (differentiable) ratio ``pi / pi_old``, so that samples from the sampling policy estimate
        the current policy's KL; this changes the gradient even where the ratio is 1.

        Args:
            out: the policy's forward pass on the minibatch.
            mb: the minibatch (see the module docstring).
            kl_coef: the controller's current coefficient.
            ref_full_kl: ``(b, T)`` exact per-token KL to the reference (only for ``kl.estimator=full`` in the loss).
        """
        if self.mask_truncated:
            mb = self.exclude_truncated(mb)
        if "tis_weight" in mb:
            mb = self.importance_corrected(mb)
        mask = mb["response_mask"]
        loss, stats = self.policy_loss(out, mb)
        if not self.kl_in_reward and kl_coef != 0.0:
            kl_tok = per_token_kl(self.kl_estimator, out.logprobs, mb["ref_logprobs"], ref_full_kl)
            if self.kl_bias_correction:
                kl_tok = kl_tok * importance_ratio(out.logprobs, mb["old_logprobs"], mask)
            kl_loss = self.aggregate(kl_tok, mask)
            loss = loss + kl_coef * kl_loss
            stats["loss/kl"] = kl_loss.detach()
        if self.entropy_coef != 0.0:
            if out.entropy is None:
                raise RuntimeError("objective.entropy_coef is set but the forward pass returned no entropy.")
            ent = masked_mean(out.entropy, mask)
            loss = loss - self.entropy_coef * ent
            stats["loss/entropy"] = ent.detach()
        stats["loss/total"] = loss.detach()
        return loss, stats
