"""``python -m rlhf_exp.decode_benchmark --old PATH/sampling.py [options]``: this decode loop against another one, A/B.

Loads the other version's ``rlhf_exp/rollout/sampling.py`` from its file (a checkout of older code) and decodes the
same batch with the same seed by both, alternately, in one process: the ratio of their median process CPU times is
comparable even on a machine shared with other work, where absolute times are not. Checks that both give the same
tokens. Variants of this loop: ``--variants nocompact compact1 compile`` (never drop ended rows, drop them at every
end, ``generation.compile``). Docs: docs/performance.md ("The decode loop").

Example::

    git -C /path/to/repo show <commit>:rlhf_exp/rollout/sampling.py > /tmp/old_sampling.py
    python -m rlhf_exp.decode_benchmark --old /tmp/old_sampling.py --batch 64 --max-new 96 --min-new 96 --random
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m rlhf_exp.decode_benchmark", description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the other version's rlhf_exp/rollout/sampling.py")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-new", type=int, default=96)
    ap.add_argument("--min-new", type=int, default=96)
    ap.add_argument("--random", action="store_true", help="random weights (responses run to their limit)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--variants", nargs="*", default=[], choices=["nocompact", "compact1", "compile"])
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlhf_exp.rollout import sampling as new
    from rlhf_exp.task import POLICY_DIR

    torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("old_sampling", args.old)
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_sampling"] = old
    spec.loader.exec_module(old)
    torch.manual_seed(0)
    lm = (AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(POLICY_DIR)) if args.random
          else AutoModelForCausalLM.from_pretrained(POLICY_DIR)).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, lm.config.vocab_size - 1, (int(n),), generator=g).tolist()
               for n in torch.randint(2, 9, (args.batch,), generator=g)]
    ids, mask = new.pad_left(prompts, 0)
    lengths = torch.randint(args.min_new, args.max_new + 1, (args.batch,), generator=g)
    s = new.SamplingSettings(max_new_tokens=args.max_new, min_new_tokens=args.min_new)
    stop = [int(lm.config.eos_token_id)]

    def ours(every=None, decoder=None):
        def f():
            saved = new.COMPACT_EVERY
            new.COMPACT_EVERY = every or saved
            try:
                return new.decode(lm, ids, mask, s, lengths, stop, 0, decoder=decoder)
            finally:
                new.COMPACT_EVERY = saved
        return f

    variants = {"old": lambda: old.decode(lm, ids, mask, s, lengths, stop, 0), "new": ours()}
    if "nocompact" in args.variants:
        variants["new_nocompact"] = ours(every=10**9)
    if "compact1" in args.variants:
        variants["new_compact1"] = ours(every=1)
    if "compile" in args.variants:
        variants["new_compiled"] = ours(decoder=new.Decoder(compile=True))
    outs, first = {}, {}
    with torch.no_grad():
        for k, f in variants.items():
            torch.manual_seed(7)
            t0 = time.perf_counter()
            outs[k] = new.truncate_responses(f(), lengths, stop, 0)[0]
            first[k] = time.perf_counter() - t0
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, f in variants.items():
                c = time.process_time()
                f()
                times[k].append(time.process_time() - c)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"same_tokens_as_old": {k: bool(torch.equal(v, outs["old"])) for k, v in outs.items()},
              "cpu_s_median": med, "old_over": {k: med["old"] / v for k, v in med.items()}, "first_call_s": first,
              "args": vars(args)}
    print(f"threads {args.threads}, batch {args.batch}, tokens {args.min_new}-{args.max_new}, "
          f"{'random' if args.random else 'embedded'} weights; median CPU s of {args.rounds} alternating calls:")
    for k in variants:
        print(f"  {k:<14} {med[k]:.3f} s   old / this {result['old_over'][k]:.2f}x   same tokens as old: "
              f"{result['same_tokens_as_old'][k]}   first call {first[k]:.1f} s")
    return result


if __name__ == "__main__":
    main()
