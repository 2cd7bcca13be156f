"""The held-out policy evaluation shared by the online and the offline loop, and the final line of a run.

:class:`Evaluator` measures reward and exact KL to the reference on the fixed held-out prompts, with the same random
draws at every evaluation. Because PPO and DPO runs are evaluated by this same code, their ``eval/reward_mean`` and
``eval/kl`` land on one reward-vs-KL plot. :func:`completion_monitors` are the reward-hacking monitors of a batch
(train and eval alike).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

import torch

from rlhf_exp.data import Prompt
from rlhf_exp.distributed import even_chunks, mean_over_ranks
from rlhf_exp.metrics import text_monitors
from rlhf_exp.rollout import SamplingSettings
from rlhf_exp.train.context import ProcessContext
from rlhf_exp.train.rollouts import PolicyRollouts


def completion_monitors(proc: ProcessContext, prefix: str, completions: Sequence[str],
                        eos_ended: torch.Tensor) -> dict[str, float]:
    """Reward-hacking monitors of a batch (see :mod:`rlhf_exp.metrics`), for train and eval alike.

    ``distinct_1``, ``distinct_2``, ``repetition_rate`` (over the completions of all processes) and
    ``truncated_frac``, the share of responses cut at their length limit (not ending with EOS).
    """
    if proc.world > 1:  # the text statistics over the global batch: the same value on every rank
        from accelerate.utils import gather_object

        completions = gather_object(list(completions))
    m = {f"{prefix}/{k}": v for k, v in text_monitors(completions).items()}
    m[f"{prefix}/truncated_frac"] = 1.0 - proc.global_mean(eos_ended.float())
    return m


class Evaluator:
    """Reward and KL to the reference on the fixed held-out ``prompts``, with the same random draws at every
    evaluation (``eval.seed``; each prompt's response length fixed in ``lengths``).

    Needs: the ``rollouts`` (:class:`~rlhf_exp.train.rollouts.PolicyRollouts` of the policy under evaluation), the
    held-out ``prompts`` and their ``lengths``, the evaluation ``sampling`` settings, the ``eval`` config block
    (``seed``, ``batch_size``, ``num_samples_to_log``), the ``tracker`` (samples go to ``samples.jsonl``) and the
    process context. Every process evaluates its strided share of the prompts; the metrics are reduced over all.
    """

    def __init__(self, rollouts: PolicyRollouts, prompts: Sequence[Prompt], lengths: torch.Tensor,
                 sampling: SamplingSettings, eval_cfg, tracker, proc: ProcessContext):
        self.rollouts, self.prompts, self.lengths, self.sampling = rollouts, list(prompts), lengths, sampling
        self.seed, self.batch_size = int(eval_cfg.seed), int(eval_cfg.batch_size)
        self.num_samples_to_log = int(eval_cfg.num_samples_to_log)
        self.tracker, self.proc = tracker, proc

    @torch.no_grad()
    def __call__(self, step: int) -> dict[str, float]:
        proc = self.proc
        self.rollouts.sync(step)
        prompts = self.prompts[proc.rank::proc.world]
        lengths = self.lengths[proc.rank::proc.world]
        scores, kls, kls_k1, lens, completions, prompt_texts, eos_ended = [], [], [], [], [], [], []
        extras: dict[str, list[torch.Tensor]] = defaultdict(list)
        devices = [proc.device] if proc.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + proc.rank)
            # the same number of chunks on every rank, whatever the remainder (sharded engines gather per forward)
            for s, e in even_chunks(len(prompts), len(self.prompts), proc.world, self.batch_size):
                batch, info = self.rollouts.collect(prompts[s:e], lengths[s:e], self.sampling, entropy=False)
                fmask = batch["response_mask"].float()
                full = self.rollouts.scorer.full_kl(batch, self.sampling.temperature)
                kls.append((full * fmask).sum(1))
                kls_k1.append(((batch["old_logprobs"] - batch["ref_logprobs"]) * fmask).sum(1))
                scores.append(batch["raw_scores"])
                lens.append(fmask.sum(1))
                for k, v in info["extras"].items():
                    extras[k].append(v.to(proc.device))
                completions += info["completions"]
                eos_ended.append(info["ends_with_eos"])
                prompt_texts += info["prompts"]
        cat = torch.cat
        m = {
            "eval/reward_mean": proc.global_mean(cat(scores)),
            "eval/reward_std": proc.global_std(cat(scores)),
            "eval/kl": proc.global_mean(cat(kls)),
            "eval/kl_k1": proc.global_mean(cat(kls_k1)),
            "eval/response_length": proc.global_mean(cat(lens)),
        }
        for k, v in extras.items():
            m[f"eval/reward/{k}"] = proc.global_mean(cat(v))
        m.update(completion_monitors(proc, "eval", completions, cat(eos_ended)))
        n = self.num_samples_to_log
        if n and proc.is_main:
            self.tracker.log_samples(step, prompt_texts[:n], completions[:n], cat(scores)[:n].tolist())
        return mean_over_ranks(proc.acc, m)


def summary_line(summary: Mapping[str, Any]) -> str:
    """One line for the end of a run: eval reward and KL at start and end, wall time (``train.steps=0``: the one
    evaluation)."""
    if summary["steps"] == 0:
        parts = [f"evaluation only ({summary['wall_s']:.0f}s)", f"eval reward {summary['eval/reward_mean_start']:.3f}",
                 f"eval KL {summary['eval/kl_start']:.3f}"]
        parts += [f"{k[:-len('_start')].split('/')[-1]} {summary[k]:.2f}" for k in summary
                  if k.startswith("eval/reward/") and k.endswith("_frac_start")]
        return " | ".join(parts)
    parts = [f"{summary['objective']} ({summary['kl_controller']} KL), {summary['steps']} steps in "
             f"{summary['wall_s']:.0f}s",
             f"eval reward {summary['eval/reward_mean_start']:.3f} -> {summary['eval/reward_mean_end']:.3f}",
             f"eval KL {summary['eval/kl_start']:.3f} -> {summary['eval/kl_end']:.3f}"]
    for k in summary:
        if k.startswith("eval/reward/") and k.endswith("_frac_start"):
            base = k[:-len("_start")]
            parts.append(f"{base.split('/')[-1]} {summary[k]:.2f} -> {summary[base + '_end']:.2f}")
    return " | ".join(parts)
