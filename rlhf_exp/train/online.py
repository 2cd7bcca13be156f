"""The online loop shared by every online objective.

One step: sample prompts -> generate (one batched call) -> score with the reward -> log-probs of the policy and the
reference (and values) in one forward each -> the objective's advantages -> ``train.epochs`` passes of shuffled
minibatch updates -> KL controller update -> logs. Every ``eval.every`` steps (and at the start and end) the policy is
evaluated on a fixed held-out prompt set with seeded sampling (generation, scoring and evaluation live in
``rlhf_exp.train.evaluation``, shared with the offline loop).

Runs under ``accelerate``/``torchrun``: each process generates and scores its own share of the batch; statistics that
span the batch (whitening, group baselines, reward normalisation, the controller's KL, logged means) are reduced over
all processes; only the main process logs and saves.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from rlhf_exp.core.advantages import preprocess_scores
from rlhf_exp.core.kl import full_kl_from_logits, make_kl_controller, per_token_kl
from rlhf_exp.core.masked import masked_moments
from rlhf_exp.data import Prompt, PromptSampler, load_prompt_data
from rlhf_exp.distributed import mean_over_ranks
from rlhf_exp.modeling import check_tokenizer_fits, load_policy, max_positions, reference_of, score_responses
from rlhf_exp.objectives import build_online_objective
from rlhf_exp.rewards import build_reward_model
from rlhf_exp.rollout import sample_lengths
from rlhf_exp.tracking import Tracker
from rlhf_exp.train.common import NonFiniteLossError, RunningMoments
from rlhf_exp.train.evaluation import PolicyEvaluation, summary_line  # noqa: F401  (summary_line: re-exported)


class OnlineTrainer(PolicyEvaluation):
    """Builds the components from the composed config and runs the loop. See the module docstring."""

    def __init__(self, cfg: DictConfig, output_dir: Path, tracker: Tracker, accelerator=None):
        self._init_process(cfg, output_dir, tracker, accelerator)

        tcfg = cfg.train
        self.objective = build_online_objective(cfg.objective, cfg.kl, int(cfg.generation.max_new_tokens))
        G = self.objective.group_size
        if tcfg.batch_size % (G * self.world):
            raise ValueError(f"train.batch_size={tcfg.batch_size} must be divisible by objective.group_size={G} "
                             f"times the number of processes ({self.world}).")
        self.local_batch = tcfg.batch_size // self.world
        self.mini_batch = int(tcfg.mini_batch_size)
        if self.mini_batch < 1 or self.local_batch % self.mini_batch:
            raise ValueError(f"train.mini_batch_size={self.mini_batch} must divide the per-process batch "
                             f"{self.local_batch} (train.batch_size / processes).")

        mcfg = cfg.model
        self._init_tokenizer(mcfg)
        # the reward before the policy, so that a reward that cannot load fails before the policy is loaded
        self.reward = build_reward_model(cfg.reward_model).to(self.device)
        self.reward.bind_policy_tokenizer(self.tokenizer)
        policy = load_policy(mcfg, value_head=self.objective.needs_value).to(self.device)
        check_tokenizer_fits(policy, self.tokenizer, "model.path", self.tokenizer_option)
        self.ref = reference_of(policy, mcfg.get("ref_path"), mcfg.get("dtype")).to(self.device)

        data = load_prompt_data(cfg.dataset, self.tokenizer)
        self.sampler = PromptSampler(data.train, seed=cfg.seed + 1000 * self.rank)
        self.eval_prompts: list[Prompt] = data.eval
        limit, longest = max_positions(policy), max(len(p.ids) for p in data.train + data.eval)
        if limit is not None and longest + int(cfg.generation.max_new_tokens) > limit:
            raise ValueError(
                f"The longest prompt ({longest} tokens) plus generation.max_new_tokens={cfg.generation.max_new_tokens} "
                f"is longer than the {limit} positions of model.path={mcfg.path}. Shorten the prompts "
                f"(dataset.max_prompt_tokens, or dataset.prompt_max_tokens) or lower generation.max_new_tokens.")

        self._init_sampling(cfg)
        self.len_gen = torch.Generator().manual_seed(cfg.seed + 7 + self.rank)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed + 11 + self.rank)

        kcfg = cfg.kl
        self.kl_ctl = make_kl_controller(kcfg.controller, kcfg.kl_coef, kcfg.get("target"), kcfg.get("horizon"))

        self.optimizer = torch.optim.AdamW(
            [p for p in policy.parameters() if p.requires_grad], lr=tcfg.lr, betas=tuple(tcfg.adam_betas),
            eps=tcfg.adam_eps, weight_decay=tcfg.weight_decay,
        )
        n_updates = tcfg.steps * tcfg.epochs * (self.local_batch // self.mini_batch)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(tcfg.lr_schedule, self.optimizer, num_warmup_steps=tcfg.warmup_steps,
                                       num_training_steps=n_updates)
        self.policy, self.optimizer = self.acc.prepare(policy, self.optimizer)
        self.reward_moments = RunningMoments() if cfg.reward.normalize else None
        self.forward_bs = int(tcfg.forward_batch_size)
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def _preprocess_scores(self, raw: torch.Tensor, token_scores: Optional[torch.Tensor] = None,
                           mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The loop's reward preprocessing, in one place: running normalisation, then scale, then clip.

        The running moments are those of the sequence scores, or of the per-token scores' sequence totals when the
        reward gives per-token scores (see :func:`rlhf_exp.core.advantages.preprocess_scores`).
        """
        rcfg = self.cfg.reward
        mean, std = 0.0, 1.0
        if self.reward_moments is not None:
            total = raw if token_scores is None else (token_scores * mask).sum(dim=1)
            self.reward_moments.update(total.float(), self.reduce)
            mean, std = self.reward_moments.mean, max(self.reward_moments.std, 1e-6)
        return preprocess_scores(raw, float(rcfg.scale), rcfg.clip, mean, std, token_scores, mask)

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self, step: int) -> dict[str, float]:
        tcfg = self.cfg.train
        t_step = time.perf_counter()
        G = self.objective.group_size
        prompts = [p for p in self.sampler.next(self.local_batch // G) for _ in range(G)]
        lengths = sample_lengths(len(prompts), self.sampling, self.len_gen)
        batch, info = self.rollout(prompts, lengths, self.sampling)
        mask = batch["response_mask"]
        fmask = mask.float()
        if self.objective.kl_estimator == "full":
            full = self._full_kl(batch, self.sampling.temperature)
        else:
            full = None
        log_ratio = batch["old_logprobs"] - batch["ref_logprobs"]
        batch["kl"] = per_token_kl(self.objective.kl_estimator, batch["old_logprobs"], batch["ref_logprobs"], full)
        batch["scores"], token_scores = self._preprocess_scores(batch["raw_scores"], batch.get("token_scores"), fmask)
        if token_scores is not None:
            batch["token_scores"] = token_scores
        batch["group_ids"] = torch.arange(len(prompts), device=self.device) // G + self.rank * (self.local_batch // G)
        kl_coef = self.kl_ctl.value
        adv_stats = self.objective.compute_advantages(batch, kl_coef, self.reduce)

        # ---- updates
        t_up = time.perf_counter()
        self.policy.train()
        mstats: dict[str, list[float]] = defaultdict(list)
        B = mask.shape[0]
        keys = [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.shape[:1] == (B,)]
        for epoch in range(tcfg.epochs):
            perm = torch.randperm(B, generator=self.shuffle_gen).to(self.device)
            for mb_i, s in enumerate(range(0, B, self.mini_batch)):
                idx = perm[s:s + self.mini_batch]
                mb = {k: batch[k][idx] for k in keys}
                out = score_responses(self.policy, mb["prompt_ids"], mb["prompt_mask"], mb["response_ids"],
                                      mb["response_mask"], self.sampling.temperature,
                                      return_entropy=self.objective.needs_entropy_grad,
                                      return_values=self.objective.needs_value,
                                      return_logits=self.objective.needs_full_logits)
                ref_full = None
                if self.objective.needs_full_logits:
                    ref_logits = self._forward_chunks(self.ref, mb, self.sampling.temperature, logits=True)["logits"]
                    ref_full = full_kl_from_logits(out.logits, ref_logits)
                loss, stats = self.objective.loss(out, mb, kl_coef, ref_full)
                if not torch.isfinite(loss):
                    terms = ", ".join(f"{k}={float(v):.4g}" for k, v in stats.items() if k.startswith("loss/"))
                    raise NonFiniteLossError(
                        f"Non-finite loss at step {step}, epoch {epoch}, minibatch {mb_i} ({terms}). The update was "
                        f"not applied. Lower train.lr (now {tcfg.lr}), scale or clip the reward (reward.scale, "
                        f"reward.clip, reward.normalize=true), or use bf16 instead of fp16.")
                self.acc.backward(loss)
                grad_norm = self.acc.clip_grad_norm_(self.policy.parameters(), tcfg.max_grad_norm)
                if grad_norm is not None and not torch.isfinite(torch.as_tensor(grad_norm)):
                    raise NonFiniteLossError(
                        f"Non-finite gradient norm at step {step}, epoch {epoch}, minibatch {mb_i}; the update was "
                        f"not applied. Lower train.lr (now {tcfg.lr}) or check the reward scale.")
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                for k, v in stats.items():
                    mstats[k].append(float(v))
                if grad_norm is not None:  # DeepSpeed reports it only after its first step
                    mstats["grad_norm"].append(float(grad_norm))
        update_s = time.perf_counter() - t_up

        # ---- KL control and metrics (over the global batch)
        seq_kl = (log_ratio * fmask).sum(dim=1)
        kl_mean = self._global_mean(seq_kl)
        self.kl_ctl.update(kl_mean, tcfg.batch_size)
        m: dict[str, float] = {
            "train/reward_mean": self._global_mean(batch["raw_scores"]),
            "train/reward_std": self._global_std(batch["raw_scores"]),
            "train/kl": kl_mean,
            "train/kl_coef": kl_coef,
            "train/entropy": float(masked_moments(batch["entropy"], fmask, self.reduce)[1]),
            "train/response_length": self._global_mean(fmask.sum(dim=1)),
            "train/lr": self.scheduler.get_last_lr()[0],
        }
        if self.objective.kl_estimator != "k1":
            m["train/kl_penalty"] = self._global_mean((batch["kl"] * fmask).sum(dim=1))
        if self.reward_moments is not None or self.cfg.reward.scale != 1.0 or self.cfg.reward.clip is not None:
            m["train/reward_processed_mean"] = self._global_mean(batch["scores"])
        for k, v in info["extras"].items():
            m[f"train/reward/{k}"] = self._global_mean(v.to(self.device))
        m.update(self._completion_monitors("train", info["completions"], info["ends_with_eos"]))
        for k, v in adv_stats.items():
            m[f"train/{k}"] = float(v)
        for k, v in mstats.items():
            m[f"train/{k}"] = sum(v) / len(v)
        step_s = time.perf_counter() - t_step
        m.update({"perf/gen_s": info["gen_s"], "perf/score_s": info["score_s"], "perf/update_s": update_s,
                  "perf/step_s": step_s, "perf/samples_per_s": tcfg.batch_size / step_s,
                  "perf/tokens_per_s": float(fmask.sum()) * self.world / step_s})
        return mean_over_ranks(self.acc, m)

    def train(self) -> dict[str, Any]:
        tcfg, ecfg = self.cfg.train, self.cfg.eval
        t_start = time.perf_counter()
        self._record(self.evaluate(0), 0)
        import sys

        bar = tqdm(range(1, tcfg.steps + 1), desc=f"{self.objective.name}", disable=not self.is_main,
                   dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10.0)
        for step in bar:
            metrics = self.train_step(step)
            if ecfg.every and (step % ecfg.every == 0) and step != tcfg.steps:
                metrics.update(self.evaluate(step))
            if step == tcfg.steps:
                metrics.update(self.evaluate(step))
            self._record(metrics, step)
            bar.set_postfix(reward=f"{metrics['train/reward_mean']:.3f}", kl=f"{metrics['train/kl']:.3f}",
                            kl_coef=f"{metrics['train/kl_coef']:.3g}")
        bar.close()
        wall = time.perf_counter() - t_start
        return self.finish(wall)
