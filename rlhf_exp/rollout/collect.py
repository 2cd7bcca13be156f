"""One rollout batch: generate with the engine, decode, score with the reward, then the no-grad scoring pass.

:class:`RolloutCollector` is what both loops call (training rollouts, ReMax's greedy baseline, DAPO's extra rounds and
the held-out evaluation). The batch it returns is the ``dict[str, Tensor]`` documented in
:mod:`rlhf_exp.objectives.base`; besides the keys listed there it carries ``raw_scores (B,)`` (the reward before the
loop's preprocessing), ``entropy (B, T)`` (when asked), ``token_scores (B, T)`` (per-token rewards) and
``sampler_logprobs (B, T)`` (the engine's own log-probs, from engines that sample with a copy of the policy).
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Sequence

import torch

from rlhf_exp.data import Prompt
from rlhf_exp.distributed import synchronize
from rlhf_exp.metrics import ends_with_eos
from rlhf_exp.rollout.engine import RolloutEngine
from rlhf_exp.rollout.sampling import SamplingSettings, pad_left
from rlhf_exp.rollout.scoring import Scorer


class RolloutCollector:
    """Generate, reward and score a batch of prompts.

    Needs: the ``engine`` (:class:`~rlhf_exp.rollout.engine.RolloutEngine`), the ``scorer``
    (:class:`~rlhf_exp.rollout.scoring.Scorer`), the ``reward`` (a :class:`~rlhf_exp.rewards.base.RewardModel`:
    ``reward(prompts, completions, completion_ids=..., **columns)``), the policy's ``tokenizer`` (to decode),
    ``pad_id``, ``stop_ids`` (the ids that end a response) and the ``device`` the batch lives on.
    """

    def __init__(self, engine: RolloutEngine, scorer: Scorer, reward, tokenizer, pad_id: int,
                 stop_ids: Sequence[int], device):
        self.engine, self.scorer, self.reward, self.tokenizer = engine, scorer, reward, tokenizer
        self.pad_id, self.stop_ids, self.device = pad_id, list(stop_ids), device

    def collect(self, prompts: list[Prompt], lengths: torch.Tensor, sampling: SamplingSettings,
                score_with_ref: bool = True, entropy: bool = True, score_policy: bool = True
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Generate, score and compute log-probs (and the entropy, when ``entropy``) for a batch of prompts
        (``score_policy=False``: no policy forward, see :meth:`Scorer.score`).
        Returns the batch and ``info``: ``prompts``, ``completions`` (texts), ``extras`` (the reward's named parts),
        ``gen_s``, ``score_s`` and ``ends_with_eos (B,)``."""
        self.scorer.policy.eval()
        prompt_ids, prompt_mask = pad_left([p.ids for p in prompts], self.pad_id, self.device)
        synchronize(self.device)
        t0 = time.perf_counter()
        gen = self.engine.generate(prompt_ids, prompt_mask, sampling, lengths)
        response_ids, response_mask = gen.response_ids.to(self.device), gen.response_mask.to(self.device)
        synchronize(self.device)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        completion_ids = [ids[m.bool()].tolist() for ids, m in zip(response_ids.cpu(), response_mask.cpu())]
        completions = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in completion_ids]
        prompt_texts = [p.text for p in prompts]
        columns: dict[str, list] = defaultdict(list)
        for p in prompts:
            for k, v in p.columns.items():
                columns[k].append(v)
        reward_out = self.reward(prompt_texts, completions, completion_ids=completion_ids, **columns)
        batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response_ids": response_ids,
                 "response_mask": response_mask}
        batch.update(self.scorer.score(batch, sampling.temperature, entropy=entropy, with_ref=score_with_ref,
                                       with_policy=score_policy))
        batch["raw_scores"] = reward_out.scores.to(self.device)
        if reward_out.token_scores is not None:
            ts = reward_out.token_scores.to(self.device)
            T = response_ids.shape[1]
            if ts.shape[1] < T:
                ts = torch.nn.functional.pad(ts, (0, T - ts.shape[1]))
            batch["token_scores"] = ts[:, :T] * response_mask
        if gen.logprobs is not None:
            batch["sampler_logprobs"] = gen.logprobs.to(self.device).float() * response_mask
        synchronize(self.device)
        info = {"prompts": prompt_texts, "completions": completions, "extras": reward_out.extras, "gen_s": gen_s,
                "score_s": time.perf_counter() - t0,
                "ends_with_eos": ends_with_eos(response_ids, response_mask, self.stop_ids)}
        return batch, info
