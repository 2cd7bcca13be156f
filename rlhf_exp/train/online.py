"""The online loop shared by every online objective.

One step: sample prompts -> generate (one batched call) -> score with the reward -> log-probs of the policy and the
reference (and values) in one forward each -> the objective's advantages -> ``train.epochs`` passes of shuffled
minibatch updates -> KL controller update -> logs. Every ``eval.every`` steps (and at the start and end) the policy is
evaluated on a fixed held-out prompt set with seeded sampling.

Runs under ``accelerate``/``torchrun``: each process generates and scores its own share of the batch; statistics that
span the batch (whitening, group baselines, reward normalisation, the controller's KL, logged means) are reduced over
all processes; only the main process logs and saves.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from rlhf_exp.core.advantages import preprocess_scores
from rlhf_exp.core.kl import full_kl_from_logits, make_kl_controller, per_token_kl
from rlhf_exp.core.masked import masked_moments
from rlhf_exp.data import Prompt, PromptSampler, load_prompt_data
from rlhf_exp.distributed import mean_over_ranks, model_for_generation
from rlhf_exp.metrics import ends_with_eos, text_monitors
from rlhf_exp.modeling import (
    AdapterDisabledReference, PolicyModel, apply_lora, frozen_copy, load_causal_lm, load_tokenizer, score_responses,
)
from rlhf_exp.objectives import build_online_objective
from rlhf_exp.rewards import build_reward_model
from rlhf_exp.rollout import SamplingSettings, generate, pad_left, sample_lengths
from rlhf_exp.tracking import Tracker
from rlhf_exp.train.common import NonFiniteLossError, RunningMoments, make_accelerator, save_policy


class OnlineTrainer:
    """Builds the components from the composed config and runs the loop. See the module docstring."""

    def __init__(self, cfg: DictConfig, output_dir: Path, tracker: Tracker, accelerator=None):
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
        self.tokenizer = load_tokenizer(mcfg.get("tokenizer") or mcfg.path, "model.tokenizer" if mcfg.get("tokenizer")
                                        else "model.path")
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id
        # the reward before the policy, so that a reward that cannot load fails before the policy is loaded
        self.reward = build_reward_model(cfg.reward_model).to(self.device)
        self.reward.bind_policy_tokenizer(self.tokenizer)
        lm = load_causal_lm(mcfg.path, "model.path", mcfg.get("dtype"))
        if mcfg.get("gradient_checkpointing"):
            kwargs = {"use_reentrant": False}
            if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.x
                lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        lora = mcfg.get("lora") or {}
        if int(lora.get("r") or 0) > 0:
            policy = PolicyModel(apply_lora(lm, lora), value_head=self.objective.needs_value).to(self.device)
            self.ref = AdapterDisabledReference(policy)
        else:
            self.ref = frozen_copy(PolicyModel(lm, value_head=False)).to(self.device)
            policy = PolicyModel(lm, value_head=self.objective.needs_value)

        data = load_prompt_data(cfg.dataset, self.tokenizer)
        self.sampler = PromptSampler(data.train, seed=cfg.seed + 1000 * self.rank)
        self.eval_prompts: list[Prompt] = data.eval

        gcfg = cfg.generation
        self.sampling = SamplingSettings(
            max_new_tokens=gcfg.max_new_tokens, min_new_tokens=gcfg.min_new_tokens, temperature=gcfg.temperature,
            top_k=gcfg.top_k, top_p=gcfg.top_p, do_sample=True,
        )
        if self.sampling.truncates:
            print("[rlhf_exp] generation.top_k/top_p truncate the sampler, so samples are off-policy for the loss "
                  "(which scores the untruncated policy). Keep top_k=0, top_p=1.0 for on-policy training.")
        ecfg = cfg.eval
        self.eval_sampling = SamplingSettings(**{**asdict(self.sampling), "do_sample": bool(ecfg.do_sample)})
        g = torch.Generator().manual_seed(int(ecfg.seed))
        self.eval_lengths = sample_lengths(len(self.eval_prompts), self.eval_sampling, g)
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

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def unwrapped(self) -> PolicyModel:
        return self.acc.unwrap_model(self.policy)

    def _global_mean(self, x: torch.Tensor) -> float:
        """Mean of a 1-D tensor over every process's entries."""
        _, mean, _ = masked_moments(x.float(), torch.ones_like(x, dtype=torch.float), self.reduce)
        return float(mean)

    def _global_std(self, x: torch.Tensor) -> float:
        _, _, var = masked_moments(x.float(), torch.ones_like(x, dtype=torch.float), self.reduce)
        return float(var.sqrt())

    @torch.no_grad()
    def _forward_chunks(self, model, batch: Mapping[str, torch.Tensor], temperature: float, *, entropy=False,
                        values=False, logits=False) -> dict[str, torch.Tensor]:
        """No-grad forward over the batch in chunks of ``train.forward_batch_size``; returns concatenated outputs."""
        parts = defaultdict(list)
        B = batch["prompt_ids"].shape[0]
        for s in range(0, B, self.forward_bs):
            sl = slice(s, s + self.forward_bs)
            out = score_responses(model, batch["prompt_ids"][sl], batch["prompt_mask"][sl], batch["response_ids"][sl],
                                  batch["response_mask"][sl], temperature, return_entropy=entropy,
                                  return_values=values, return_logits=logits)
            parts["logprobs"].append(out.logprobs)
            if entropy:
                parts["entropy"].append(out.entropy)
            if values:
                parts["values"].append(out.values.float())
            if logits:
                parts["logits"].append(out.logits)
        return {k: torch.cat(v) for k, v in parts.items()}

    def _full_kl(self, batch: Mapping[str, torch.Tensor], temperature: float) -> torch.Tensor:
        """Exact per-token KL(policy || reference) over the vocabulary, chunked. ``(B, T)``."""
        out = []
        B = batch["prompt_ids"].shape[0]
        for s in range(0, B, self.forward_bs):
            sub = {k: batch[k][s:s + self.forward_bs] for k in ("prompt_ids", "prompt_mask", "response_ids",
                                                                "response_mask")}
            lp = self._forward_chunks(self.policy, sub, temperature, logits=True)["logits"]
            lq = self._forward_chunks(self.ref, sub, temperature, logits=True)["logits"]
            out.append(full_kl_from_logits(lp, lq))
        return torch.cat(out)

    # ------------------------------------------------------------------------------------------ rollout
    def rollout(self, prompts: list[Prompt], lengths: torch.Tensor, sampling: SamplingSettings,
                score_with_ref: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Generate, score and compute log-probs for a batch of prompts. Returns the batch and text/extras."""
        self.policy.eval()
        prompt_ids, prompt_mask = pad_left([p.ids for p in prompts], self.pad_id, self.device)
        t0 = time.perf_counter()
        with model_for_generation(self.acc, self.policy) as unwrapped:
            response_ids, response_mask = generate(unwrapped.lm, prompt_ids, prompt_mask, sampling, lengths,
                                                   self.eos_id, self.pad_id)
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
        pol = self._forward_chunks(self.policy, batch, sampling.temperature, entropy=True,
                                   values=self.objective.needs_value)
        batch["old_logprobs"] = pol["logprobs"]
        batch["entropy"] = pol["entropy"]
        if "values" in pol:
            batch["old_values"] = pol["values"]
        if score_with_ref:
            batch["ref_logprobs"] = self._forward_chunks(self.ref, batch, sampling.temperature)["logprobs"]
        batch["raw_scores"] = reward_out.scores.to(self.device)
        if reward_out.token_scores is not None:
            ts = reward_out.token_scores.to(self.device)
            T = response_ids.shape[1]
            if ts.shape[1] < T:
                ts = torch.nn.functional.pad(ts, (0, T - ts.shape[1]))
            batch["token_scores"] = ts[:, :T] * response_mask
        info = {"prompts": prompt_texts, "completions": completions, "extras": reward_out.extras, "gen_s": gen_s,
                "score_s": time.perf_counter() - t0,
                "ends_with_eos": ends_with_eos(response_ids, response_mask, self.eos_id)}
        return batch, info

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

    # ------------------------------------------------------------------------------------------ eval
    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Reward and KL on the fixed held-out prompts, with the same random draws at every evaluation."""
        ecfg = self.cfg.eval
        prompts = self.eval_prompts[self.rank::self.world]
        lengths = self.eval_lengths[self.rank::self.world]
        scores, kls, kls_k1, lens, completions, prompt_texts, eos_ended = [], [], [], [], [], [], []
        extras: dict[str, list[torch.Tensor]] = defaultdict(list)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(ecfg.seed) + self.rank)
            for s in range(0, len(prompts), int(ecfg.batch_size)):
                batch, info = self.rollout(prompts[s:s + ecfg.batch_size], lengths[s:s + ecfg.batch_size],
                                           self.eval_sampling)
                fmask = batch["response_mask"].float()
                full = self._full_kl(batch, self.eval_sampling.temperature)
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

    def finish(self, wall_s: float, status: str = "finished") -> dict[str, Any]:
        def first_last(key):
            h = self.history.get(key) or [(0, math.nan)]
            return h[0][1], h[-1][1]

        summary: dict[str, Any] = {"status": status, "objective": self.objective.name,
                                   "kl_controller": self.kl_ctl.name, "steps": len(self.history.get("train/kl", [])),
                                   "wall_s": wall_s}
        for key in ("eval/reward_mean", "eval/kl") + tuple(k for k in self.history if k.startswith("eval/reward/")):
            a, b = first_last(key)
            summary[f"{key}_start"], summary[f"{key}_end"] = a, b
        for key in ("train/kl_coef", "perf/samples_per_s"):
            if key in self.history:
                summary[f"{key}_end"] = self.history[key][-1][1]
        if self.is_main and self.cfg.train.save_model:
            save_policy(self.unwrapped, self.tokenizer, self.output_dir / "policy",
                        merge_lora=(self.cfg.model.get("lora") or {}).get("save", "merged") == "merged")
            summary["policy_dir"] = str(self.output_dir / "policy")
        self.tracker.summary(summary)
        return summary


def summary_line(summary: Mapping[str, Any]) -> str:
    """One line for the end of a run: eval reward and KL at start and end, wall time."""
    parts = [f"{summary['objective']} ({summary['kl_controller']} KL), {summary['steps']} steps in "
             f"{summary['wall_s']:.0f}s",
             f"eval reward {summary['eval/reward_mean_start']:.3f} -> {summary['eval/reward_mean_end']:.3f}",
             f"eval KL {summary['eval/kl_start']:.3f} -> {summary['eval/kl_end']:.3f}"]
    for k in summary:
        if k.startswith("eval/reward/") and k.endswith("_frac_start"):
            base = k[:-len("_start")]
            parts.append(f"{base.split('/')[-1]} {summary[k]:.2f} -> {summary[base + '_end']:.2f}")
    return " | ".join(parts)

