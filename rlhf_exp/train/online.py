"""The online loop shared by every online objective.

One step (:meth:`OnlineTrainer.train_step`, read top to bottom): sample prompts -> generate (one batched call) ->
score with the reward -> log-probs of the policy and the reference (and values) in one forward each -> reward
preprocessing -> the objective's advantages -> ``train.epochs`` passes of shuffled minibatch updates on the
objective's loss -> KL controller update -> logs. The objective decides only its math and its rollout hooks
(:mod:`rlhf_exp.objectives`); the step does not branch on which objective runs. Every ``eval.every`` steps (and at
the start and end) the :class:`~rlhf_exp.train.evaluation.Evaluator`, shared with the offline loop, evaluates the
policy on a fixed held-out prompt set with seeded sampling.

Runs under ``accelerate``/``torchrun``: each process generates and scores its own share of the batch; statistics that
span the batch (whitening, group baselines, reward normalisation, the controller's KL, logged means) are reduced over
all processes; only the main process logs and saves.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from omegaconf import DictConfig

from rlhf_exp.core.advantages import preprocess_scores
from rlhf_exp.core.kl import full_kl_from_logits, kl_unused, make_kl_controller, per_token_kl
from rlhf_exp.core.masked import masked_moments
from rlhf_exp.core.state import check_keys
from rlhf_exp.data import Prompt, load_prompt_data, prompt_limit
from rlhf_exp.distributed import (in_mixed_precision, mean_over_ranks, micro_batch_loss_scale, rank_slice,
                                  synchronize)
from rlhf_exp.modeling import check_tokenizer_fits, load_policy, max_positions, reference_of, score_responses
from rlhf_exp.objectives import build_online_objective
from rlhf_exp.objectives.hooks import RolloutContext
from rlhf_exp.perf import step_metrics
from rlhf_exp.rewards import build_reward_model
from rlhf_exp.rollout import sample_lengths
from rlhf_exp.rollout.backends import backend_of
from rlhf_exp.tracking import Tracker
from rlhf_exp.train import checkpoint
from rlhf_exp.train.batching import fill_from_update, old_logprobs_from_update, trim_padding
from rlhf_exp.train.common import (NonFiniteLossError, RunningMoments, advance_bar, batch_geometry_of,
                                   make_accelerator, progress_bar, save_run_policy)
from rlhf_exp.train.context import ProcessContext
from rlhf_exp.train.evaluation import Evaluator, completion_monitors, summary_line  # noqa: F401  (re-exported)
from rlhf_exp.train.history import RunHistory
from rlhf_exp.train.state import RandomStreams, ResumablePromptSampler
from rlhf_exp.train.rollouts import (PolicyRollouts, evaluation_sampling, load_policy_tokenizer, stop_ids_of,
                                     training_sampling)
from rlhf_exp.train.optim import make_adamw


class OnlineTrainer:
    """Builds the components from the composed config and runs the loop. See the module docstring."""

    def __init__(self, cfg: DictConfig, output_dir: Path, tracker: Tracker, accelerator=None):
        self.cfg, self.output_dir, self.tracker = cfg, Path(output_dir), tracker
        self.proc = proc = ProcessContext.of(accelerator if accelerator is not None else make_accelerator(cfg))

        tcfg = cfg.train
        self.objective = build_online_objective(cfg.objective, cfg.kl, int(cfg.generation.max_new_tokens))
        vcfg = cfg.generation.vllm
        if vcfg.importance_correction and not self.objective.token_level_policy_loss:
            raise ValueError(f"generation.vllm.importance_correction=true weights per-token policy terms; "
                             f"objective={self.objective.name} here uses a sequence-level ratio. Set "
                             f"generation.vllm.importance_correction=false.")
        # global sizes, per-process sizes derived (checked before anything loads: make_accelerator)
        self.geometry = batch_geometry_of(cfg, proc.world)
        self.local_batch = self.geometry.local_batch
        self.mini_batch = self.geometry.local_mini

        mcfg = cfg.model
        self.tokenizer, tokenizer_option = load_policy_tokenizer(mcfg)
        self.pad_id = self.tokenizer.pad_token_id
        # the reward before the policy, so that a reward that cannot load fails before the policy is loaded
        self.reward = build_reward_model(cfg.reward_model).to(proc.device)
        self.reward.bind_policy_tokenizer(self.tokenizer)
        policy = load_policy(mcfg, value_head=self.objective.needs_value).to(proc.device)
        check_tokenizer_fits(policy, self.tokenizer, "model.path", tokenizer_option)
        self.ref = in_mixed_precision(proc.acc, reference_of(policy, mcfg.ref_path, mcfg.dtype).to(proc.device))

        data = load_prompt_data(cfg.dataset, self.tokenizer, prompt_limit(   # a too-long prompt fails as it is made
            max_positions(policy), cfg.generation.max_new_tokens, f"model.path={mcfg.path}"))
        self.sampler = ResumablePromptSampler(data.train, seed=cfg.seed)   # one global draw per step; each rank its slice
        self.eval_prompts: list[Prompt] = data.eval

        self.sampling = training_sampling(cfg.generation, announce=proc.is_main)
        eval_sampling, eval_lengths = evaluation_sampling(self.sampling, cfg.eval, len(self.eval_prompts))
        self.streams = RandomStreams()
        self.len_gen = self.streams.add("lengths", cfg.seed + 7)     # shared: global lengths, sliced like the prompts
        self.shuffle_gen = self.streams.add("shuffle", cfg.seed + 11 + proc.rank)   # this rank's minibatch order

        kcfg = cfg.kl
        self.kl_ctl = make_kl_controller(kcfg.controller, kcfg.kl_coef, kcfg.get("target"), kcfg.get("horizon"))
        # kl.track=false: when the KL cannot enter the loss or the reward, skip the reference forward of each step
        # (and train/kl); eval/kl is still measured at every evaluation
        self.ref_in_rollout = bool(kcfg.track) or not kl_unused(kcfg)

        self.optimizer = make_adamw(policy.parameters(), tcfg)   # train.adamw_impl: rlhf_exp.train.optim
        n_updates = tcfg.steps * tcfg.epochs * self.geometry.optimizer_steps
        from transformers import get_scheduler

        self.scheduler = get_scheduler(tcfg.lr_schedule, self.optimizer, num_warmup_steps=tcfg.warmup_steps,
                                       num_training_steps=n_updates)
        self.policy, self.optimizer = proc.acc.prepare(policy, self.optimizer)
        self.reward_moments = RunningMoments() if cfg.reward.normalize else None
        self.forward_bs = int(tcfg.forward_batch_size)
        # one optimizer step per rollout batch and advantages that do not read the old log-probs: the update's own
        # forward gives them (detached), and the rollout skips its no-grad policy forward (rlhf_exp.train.batching)
        self.old_logprobs_from_update = old_logprobs_from_update(
            self.objective, int(tcfg.epochs), self.mini_batch, self.local_batch,
            separate_sampler=backend_of(cfg) != "hf")
        self.history = RunHistory(tracker)
        self.stop_ids = stop_ids_of(self.unwrapped.lm, self.tokenizer)
        self.rollouts = PolicyRollouts.build(cfg, proc, self.policy, self.ref, self.reward, self.tokenizer,
                                             self.pad_id, self.stop_ids, self.forward_bs, self.objective.needs_value)
        self.evaluator = Evaluator(self.rollouts, self.eval_prompts, eval_lengths, eval_sampling, cfg.eval, tracker,
                                   proc)

    # ------------------------------------------------------------------------------------------ checkpoint state
    def _stateful(self) -> dict[str, Any]:
        """The parts of the loop whose state a checkpoint holds, by name (the model, optimizer, scheduler and the
        global random states are accelerate's)."""
        parts = {"sampler": self.sampler, "random": self.streams, "kl_controller": self.kl_ctl,
                 "objective": self.objective, "history": self.history}
        if self.reward_moments is not None:
            parts["reward_moments"] = self.reward_moments
        return parts

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self._stateful().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        parts = self._stateful()
        check_keys(state, parts, "the online loop")
        for name, part in parts.items():
            part.load_state_dict(state[name])

    @property
    def device(self) -> torch.device:
        return self.proc.device

    @property
    def unwrapped(self):
        """The policy without its engine wrapper (:class:`~rlhf_exp.modeling.PolicyModel`)."""
        return self.proc.acc.unwrap_model(self.policy)

    def rollout(self, prompts: list[Prompt], lengths: torch.Tensor, sampling, score_with_ref: bool = True,
                entropy: bool = True, score_policy: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Generate, reward and score a batch of prompts (:meth:`PolicyRollouts.collect`)."""
        return self.rollouts.collect(prompts, lengths, sampling, score_with_ref, entropy, score_policy=score_policy)

    def _reward_moments(self) -> tuple[float, float]:
        """``(mean, std)`` of the reward normalisation: the running moments (``reward.normalize=true``) or (0, 1)."""
        if self.reward_moments is None:
            return 0.0, 1.0
        return self.reward_moments.mean, max(self.reward_moments.std, 1e-6)

    def _preprocess_scores(self, raw: torch.Tensor, token_scores: Optional[torch.Tensor] = None,
                           mask: Optional[torch.Tensor] = None, update: bool = True
                           ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The loop's reward preprocessing, in one place: running normalisation, then scale, then clip.

        The running moments are those of the sequence scores, or of the per-token scores' sequence totals when the
        reward gives per-token scores (see :func:`rlhf_exp.core.advantages.preprocess_scores`); ``update=False``
        uses them without folding this batch in (ReMax's greedy baseline).
        """
        rcfg = self.cfg.reward
        if update and self.reward_moments is not None:
            total = raw if token_scores is None else (token_scores * mask).sum(dim=1)
            self.reward_moments.update(total.float(), self.proc.reduce)
        mean, std = self._reward_moments()
        return preprocess_scores(raw, float(rcfg.scale), rcfg.clip, mean, std, token_scores, mask)

    def _rollout_context(self) -> RolloutContext:
        """What the objective's rollout hooks may use this step (:class:`~rlhf_exp.objectives.hooks.RolloutContext`)."""
        skip = {"score_policy": False} if self.old_logprobs_from_update else {}
        return RolloutContext(
            rollout=lambda prompts, lengths: self.rollout(prompts, lengths, self.sampling,
                                                          score_with_ref=self.ref_in_rollout, **skip),
            generate=lambda *args, **kwargs: self.rollout(*args, **kwargs),
            draw_prompts=self._draw_prompts, sampling=self.sampling,
            preprocess=lambda raw, token_scores, mask: self._preprocess_scores(raw, token_scores, mask, update=False),
            local_batch=self.local_batch, pad_id=self.pad_id, device=self.device, reduce=self.proc.reduce)

    def _sampler_correction(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """A separate sampler's log-probs (``generation.backend=vllm``): log ``rollout_logprob_gap``, the mean
        ``|log pi_old - log pi_sampler|`` over the response tokens of the global batch, and with
        ``generation.vllm.importance_correction`` add ``tis_weight`` (truncated importance weights) to the batch.
        Nothing for a sampler that is the trained model itself (``hf``)."""
        if "sampler_logprobs" not in batch:
            return {}
        from rlhf_exp.rollout.correction import logprob_gap, truncated_importance_weights

        old, samp, mask = batch["old_logprobs"], batch["sampler_logprobs"], batch["response_mask"]
        fmask = mask.float()
        stats = {"rollout_logprob_gap": float(masked_moments(logprob_gap(old, samp, mask), fmask, self.proc.reduce)[1])}
        vcfg = self.cfg.generation.vllm
        if vcfg.importance_correction:
            cap = float(vcfg.importance_cap)
            w = truncated_importance_weights(old, samp, mask, cap)
            batch["tis_weight"] = w
            stats["tis_weight_mean"] = float(masked_moments(w, fmask, self.proc.reduce)[1])
            stats["tis_capped_frac"] = float(masked_moments((w >= cap).float(), fmask, self.proc.reduce)[1])
        return stats

    def _draw_prompts(self) -> tuple[list[Prompt], torch.Tensor]:
        """This process's prompts (each repeated ``group_size`` times) and response lengths for one global batch:
        every rank draws the same global prompts and lengths (shared seeds) and keeps its own slice, so the ranks'
        prompts are disjoint and the global batch is the same for any process count."""
        G, B = self.objective.group_size, int(self.cfg.train.batch_size)
        n_global = B // G
        prompts = [p for p in rank_slice(self.sampler.next(n_global), self.proc.world, self.proc.rank, n_global)
                   for _ in range(G)]
        lengths = sample_lengths(B, self.sampling, self.len_gen)
        return prompts, lengths[self.proc.rank * self.local_batch:(self.proc.rank + 1) * self.local_batch]

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self, step: int) -> dict[str, float]:
        tcfg = self.cfg.train
        synchronize(self.device)
        t_step = time.perf_counter()
        G = self.objective.group_size
        # ---- rollout: this rank's prompts generated, rewarded and scored (an objective's rollout hook may gather it:
        # DAPO's dynamic sampling rolls out fresh prompts in place of groups whose rewards are all equal)
        ctx = self._rollout_context()
        rollout = self.objective.collect(ctx, *self._draw_prompts())
        batch, info = rollout.batch, rollout.info
        batch["ends_with_eos"] = info["ends_with_eos"].to(self.device).float()
        mask = batch["response_mask"]
        fmask = mask.float()
        if self.old_logprobs_from_update:   # the KL is not in the reward: the advantages do not read it
            batch["kl"] = torch.zeros_like(fmask)
        else:
            log_ratio, batch["kl"] = self._kl_terms(batch)
        # ---- rewards preprocessed (normalise, scale, clip), then what the objective's hooks add (ReMax's greedy
        # baseline), then the advantages
        batch["scores"], token_scores = self._preprocess_scores(batch["raw_scores"], batch.get("token_scores"), fmask)
        if token_scores is not None:
            batch["token_scores"] = token_scores
        batch["group_ids"] = (torch.arange(len(rollout.prompts), device=self.device) // G
                              + self.proc.rank * (self.local_batch // G))
        hook_stats = {**rollout.stats, **self.objective.complete(ctx, rollout)}
        kl_coef = self.kl_ctl.value
        adv_stats = {**self.objective.compute_advantages(batch, kl_coef, self.proc.reduce), **hook_stats,
                     **self._sampler_correction(batch)}

        # ---- updates
        self.rollouts.engine.sleep()          # generation.vllm.enable_sleep_mode: free the KV cache while training
        synchronize(self.device)
        t_up = time.perf_counter()
        mstats = self.update(batch, kl_coef, step)
        synchronize(self.device)
        update_s = time.perf_counter() - t_up
        if self.old_logprobs_from_update:   # old log-probs and entropy came from the update's forward
            log_ratio, batch["kl"] = self._kl_terms(batch)
        self.rollouts.sync(step)              # the next rollout samples from the updated policy

        # ---- KL control and metrics (over the global batch)
        seq_kl = (log_ratio * fmask).sum(dim=1)
        kl_mean = self.proc.global_mean(seq_kl)
        self.kl_ctl.update(kl_mean, tcfg.batch_size)
        m: dict[str, float] = {
            "train/reward_mean": self.proc.global_mean(batch["raw_scores"]),
            "train/reward_std": self.proc.global_std(batch["raw_scores"]),
            "train/kl_coef": kl_coef,
            "train/entropy": float(masked_moments(batch["entropy"], fmask, self.proc.reduce)[1]),
            "train/response_length": self.proc.global_mean(fmask.sum(dim=1)),
            "train/lr": self.scheduler.get_last_lr()[0],
        }
        if self.ref_in_rollout:              # kl.track=false: no reference forward, no train/kl
            m["train/kl"] = kl_mean
            if self.objective.kl_estimator != "k1":
                m["train/kl_penalty"] = self.proc.global_mean((batch["kl"] * fmask).sum(dim=1))
        if self.reward_moments is not None or self.cfg.reward.scale != 1.0 or self.cfg.reward.clip is not None:
            m["train/reward_processed_mean"] = self.proc.global_mean(batch["scores"])
        for k, v in info["extras"].items():
            m[f"train/reward/{k}"] = self.proc.global_mean(v.to(self.device))
        m.update(completion_monitors(self.proc, "train", info["completions"], info["ends_with_eos"]))
        for k, v in adv_stats.items():
            m[f"train/{k}"] = float(v)
        for k, v in mstats.items():
            m[f"train/{k}"] = sum(v) / len(v)
        synchronize(self.device)
        step_s = time.perf_counter() - t_step
        m.update({"perf/gen_s": info["gen_s"], "perf/score_s": info["score_s"], "perf/update_s": update_s,
                  "perf/step_s": step_s, "perf/samples_per_s": tcfg.batch_size / step_s,
                  "perf/tokens_per_s": float(fmask.sum()) * self.proc.world / step_s})
        m.update(step_metrics(self.unwrapped.lm, batch["prompt_mask"], mask, info["gen_s"], info["score_s"], update_s,
                              score_forwards=int(not self.old_logprobs_from_update) + int(self.ref_in_rollout),
                              epochs=int(tcfg.epochs), compile_s=self.rollouts.engine.compile_s))
        return mean_over_ranks(self.proc.acc, m)

    def _kl_terms(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``log pi_old - log pi_ref`` (what ``train/kl`` and the controller see) and the per-token KL estimate
        ``kl.estimator`` of the scored batch. ``(B, T)`` each; zeros without a reference pass (``kl.track=false``)."""
        if "ref_logprobs" not in batch:
            zeros = torch.zeros_like(batch["response_mask"], dtype=torch.float)
            return zeros, zeros
        full = self.rollouts.scorer.full_kl(batch, self.sampling.temperature) if self.objective.kl_estimator == "full" else None
        log_ratio = batch["old_logprobs"] - batch["ref_logprobs"]
        return log_ratio, per_token_kl(self.objective.kl_estimator, batch["old_logprobs"], batch["ref_logprobs"], full)

    def update(self, batch: dict[str, torch.Tensor], kl_coef: float, step: int = 0) -> dict[str, list[float]]:
        """``train.epochs`` passes of shuffled optimizer steps over this process's share of a scored batch.

        Each optimizer step sees ``train.mini_batch_size`` sequences over all processes, accumulated (accelerate's
        ``accumulate``: no gradient sync until the last) from micro-batches of ``train.micro_batch_size``; each
        micro-batch's loss is scaled by its share of the global mini-batch's tokens (``token-mean``) or sequences
        (the other aggregations), so the step is the same for any split into processes and micro-batches. The
        gradient norm is checked before the step. Returns the per-micro-batch stats.
        """
        tcfg = self.cfg.train
        geo = self.geometry
        self.policy.train()
        mstats: dict[str, list[float]] = defaultdict(list)
        mask = batch["response_mask"]
        B = mask.shape[0]
        keys = [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.shape[:1] == (B,)]
        by_tokens = self.objective.loss_aggregation == "token-mean"
        from_update = self.old_logprobs_from_update
        if from_update:   # filled below from the (single) optimizer step's forwards
            batch["old_logprobs"] = torch.zeros_like(mask, dtype=torch.float)
            batch["entropy"] = torch.zeros_like(mask, dtype=torch.float)
            keys = [k for k in keys if k not in ("old_logprobs", "entropy")]
        for epoch in range(tcfg.epochs):
            perm = torch.randperm(B, generator=self.shuffle_gen).to(self.device)
            minis = [perm[s:s + self.mini_batch] for s in range(0, B, self.mini_batch)]
            # the global size of each mini-batch (tokens or sequences), in one reduction per epoch
            counts = torch.stack([mask[idx].sum() if by_tokens else torch.tensor(float(len(idx)), device=self.device)
                                  for idx in minis]).double()
            if self.proc.reduce is not None:
                counts = self.proc.reduce(counts)
            for mb_i, idx_mini in enumerate(minis):
                bad_loss = None
                for s in range(0, len(idx_mini), geo.local_micro):
                    idx = idx_mini[s:s + geo.local_micro]
                    mb = trim_padding({k: batch[k][idx] for k in keys})   # its own longest prompt + response
                    with self.proc.acc.accumulate(self.policy):
                        out = score_responses(self.policy, mb["prompt_ids"], mb["prompt_mask"], mb["response_ids"],
                                              mb["response_mask"], self.sampling.temperature,
                                              return_entropy=self.objective.needs_entropy_grad,
                                              return_values=self.objective.needs_value,
                                              return_logits=self.objective.needs_full_logits or from_update)
                        if from_update:
                            fill_from_update(batch, idx, mb, out)
                        ref_full = None
                        if self.objective.needs_full_logits:
                            ref_logits = self.rollouts.scorer.forward_chunks(self.ref, mb, self.sampling.temperature,
                                                                    logits=True)["logits"]
                            ref_full = full_kl_from_logits(out.logits, ref_logits)
                        loss, stats = self.objective.loss(out, mb, kl_coef, ref_full)
                        if not torch.isfinite(loss):
                            bad_loss = ", ".join(f"{k}={float(v):.4g}" for k, v in stats.items()
                                                 if k.startswith("loss/"))
                            if self.proc.world == 1:   # with more processes every rank stops at the gradient check
                                raise NonFiniteLossError(
                                    f"Non-finite loss at step {step}, epoch {epoch}, minibatch {mb_i} ({bad_loss}). "
                                    f"The update was not applied. Lower train.lr (now {tcfg.lr}), scale or clip the "
                                    f"reward (reward.scale, reward.clip, reward.normalize=true), or use bf16 instead "
                                    f"of fp16.")
                        local = float(mb["response_mask"].sum()) if by_tokens else float(len(idx))
                        scale = micro_batch_loss_scale(local, float(counts[mb_i]), self.proc.world, geo.accumulation_steps)
                        self.proc.acc.backward(loss * scale)
                    for k, v in stats.items():
                        mstats[k].append(float(v))
                if not self.proc.acc.sync_gradients:
                    raise RuntimeError("internal: the last micro-batch of a mini-batch did not sync gradients.")
                self._optimizer_step(f"step {step}, epoch {epoch}, minibatch {mb_i}", bad_loss, mstats)
        return mstats

    def _optimizer_step(self, where: str, bad_loss: Optional[str], mstats: dict[str, list[float]]) -> None:
        """Clip, check the (global) gradient norm, then step; a non-finite norm raises on every rank before the
        step. (DeepSpeed steps its engine inside the last ``backward``; its own clipping applies.)"""
        tcfg = self.cfg.train
        grad_norm = self.proc.acc.clip_grad_norm_(self.policy.parameters(), tcfg.max_grad_norm)
        if grad_norm is not None and not torch.isfinite(torch.as_tensor(grad_norm)):
            loss_note = f" (this process's loss was non-finite: {bad_loss})" if bad_loss else ""
            raise NonFiniteLossError(
                f"Non-finite gradient norm at {where}{loss_note}; the update was not applied. Lower train.lr "
                f"(now {tcfg.lr}), scale or clip the reward (reward.scale, reward.clip, reward.normalize=true), or "
                f"use bf16 instead of fp16.")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if grad_norm is not None:  # DeepSpeed reports it only after its first step
            mstats["grad_norm"].append(float(grad_norm))

    def train(self) -> dict[str, Any]:
        tcfg, ecfg = self.cfg.train, self.cfg.eval
        start, t_start = checkpoint.begin(self)      # 0, or the step of the checkpoint this run resumes from
        self.rollouts.sync(start)
        if start == 0:
            self.history.record(self.evaluator(0), 0)
        bar = progress_bar(self.objective.name, tcfg.steps, self.proc.is_main, initial=start)
        for step in range(start + 1, tcfg.steps + 1):
            metrics = self.train_step(step)
            if ecfg.every and (step % ecfg.every == 0) and step != tcfg.steps:
                metrics.update(self.evaluator(step))
            if step == tcfg.steps:
                metrics.update(self.evaluator(step))
            self.history.record(metrics, step)
            advance_bar(bar, reward=f"{metrics['train/reward_mean']:.3f}",
                        kl=f"{metrics.get('train/kl', float('nan')):.3f}", kl_coef=f"{metrics['train/kl_coef']:.3g}")
            checkpoint.step_done(self, step, t_start)
        bar.close()
        wall = time.perf_counter() - t_start
        return self.finish(wall)

    def finish(self, wall_s: float, status: str = "finished") -> dict[str, Any]:
        """Write ``summary.json`` (from the run history) and, when the run trained and ``train.save_model``, save the
        policy to ``<run dir>/policy``. With several processes a failed run, whose other ranks may be stuck or gone,
        is not saved (saving is collective)."""
        summary = self.history.summary(status, self.objective.name, self.kl_ctl.name, wall_s, self.proc.world)
        if (self.cfg.train.save_model and self.history.steps_done() > 0
                and (status == "finished" or self.proc.world == 1)):
            summary.update(save_run_policy(self.proc, self.policy, self.tokenizer, self.output_dir / "policy",
                                           merge_lora=self.cfg.model.lora.save == "merged"))
        self.tracker.summary(summary)
        return summary
