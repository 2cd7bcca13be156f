"""``python -m rlhf_exp.benchmark --peer [overrides ...]``: rlhf_exp's GRPO step against TRL's ``GRPOTrainer``.

Both trainers run in one process on the same work: the same initial policy (a copy of the composed config's
policy), the same reward (rlhf_exp's reward model, handed to TRL as a reward function), the same training prompts,
batch size, group size, response length limit, sampling temperature, optimizer settings, clipping, advantage
scaling, loss aggregation and KL coefficient (TRL's ``beta``, its k3 estimator in the loss, as ``objective=grpo``).
One rollout batch gives one optimizer step on both sides (``train.mini_batch_size = train.batch_size``,
``train.epochs=1``; TRL ``gradient_accumulation_steps=1``, ``num_iterations=1``).

The steps are interleaved: a callback at the end of each TRL step runs one rlhf_exp step, so both see the same
machine load. TRL's step time is the time between the end of our step and the end of its next step (its
generation, reward, reference forward, loss, backward, optimizer step and logging); ours is ``perf/step_s``. The
first step of each is a warm-up and is not counted. Docs: docs/performance.md.

Mapping of the options (ours -> TRL 1.16 ``GRPOConfig``)::

    train.batch_size -> per_device_train_batch_size     objective.group_size -> num_generations
    generation.max_new_tokens -> max_completion_length  generation.temperature/top_k/top_p -> the same
    kl.kl_coef -> beta                                  objective.clip_low/clip_high -> epsilon/epsilon_high
    objective.scale_rewards -> scale_rewards            objective.kl_bias_correction -> use_bias_correction_kl
    objective.loss_aggregation -> loss_type (seq-mean-token-mean: grpo, token-mean: dapo,
                                             seq-mean-token-sum-norm: dr_grpo)
    objective.mask_truncated_completions -> the same    train.lr, adam_betas, adam_eps, weight_decay,
                                                        max_grad_norm -> the same; lr_scheduler_type constant
"""
from __future__ import annotations

import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# rlhf_exp's side of the comparison: GRPO with a fixed KL coefficient, all responses up to the same length limit
# (TRL has no per-sample length draw), one optimizer step per rollout batch; at beta 0 no reference forward
# (kl.track=false; TRL loads no reference model then).
PEER_DEFAULTS = ["objective=grpo", "kl=fixed", "kl.kl_coef=0.0", "kl.track=false", "objective.group_size=4",
                 "train.batch_size=32", "train.mini_batch_size=null", "generation.max_new_tokens=16",
                 "generation.min_new_tokens=16"]

LOSS_TYPES = {"seq-mean-token-mean": "grpo", "token-mean": "dapo", "seq-mean-token-sum-norm": "dr_grpo"}


def trl_grpo_config(cfg, output_dir: str, steps: int):
    """TRL's ``GRPOConfig`` for the composed rlhf_exp config ``cfg`` (see the module docstring for the mapping).
    Raises ``ValueError`` for a config TRL cannot run the same way."""
    from trl import GRPOConfig

    o, t, g = cfg.objective, cfg.train, cfg.generation
    problems = []
    if o.name != "grpo":
        problems.append(f"objective={o.name} (use objective=grpo)")
    if t.mini_batch_size not in (None, t.batch_size) or t.epochs != 1:
        problems.append(f"train.mini_batch_size={t.mini_batch_size}, train.epochs={t.epochs} (TRL's GRPO step here is "
                        f"one optimizer step per batch: train.mini_batch_size=null train.epochs=1)")
    if g.min_new_tokens != g.max_new_tokens:
        problems.append(f"generation.min_new_tokens={g.min_new_tokens} != max_new_tokens={g.max_new_tokens} (TRL "
                        f"generates every response up to max_completion_length: set them equal)")
    if cfg.kl.controller != "fixed" or (cfg.kl.estimator or "k3") != "k3" or cfg.kl.in_reward:
        problems.append("kl must be kl=fixed with the k3 estimator in the loss (TRL's beta)")
    if o.loss_aggregation not in LOSS_TYPES:
        problems.append(f"objective.loss_aggregation={o.loss_aggregation} (valid here: {', '.join(LOSS_TYPES)})")
    if problems:
        raise ValueError("--peer compares with TRL's GRPOTrainer on the same work; not comparable: "
                         + "; ".join(problems))
    return GRPOConfig(
        output_dir=output_dir, per_device_train_batch_size=int(t.batch_size), num_generations=int(o.group_size),
        gradient_accumulation_steps=1, num_iterations=1, max_steps=steps, max_completion_length=int(g.max_new_tokens),
        temperature=float(g.temperature), top_k=int(g.top_k or 0), top_p=float(g.top_p), beta=float(cfg.kl.kl_coef),
        epsilon=float(o.clip_low), epsilon_high=None if o.clip_high is None else float(o.clip_high),
        scale_rewards=str(o.scale_rewards), loss_type=LOSS_TYPES[o.loss_aggregation],
        use_bias_correction_kl=bool(o.kl_bias_correction),
        mask_truncated_completions=bool(o.mask_truncated_completions),
        learning_rate=float(t.lr), adam_beta1=float(t.adam_betas[0]), adam_beta2=float(t.adam_betas[1]),
        adam_epsilon=float(t.adam_eps), weight_decay=float(t.weight_decay), max_grad_norm=float(t.max_grad_norm),
        lr_scheduler_type="constant", seed=int(cfg.seed), bf16=False, use_cpu=cfg.get("device") == "cpu",
        gradient_checkpointing=False, report_to=[], save_strategy="no", logging_steps=1, disable_dropout=True,
        dataloader_num_workers=0,
    )


def run_peer(overrides: list[str], steps: int, out: Path) -> dict:
    """Interleave ``steps`` (+1 warm-up) GRPO steps of rlhf_exp and of TRL's GRPOTrainer; print and return the
    median step times and their ratio, and append the result to ``out`` as one JSON line."""
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from hydra import compose, initialize_config_dir
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback
    from trl import GRPOTrainer

    from rlhf_exp.config import CONFIG_DIR
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.common import quiet_libraries, seed_everything
    from rlhf_exp.train.online import OnlineTrainer

    quiet_libraries()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", "train.save_model=false", *PEER_DEFAULTS, *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        args = trl_grpo_config(cfg, tmp, steps + 1)
        seed_everything(int(cfg.seed))
        ours = OnlineTrainer(cfg, Path(tmp), Tracker(Path(tmp), cfg.logger, {}, "benchmark", enabled=False))
        reward = ours.reward

        def task_reward(prompts, completions, completion_ids=None, **kwargs):
            with torch.no_grad():
                return reward(list(prompts), list(completions), completion_ids=completion_ids).scores.tolist()

        n_prompts = (steps + 1) * int(cfg.train.batch_size) // int(cfg.objective.group_size)
        texts = [p.text for p in ours.sampler.prompts]
        dataset = Dataset.from_list([{"prompt": texts[i % len(texts)]} for i in range(n_prompts)])
        ours_rows: list[dict] = []
        trl_times: list[float] = []
        cpu: dict[str, list[float]] = {"ours": [], "trl": []}   # process CPU seconds per step (all threads)

        class Interleave(TrainerCallback):
            """At the end of each TRL step: note its time, run one rlhf_exp step, restart TRL's clock."""
            t = c = 0.0

            def on_train_begin(self, *a, **k):
                self.t, self.c = time.perf_counter(), time.process_time()

            def on_step_end(self, *a, **k):
                trl_times.append(time.perf_counter() - self.t)
                c = time.process_time()
                cpu["trl"].append(c - self.c)
                ours_rows.append(ours.train_step(len(ours_rows)))
                cpu["ours"].append(time.process_time() - c)
                self.t, self.c = time.perf_counter(), time.process_time()

        peer = GRPOTrainer(model=copy.deepcopy(ours.unwrapped.lm), reward_funcs=[task_reward],
                           processing_class=ours.tokenizer, train_dataset=dataset, args=args,
                           callbacks=[Interleave()])
        for quiet in (PrinterCallback, ProgressCallback):   # no per-step log lines or progress bar
            peer.remove_callback(quiet)
        peer.train()
    ours_s = statistics.median(r["perf/step_s"] for r in ours_rows[1:])
    trl_s = statistics.median(trl_times[1:])
    result = {
        "peer": f"trl {trl.__version__} GRPOTrainer", "overrides": list(overrides), "steps": steps,
        "batch_size": int(cfg.train.batch_size), "group_size": int(cfg.objective.group_size),
        "beta": float(cfg.kl.kl_coef), "max_new_tokens": int(cfg.generation.max_new_tokens),
        "ours_step_s": ours_s, "trl_step_s": trl_s, "trl_over_ours": trl_s / ours_s,
        "ours_step_s_all": [r["perf/step_s"] for r in ours_rows], "trl_step_s_all": trl_times,
        "ours_cpu_s": statistics.median(cpu["ours"][1:]), "trl_cpu_s": statistics.median(cpu["trl"][1:]),
        **{f"ours_{k[5:]}": statistics.median(r[k] for r in ours_rows[1:])
           for k in ("perf/gen_s", "perf/score_s", "perf/update_s")},
        "ours_tokens_per_step": statistics.median(r["perf/tokens_per_s"] * r["perf/step_s"] for r in ours_rows[1:]),
        # analytic FLOP rates of our phases (rlhf_exp.perf) and the seconds generation.compile spent compiling
        **{f"ours_{k}_gflop_per_s": statistics.median(r[f"perf/{k}_flops_per_s"] for r in ours_rows[1:]) / 1e9
           for k in ("gen", "score", "update")},
        "ours_compile_s": ours_rows[-1]["perf/compile_s"], "generation_compile": bool(cfg.generation.compile),
        "device": platform.processor() or "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
    }
    print(f"GRPO, batch {result['batch_size']}, group {result['group_size']}, beta {result['beta']}, "
          f"{result['max_new_tokens']} tokens, {steps} steps each (interleaved, median):")
    print(f"  rlhf_exp {ours_s:.3f} s/step | {result['peer']} {trl_s:.3f} s/step | TRL / rlhf_exp = "
          f"{result['trl_over_ours']:.2f}x")
    print(f"  rlhf_exp's step: generation {result['ours_gen_s']:.3f} s, reward + scoring {result['ours_score_s']:.3f} s, "
          f"update {result['ours_update_s']:.3f} s")
    print(f"  rlhf_exp's achieved GFLOP/s: generation {result['ours_gen_gflop_per_s']:.1f}, update "
          f"{result['ours_update_gflop_per_s']:.1f} (generation / update = "
          f"{result['ours_gen_gflop_per_s'] / result['ours_update_gflop_per_s']:.2f}); compile "
          f"{result['ours_compile_s']:.1f} s (generation.compile={str(result['generation_compile']).lower()})")
    print(f"  CPU s/step (all threads): rlhf_exp {result['ours_cpu_s']:.3f} | TRL {result['trl_cpu_s']:.3f} | "
          f"TRL / rlhf_exp = {result['trl_cpu_s'] / result['ours_cpu_s']:.2f}x")
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")
    return result
