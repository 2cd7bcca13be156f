"""The held-out policy evaluation, logging and the end of a run, shared by the online and the offline loop.

:class:`PolicyEvaluation` is a mixin of the two loops. What it needs from its host, in order:

* :meth:`_init_process` (the config, the run folder, the tracker and this process's place in the run: ``cfg``,
  ``output_dir``, ``tracker``, ``acc``, ``device``, ``world``, ``rank``, ``is_main``, ``reduce``) and
  :meth:`_init_tokenizer` (``tokenizer``, ``eos_id``, ``pad_id``);
* ``eval_prompts`` then :meth:`_init_sampling` (the training and evaluation samplers, the eval lengths);
* ``policy`` (the prepared :class:`~rlhf_exp.modeling.PolicyModel`), ``ref``, ``reward``, ``objective``
  (``name``, ``needs_value``), ``forward_bs``, then :meth:`_init_rollout`, which builds the explicit rollout
  objects the loops hold: ``engine`` (the :class:`~rlhf_exp.rollout.engine.RolloutEngine` that
  ``generation.backend`` names), ``scorer`` (:class:`~rlhf_exp.rollout.scoring.Scorer`: the no-grad log-probs,
  values and reference pass) and ``collector`` (:class:`~rlhf_exp.rollout.collect.RolloutCollector`: generate,
  reward, score);
* ``kl_ctl`` (``name``) and ``history`` for :meth:`finish`.

Then :meth:`rollout` samples and scores a batch, :meth:`evaluate` measures reward and exact KL to the reference on the
fixed held-out prompts (the same draws at every evaluation), :meth:`_record` logs, and :meth:`finish` writes
``summary.json``. Because PPO and DPO runs are evaluated by this same code, their ``eval/reward_mean`` and
``eval/kl`` land on one reward-vs-KL plot.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from rlhf_exp.core.masked import masked_moments
from rlhf_exp.data import Prompt
from rlhf_exp.distributed import even_chunks, mean_over_ranks
from rlhf_exp.metrics import text_monitors
from rlhf_exp.modeling import PolicyModel, eos_token_ids, load_tokenizer
from rlhf_exp.rollout import SamplingSettings, sample_lengths
from rlhf_exp.rollout.collect import RolloutCollector
from rlhf_exp.rollout.backends import build_engine
from rlhf_exp.rollout.scoring import Scorer
from rlhf_exp.train.checkpoint import atomic_dir
from rlhf_exp.train.common import make_accelerator, save_policy


class PolicyEvaluation:
    """Mixin of the loops that train a policy. See the module docstring."""

    def _init_process(self, cfg, output_dir, tracker, accelerator=None) -> None:
        """The run's config, folder and tracker, and this process's place in the run: ``acc`` (accelerate),
        ``device``, ``world`` (processes), ``rank``, ``is_main`` and ``reduce`` (a sum over processes, or None
        in a single process: what the math layer's global statistics take)."""
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.tracker = tracker
        self.acc = accelerator if accelerator is not None else make_accelerator(cfg)
        self.device = self.acc.device
        self.world = self.acc.num_processes
        self.rank = self.acc.process_index
        self.is_main = self.acc.is_main_process
        self.reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = (
            (lambda t: self.acc.reduce(t, reduction="sum")) if self.world > 1 else None
        )

    def _init_tokenizer(self, model_cfg) -> None:
        """The policy's tokenizer (``model.tokenizer``, or the one saved with ``model.path``), ``eos_id``, ``pad_id``."""
        option = self.tokenizer_option = "model.tokenizer" if model_cfg.get("tokenizer") else "model.path"
        self.tokenizer = load_tokenizer(model_cfg.get("tokenizer") or model_cfg.path, option)
        self.eos_id, self.pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id

    def _init_sampling(self, cfg) -> None:
        """The training sampler (``generation.*``), the evaluation sampler (``eval.do_sample``) and the fixed
        response lengths of the eval prompts. Needs ``eval_prompts``."""
        gcfg = cfg.generation
        self.sampling = SamplingSettings(
            max_new_tokens=gcfg.max_new_tokens, min_new_tokens=gcfg.min_new_tokens, temperature=gcfg.temperature,
            top_k=gcfg.top_k, top_p=gcfg.top_p, do_sample=True,
        )
        if self.sampling.truncates and self.is_main:
            print("[rlhf_exp] generation.top_k/top_p truncate the sampler, so samples are off-policy for the loss "
                  "(which scores the untruncated policy). Keep top_k=0, top_p=1.0 for on-policy training.")
        ecfg = cfg.eval
        self.eval_sampling = SamplingSettings(**{**asdict(self.sampling), "do_sample": bool(ecfg.do_sample)})
        g = torch.Generator().manual_seed(int(ecfg.seed))
        self.eval_lengths = sample_lengths(len(self.eval_prompts), self.eval_sampling, g)

    def _init_rollout(self) -> None:
        """The rollout objects the loops hold: ``engine`` (``generation.backend``), ``scorer`` and ``collector``.
        Needs the prepared ``policy``, ``ref``, ``reward``, ``objective``, ``forward_bs``, ``tokenizer`` and
        ``pad_id``."""
        vcfg = self.cfg.generation.get("vllm") or {}
        if vcfg.get("importance_correction") and not getattr(self.objective, "token_level_policy_loss", True):
            raise ValueError(f"generation.vllm.importance_correction=true weights per-token policy terms; "
                             f"objective={self.objective.name} here uses a sequence-level ratio. Set "
                             f"generation.vllm.importance_correction=false.")
        self.engine = build_engine(self.cfg, self.acc, self.policy, self.tokenizer, self.stop_ids, self.pad_id)
        self.scorer = Scorer(self.policy, self.ref, self.forward_bs, self.objective.needs_value)
        self.collector = RolloutCollector(self.engine, self.scorer, self.reward, self.tokenizer, self.pad_id,
                                          self.stop_ids, self.device)
        self._engine_step: Optional[int] = None

    def _sync_engine(self, step: int) -> None:
        """Make the engine sample from the policy as trained through ``step`` (wake it, push the weights); a no-op
        when it already does. The online loop calls it after each step's updates (and once on (re)start), the
        evaluation before it generates. ``generation.backend=hf`` samples from the live policy: nothing is copied."""
        if self._engine_step == step:
            return
        self.engine.wake()
        self.engine.sync_weights(self.policy)
        self._engine_step = step

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def unwrapped(self) -> PolicyModel:
        return self.acc.unwrap_model(self.policy)

    @property
    def stop_ids(self) -> list[int]:
        """The ids that end a response: the tokenizer's EOS and every EOS id of the policy's generation config."""
        if getattr(self, "_stop_ids", None) is None:
            self._stop_ids = eos_token_ids(self.unwrapped.lm, self.tokenizer)
        return self._stop_ids

    def _global_mean(self, x: torch.Tensor) -> float:
        """Mean of a 1-D tensor over every process's entries."""
        _, mean, _ = masked_moments(x.float(), torch.ones_like(x, dtype=torch.float), self.reduce)
        return float(mean)

    def _global_std(self, x: torch.Tensor) -> float:
        _, _, var = masked_moments(x.float(), torch.ones_like(x, dtype=torch.float), self.reduce)
        return float(var.sqrt())

    # ------------------------------------------------------------------------------------------ rollout
    def rollout(self, prompts: list[Prompt], lengths: torch.Tensor, sampling: SamplingSettings,
                score_with_ref: bool = True, entropy: bool = True, score_policy: bool = True
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Generate, score and compute log-probs (and the entropy, when ``entropy``) for a batch of prompts
        (:meth:`RolloutCollector.collect`). Returns the batch and text/extras. ``score_policy=False`` skips the
        policy's no-grad forward (no ``old_logprobs``, ``entropy``, ``old_values``: the update's forward gives them)."""
        return self.collector.collect(prompts, lengths, sampling, score_with_ref, entropy, score_policy=score_policy)

    def _completion_monitors(self, prefix: str, completions: list[str], eos_ended: torch.Tensor) -> dict[str, float]:
        """Reward-hacking monitors of a batch (see :mod:`rlhf_exp.metrics`), for train and eval alike.

        ``distinct_1``, ``distinct_2``, ``repetition_rate`` (over the completions of all processes) and
        ``truncated_frac``, the share of responses cut at their length limit (not ending with EOS).
        """
        if self.world > 1:  # the text statistics over the global batch: the same value on every rank
            from accelerate.utils import gather_object

            completions = gather_object(list(completions))
        m = {f"{prefix}/{k}": v for k, v in text_monitors(completions).items()}
        m[f"{prefix}/truncated_frac"] = 1.0 - self._global_mean(eos_ended.float())
        return m

    # ------------------------------------------------------------------------------------------ one step
    # ------------------------------------------------------------------------------------------ eval
    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Reward and KL on the fixed held-out prompts, with the same random draws at every evaluation."""
        ecfg = self.cfg.eval
        self._sync_engine(step)
        prompts = self.eval_prompts[self.rank::self.world]
        lengths = self.eval_lengths[self.rank::self.world]
        scores, kls, kls_k1, lens, completions, prompt_texts, eos_ended = [], [], [], [], [], [], []
        extras: dict[str, list[torch.Tensor]] = defaultdict(list)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(ecfg.seed) + self.rank)
            # the same number of chunks on every rank, whatever the remainder (sharded engines gather per forward)
            for s, e in even_chunks(len(prompts), len(self.eval_prompts), self.world, int(ecfg.batch_size)):
                batch, info = self.rollout(prompts[s:e], lengths[s:e], self.eval_sampling,
                                           entropy=False)
                fmask = batch["response_mask"].float()
                full = self.scorer.full_kl(batch, self.eval_sampling.temperature)
                kls.append((full * fmask).sum(1))
                kls_k1.append(((batch["old_logprobs"] - batch["ref_logprobs"]) * fmask).sum(1))
                scores.append(batch["raw_scores"])
                lens.append(fmask.sum(1))
                for k, v in info["extras"].items():
                    extras[k].append(v.to(self.device))
                completions += info["completions"]
                eos_ended.append(info["ends_with_eos"])
                prompt_texts += info["prompts"]
        cat = torch.cat
        m = {
            "eval/reward_mean": self._global_mean(cat(scores)),
            "eval/reward_std": self._global_std(cat(scores)),
            "eval/kl": self._global_mean(cat(kls)),
            "eval/kl_k1": self._global_mean(cat(kls_k1)),
            "eval/response_length": self._global_mean(cat(lens)),
        }
        for k, v in extras.items():
            m[f"eval/reward/{k}"] = self._global_mean(cat(v))
        m.update(self._completion_monitors("eval", completions, cat(eos_ended)))
        n = int(ecfg.num_samples_to_log)
        if n and self.is_main:
            self.tracker.log_samples(step, prompt_texts[:n], completions[:n], cat(scores)[:n].tolist())
        return mean_over_ranks(self.acc, m)

    # ------------------------------------------------------------------------------------------ run
    def _record(self, metrics: Mapping[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.history[k].append((step, float(v)))
        self.tracker.log(metrics, step)

    # Further metrics whose first and last values go into summary.json (the offline loop's held-out losses).
    summary_keys: tuple[str, ...] = ()

    def _steps_done(self) -> int:
        """Training steps completed: the last step with logged metrics (steps are logged 1, 2, ... in order)."""
        return max((s for h in self.history.values() for s, _ in h), default=0)

    def save_outputs(self) -> dict[str, str]:
        """Save what the run trained (the policy, in Hugging Face format; a LoRA policy merged unless
        ``model.lora.save=adapter``); return summary entries naming it. Called on every process: the engine's full
        state dict is gathered collectively (``accelerator.get_state_dict``), then rank 0 alone writes."""
        merge = (self.cfg.model.get("lora") or {}).get("save", "merged") == "merged"
        state = self.acc.get_state_dict(self.policy)
        if self.is_main:
            with atomic_dir(self.output_dir / "policy") as tmp:  # a failed save leaves an earlier policy/ as it was
                save_policy(self.unwrapped, self.tokenizer, tmp, merge_lora=merge, state_dict=state)
        self.acc.wait_for_everyone()
        return {"policy_dir": str(self.output_dir / "policy")}

    def finish(self, wall_s: float, status: str = "finished") -> dict[str, Any]:
        def first_last(key):
            h = self.history.get(key) or [(0, math.nan)]
            return h[0][1], h[-1][1]

        summary: dict[str, Any] = {"status": status, "objective": self.objective.name,
                                   "kl_controller": self.kl_ctl.name, "steps": self._steps_done(),
                                   "wall_s": wall_s, "num_processes": self.world}
        for key in ("eval/reward_mean", "eval/kl") + tuple(k for k in self.history if k.startswith("eval/reward/")):
            a, b = first_last(key)
            summary[f"{key}_start"], summary[f"{key}_end"] = a, b
        for key in ("train/kl_coef", "perf/samples_per_s"):
            if key in self.history:
                summary[f"{key}_end"] = self.history[key][-1][1]
        for key in self.summary_keys:
            if key in self.history:
                summary[f"{key}_start"], summary[f"{key}_end"] = first_last(key)
        # train.steps=0: evaluate only. Saving is collective (every rank gathers): with several processes a failed
        # run, whose other ranks may be stuck or gone, is not saved.
        if (self.cfg.train.save_model and self._steps_done() > 0
                and (status == "finished" or self.world == 1)):
            summary.update(self.save_outputs())
        self.tracker.summary(summary)
        return summary


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
