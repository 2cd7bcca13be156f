"""The offline loop shared by the offline objectives (``objective=sft|reward|dpo|kto``).

One step: draw ``train.batch_size`` examples (all processes together; one seeded shuffle per pass over the data,
each process keeping its slice), one optimizer step per ``train.mini_batch_size`` examples (default: the whole batch),
each accumulated from micro-batches of ``train.micro_batch_size`` (global; default: no accumulation), with the same
optimizer, schedule, clipping and precision settings as the online loop. Every ``eval.every``
steps (and at the start and end): the objective's loss and statistics on held-out examples (``eval/loss/<name>``,
``eval/accuracy`` ...) and, for the objectives that train a policy (sft, dpo, kto), the *online loop's* evaluation
(``rlhf_exp.train.evaluation``): seeded samples on the held-out prompts scored by ``reward_model=``, exact KL to the
initial policy. ``summary.json`` and the final line have the online runs' keys and format.

Why not TRL's trainers: see docs/offline.md ("Design").
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from omegaconf import DictConfig

from rlhf_exp.core.state import check_keys
from rlhf_exp.files import atomic_dir
from rlhf_exp.data import OfflineData, chat_records, load_offline_data, offline_eval_prompts
from rlhf_exp.distributed import even_chunks, in_mixed_precision, micro_batch_loss_scale, rank_slice, synchronize
from rlhf_exp.modeling import check_tokenizer_fits, max_positions, reference_of
from rlhf_exp.objectives import build_offline_objective
from rlhf_exp.objectives.offline_base import Context
from rlhf_exp.objectives.reward_modelling import REWARD_MODEL_DIR
from rlhf_exp.rewards import build_reward_model
from rlhf_exp.tracking import Tracker
from rlhf_exp.train import checkpoint
from rlhf_exp.train.optim import make_adamw
from rlhf_exp.train.common import (NonFiniteLossError, advance_bar, batch_geometry_of, make_accelerator,
                                   progress_bar, save_run_policy)
from rlhf_exp.train.context import ProcessContext
from rlhf_exp.train.evaluation import Evaluator, summary_line
from rlhf_exp.train.history import RunHistory
from rlhf_exp.train.state import ResumablePromptSampler
from rlhf_exp.train.rollouts import (PolicyRollouts, evaluation_sampling, load_policy_tokenizer, stop_ids_of,
                                     training_sampling)


class OfflineTrainer:
    """Builds the components from the composed config and runs the loop. See the module docstring."""

    def __init__(self, cfg: DictConfig, output_dir: Path, tracker: Tracker, accelerator=None):
        self.cfg, self.output_dir, self.tracker = cfg, Path(output_dir), tracker
        self.proc = proc = ProcessContext.of(accelerator if accelerator is not None else make_accelerator(cfg))

        tcfg = cfg.train
        self.objective = obj = build_offline_objective(cfg.objective)
        if cfg.kl.controller != "none" and proc.is_main:
            print(f"[rlhf_exp] objective={obj.name} is offline: kl={cfg.kl.controller} is not used"
                  + (" (its KL strength is objective.beta)." if "beta" in cfg.objective else "."), flush=True)
        # global sizes, per-process sizes derived (checked before anything loads: make_accelerator)
        self.geometry = batch_geometry_of(cfg, proc.world)
        self.local_batch = self.geometry.local_batch

        mcfg = cfg.model
        self.tokenizer, tokenizer_option = load_policy_tokenizer(mcfg)
        self.pad_id = self.tokenizer.pad_token_id
        self.ctx = Context(device=proc.device, pad_id=self.pad_id, eos_id=self.tokenizer.eos_token_id,
                           reduce=proc.reduce)
        model = obj.build_model(mcfg)
        obj.bind_tokenizer(model, self.tokenizer)
        check_tokenizer_fits(model, self.tokenizer, "model.path", tokenizer_option)
        # The reference: the initial policy (DPO/KTO losses; the KL of every policy evaluation).
        self.ref = (in_mixed_precision(proc.acc, reference_of(model, mcfg.ref_path, mcfg.dtype).to(proc.device))
                    if obj.trains_policy else None)

        limit = max_positions(model)
        if limit is not None and obj.max_length > limit:
            if proc.is_main:
                print(f"[rlhf_exp] objective.max_length={obj.max_length} is longer than the {limit} positions of "
                      f"model.path={mcfg.path}: examples are cut to {limit} tokens.", flush=True)
            obj.max_length = limit
        # conversational records come back rendered with the policy tokenizer's chat template
        raw = data = load_offline_data(cfg.dataset, obj.data_format, self.tokenizer)
        if cfg.dataset.chat_template and obj.trains_policy:  # prompts as the policy will see them
            data = OfflineData(chat_records(raw.train, self.tokenizer), chat_records(raw.eval, self.tokenizer))
        self.train_items = obj.encode(data.train, self.tokenizer)
        self.eval_items = obj.encode(data.eval, self.tokenizer)
        self.forward_bs = int(tcfg.forward_batch_size)
        obj.prepare(self.train_items, self.ref, self.ctx, self.forward_bs)
        self.sampler = ResumablePromptSampler(self.train_items, seed=cfg.seed)   # one global draw per step; each rank
                                                                                # a slice
        self.n_train = len(data.train)

        if obj.trains_policy:
            self.reward = build_reward_model(cfg.reward_model).to(proc.device)
            self.reward.bind_policy_tokenizer(self.tokenizer)
            self.eval_prompts = offline_eval_prompts(cfg.dataset, self.tokenizer, raw.eval)
            sampling = training_sampling(cfg.generation, announce=proc.is_main)
            eval_sampling, eval_lengths = evaluation_sampling(sampling, cfg.eval, len(self.eval_prompts))

        self.optimizer = make_adamw(model.parameters(), tcfg)   # train.adamw_impl: rlhf_exp.train.optim
        from transformers import get_scheduler

        self.scheduler = get_scheduler(tcfg.lr_schedule, self.optimizer, num_warmup_steps=tcfg.warmup_steps,
                                       num_training_steps=tcfg.steps * self.geometry.optimizer_steps)
        self.model, self.optimizer = proc.acc.prepare(model, self.optimizer)
        # the online loop's evaluation of the policy (the objectives that train one): reward and KL on held-out prompts
        self.evaluator: Optional[Evaluator] = None
        if obj.trains_policy:
            stop_ids = stop_ids_of(proc.acc.unwrap_model(self.model).lm, self.tokenizer)
            rollouts = PolicyRollouts.build(cfg, proc, self.model, self.ref, self.reward, self.tokenizer,
                                            self.pad_id, stop_ids, self.forward_bs, needs_value=False)
            self.evaluator = Evaluator(rollouts, self.eval_prompts, eval_lengths, eval_sampling, cfg.eval, tracker,
                                       proc)
        self.history = RunHistory(tracker)

    # ------------------------------------------------------------------------------------------ checkpoint state
    def _stateful(self) -> dict[str, Any]:
        """The parts of the loop whose state a checkpoint holds, by name (the model, optimizer, scheduler and the
        global random states are accelerate's)."""
        return {"sampler": self.sampler, "objective": self.objective, "history": self.history}

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self._stateful().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        parts = self._stateful()
        check_keys(state, parts, "the offline loop")
        for name, part in parts.items():
            part.load_state_dict(state[name])

    @property
    def device(self) -> torch.device:
        return self.proc.device

    @property
    def unwrapped(self):
        """The trained model without its engine wrapper."""
        return self.proc.acc.unwrap_model(self.model)

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
        if self.proc.reduce is not None:
            t = self.proc.reduce(t)
        return {k: float(t[0, i] / t[1, i]) if float(t[1, i]) > 0 else math.nan for i, k in enumerate(keys)}

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self, step: int) -> dict[str, float]:
        """One step: ``train.batch_size`` examples drawn once for all processes (each keeps its slice of every
        global micro-batch), ``batch_size / mini_batch_size`` optimizer steps, each accumulated over micro-batches
        with accelerate's ``accumulate``. A micro-batch's mean loss is scaled by its share of the global
        mini-batch's weight (examples; SFT: completion tokens), so the update is the same for any number of
        processes and micro-batches."""
        tcfg, geo = self.cfg.train, self.geometry
        synchronize(self.device)
        t0 = time.perf_counter()
        obj = self.objective
        items = rank_slice(self.sampler.next(geo.batch), self.proc.world, self.proc.rank, geo.micro)
        chunks = [items[s:s + geo.local_micro] for s in range(0, len(items), geo.local_micro)]
        weights = [obj.weight(c) for c in chunks]
        k = geo.accumulation_steps
        totals = torch.tensor([sum(weights[i:i + k]) for i in range(0, len(chunks), k)], dtype=torch.float64,
                              device=self.device)
        if self.proc.reduce is not None:
            totals = self.proc.reduce(totals)          # each optimizer step's weight over all processes
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        wsum: dict[str, float] = defaultdict(float)
        bad_loss = None
        for i, (chunk, w) in enumerate(zip(chunks, weights)):
            with self.proc.acc.accumulate(self.model):
                loss, stats = obj.loss(self.model, self.ref, chunk, self.ctx)
                if not torch.isfinite(loss):
                    bad_loss = f"micro-batch {i}"
                    if self.proc.world == 1:   # with more processes every rank stops at the gradient check
                        raise NonFiniteLossError(
                            f"Non-finite {obj.name} loss at step {step}, micro-batch {i}; the update was not "
                            f"applied. Lower train.lr (now {tcfg.lr}) or use bf16 instead of fp16.")
                self.proc.acc.backward(loss * micro_batch_loss_scale(w, float(totals[i // k]), self.proc.world, k))
            self._accumulate(sums, wsum, stats, w)
            if (i + 1) % k == 0:
                if not self.proc.acc.sync_gradients:
                    raise RuntimeError("internal: the last micro-batch of a mini-batch did not sync gradients.")
                grad_norm = self.proc.acc.clip_grad_norm_(self.model.parameters(), tcfg.max_grad_norm)
                if grad_norm is not None and not torch.isfinite(torch.as_tensor(grad_norm)):
                    note = f" (this process's loss was non-finite at {bad_loss})" if bad_loss else ""
                    raise NonFiniteLossError(f"Non-finite gradient norm at step {step}{note}; the update was not "
                                             f"applied. Lower train.lr (now {tcfg.lr}).")
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if grad_norm is not None:   # DeepSpeed reports it only after its first step
                    sums["grad_norm"] += float(grad_norm)     # the same global norm on every rank
                    wsum["grad_norm"] += 1.0
        if "grad_norm" not in sums:         # every rank reduces the same keys
            sums["grad_norm"], wsum["grad_norm"] = 0.0, 0.0
        m = {f"train/{k}": v for k, v in self._reduce_means(sums, wsum).items()}
        m["train/lr"] = self.scheduler.get_last_lr()[0]
        m["train/epoch"] = step * tcfg.batch_size / self.n_train
        synchronize(self.device)
        step_s = time.perf_counter() - t0
        m.update({"perf/update_s": step_s, "perf/step_s": step_s, "perf/samples_per_s": tcfg.batch_size / step_s})
        return m

    # ------------------------------------------------------------------------------------------ eval
    @torch.no_grad()
    def heldout(self) -> dict[str, float]:
        """The objective's loss and statistics on this process's share of the held-out examples, reduced. Every
        process runs the same number of chunks (:func:`~rlhf_exp.distributed.even_chunks`), whatever the
        remainder."""
        self.model.eval()
        items = self.eval_items[self.proc.rank::self.proc.world]
        sums: dict[str, float] = defaultdict(float)
        wsum: dict[str, float] = defaultdict(float)
        for s, e in even_chunks(len(items), len(self.eval_items), self.proc.world, self.forward_bs):
            chunk = items[s:e]
            w = self.objective.weight(chunk)
            _, stats = self.objective.loss(self.model, self.ref, chunk, self.ctx)
            self._accumulate(sums, wsum, stats, w)
        return {f"eval/{k}": v for k, v in self._reduce_means(sums, wsum).items()}

    def evaluate(self, step: int) -> dict[str, float]:
        """The policy evaluation (objectives that train a policy) and the objective's held-out loss."""
        m = self.evaluator(step) if self.evaluator is not None else {}
        m.update(self.heldout())
        return m

    # ------------------------------------------------------------------------------------------ run
    def train(self) -> dict[str, Any]:
        tcfg, ecfg = self.cfg.train, self.cfg.eval
        start, t_start = checkpoint.begin(self)      # 0, or the step of the checkpoint this run resumes from
        if start == 0:
            self.history.record(self.evaluate(0), 0)
        loss_key = f"train/{self.objective.summary_stats[0]}"      # the objective's loss, for the progress bar
        bar = progress_bar(self.objective.name, tcfg.steps, self.proc.is_main, initial=start)
        for step in range(start + 1, tcfg.steps + 1):
            metrics = self.train_step(step)
            if step == tcfg.steps or (ecfg.every and step % ecfg.every == 0):
                metrics.update(self.evaluate(step))
            self.history.record(metrics, step)
            advance_bar(bar, loss=f"{metrics.get(loss_key, math.nan):.4f}")
            checkpoint.step_done(self, step, t_start)
        bar.close()
        return self.finish(time.perf_counter() - t_start)

    def finish(self, wall_s: float, status: str = "finished") -> dict[str, Any]:
        """Write ``summary.json`` (from the run history, with the objective's held-out statistics) and, when the run
        trained and ``train.save_model``, save what it trained: the policy to ``<run dir>/policy``, a reward model to
        ``<run dir>/reward_model``. With several processes a failed run is not saved (saving is collective)."""
        summary = self.history.summary(status, self.objective.name, "none", wall_s, self.proc.world,
                                       extra_keys=tuple(f"eval/{k}" for k in self.objective.summary_stats))
        if (self.cfg.train.save_model and self.history.steps_done() > 0
                and (status == "finished" or self.proc.world == 1)):
            if self.objective.trains_policy:
                summary.update(save_run_policy(self.proc, self.model, self.tokenizer, self.output_dir / "policy",
                                               merge_lora=self.cfg.model.lora.save == "merged"))
            else:
                summary.update(save_reward_model(self.proc, self.model, self.tokenizer,
                                                 self.output_dir / REWARD_MODEL_DIR))
        self.tracker.summary(summary)
        return summary


def save_reward_model(proc: ProcessContext, model, tokenizer, folder: Path) -> dict[str, str]:
    """Save a trained reward model (a sequence classifier) and its tokenizer, right-padded as reward models score, to
    ``folder``; return the summary entry naming it. Collective like :func:`~rlhf_exp.train.common.save_run_policy`."""
    state = proc.acc.get_state_dict(model)            # collective: the full weights of a sharded engine
    if proc.is_main:
        with atomic_dir(folder) as tmp:     # a failed save leaves an earlier folder as it was
            proc.acc.unwrap_model(model).save_pretrained(tmp, state_dict=state, safe_serialization=True)
            side, tokenizer.padding_side = tokenizer.padding_side, "right"     # reward models score right-padded
            tokenizer.save_pretrained(tmp)
            tokenizer.padding_side = side
    proc.acc.wait_for_everyone()
    return {"reward_model_dir": str(folder)}


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
