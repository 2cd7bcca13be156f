"""Two processes on CPU (gloo): global statistics equal the single-process computation, and a torchrun job writes
exactly one run folder and one metrics file."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlhf_exp.core import group_normalized_advantages, masked_whiten
from rlhf_exp.core.masked import masked_moments
from rlhf_exp.train.common import RunningMoments

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=g)
    mask = (torch.rand(8, 5, generator=g) > 0.3).float()
    r = torch.randn(8, generator=g)
    return x, mask, r


def _worker(rank: int, port: int, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)

    def reduce(t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    x, mask, r = _data()
    sl = slice(rank * 4, rank * 4 + 4)
    rm = RunningMoments()
    rm.update(r[sl], reduce)
    out[rank] = {
        "whiten": masked_whiten(x[sl], mask[sl], reduce=reduce),
        "moments": masked_moments(x[sl], mask[sl], reduce),
        "grpo_batch": group_normalized_advantages(r[sl], 2, scale="batch", reduce=reduce),
        "running": (rm.mean, rm.std),
    }
    dist.destroy_process_group()


def test_global_statistics_over_two_processes_equal_one_process():
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    x, mask, r = _data()
    whole = masked_whiten(x, mask)
    assert torch.allclose(torch.cat([out[0]["whiten"], out[1]["whiten"]]), whole, atol=1e-6)
    count, mean, var = masked_moments(x, mask)
    for got in (out[0]["moments"], out[1]["moments"]):
        assert torch.allclose(torch.stack(got), torch.stack([count, mean, var]), atol=1e-6)
    grpo = group_normalized_advantages(r, 2, scale="batch")
    assert torch.allclose(torch.cat([out[0]["grpo_batch"], out[1]["grpo_batch"]]), grpo, atol=1e-6)
    rm = RunningMoments()
    rm.update(r)
    assert out[0]["running"] == pytest.approx((rm.mean, rm.std)) == out[1]["running"]


def _run(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.mark.timeout(600)
def test_torchrun_two_processes_one_folder_one_metrics_file(tmp_path):
    common = ["logger=none", "train.steps=2", "train.batch_size=8", "train.mini_batch_size=4", "dataset.eval_size=16",
              "eval.do_sample=false", "generation.max_new_tokens=6", "device=cpu", "train.save_model=false"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port()), "-m", "rlhf_exp"]
    _run(torchrun + common + ["hydra.run.dir=ddp"], cwd=tmp_path)
    _run([sys.executable, "-m", "rlhf_exp"] + common + ["hydra.run.dir=single"], cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]       # one folder per job, no strays
    assert len(list(tmp_path.rglob("metrics.jsonl"))) == 2
    ddp = [json.loads(line) for line in open(tmp_path / "ddp" / "metrics.jsonl")]
    single = [json.loads(line) for line in open(tmp_path / "single" / "metrics.jsonl")]
    assert [r["step"] for r in ddp] == [0, 1, 2]
    # Greedy evaluation of the untouched policy: the same prompts split over two ranks give the same global means.
    for key in ("eval/reward_mean", "eval/distinct_2", "eval/response_length", "eval/distinct_1", "eval/repetition_rate",
                "eval/truncated_frac"):
        assert ddp[0][key] == pytest.approx(single[0][key], abs=1e-4), key
    assert ddp[0]["eval/kl"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.timeout(600)
def test_accelerate_launch_two_cpu_processes(tmp_path):
    args = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"), "--main_process_port", str(_free_port()),
            "-m", "rlhf_exp", "logger=none", "train.steps=1", "train.batch_size=8", "train.mini_batch_size=4",
            "dataset.eval_size=8", "generation.max_new_tokens=6", "device=cpu", "train.save_model=false",
            "hydra.run.dir=acc"]
    _run(args, cwd=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["acc"]
    rows = [json.loads(line) for line in open(tmp_path / "acc" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1]
