"""What an offline objective is: a data format, a model to train, and a loss on a list of encoded examples.

The offline loop (``rlhf_exp.train.offline``) is the same for every offline objective: draw ``train.batch_size``
examples, split them into micro-batches of ``train.mini_batch_size`` (gradient accumulation), one optimizer step;
every ``eval.every`` steps (and at the start and end) the held-out loss of the objective and, for the objectives
that train a policy, the same policy evaluation as the online loop (reward and exact KL on held-out prompts).
Switching ``objective=`` changes only the methods below; the math is in ``rlhf_exp.core.preference`` and
``rlhf_exp.core.losses``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from rlhf_exp.core.losses import sequence_logprob
from rlhf_exp.core.registry import Param
from rlhf_exp.core.state import check_keys
from rlhf_exp.modeling import load_policy, score_responses
from rlhf_exp.objectives.validation import validate_offline
from rlhf_exp.rollout import pad_left, pad_right

Item = dict[str, Any]
Stats = dict[str, torch.Tensor | float]


@dataclass
class Context:
    """What a loss needs besides the model and the examples."""

    device: torch.device
    pad_id: int
    eos_id: int
    reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None   # sum over processes (None: one process)


def fit(prompt: list[int], completion: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut a (prompt, completion) pair to ``max_length`` tokens: the prompt keeps its end (at most half the budget
    when the completion needs the rest), the completion its start."""
    if len(prompt) + len(completion) <= max_length:
        return prompt, completion
    keep_prompt = min(len(prompt), max(max_length // 2, max_length - len(completion)))
    prompt = prompt[len(prompt) - keep_prompt:]
    return prompt, completion[:max_length - len(prompt)]


class OfflineObjective:
    """Base class of the offline objectives. Subclasses set the attributes and implement :meth:`encode` and
    :meth:`loss`."""

    name = "base"
    # the settings it reads from the objective block (besides name and kind), checked by validate()
    params: tuple[Param, ...] = (
        Param("max_length", int, "prompt + completion tokens (the prompt keeps its end, the completion its start)",
              ">= 2", lambda v: v >= 2),
        Param("max_prompt_tokens", int, "cut prompts to their last N tokens; null = no limit beyond max_length",
              ">= 1", lambda v: v >= 1, nullable=True),
    )
    min_local_micro_batch = 1      # the smallest micro-batch per process its loss accepts
    data_format = "sft"            # which records it trains on (rlhf_exp.data.OFFLINE_FORMATS)
    trains_policy = True           # False for reward modelling: no policy, no reward/KL evaluation
    needs_reference = False        # a frozen copy of the initial policy enters the loss
    needs_value = False            # (asked by the shared rollout; offline objectives have no value head)
    summary_stats: tuple[str, ...] = ()   # held-out stats for summary.json (start/end); the first is the loss

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = cfg
        self.max_length = int(cfg["max_length"])
        self.max_prompt_tokens = cfg["max_prompt_tokens"]

    @classmethod
    def validate(cls, block: Mapping[str, Any]) -> None:
        """Check the objective block against :attr:`params` (an ``ObjectiveConfigError`` naming the key)."""
        validate_offline(block, cls.params)

    # ------------------------------------------------------------------ to implement
    def encode(self, records: Sequence[Mapping[str, Any]], tokenizer) -> list[Item]:
        """Tokenise the records once, before training."""
        raise NotImplementedError

    def loss(self, model, ref, items: Sequence[Item], ctx: Context) -> tuple[torch.Tensor, Stats]:
        """The mean loss of a micro-batch and its stats (detached scalars). Also called under ``no_grad`` on
        held-out examples, where the stats become ``eval/<name>``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        """What the objective learns across steps: nothing for the offline objectives (DPO's precomputed reference
        log-probs are computed again from the config and the data)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        check_keys(state, (), f"objective={self.name}")

    # ------------------------------------------------------------------ defaults
    def build_model(self, model_cfg: Mapping[str, Any]) -> torch.nn.Module:
        """The model to train: the policy from the ``model`` group (dropout off; LoRA and gradient checkpointing
        as configured)."""
        return load_policy(model_cfg, value_head=False)

    def bind_tokenizer(self, model: torch.nn.Module, tokenizer) -> None:
        """Called once with the built model and the tokenizer (reward modelling gives the classifier its pad id)."""

    def weight(self, items: Sequence[Item]) -> float:
        """How much a micro-batch counts in the batch mean (examples; SFT counts tokens)."""
        return float(len(items))

    def prepare(self, items: list[Item], ref, ctx: Context, batch_size: int) -> None:
        """Called once on the training examples before training (DPO precomputes reference log-probs here)."""

    # ------------------------------------------------------------------ helpers for the subclasses
    def tokenize_pair(self, tokenizer, prompt: str, completion: str, eos_id: int) -> tuple[list[int], list[int]]:
        """Prompt and completion token ids (tokenised apart, EOS appended to the completion unless it already ends
        with it, as a chat template's assistant turn may), cut to fit."""
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        if self.max_prompt_tokens:
            p = p[-int(self.max_prompt_tokens):]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if not c or c[-1] != eos_id:
            c = c + [eos_id]
        return fit(p, c, self.max_length)

    def tokenize_parts(self, tokenizer, prompt: str, parts: Sequence[tuple[str, bool]], eos_id: int
                       ) -> tuple[list[int], list[int], list[int]]:
        """Like :meth:`tokenize_pair` for a completion given as ``(text, trains)`` parts (a rendered multi-turn
        conversation: ``rlhf_exp.data.render_turns``). Also returns the completion's loss mask (1 on the tokens of
        the parts that train, the appended EOS included)."""
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        if self.max_prompt_tokens:
            p = p[-int(self.max_prompt_tokens):]
        c: list[int] = []
        mask: list[int] = []
        for text, trains in parts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            c += ids
            mask += [int(trains)] * len(ids)
        if not c or c[-1] != eos_id:
            c, mask = c + [eos_id], mask + [1]
        p, c = fit(p, c, self.max_length)
        return p, c, mask[:len(c)]


def sequence_logprobs(model, prompts: Sequence[list[int]], completions: Sequence[list[int]], ctx: Context,
                      reduction: str = "sum") -> torch.Tensor:
    """``(B,)`` log-probability of each completion given its prompt under ``model`` (a PolicyModel), summed over the
    completion's tokens (``mean``: per-token mean). One forward; gradients flow unless called under ``no_grad``."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("An example has an empty prompt; preference objectives score completions given a prompt.")
    prompt_ids, prompt_mask = pad_left(prompts, ctx.pad_id, ctx.device)
    response_ids, response_mask = pad_right(completions, ctx.pad_id, ctx.device)
    out = score_responses(model, prompt_ids, prompt_mask, response_ids, response_mask)
    return sequence_logprob(out.logprobs, response_mask, reduction)
