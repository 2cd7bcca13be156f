"""A weighted sum of rewards (a multi-objective reward), each part logged on its own.

``score = sum_k w_k * score_k``. Each part is any reward of the registry (a classifier, VADER, a function, a learned
reward model, another composite), called on the whole batch. Extras: ``<part>`` is part k's own (unweighted) score,
``<part>/<extra>`` its extras; the loop logs them as ``train/reward/<part>`` and ``eval/reward/<part>``. A part with
weight 0 is computed and logged but does not enter the reward: a monitor.

Per-token parts: when at least one part gives per-token scores, the composite gives
``token_scores = sum_k w_k * T_k`` with ``T_k`` the part's per-token scores, or, for a sequence-level part, its
score placed on the last response token (where the loop puts a sequence score for every objective). So a
token-level objective sees each part where it acts, and a sequence-level objective (which sums the token scores)
sees ``sum_k w_k * sum_t T_k``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from rlhf_exp.core.advantages import place_on_last_token
from rlhf_exp.rewards.base import RewardError, RewardModel, RewardOutput


def combine_token_scores(weights: Sequence[float], scores: Sequence[torch.Tensor],
                         token_scores: Sequence[Optional[torch.Tensor]], lengths: torch.Tensor) -> torch.Tensor:
    """Weighted sum of per-token parts; a sequence-level part's score goes on the last response token.

    Args:
        weights: one weight per part.
        scores: ``(B,)`` per part.
        token_scores: ``(B, T_k)`` or None per part.
        lengths: ``(B,)`` response lengths in policy tokens.
    Returns:
        ``(B, T)`` with ``T = max(max lengths, max T_k, 1)``, zero past each response's end (an empty response
        gets nothing from sequence-level parts).
    """
    widths = [int(lengths.max()) if lengths.numel() else 0] + [t.shape[1] for t in token_scores if t is not None]
    T = max(max(widths), 1)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).float()
    total = torch.zeros(lengths.shape[0], T)
    for w, s, ts in zip(weights, scores, token_scores):
        if ts is None:
            part = place_on_last_token(s.float(), mask)
        else:
            part = torch.nn.functional.pad(ts.float(), (0, T - ts.shape[1])) * mask
        total = total + float(w) * part
    return total


class CompositeReward(RewardModel):
    """``sum_k weight_k * part_k``; see the module docstring for extras and per-token parts.

    Args:
        parts: name -> (weight, reward).
    """

    def __init__(self, parts: dict[str, tuple[float, RewardModel]], name: str = "composite"):
        if not parts:
            raise ValueError("reward_model=composite needs at least one part under reward_model.parts.")
        self.parts = dict(parts)
        self.name = name
        self.per_token = any(r.per_token for _, r in self.parts.values())

    def bind_policy_tokenizer(self, tokenizer: Any) -> None:
        super().bind_policy_tokenizer(tokenizer)
        for _, r in self.parts.values():
            r.bind_policy_tokenizer(tokenizer)

    def to(self, device: torch.device | str) -> "CompositeReward":
        for _, r in self.parts.values():
            r.to(device)
        return self

    def score(self, prompts: Sequence[str], completions: Sequence[str], completion_ids: Any = None,
              **columns: Any) -> RewardOutput:
        weights, scores, token_scores = [], [], []
        extras: dict[str, torch.Tensor] = {}
        for part_name, (w, reward) in self.parts.items():
            out = reward(prompts, completions, completion_ids=completion_ids, **columns)  # checked by the part
            weights.append(w)
            scores.append(out.scores.cpu())
            token_scores.append(None if out.token_scores is None else out.token_scores.cpu())
            extras[part_name] = out.scores
            for k, v in out.extras.items():
                extras[f"{part_name}/{k}"] = v
        total = sum(float(w) * s for w, s in zip(weights, scores))
        combined = None
        if any(t is not None for t in token_scores):
            if completion_ids is None:
                raise RewardError(f"Reward {self.name!r} has per-token parts and needs completion_ids to place the "
                                  f"sequence-level parts on the last token; the online loop passes them.")
            lengths = torch.tensor([len(ids) for ids in completion_ids], dtype=torch.long)
            combined = combine_token_scores(weights, scores, token_scores, lengths)
        return RewardOutput(scores=total, token_scores=combined, extras=extras)
