"""``python -m rlhf_exp.task [--n 8] [--seed 0]``: show what the review generator makes (reviews with their scores,
preference pairs, unpaired examples). To rebuild the checkpoints: ``python -m rlhf_exp.task.build``."""
import argparse

from rlhf_exp.task import reviews as R


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m rlhf_exp.task", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("# reviews (score, label)")
    for r in R.generate_reviews(args.n, args.seed):
        print(f"{r.score:+6.2f} {r.label}  {r.text}")
    print("\n# preference pairs")
    for p in R.preference_pairs(max(1, args.n // 4), args.seed):
        print(f"prompt:   {p['prompt']!r}\nchosen:   {p['chosen']!r}\nrejected: {p['rejected']!r}\n")
    print("# unpaired examples")
    for u in R.unpaired_examples(max(1, args.n // 4), args.seed):
        print(f"{'+' if u['label'] else '-'} {u['prompt']!r} {u['completion']!r}")


if __name__ == "__main__":
    main()
