"""The offline loop shared by the offline objectives (``objective=sft|reward|dpo|kto``).

One step: draw ``train.batch_size`` examples (all processes together; a seeded shuffle per pass over the data),
split each process's share into micro-batches of ``train.mini_batch_size`` (gradient accumulation), one optimizer
step with the same optimizer, schedule, clipping and precision settings as the online loop. Every ``eval.every``
steps (and at the start and end): the objective's loss and statistics on held-out examples (``eval/loss/<name>``,
``eval/accuracy`` ...) and, for the objectives that train a policy (sft, dpo, kto), the *online loop's* evaluation
(``rlhf_exp.train.evaluation``): seeded samples on the held-out prompts scored by ``reward_model=``, exact KL to the
initial policy. ``summary.json`` and the final line have the online runs' keys and format.

Why not TRL's trainers: see docs/offline.md ("Design").
"""
from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from rlhf_exp.core.kl import NoKLController
from rlhf_exp.data import OfflineData, PromptSampler, chat_records, load_offline_data, offline_eval_prompts
from rlhf_exp.modeling import check_tokenizer_fits, max_positions, reference_of
from rlhf_exp.objectives import build_offline_objective
from rlhf_exp.objectives.offline_base import Context
from rlhf_exp.objectives.reward_modelling import REWARD_MODEL_DIR
from rlhf_exp.rewards import build_reward_model
from rlhf_exp.tracking import Tracker
from rlhf_exp.train.common import NonFiniteLossError
from rlhf_exp.train.evaluation import PolicyEvaluation, summary_line


class OfflineTrainer(PolicyEvaluation):
    """Builds the components from the composed config and runs the loop. See the module docstring."""

    def __init__(self, cfg: DictConfig, output_dir: Path, tracker: Tracker, accelerator=None):
        self._init_process(cfg, output_dir, tracker, accelerator)

        tcfg = cfg.train
        self.objective = obj = build_offline_objective(cfg.objective)
        if cfg.kl.controller != "none" and self.is_main:
            print(f"[rlhf_exp] objective={obj.name} is offline: kl={cfg.kl.controller} is not used"
                  + (" (its KL strength is objective.beta)." if "beta" in cfg.objective else "."), flush=True)
        self.kl_ctl = NoKLController()
        if tcfg.batch_size % self.world:
            raise ValueError(f"train.batch_size={tcfg.batch_size} must be divisible by the number of processes "
                             f"({self.world}).")
        self.local_batch = tcfg.batch_size // self.world
        self.micro_batch = int(tcfg.mini_batch_size)
        if self.micro_batch < 1 or self.local_batch % self.micro_batch:
            raise ValueError(f"train.mini_batch_size={self.micro_batch} (examples per forward) must divide the "
                             f"per-process batch {self.local_batch} (train.batch_size / processes).")

        mcfg = cfg.model
        self._init_tokenizer(mcfg)
        self.ctx = Context(device=self.device, pad_id=self.pad_id, eos_id=self.eos_id, reduce=self.reduce)
        model = obj.build_model(mcfg)
        obj.bind_tokenizer(model, self.tokenizer)
        check_tokenizer_fits(model, self.tokenizer, "model.path", self.tokenizer_option)
        # The reference: the initial policy (DPO/KTO losses; the KL of every policy evaluation).
        self.ref = (reference_of(model, mcfg.get("ref_path"), mcfg.get("dtype")).to(self.device)
                    if obj.trains_policy else None)

        limit = max_positions(model)
        if limit is not None and obj.max_length > limit:
            if self.is_main:
                print(f"[rlhf_exp] objective.max_length={obj.max_length} is longer than the {limit} positions of "
                      f"model.path={mcfg.path}: examples are cut to {limit} tokens.", flush=True)
            obj.max_length = limit
        raw = data = load_offline_data(cfg.dataset, obj.data_format)
        if cfg.dataset.get("chat_template") and obj.trains_policy:  # prompts as the policy will see them
            data = OfflineData(chat_records(raw.train, self.tokenizer), chat_records(raw.eval, self.tokenizer))
        self.train_items = obj.encode(data.train, self.tokenizer)
        self.eval_items = obj.encode(data.eval, self.tokenizer)
        self.forward_bs = int(tcfg.forward_batch_size)
        obj.prepare(self.train_items, self.ref, self.ctx, self.forward_bs)
        self.sampler = PromptSampler(self.train_items, seed=cfg.seed + 1000 * self.rank)
        self.n_train = len(data.train)

        if obj.trains_policy:
            self.reward = build_reward_model(cfg.reward_model).to(self.device)
            self.reward.bind_policy_tokenizer(self.tokenizer)
            self.eval_prompts = offline_eval_prompts(cfg.dataset, self.tokenizer, raw.eval)
            self._init_sampling(cfg)

        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=tcfg.lr, betas=tuple(tcfg.adam_betas),
            eps=tcfg.adam_eps, weight_decay=tcfg.weight_decay,
        )
        from transformers import get_scheduler

        self.scheduler = get_scheduler(tcfg.lr_schedule, self.optimizer, num_warmup_steps=tcfg.warmup_steps,
                                       num_training_steps=tcfg.steps)
        self.model, self.optimizer = self.acc.prepare(model, self.optimizer)
        self.policy = self.model          # the name the shared evaluation uses
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.summary_keys = tuple(f"eval/{k}" for k in obj.summary_stats)

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _accumulate(sums: dict[str, float], weights: dict[str, float], stats: Mapping[str, Any], w: float) -> None:
        """Add a micro-batch's stats with weight ``w``; a NaN stat (undefined for this micro-batch, e.g. no
        desirable example) adds nothing but keeps its key, so every process reduces the same keys."""
        for k, v in stats.items():
            v = float(v)
            sums[k] += 0.0 if math.isnan(v) else v * w
            weights[k] += 0.0 if math.isnan(v) else w

    def _reduce_means(self, sums: Mapping[str, float], weights: Mapping[str, float]) -> dict[str, float]:
        """Weighted means over micro-batches and processes: ``sum_k / weight_k`` for each stat."""
        keys = sorted(sums)
        t = torch.tensor([[sums[k] for k in keys], [weights[k] for k in keys]], dtype=torch.float64,
                         device=self.device)
        if self.reduce is not None:
            t = self.reduce(t)
        return {k: float(t[0, i] / t[1, i]) if float(t[1, i]) > 0 else math.nan for i, k in enumerate(keys)}

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self, step: int) -> dict[str, float]:
        tcfg = self.cfg.train
        t0 = time.perf_counter()
        obj = self.objective
        items = self.sampler.next(self.local_batch)
        chunks = [items[s:s + self.micro_batch] for s in range(0, len(items), self.micro_batch)]
        weights = [obj.weight(c) for c in chunks]
        total = sum(weights)
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        wsum: dict[str, float] = defaultdict(float)
        for i, (chunk, w) in enumerate(zip(chunks, weights)):
            loss, stats = obj.loss(self.model, self.ref, chunk, self.ctx)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"Non-finite {obj.name} loss at step {step}, micro-batch {i}; the update was not applied. Lower "
                    f"train.lr (now {tcfg.lr}) or use bf16 instead of fp16.")
            self.acc.backward(loss * (w / total))
            self._accumulate(sums, wsum, stats, w)
        grad_norm = self.acc.clip_grad_norm_(self.model.parameters(), tcfg.max_grad_norm)
        if not torch.isfinite(torch.as_tensor(grad_norm)):
            raise NonFiniteLossError(f"Non-finite gradient norm at step {step}; the update was not applied. Lower "
                                     f"train.lr (now {tcfg.lr}).")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        sums["grad_norm"], wsum["grad_norm"] = float(grad_norm), 1.0
        m = {f"train/{k}": v for k, v in self._reduce_means(sums, wsum).items()}
        m["train/lr"] = self.scheduler.get_last_lr()[0]
        m["train/epoch"] = step * tcfg.batch_size / self.n_train
        step_s = time.perf_counter() - t0
        m.update({"perf/update_s": step_s, "perf/step_s": step_s, "perf/samples_per_s": tcfg.batch_size / step_s})
        return m

    # ------------------------------------------------------------------------------------------ eval
    @torch.no_grad()
    def heldout(self) -> dict[str, float]:
        """The objective's loss and statistics on this process's share of the held-out examples, reduced."""
        self.model.eval()
        items = self.eval_items[self.rank::self.world]
        sums: dict[str, float] = defaultdict(float)
        wsum: dict[str, float] = defaultdict(float)
        for s in range(0, len(items), self.forward_bs):
            chunk = items[s:s + self.forward_bs]
            w = self.objective.weight(chunk)
            _, stats = self.objective.loss(self.model, self.ref, chunk, self.ctx)
            self._accumulate(sums, wsum, stats, w)
        return {f"eval/{k}": v for k, v in self._reduce_means(sums, wsum).items()}

    def evaluate(self, step: int) -> dict[str, float]:
        m = super().evaluate(step) if self.objective.trains_policy else {}
        m.update(self.heldout())
        return m

    # ------------------------------------------------------------------------------------------ run
    def train(self) -> dict[str, Any]:
        tcfg, ecfg = self.cfg.train, self.cfg.eval
        t_start = time.perf_counter()
        self._record(self.evaluate(0), 0)
        loss_key = f"train/{self.objective.summary_stats[0]}"      # the objective's loss, for the progress bar
        bar = tqdm(range(1, tcfg.steps + 1), desc=self.objective.name, disable=not self.is_main,
                   dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10.0)
        for step in bar:
            metrics = self.train_step(step)
            if step == tcfg.steps or (ecfg.every and step % ecfg.every == 0):
                metrics.update(self.evaluate(step))
            self._record(metrics, step)
            bar.set_postfix(loss=f"{metrics.get(loss_key, math.nan):.4f}")
        bar.close()
        return self.finish(time.perf_counter() - t_start)

    def save_outputs(self) -> dict[str, str]:
        if self.objective.trains_policy:
            return super().save_outputs()
        path = self.output_dir / REWARD_MODEL_DIR
        model = self.acc.unwrap_model(self.model)
        model.save_pretrained(path, safe_serialization=True)
        tok = self.tokenizer
        side, tok.padding_side = tok.padding_side, "right"     # reward models score right-padded batches
        tok.save_pretrained(path)
        tok.padding_side = side
        return {"reward_model_dir": str(path)}


def offline_summary_line(summary: Mapping[str, Any]) -> str:
    """The online runs' final line for objectives that train a policy; reward modelling reports its held-out
    pairwise accuracy instead."""
    if "eval/accuracy_end" not in summary:
        return summary_line(summary)
    return " | ".join([
        f"{summary['objective']}, {summary['steps']} steps in {summary['wall_s']:.0f}s",
        f"held-out pairwise accuracy {summary['eval/accuracy_start']:.3f} -> {summary['eval/accuracy_end']:.3f}",
        f"held-out loss {summary['eval/loss/bt_start']:.3f} -> {summary['eval/loss/bt_end']:.3f}",
    ])
