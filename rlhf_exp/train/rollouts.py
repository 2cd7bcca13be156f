"""What a loop that samples from its policy builds once: the tokenizer, the samplers, and the rollout machinery.

:class:`PolicyRollouts` holds the explicit rollout objects (``engine``: the
:class:`~rlhf_exp.rollout.engine.RolloutEngine` that ``generation.backend`` names; ``scorer``:
:class:`~rlhf_exp.rollout.scoring.Scorer`, the no-grad log-probs, values and reference pass; ``collector``:
:class:`~rlhf_exp.rollout.collect.RolloutCollector`, generate, reward, score) and which step's weights the engine
samples from. The online loop uses it for its training rollouts, both loops' :class:`~rlhf_exp.train.evaluation.
Evaluator` for the held-out evaluation.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional, Sequence

import torch

from rlhf_exp.data import Prompt
from rlhf_exp.modeling import eos_token_ids, load_tokenizer
from rlhf_exp.rollout import SamplingSettings, sample_lengths
from rlhf_exp.rollout.backends import build_engine
from rlhf_exp.rollout.collect import RolloutCollector
from rlhf_exp.rollout.scoring import Scorer
from rlhf_exp.train.context import ProcessContext


def load_policy_tokenizer(model_cfg) -> tuple[Any, str]:
    """The policy's tokenizer (``model.tokenizer``, or the one saved with ``model.path``) and the option it came
    from (for error messages)."""
    option = "model.tokenizer" if model_cfg.tokenizer else "model.path"
    return load_tokenizer(model_cfg.tokenizer or model_cfg.path, option), option


def training_sampling(gcfg, announce: bool) -> SamplingSettings:
    """The training sampler (``generation.*``: pure sampling); with ``announce``, a notice when top-k/top-p make the
    samples off-policy."""
    sampling = SamplingSettings(
        max_new_tokens=gcfg.max_new_tokens, min_new_tokens=gcfg.min_new_tokens, temperature=gcfg.temperature,
        top_k=gcfg.top_k, top_p=gcfg.top_p, do_sample=True,
    )
    if sampling.truncates and announce:
        print("[rlhf_exp] generation.top_k/top_p truncate the sampler, so samples are off-policy for the loss "
              "(which scores the untruncated policy). Keep top_k=0, top_p=1.0 for on-policy training.")
    return sampling


def evaluation_sampling(sampling: SamplingSettings, ecfg, n_prompts: int) -> tuple[SamplingSettings, torch.Tensor]:
    """The evaluation sampler (the training one, greedy with ``eval.do_sample=false``) and the fixed response
    lengths of the ``n_prompts`` held-out prompts (drawn from ``eval.seed``)."""
    eval_sampling = SamplingSettings(**{**asdict(sampling), "do_sample": bool(ecfg.do_sample)})
    g = torch.Generator().manual_seed(int(ecfg.seed))
    return eval_sampling, sample_lengths(n_prompts, eval_sampling, g)


def stop_ids_of(policy_lm, tokenizer) -> list[int]:
    """The ids that end a response: the tokenizer's EOS and every EOS id of the policy's generation config."""
    return eos_token_ids(policy_lm, tokenizer)


class PolicyRollouts:
    """Generate, reward and score batches from the prepared ``policy`` (see the module docstring).

    Built by :meth:`build` from the config, the process context, the prepared ``policy``, the reference ``ref``,
    the ``reward``, the tokenizer and its ``pad_id``, the ``stop_ids``, ``forward_bs`` (``train.forward_batch_size``)
    and ``needs_value`` (the scorer returns the value head's ``old_values``).
    """

    def __init__(self, engine, scorer: Scorer, collector: RolloutCollector, policy):
        self.engine, self.scorer, self.collector, self.policy = engine, scorer, collector, policy
        self.engine_step: Optional[int] = None

    @classmethod
    def build(cls, cfg, proc: ProcessContext, policy, ref, reward, tokenizer, pad_id: int, stop_ids: Sequence[int],
              forward_bs: int, needs_value: bool) -> "PolicyRollouts":
        engine = build_engine(cfg, proc.acc, policy, tokenizer, stop_ids, pad_id)
        scorer = Scorer(policy, ref, forward_bs, needs_value)
        collector = RolloutCollector(engine, scorer, reward, tokenizer, pad_id, stop_ids, proc.device)
        return cls(engine, scorer, collector, policy)

    def sync(self, step: int) -> None:
        """Make the engine sample from the policy as trained through ``step`` (wake it, push the weights); a no-op
        when it already does. The online loop calls it after each step's updates (and once on (re)start), the
        evaluation before it generates. ``generation.backend=hf`` samples from the live policy: nothing is copied."""
        if self.engine_step == step:
            return
        self.engine.wake()
        self.engine.sync_weights(self.policy)
        self.engine_step = step

    def collect(self, prompts: list[Prompt], lengths: torch.Tensor, sampling: SamplingSettings,
                score_with_ref: bool = True, entropy: bool = True, score_policy: bool = True
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Generate, score and compute log-probs (and the entropy, when ``entropy``) for a batch of prompts
        (:meth:`RolloutCollector.collect`). Returns the batch and text/extras. ``score_policy=False`` skips the
        policy's no-grad forward (no ``old_logprobs``, ``entropy``, ``old_values``: the update's forward gives them)."""
        return self.collector.collect(prompts, lengths, sampling, score_with_ref, entropy, score_policy=score_policy)
