"""What an online objective is: advantages from a scored rollout, and a loss on a minibatch.

The online loop (``rlhf_exp.train.online``) is the same for every objective: sample prompts, generate, score,
compute log-probs of the policy and the reference, then ask the objective for advantages and run K epochs of
minibatch updates on the objective's loss. Switching ``objective=`` changes only the methods below.

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
baseline_scores (B,)     the task reward of the greedy response to the same prompt (objectives with
                         ``needs_greedy_baseline``, e.g. ReMax), preprocessed like ``scores``
tis_weight     (B, T)    truncated importance weights ``min(pi_old / pi_sampler, C)`` of a separate sampler
                         (``generation.vllm.importance_correction``): they scale each token's policy term
============== ========= =================================================================

``compute_advantages`` adds ``advantages`` (and ``returns`` for a critic); ``loss`` sees minibatches of that dict.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from rlhf_exp.core.advantages import sequence_rewards
from rlhf_exp.core.kl import check_estimator, per_token_kl
from rlhf_exp.core.losses import aggregate_loss, importance_ratio
from rlhf_exp.core.masked import Reduce, masked_mean
from rlhf_exp.core.state import check_keys
from rlhf_exp.modeling import ResponseOutput

Batch = dict[str, torch.Tensor]
Stats = dict[str, torch.Tensor | float]


class OnlineObjective:
    """Base class of the online objectives.

    Subclasses set the class attributes and implement :meth:`compute_advantages` and :meth:`policy_loss`. The KL
    term (when ``kl_in_reward`` is false) and the entropy bonus are added here, the same way for every objective.
    """

    name = "base"
    needs_value = False          # a value head is trained beside the policy
    default_kl_in_reward = True  # where the KL penalty goes unless kl.in_reward says otherwise
    default_kl_estimator = "k1"
    needs_greedy_baseline = False  # the loop adds ``baseline_scores``: the reward of a greedy response per prompt
    # the policy term is a sum of per-token terms ``-A_t * f(ratio_t)`` (advantages (B,) broadcast to tokens, or
    # (B, T)), so a per-token importance weight scales it by scaling the advantages; False for sequence ratios
    token_level_policy_loss = True

    def __init__(self, cfg: Mapping[str, Any], kl_cfg: Mapping[str, Any], max_new_tokens: Optional[int] = None):
        self.cfg = cfg
        # Dr. GRPO's constant loss normaliser: the longest possible response.
        self.max_new_tokens = max_new_tokens
        in_reward = kl_cfg.get("in_reward")
        self.kl_in_reward = self.default_kl_in_reward if in_reward is None else bool(in_reward)
        self.kl_estimator = check_estimator(kl_cfg.get("estimator") or self.default_kl_estimator)
        self.entropy_coef = float(cfg.get("entropy_coef", 0.0))
        self.group_size = int(cfg.get("group_size", 1))
        self.loss_aggregation = str(cfg.get("loss_aggregation", "token-mean"))
        if self.group_size < 1:
            raise ValueError(f"objective.group_size must be >= 1, got {self.group_size}.")
        # dual-clip PPO's bound for negative advantages (objectives with a token-level clipped surrogate)
        c = cfg.get("clip_ratio_c")
        self.clip_ratio_c = None if c is None else float(c)
        if self.clip_ratio_c is not None and not self.clip_ratio_c > 1.0:
            raise ValueError(f"objective.clip_ratio_c={self.clip_ratio_c} must be > 1 (verl uses 3.0), or null.")
        # TRL GRPOConfig.use_bias_correction_kl (its default since 1.x): the KL term in the loss times pi/pi_old
        self.kl_bias_correction = bool(cfg.get("kl_bias_correction", False))
        # TRL GRPOConfig.mask_truncated_completions: responses cut at their length limit (no EOS) take no loss
        self.mask_truncated = bool(cfg.get("mask_truncated_completions", False))
        ds = cfg.get("dynamic_sampling") or {}
        self.dynamic_sampling = bool(ds.get("enable", False))
        self.dynamic_sampling_max_tries = int(ds.get("max_tries", 4))
        if self.dynamic_sampling and self.group_size < 2:
            raise ValueError("objective.dynamic_sampling.enable=true needs objective.group_size >= 2: it drops the "
                             "groups of completions of one prompt whose rewards are all equal.")
        if self.dynamic_sampling_max_tries < 1:
            raise ValueError(f"objective.dynamic_sampling.max_tries={self.dynamic_sampling_max_tries} must be >= 1.")

    # ------------------------------------------------------------------ to implement
    def compute_advantages(self, batch: Batch, kl_coef: float, reduce: Reduce = None) -> Stats:
        """Add ``advantages`` (and anything else the loss needs) to ``batch`` in place; return stats to log."""
        raise NotImplementedError

    def policy_loss(self, out: ResponseOutput, mb: Batch) -> tuple[torch.Tensor, Stats]:
        """The objective's own loss on a minibatch (policy term, plus value term for a critic).

        Stats should include ``loss/policy`` (and ``loss/value`` for a critic), detached.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        """What the objective learns across steps (a moving-average baseline); nothing by default."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        check_keys(state, self.state_dict(), f"objective={self.name}")

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

    @property
    def needs_entropy_grad(self) -> bool:
        return self.entropy_coef != 0.0

    @property
    def needs_full_logits(self) -> bool:
        """The ``full`` estimator in the loss needs the policy's logits over the vocabulary in the update."""
        return self.kl_estimator == "full" and not self.kl_in_reward

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
        stats = dict(stats)
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
