"""N processes train what 1 process trains (CPU, gloo, 2 processes).

* Update equivalence: the same scored rollout batch (online: ppo, grpo) or the same drawn examples (offline: sft,
  dpo) updated by 1 process without micro-batches and by 2 processes with micro-batches (gradient accumulation
  through accelerate) give the same parameters after 2 AdamW steps (lr 3e-4, eps 1e-6; an update moves parameters by
  up to ~6e-4): max |difference| < 2e-6 and ||difference|| < 1e-4 ||update|| (float32 sums in another order; Adam's
  eps bounds how much it amplifies the rounding of near-zero gradients).
* Held-out evaluation with a remainder and chunks of 1 (KTO, DPO) runs on 2 processes; DPO's equals 1 process's.
* The batch geometry, the rank slices and the loss scaling are checked as pure functions; impossible batch sizes
  fail before any model loads; a launcher/accelerator world-size mismatch fails.
* ``train.mixed_precision=bf16`` on CPU: the step-0 KL is exactly 0 (sampler, policy and reference in bf16).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rlhf_exp.distributed import (batch_geometry, even_chunks, micro_batch_loss_scale, rank_slice)
from tests.conftest import compose

ATOL, REL = 2e-6, 1e-4   # max |param difference|, and its L2 norm relative to the update's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ pure functions
def test_batch_geometry_global_sizes_and_errors():
    # the README's 8-process command with the default sizes
    g = batch_geometry(64, 16, None, 8)
    assert (g.local_batch, g.local_mini, g.local_micro, g.accumulation_steps, g.optimizer_steps) == (8, 2, 2, 1, 4)
    g = batch_geometry(64, 16, 4, 2, group_size=8)
    assert (g.local_batch, g.local_mini, g.local_micro, g.accumulation_steps) == (32, 8, 2, 4)
    with pytest.raises(ValueError, match=r"train.batch_size=64 must be a multiple of objective.group_size=8 x 16"):
        batch_geometry(64, 16, None, 16, group_size=8)
    with pytest.raises(ValueError, match=r"train.mini_batch_size=12 must divide train.batch_size=64"):
        batch_geometry(64, 12, None, 4)
    with pytest.raises(ValueError, match=r"train.micro_batch_size=6 must be a multiple of the 4 processes"):
        batch_geometry(48, 12, 6, 4)
    with pytest.raises(ValueError, match=r"at least 2 \(raise train.micro_batch_size to 8\)"):
        batch_geometry(32, 32, 4, 4, min_local_micro=2)


def test_rank_slices_are_disjoint_and_keep_global_micro_batches():
    items = list(range(12))
    parts = [rank_slice(items, 2, r, 4) for r in range(2)]
    assert parts == [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7, 10, 11]]
    assert sorted(parts[0] + parts[1]) == items
    assert rank_slice(items, 3, 1, 12) == [4, 5, 6, 7]      # one contiguous slice per rank


def test_even_chunks_same_count_on_every_rank():
    # 9 items over 2 ranks (5 and 4), chunks of at most 2 -> both ranks make 2 chunks
    for n_local in (5, 4):
        b = even_chunks(n_local, 9, 2, 2)
        assert len(b) == 2 and b[0][0] == 0 and b[-1][1] == n_local
    assert even_chunks(3, 5, 2, 1) == [(0, 2), (2, 3)] and even_chunks(2, 5, 2, 1) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError, match="dataset.eval_size"):
        even_chunks(0, 1, 2, 4)


def test_loss_scales_sum_to_one_step():
    # 2 processes x 2 micro-batches with token counts 3, 5 | 4, 8 (global 20); accelerate divides by 2 accumulation
    # steps and DDP averages over 2 processes: the weights of the micro-batch means add up to 1.
    counts = [[3, 5], [4, 8]]
    total = sum(sum(c) for c in counts)
    eff = [micro_batch_loss_scale(c, total, 2, 2) / 2 / 2 for cs in counts for c in cs]
    assert sum(eff) == pytest.approx(1.0) and eff[0] == pytest.approx(3 / 20)


def test_impossible_batch_sizes_fail_before_any_model_loads(tmp_path):
    from rlhf_exp.__main__ import run

    cfg = compose(["logger=none", "model.path=/nonexistent/model", "train.batch_size=8", "train.mini_batch_size=4",
                   "train.micro_batch_size=3"])
    with pytest.raises(ValueError, match=r"train.micro_batch_size=3 must divide train.mini_batch_size=4"):
        run(cfg, tmp_path)


def test_launcher_world_size_mismatch_fails(monkeypatch):
    import rlhf_exp.train.common as common

    monkeypatch.setattr(common, "launch_world_size", lambda: 2)
    cfg = compose(["device=cpu", "train.batch_size=8", "train.mini_batch_size=4"])
    with pytest.raises(RuntimeError, match=r"started 2 processes .* formed a run of 1"):
        common.make_accelerator(cfg)


# ------------------------------------------------------------------------------------------------ equivalence
ONLINE = ["logger=none", "device=cpu", "train.batch_size=8", "train.mini_batch_size=8", "train.epochs=2",
          "dataset.eval_size=8", "generation.max_new_tokens=6", "train.lr=3e-4", "train.adam_eps=1e-6"]
OFFLINE = ["logger=none", "device=cpu", "train.batch_size=8", "dataset.offline_train_size=32",
           "dataset.offline_eval_size=9", "dataset.eval_size=8", "train.forward_batch_size=1", "train.lr=3e-4",
           "train.adam_eps=1e-6"]


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])


def _online_update(objective: str, micro, out_dir: Path) -> torch.Tensor:
    """Update the policy on one global scored batch (the same on every rank); this rank takes its slice."""
    from rlhf_exp.core.kl import per_token_kl
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.common import make_accelerator, seed_everything
    from rlhf_exp.train.online import OnlineTrainer

    extra = ["objective.group_size=4"] if objective == "grpo" else []
    cfg = compose(ONLINE + [f"objective={objective}", f"train.micro_batch_size={micro}"] + extra)
    seed_everything(0)
    acc = make_accelerator(cfg)
    tr = OnlineTrainer(cfg, out_dir, Tracker(out_dir, cfg.logger, {}, "t", enabled=False), acc)
    G, B = tr.objective.group_size, int(cfg.train.batch_size)
    prompts = [p for p in tr.eval_prompts[:B // G] for _ in range(G)]
    torch.manual_seed(123)
    batch, _ = tr.rollout(prompts, torch.full((B,), 6), tr.sampling)
    batch["kl"] = per_token_kl(tr.objective.kl_estimator, batch["old_logprobs"], batch["ref_logprobs"])
    batch["scores"] = batch["raw_scores"]
    batch["group_ids"] = torch.arange(B) // G
    tr.objective.compute_advantages(batch, 0.05, None)       # global statistics over the whole batch
    n = B // tr.proc.world
    local = {k: v[tr.proc.rank * n:(tr.proc.rank + 1) * n] for k, v in batch.items()}
    before = _params(tr.unwrapped)
    tr.update(local, 0.05)
    after = _params(tr.unwrapped)
    assert (after - before).abs().max() > 1e-5            # it moved
    return torch.stack([before, after])


def _offline_steps(objective: str, micro, out_dir: Path) -> tuple[torch.Tensor, dict]:
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.common import make_accelerator, seed_everything
    from rlhf_exp.train.offline import OfflineTrainer

    cfg = compose(OFFLINE + [f"objective={objective}", f"train.micro_batch_size={micro}"])
    seed_everything(0)
    acc = make_accelerator(cfg)
    tr = OfflineTrainer(cfg, out_dir, Tracker(out_dir, cfg.logger, {}, "t", enabled=False), acc)
    heldout = tr.heldout()
    before = _params(tr.unwrapped)
    tr.train_step(1)
    tr.train_step(2)
    return torch.stack([before, _params(tr.unwrapped)]), heldout


def _worker(rank: int, port: int, out, tmp: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    res = {}
    for obj in ("ppo", "grpo"):
        res[obj] = _online_update(obj, 4, Path(tmp) / obj)               # local micro-batches of 2
    for obj in ("sft", "dpo"):
        res[obj], res[f"{obj}_heldout"] = _offline_steps(obj, 2, Path(tmp) / obj)   # local micro-batches of 1
    _, res["kto_heldout"] = _offline_steps("kto", 4, Path(tmp) / "kto")  # held-out chunks of 1 and 2
    out[rank] = res


@pytest.mark.timeout(900)
def test_two_processes_with_micro_batches_update_like_one_process(tmp_path):
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), out, str(tmp_path)), nprocs=2, join=True)
    def check(obj, single):
        (before, after), update = single, single[1] - single[0]
        for rank in (0, 1):
            assert torch.equal(out[rank][obj][0], before)             # the same start
            diff = out[rank][obj][1] - after
            print(f"{obj} rank {rank}: max |diff| {float(diff.abs().max()):.2e}, relative L2 "
                  f"{float(diff.norm() / update.norm()):.2e}, max |update| {float(update.abs().max()):.2e}")
            assert float(diff.abs().max()) < ATOL and float(diff.norm() / update.norm()) < REL, obj

    for obj in ("ppo", "grpo"):
        check(obj, _online_update(obj, "null", tmp_path / f"single_{obj}"))
    for obj in ("sft", "dpo"):
        single, heldout = _offline_steps(obj, "null", tmp_path / f"single_{obj}")
        check(obj, single)
        assert out[0][f"{obj}_heldout"] == pytest.approx(heldout, rel=1e-5, abs=1e-6)
    kto = out[0]["kto_heldout"]
    assert kto == out[1]["kto_heldout"] and all(v == v for v in kto.values())     # finite, the same on both ranks


# ------------------------------------------------------------------------------------------------ precision
def test_bf16_step0_kl_is_exactly_zero(tmp_path):
    import json

    from rlhf_exp.__main__ import run

    cfg = compose(["logger=none", "device=cpu", "train.mixed_precision=bf16", "train.steps=1", "train.batch_size=4",
                   "train.mini_batch_size=4", "dataset.eval_size=4", "generation.max_new_tokens=6",
                   "train.save_model=false", "eval.every=0"])
    run(cfg, tmp_path)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows[0]["step"] == 0 and rows[0]["eval/kl"] == 0.0 and rows[0]["eval/kl_k1"] == 0.0
    assert rows[1]["train/kl"] == 0.0          # the first rollout: policy == reference, both scored in bf16


# ------------------------------------------------------------------------------------------------ the README command
@pytest.mark.timeout(900)
def test_readme_torchrun_command_default_sizes_is_one_run_and_saves_a_loadable_policy(tmp_path):
    """``torchrun --nproc_per_node 2 -m rlhf_exp`` with the default batch sizes (64 / 16) and the default
    ``device=auto`` on a CPU machine: one run of 2 processes (gloo), one summary line, one folder; the policy it saves
    (gathered with accelerator.get_state_dict, written by rank 0) loads with from_pretrained and evaluates, greedily,
    to the numbers of the run's last evaluation."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    small = ["logger=none", "dataset.eval_size=16", "eval.do_sample=false", "generation.max_new_tokens=6",
             "train.epochs=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "rlhf_exp", "train.steps=2", "hydra.run.dir=ddp"] + small
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=850)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count("[rlhf_exp] run folder:") == 1 and p.stdout.count("eval reward") == 1   # rank 0 only
    assert [q.name for q in tmp_path.iterdir()] == ["ddp"]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["status"] == "finished"
    rows = [json.loads(line) for line in open(tmp_path / "ddp" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2]

    from transformers import AutoModelForCausalLM

    policy = tmp_path / "ddp" / "policy"
    AutoModelForCausalLM.from_pretrained(policy)                       # a complete Hugging Face checkpoint
    assert (policy / "value_head.safetensors").exists()
    from rlhf_exp.__main__ import run

    again = run(compose(small + ["train.steps=0", f"model.path={policy}", "device=cpu"]), tmp_path / "reload")
    assert again["eval/reward_mean_start"] == pytest.approx(summary["eval/reward_mean_end"], abs=1e-4)
    end = rows[-1]
    reload_rows = [json.loads(line) for line in open(tmp_path / "reload" / "metrics.jsonl")]
    for key in ("eval/response_length", "eval/distinct_2", "eval/truncated_frac"):
        assert reload_rows[0][key] == pytest.approx(end[key], abs=1e-4), key
