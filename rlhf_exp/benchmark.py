"""``python -m rlhf_exp.benchmark [overrides ...] [--steps N] [--out FILE]``: speed and memory of the online loop.

Runs ``N`` training steps of the composed config (after one warm-up step) and reports, per step, the time spent
generating, scoring (reward model and log-prob forwards) and updating, samples/s and tokens/s, and the peak memory
(GPU: ``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set size). One more, untimed step is
run under PyTorch's FLOP counter: the update's operations per step and the achieved rates (update and whole step,
GFLOP/s over their median times) are reported beside the measured rate of a square matrix product in the model's
compute dtype on the same device, the attainable rate they are read against. The phase table gives, for
generation, scoring and the update, the median tokens/s, the analytic FLOPs per step (:mod:`rlhf_exp.perf`) and the
achieved FLOP/s next to the measured rate of an isolated matrix product of the phase's shape, in the same run; the
time ``generation.compile=true`` spent compiling is reported apart (``compile_s``; it falls in the warm-up step).
Results are printed and appended as one JSON line to ``--out`` (default ``benchmarks.jsonl``), with the device,
versions and overrides, so numbers in docs can be traced to a command.

Examples::

    python -m rlhf_exp.benchmark                                   # the default PPO on the embedded task
    python -m rlhf_exp.benchmark objective=grpo --steps 10
    python -m rlhf_exp.benchmark model=gpt2 model.path=/models/gpt2 train.mixed_precision=bf16 model.lora.r=16
    python -m rlhf_exp.benchmark --qwen2-shaped /tmp/qwen2_shaped model.dtype=bfloat16   # a real vocabulary
    python -m rlhf_exp.benchmark --peer train.batch_size=128 kl.kl_coef=0.04   # GRPO vs TRL's GRPOTrainer
    python -m rlhf_exp.benchmark --peer --random-init train.batch_size=64 objective.group_size=8 \
        generation.max_new_tokens=96 generation.min_new_tokens=96   # long responses (a random policy rarely stops)

``--qwen2-shaped DIR`` measures the cost of a real vocabulary without downloading a model: it writes (once) a
Qwen2-architecture policy built from its config with random weights, Qwen2.5's 151,936-row embedding (tied output
head), 2 layers and a small hidden size, and a tokenizer of 151,665 tokens (Qwen2.5's count: the embedded task's BPE
padded with filler tokens), then benchmarks it (``model.path=DIR``). ``--random-init`` benchmarks a randomly
initialised copy of ``model.path`` (same architecture and tokenizer), whose responses run to their length limit.
Docs: docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _peak_memory_mb(device) -> tuple[str, float]:
    from rlhf_exp.perf import peak_memory_mb

    return peak_memory_mb(device)


def build_random_copy(src, path: Path, seed: int = 0) -> Path:
    """Write a randomly initialised model of ``src``'s architecture (its config, seeded weights) with ``src``'s
    tokenizer and generation config to ``path``; returns ``path``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src)).save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(path)
    try:
        GenerationConfig.from_pretrained(src).save_pretrained(path)
    except OSError:   # no generation_config.json
        pass
    return path


def random_init_override(overrides: list[str], tmp: str) -> str:
    """``model.path=<a random copy of the composed model.path>`` (written under ``tmp``)."""
    from hydra import compose, initialize_config_dir

    from rlhf_exp.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return f"model.path={build_random_copy(cfg.model.path, Path(tmp) / 'random_policy')}"


QWEN2_VOCAB = 151_936        # Qwen2.5's embedding rows (config.json vocab_size)
QWEN2_TOKENIZER = 151_665    # tokens in Qwen2.5's tokenizer (len(tokenizer)); the rest of the rows are padding


def build_qwen2_shaped(path: Path, vocab_size: int = QWEN2_VOCAB, tokenizer_size: int = QWEN2_TOKENIZER,
                       layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """Write a random Qwen2-architecture causal LM with a real-size vocabulary and a matching tokenizer to ``path``
    (skipped when ``path/config.json`` exists). The tokenizer is the embedded task's byte-level BPE with filler
    tokens ``<|filler_i|>`` appended to its vocabulary up to ``tokenizer_size`` entries, so prompts tokenise as on
    the embedded task while the output layer spans ``vocab_size`` logits."""
    import torch
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from rlhf_exp.task import TOKENIZER_DIR

    path = Path(path)
    if (path / "config.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    spec = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    n_special = len([t for t in spec["added_tokens"] if t["id"] >= len(vocab)])
    for i in range(len(vocab), tokenizer_size - n_special):
        vocab[f"<|filler_{i}|>"] = i
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    return path


def count_step_flops(trainer, step: int) -> tuple[float, float]:
    """Floating-point operations of one online step, in all and in its update, counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and the attention kernels PyTorch registers a
    formula for; element-wise work is not counted, and masked attention on CPU is not either, so this is a lower
    bound). The step runs for real: it advances the trainer like any other step."""
    from torch.utils.flop_counter import FlopCounterMode

    update_flops = []
    inner = trainer.update

    def counted_update(*args, **kwargs):
        with FlopCounterMode(display=False) as fc:
            out = inner(*args, **kwargs)
        update_flops.append(fc.get_total_flops())
        return out

    trainer.update = counted_update
    try:
        with FlopCounterMode(display=False) as total:
            trainer.train_step(step)
    finally:
        del trainer.update
    return float(total.get_total_flops()), float(sum(update_flops))


def matmul_throughput(device, dtype, n: int = 1024, seconds: float = 0.5) -> float:
    """Measured FLOP/s of a square ``n x n`` matrix product in ``dtype`` on ``device``: the machine's attainable rate
    for the model's main operation, against which the step's achieved rate is read."""
    import torch

    from rlhf_exp.distributed import synchronize

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        synchronize(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


PHASES = (("gen", "generation"), ("score", "scoring"), ("update", "update"))


def _phase_reference_rates(trainer, rows: list[dict], device, dtype) -> dict[str, float]:
    """The measured rate of each phase's matrix product (:func:`rlhf_exp.perf.reference_rates`) at this run's
    sizes: the local batch's rows for a decode step; a forward chunk's (scoring) or micro-batch's (update) rows times
    the median sequence length for the token-parallel phases."""
    from rlhf_exp.perf import reference_rates, shape_of

    shape = shape_of(trainer.unwrapped.lm)
    seq = statistics.median(r["perf/update_tokens_per_s"] * r["perf/update_s"] for r in rows)
    seq /= max(int(trainer.cfg.train.epochs), 1) * trainer.local_batch     # tokens per sequence
    rows_per_pass = min(trainer.geometry.local_micro, trainer.local_batch)
    rates = reference_rates(shape, trainer.local_batch, int(rows_per_pass * seq), device, dtype)
    rates["score"] = reference_rates(shape, 1, int(min(trainer.forward_bs, trainer.local_batch) * seq), device,
                                     dtype)["score"]
    return rates


def _phase_table(rows: list[dict], ref: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per phase: median seconds, tokens/s, GFLOP per step, achieved GFLOP/s, the reference product's GFLOP/s and
    the achieved share of it."""
    out = {}
    for key, _ in PHASES:
        achieved = statistics.median(r[f"perf/{key}_flops_per_s"] for r in rows)
        out[key] = {"s": statistics.median(r[f"perf/{key}_s"] for r in rows),
                    "tokens_per_s": statistics.median(r[f"perf/{key}_tokens_per_s"] for r in rows),
                    "gflop": statistics.median(r[f"perf/{key}_flops"] for r in rows) / 1e9,
                    "gflop_per_s": achieved / 1e9, "matmul_gflop_per_s": ref[key] / 1e9,
                    "of_matmul": achieved / ref[key] if ref[key] > 0 else float("nan")}
    return out


def format_phase_table(phases: dict[str, dict[str, float]]) -> str:
    head = f"{'phase':<12}{'s/step':>9}{'tokens/s':>11}{'GFLOP':>9}{'GFLOP/s':>10}{'matmul GFLOP/s':>16}{'share':>7}"
    lines = [head]
    for key, name in PHASES:
        p = phases[key]
        lines.append(f"{name:<12}{p['s']:>9.3f}{p['tokens_per_s']:>11.0f}{p['gflop']:>9.2f}{p['gflop_per_s']:>10.1f}"
                     f"{p['matmul_gflop_per_s']:>16.1f}{p['of_matmul']:>7.2f}")
    g, u = phases["gen"]["gflop_per_s"], phases["update"]["gflop_per_s"]
    lines.append(f"generation's achieved FLOP/s / the update's: {g / u if u else float('nan'):.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m rlhf_exp.benchmark", description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m rlhf_exp")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    ap.add_argument("--out", type=Path, default=Path("benchmarks.jsonl"))
    ap.add_argument("--qwen2-shaped", type=Path, default=None, metavar="DIR",
                    help="benchmark a random 2-layer Qwen2-shaped policy with a 151,936-token vocabulary, written to "
                         "DIR (once) and used as model.path")
    ap.add_argument("--random-init", action="store_true",
                    help="benchmark a randomly initialised copy of model.path (same architecture and tokenizer): its "
                         "responses run to their length limit")
    ap.add_argument("--peer", action="store_true",
                    help="GRPO against TRL's GRPOTrainer on the same work, interleaved in this process "
                         "(rlhf_exp.peer_benchmark; docs/performance.md)")
    args = ap.parse_args(argv)
    overrides = list(args.overrides)
    if args.random_init:
        with tempfile.TemporaryDirectory() as tmp:
            rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--random-init"]
            if args.peer:
                from rlhf_exp.peer_benchmark import PEER_DEFAULTS
                model = random_init_override([*PEER_DEFAULTS, *overrides], tmp)
            else:
                model = random_init_override(overrides, tmp)
            return main([*rest, model])
    if args.peer:
        from rlhf_exp.peer_benchmark import run_peer

        return run_peer(overrides, args.steps, args.out)
    if args.qwen2_shaped is not None:
        overrides.append(f"model.path={build_qwen2_shaped(args.qwen2_shaped)}")

    import torch
    import transformers
    from hydra import compose, initialize_config_dir

    from rlhf_exp.config import CONFIG_DIR
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.common import quiet_libraries, seed_everything
    from rlhf_exp.train.online import OnlineTrainer

    quiet_libraries()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", "train.save_model=false", *overrides])
    seed_everything(int(cfg.seed))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = OnlineTrainer(cfg, Path(tmp), Tracker(Path(tmp), cfg.logger, {}, "benchmark", enabled=False))
        device = trainer.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer.train_step(0)  # warm-up (allocations, kernels; generation.compile compiles here)
        compile_s = trainer.rollouts.engine.compile_s
        rows = []
        t0, c0 = time.perf_counter(), time.process_time()
        for step in range(1, args.steps + 1):
            rows.append(trainer.train_step(step))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        mem_key, mem = _peak_memory_mb(device)
        step_flops, update_flops = count_step_flops(trainer, args.steps + 1)   # one more (untimed) step
        dtype = next(trainer.unwrapped.parameters()).dtype
        if cfg.train.mixed_precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if cfg.train.mixed_precision == "bf16" else torch.float16
        peak = matmul_throughput(device, dtype)
        phase_ref = _phase_reference_rates(trainer, rows, device, dtype)
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("perf/gen_s", "perf/score_s", "perf/update_s", "perf/step_s", "perf/samples_per_s",
                     "perf/tokens_per_s")}
    # achieved rates: counted operations over the median times (the update alone, and the whole step)
    med["update_gflop"] = update_flops / 1e9
    med["update_gflop_per_s"] = update_flops / 1e9 / med["perf/update_s"]
    med["step_gflop_per_s"] = step_flops / 1e9 / med["perf/step_s"]
    med["matmul_gflop_per_s"] = peak / 1e9
    phases = _phase_table(rows, phase_ref)
    result = {
        "overrides": overrides, "steps": args.steps, "wall_s": wall, **med, mem_key: mem,
        # CPU seconds of this process per step (all threads): less sensitive than wall time to other work sharing
        # the machine (but it counts the threads' spin-waits)
        "cpu_s_per_step": cpu / args.steps,
        "compile_s": compile_s, "phases": phases,
        "objective": cfg.objective.name, "model": cfg.model.path, "batch_size": cfg.train.batch_size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": sys.version.split()[0],
        "matmul_dtype": str(dtype).replace("torch.", ""),
    }
    print(f"{'metric':<22}{'median per step':>16}")
    for k, v in med.items():
        print(f"{k:<22}{v:>16.3f}")
    print(f"{mem_key:<22}{mem:>16.1f}")
    print(f"{'cpu_s_per_step':<22}{cpu / args.steps:>16.3f}")
    print(f"{'compile_s':<22}{compile_s:>16.3f}")
    print(format_phase_table(phases))
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
