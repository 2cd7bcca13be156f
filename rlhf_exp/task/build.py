"""Build the embedded tiny_reviews checkpoints: tokenizer, SFT policy, sentiment reward model.

    python -m rlhf_exp.task.build [--out DIR] [--quick] [--threads N]

Writes, under ``--out`` (default ``rlhf_exp/assets/tiny_reviews``), three Hugging Face directories that load with
``from_pretrained`` and nothing from the hub, plus ``manifest.json``:

* ``tokenizer/``: byte-level BPE trained on the SFT corpus; ``<|endoftext|>`` is BOS, EOS, UNK and PAD (GPT-2 style).
* ``policy/``: a tiny ``GPT2LMHeadModel`` trained with next-token loss on reviews, each followed by EOS and with no
  BOS (RL prompts are bare 2-8-token review prefixes). The loss and batch layout are the SFT objective's
  (``rlhf_exp.objectives.sft.sft_collate`` + ``rlhf_exp.core.losses.next_token_loss``, with an empty prompt). Its config keeps GPT-2's dropout 0.1 on purpose: the RL loop
  must switch dropout off itself, as it must for ``gpt2``.
* ``reward/``: a ``GPT2ForSequenceClassification`` (labels NEGATIVE/POSITIVE; the reward is the POSITIVE logit, as
  with ``lvwerra/distilbert-imdb``), initialised from the SFT policy's transformer (the InstructGPT recipe).
  Because it is causal, its logit at token t only sees tokens <= t, so every token of a training review is a
  labelled prefix: the label of each prefix is ``score_text`` of that prefix (ambiguous ones, 0 < |s| < 0.5, are
  masked; neutral ones, s = 0, are trained towards 50/50). It thus scores RL texts cut anywhere. A small penalty
  keeps ``logit_pos + logit_neg`` near 0, so the POSITIVE logit alone is half the log-odds and about 0 for neutral
  text. Training also shifts position ids by a random offset so that left padding (without position ids) changes
  its scores little; right padding (the default saved in its tokenizer) is exact.
* ``manifest.json``: build parameters, library versions, metrics, sample completions and the sha256 of every file.

Determinism: seeded ``random``, ``torch.manual_seed``, a ``torch.Generator`` for data order,
``torch.use_deterministic_algorithms(True)`` and a fixed thread count (``--threads``, default 2). Two builds with the
same versions, thread count and CPU type give byte-identical files (compare ``manifest.json``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")  # BPE training with one thread: no order effects

import torch  # noqa: E402

from rlhf_exp.core.losses import next_token_loss  # noqa: E402
from rlhf_exp.objectives.sft import sft_collate  # noqa: E402
from rlhf_exp.rollout import pad_right as pad  # noqa: E402
from rlhf_exp.task import ASSET_DIR  # noqa: E402
from rlhf_exp.task import reviews as R  # noqa: E402

EOS = "<|endoftext|>"
LABELS = {0: "NEGATIVE", 1: "POSITIVE"}


@dataclass
class BuildConfig:
    seed: int = 0
    threads: int = 2
    vocab_size: int = 1536
    n_sft_train: int = 64_000
    n_tokenizer_texts: int = 20_000     # the first texts of the SFT corpus train the BPE
    n_sft_eval: int = 2_000
    n_clf_train: int = 20_000
    n_clf_shuffled: int = 20_000        # extra incoherent reviews (sentences of different reviews) for the classifier
    n_clf_eval: int = 2_000
    model: dict = field(default_factory=lambda: dict(n_layer=4, n_embd=128, n_head=4, n_positions=128))
    sft_steps: int = 1_000
    sft_batch: int = 64
    sft_lr: float = 3e-3
    clf_steps: int = 400
    clf_batch: int = 64
    clf_lr: float = 1e-3
    clf_neutral_weight: float = 0.25   # weight of the s = 0 prefixes (trained towards 50/50)
    clf_center_weight: float = 0.05    # penalty on (logit_pos + logit_neg)^2
    clf_max_pos_offset: int = 24       # random position shift (robustness to left padding)
    warmup_frac: float = 0.05
    weight_decay: float = 0.01
    n_gen_prompts: int = 256
    gen_max_new_tokens: int = 16
    fragments_per_review: int = 3


QUICK = dict(vocab_size=512, n_sft_train=3_000, n_sft_eval=200, n_clf_train=1_500, n_clf_shuffled=500,
             n_clf_eval=200, model=dict(n_layer=2, n_embd=64, n_head=2, n_positions=128), sft_steps=120,
             sft_batch=32, clf_steps=60, clf_batch=32, n_gen_prompts=32)


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------


@contextmanager
def deterministic(seed: int, threads: int):
    """Seed ``random`` and torch, fix the thread count, force deterministic kernels; restore the process's
    settings afterwards (the build can run inside another program, e.g. a test)."""
    saved = (random.getstate(), torch.get_rng_state(), torch.get_num_threads(),
             torch.are_deterministic_algorithms_enabled())
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        random.setstate(saved[0])
        torch.set_rng_state(saved[1])
        torch.set_num_threads(saved[2])
        torch.use_deterministic_algorithms(saved[3])


@contextmanager
def stage(name: str, timings: dict):
    print(f"== {name}", flush=True)
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0
    print(f"   {name}: {timings[name]:.1f}s", flush=True)


def batch_indices(lengths: Sequence[int], batch_size: int, steps: int, gen: torch.Generator) -> Iterator[list[int]]:
    """``steps`` batches of indices: shuffled each epoch, grouped by length in windows of 16 batches (less padding)."""
    window = 16 * batch_size
    while True:
        order = torch.randperm(len(lengths), generator=gen).tolist()
        for w in range(0, len(order) - batch_size + 1, window):
            chunk = sorted(order[w:w + window], key=lambda i: lengths[i])
            batches = [chunk[b:b + batch_size] for b in range(0, len(chunk) - batch_size + 1, batch_size)]
            for j in torch.randperm(len(batches), generator=gen).tolist():
                yield batches[j]
                steps -= 1
                if steps == 0:
                    return


def train(model: torch.nn.Module, loss_fn: Callable[[list[int]], torch.Tensor], batches: Iterator[list[int]],
          steps: int, lr: float, cfg: BuildConfig, desc: str) -> list[float]:
    """AdamW with linear warmup and linear decay to 0; gradient norm clipped at 1. Returns the loss per step."""
    from tqdm import tqdm

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    warmup = max(1, int(cfg.warmup_frac * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    model.train()
    losses = []
    bar = tqdm(batches, total=steps, desc=desc, mininterval=1.0, file=sys.stderr)
    for idx in bar:
        loss = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.3f}")
    model.eval()
    return losses


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _round(x):
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v) for v in x]
    return x


# ----------------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------------


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE (GPT-2 pre-tokenisation, no prefix space) wrapped as a fast GPT-2 tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS,
                             model_max_length=128, add_prefix_space=False)


def gpt2_config(cfg: BuildConfig, tokenizer, **extra):
    from transformers import GPT2Config

    e = tokenizer.eos_token_id
    return GPT2Config(vocab_size=len(tokenizer), bos_token_id=e, eos_token_id=e, pad_token_id=e,
                      tie_word_embeddings=True, **cfg.model, **extra)


# The activation the shipped configs name. Training runs with GPT-2's default ``gelu_new`` (the weights of the
# shipped build were trained with it, and this build reproduces them byte for byte); ``gelu_pytorch_tanh`` is the same
# tanh approximation of GELU as one fused op (max |logit difference| on the embedded policy 6.7e-6; a forward and
# backward about 20 % faster: docs/performance.md).
SHIPPED_ACTIVATION = "gelu_pytorch_tanh"


def use_fused_gelu(config_json: Path) -> None:
    """Rewrite a saved GPT-2 ``config.json`` from ``gelu_new`` to :data:`SHIPPED_ACTIVATION` (same formula, fused)."""
    spec = json.loads(config_json.read_text())
    if spec.get("activation_function") == "gelu_new":
        spec["activation_function"] = SHIPPED_ACTIVATION
        config_json.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def train_policy(cfg: BuildConfig, tokenizer, train_ids: list[list[int]], gen: torch.Generator):
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel(gpt2_config(cfg, tokenizer))
    eos = tokenizer.eos_token_id
    seqs = [ids + [eos] for ids in train_ids]

    def loss_fn(idx):
        return lm_loss(model, [seqs[i] for i in idx], eos)

    losses = train(model, loss_fn, batch_indices([len(s) for s in seqs], cfg.sft_batch, cfg.sft_steps, gen),
                   cfg.sft_steps, cfg.sft_lr, cfg, "sft")
    return model, losses


def lm_loss(model, seqs: list[list[int]], pad_id: int, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over real tokens (the EOS that ends each review included): the SFT objective's
    batch layout and loss (``objective=sft``) with an empty prompt."""
    ids, mask, labels = sft_collate([[] for _ in seqs], seqs, pad_id)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return next_token_loss(logits, labels, reduction)


@torch.no_grad()
def eval_lm(model, seqs: list[list[int]], pad_id: int, batch: int = 128) -> float:
    total, count = 0.0, 0
    for b in range(0, len(seqs), batch):
        chunk = seqs[b:b + batch]
        total += lm_loss(model, chunk, pad_id, reduction="sum").item()
        count += sum(len(s) - 1 for s in chunk)
    return total / count


def prefix_targets(tokenizer, texts: Sequence[str]) -> tuple[list[list[int]], list[list[float]]]:
    """Token ids of each text and, per token, the label of the prefix that ends there: 1 / 0 when
    ``score_text(prefix)`` is >= 0.5 / <= -0.5, 0.5 when it is 0 (neutral), nan when ambiguous."""
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    targets = []
    for text, offs in zip(texts, enc["offset_mapping"]):
        scores = R.prefix_scores(text, [e for _, e in offs])
        targets.append([1.0 if s >= R.MIN_ABS_SCORE else 0.0 if s <= -R.MIN_ABS_SCORE else 0.5 if s == 0
                        else math.nan for s in scores])
    return enc["input_ids"], targets


def train_reward(cfg: BuildConfig, policy_dir: Path, tokenizer, ids: list[list[int]], targets: list[list[float]],
                 gen: torch.Generator):
    from transformers import GPT2ForSequenceClassification

    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the load report would list the new score head as "MISSING": expected
    model = GPT2ForSequenceClassification.from_pretrained(
        policy_dir, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    logging.set_verbosity(verbosity)
    pad_id = tokenizer.pad_token_id

    def loss_fn(idx):
        x, mask = pad([ids[i] for i in idx], pad_id)
        y = _pad_float([targets[i] for i in idx], x.shape)
        offset = torch.randint(0, cfg.clf_max_pos_offset + 1, (len(idx), 1), generator=gen)
        pos = torch.arange(x.size(1)).unsqueeze(0) + offset
        hidden = model.transformer(input_ids=x, attention_mask=mask, position_ids=pos).last_hidden_state
        logits = model.score(hidden)                                   # (B, L, 2)
        real = mask.bool() & ~torch.isnan(y)
        w = torch.where(y == 0.5, cfg.clf_neutral_weight, 1.0) * real
        yy = torch.nan_to_num(y, 0.5)
        logp = logits.log_softmax(-1)
        ce = -(yy * logp[..., 1] + (1 - yy) * logp[..., 0])
        center = logits.sum(-1).pow(2)
        return (ce * w).sum() / w.sum() + cfg.clf_center_weight * (center * mask).sum() / mask.sum()

    losses = train(model, loss_fn, batch_indices([len(s) for s in ids], cfg.clf_batch, cfg.clf_steps, gen),
                   cfg.clf_steps, cfg.clf_lr, cfg, "reward")
    return model, losses


def _pad_float(rows: list[list[float]], shape) -> torch.Tensor:
    y = torch.full(shape, math.nan)
    for i, r in enumerate(rows):
        y[i, :len(r)] = torch.tensor(r)
    return y


@torch.no_grad()
def classify(model, tokenizer, texts: Sequence[str], batch: int = 256) -> torch.Tensor:
    """``(N, 2)`` logits the way the RL loop gets them: right padding, plain ``model(...)``."""
    out = []
    for b in range(0, len(texts), batch):
        enc = tokenizer(list(texts[b:b + batch]), add_special_tokens=False, padding=True, return_tensors="pt")
        out.append(model(**enc).logits)
    return torch.cat(out)


def accuracy(logits: torch.Tensor, labels: Sequence[int]) -> float:
    return (logits.argmax(-1) == torch.tensor(labels)).float().mean().item()


@torch.no_grad()
def sample(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, seed: int) -> tuple[list[str], list[bool]]:
    """Pure sampling (temperature 1, no top-k/top-p), left-padded batch. Returns the completions and whether each
    ended with EOS."""
    from transformers import GenerationConfig

    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    enc = tokenizer(list(prompts), add_special_tokens=False, padding=True, return_tensors="pt")
    tokenizer.padding_side = "right"
    gc = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    new = model.generate(**enc, generation_config=gc)[:, enc["input_ids"].shape[1]:]
    ended = (new == tokenizer.eos_token_id).any(-1).tolist()
    return tokenizer.batch_decode(new, skip_special_tokens=True), ended


# ----------------------------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------------------------


def build(out: Path, cfg: BuildConfig, quick: bool = False) -> dict:
    """Write the checkpoints and manifest.json under ``out``; returns the manifest."""
    with deterministic(cfg.seed, cfg.threads):
        return _build(Path(out), cfg, quick)


def _build(out: Path, cfg: BuildConfig, quick: bool) -> dict:
    import safetensors
    import tokenizers
    import transformers
    from transformers import GenerationConfig

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    gen = torch.Generator().manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict = {}

    with stage("data", timings):
        sft_train = R.split_data("sft_train", cfg.n_sft_train, cfg.seed)
        sft_eval = R.split_data("sft_eval", cfg.n_sft_eval, cfg.seed)
        clf_train = R.split_data("classifier_train", cfg.n_clf_train, cfg.seed)
        clf_eval = R.split_data("classifier_eval", cfg.n_clf_eval, cfg.seed)
        prompt_src = R.split_data("prompts_eval", 2 * cfg.n_gen_prompts, cfg.seed)

    with stage("tokenizer", timings):
        tokenizer = train_tokenizer(sft_train[:cfg.n_tokenizer_texts], cfg.vocab_size)
        for d in ("tokenizer", "policy", "reward"):   # before any use: calls with padding=True change its state
            tokenizer.save_pretrained(out / d)
        train_ids, eval_ids = encode(tokenizer, sft_train), encode(tokenizer, sft_eval)
        lengths = [len(s) + 1 for s in train_ids]
        metrics["tokens_per_review_mean"] = sum(lengths) / len(lengths)
        metrics["tokens_per_review_max"] = max(lengths)
        if max(lengths) > cfg.model["n_positions"]:
            raise ValueError(f"a review has {max(lengths)} tokens > n_positions={cfg.model['n_positions']}")

    with stage("policy (SFT)", timings):
        policy, losses = train_policy(cfg, tokenizer, train_ids, gen)
        eos = tokenizer.eos_token_id
        metrics["sft_train_loss_last50"] = sum(losses[-50:]) / len(losses[-50:])
        metrics["sft_eval_loss"] = eval_lm(policy, [s + [eos] for s in eval_ids], eos)
        metrics["sft_eval_ppl"] = math.exp(metrics["sft_eval_loss"])
        policy.save_pretrained(out / "policy", safe_serialization=True)
        GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos).save_pretrained(out / "policy")
        print(f"   held-out loss {metrics['sft_eval_loss']:.3f} (ppl {metrics['sft_eval_ppl']:.2f})")

    with stage("reward model", timings):
        mixed = R.shuffled_reviews(clf_train, cfg.n_clf_shuffled, seed=cfg.seed)
        ids, targets = prefix_targets(tokenizer, [r.text for r in clf_train + mixed])
        reward, losses = train_reward(cfg, out / "policy", tokenizer, ids, targets, gen)
        metrics["reward_train_loss_last50"] = sum(losses[-50:]) / len(losses[-50:])
        full = classify(reward, tokenizer, [r.text for r in clf_eval])
        metrics["reward_acc_full"] = accuracy(full, [r.label for r in clf_eval])
        frags = R.fragments(clf_eval, seed=cfg.seed, per_review=cfg.fragments_per_review)
        seen = {r.text for r in R.fragments(clf_train, seed=cfg.seed + 1, per_review=cfg.fragments_per_review)}
        unseen = [f for f in frags if f.text not in seen]
        metrics["reward_acc_fragments"] = accuracy(classify(reward, tokenizer, [f.text for f in frags]),
                                                   [f.label for f in frags])
        metrics["reward_acc_fragments_unseen"] = accuracy(classify(reward, tokenizer, [f.text for f in unseen]),
                                                          [f.label for f in unseen])
        shuffled = R.shuffled_reviews(clf_eval, len(clf_eval), seed=cfg.seed + 1)
        metrics["reward_acc_shuffled"] = accuracy(classify(reward, tokenizer, [r.text for r in shuffled]),
                                                  [r.label for r in shuffled])
        metrics["reward_n_eval_full"], metrics["reward_n_eval_fragments"] = len(clf_eval), len(frags)
        pos = full[:, 1]
        metrics["reward_pos_logit_mean_pos"] = pos[torch.tensor([r.label == 1 for r in clf_eval])].mean().item()
        metrics["reward_pos_logit_mean_neg"] = pos[torch.tensor([r.label == 0 for r in clf_eval])].mean().item()
        reward.save_pretrained(out / "reward", safe_serialization=True)
        print(f"   accuracy: full {metrics['reward_acc_full']:.4f}, fragments {metrics['reward_acc_fragments']:.4f}"
              f" (unseen {metrics['reward_acc_fragments_unseen']:.4f}), shuffled {metrics['reward_acc_shuffled']:.4f}")

    with stage("policy samples", timings):
        prompts = R.truncate_to_prompts([r.text for r in prompt_src], tokenizer, seed=cfg.seed)[:cfg.n_gen_prompts]
        completions, ended = sample(policy, tokenizer, prompts, cfg.gen_max_new_tokens, cfg.seed)
        texts = [p + c for p, c in zip(prompts, completions)]
        logits = classify(reward, tokenizer, texts)
        oracle = [R.score_text(t) for t in texts]
        clear = [i for i, s in enumerate(oracle) if abs(s) >= R.MIN_ABS_SCORE]
        metrics["sample_positive_share"] = (logits[:, 1] > logits[:, 0]).float().mean().item()
        metrics["sample_positive_share_oracle"] = sum(s > 0 for s in oracle) / len(oracle)
        metrics["sample_reward_mean"] = logits[:, 1].mean().item()
        metrics["sample_reward_oracle_agreement"] = (
            sum(int(logits[i, 1] > logits[i, 0]) == int(oracle[i] > 0) for i in clear) / max(1, len(clear)))
        metrics["sample_ends_with_eos_share"] = sum(ended) / len(ended)
        samples = [{"prompt": p, "completion": c, "positive_logit": round(logits[i, 1].item(), 3)}
                   for i, (p, c) in enumerate(zip(prompts, completions))][:5]
        print(f"   positive share {metrics['sample_positive_share']:.3f} "
              f"(oracle {metrics['sample_positive_share_oracle']:.3f}); samples:")
        for s in samples:
            print(f"   {s['positive_logit']:+.2f}  {s['prompt']!r} -> {s['completion']!r}")

    for d in ("policy", "reward"):
        use_fused_gelu(out / d / "config.json")
    files = {str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*"))
             if p.is_file() and p.name != "manifest.json"}
    manifest = _round({
        "build": asdict(cfg),
        "command": f"python -m rlhf_exp.task.build --seed {cfg.seed} --threads {cfg.threads}"
                   + (" --quick" if quick else ""),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "safetensors": safetensors.__version__},
        "determinism": f"torch.use_deterministic_algorithms(True), torch.set_num_threads({cfg.threads}), "
                       f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS')}; byte-identical only with the "
                       f"same versions, thread count and CPU type",
        "metrics": metrics,
        "samples": samples,
        "files": files,
    })
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"== total {time.perf_counter() - t_start:.1f}s ("
          + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) + f"); wrote {out}")
    return manifest


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m rlhf_exp.task.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ASSET_DIR, help=f"output folder (default {ASSET_DIR})")
    ap.add_argument("--quick", action="store_true", help="a much smaller, faster build (for tests)")
    ap.add_argument("--threads", type=int, default=BuildConfig.threads, help="torch threads (fixed for determinism)")
    ap.add_argument("--seed", type=int, default=BuildConfig.seed)
    args = ap.parse_args(argv)
    cfg = BuildConfig(seed=args.seed, threads=args.threads)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    return build(args.out, cfg, quick=args.quick)


if __name__ == "__main__":
    main()
