"""``python -m rlhf_exp.benchmark [overrides ...] [--steps N] [--out FILE]``: speed and memory of the online loop.

Runs ``N`` training steps of the composed config (after one warm-up step) and reports, per step, the time spent
generating, scoring (reward model and log-prob forwards) and updating, samples/s and tokens/s, and the peak memory
(GPU: ``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set size). Results are printed as a
table and appended as one JSON line to ``--out`` (default ``benchmarks.jsonl``), with the device, versions and
overrides, so numbers in docs can be traced to a command.

Examples::

    python -m rlhf_exp.benchmark                                   # the default PPO on the embedded task
    python -m rlhf_exp.benchmark objective=grpo --steps 10
    python -m rlhf_exp.benchmark model=gpt2 model.path=/models/gpt2 train.mixed_precision=bf16 model.lora.r=16
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _peak_memory_mb(device) -> tuple[str, float]:
    import torch

    if device.type == "cuda":
        return "gpu_peak_mb", torch.cuda.max_memory_allocated(device) / 2**20
    return "cpu_peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m rlhf_exp.benchmark", description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m rlhf_exp")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    ap.add_argument("--out", type=Path, default=Path("benchmarks.jsonl"))
    args = ap.parse_args(argv)

    import torch
    from hydra import compose, initialize_config_dir

    from rlhf_exp.config import CONFIG_DIR
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.common import quiet_libraries, seed_everything
    from rlhf_exp.train.online import OnlineTrainer

    quiet_libraries()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", "train.save_model=false", *args.overrides])
    seed_everything(int(cfg.seed))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = OnlineTrainer(cfg, Path(tmp), Tracker(Path(tmp), cfg.logger, {}, "benchmark", enabled=False))
        device = trainer.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer.train_step(0)  # warm-up (allocations, kernels)
        rows = []
        t0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            rows.append(trainer.train_step(step))
        wall = time.perf_counter() - t0
    mem_key, mem = _peak_memory_mb(device)
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("perf/gen_s", "perf/score_s", "perf/update_s", "perf/step_s", "perf/samples_per_s",
                     "perf/tokens_per_s")}
    result = {
        "overrides": args.overrides, "steps": args.steps, "wall_s": wall, **med, mem_key: mem,
        "objective": cfg.objective.name, "model": cfg.model.path, "batch_size": cfg.train.batch_size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": sys.version.split()[0],
    }
    print(f"{'metric':<22}{'median per step':>16}")
    for k, v in med.items():
        print(f"{k:<22}{v:>16.3f}")
    print(f"{mem_key:<22}{mem:>16.1f}")
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
