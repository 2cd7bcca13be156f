"""A short objective=ppo run with reward_model=composite through run(): parts and hacking monitors are logged."""
import json

import pytest

from rlhf_exp.__main__ import run
from tests.conftest import compose

TINY = ["logger=none", "train.steps=2", "train.batch_size=8", "train.mini_batch_size=4", "train.epochs=1",
        "train.save_model=false", "dataset.train_size=64", "dataset.eval_size=8", "eval.batch_size=8",
        "eval.every=0", "eval.num_samples_to_log=2", "generation.max_new_tokens=8"]
MONITORS = ("response_length", "distinct_1", "distinct_2", "repetition_rate", "truncated_frac")


@pytest.fixture(scope="module")
def composite_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("composite_ppo")
    cfg = compose(["objective=ppo", "reward_model=composite", *TINY])
    summary = run(cfg, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


def test_composite_parts_are_logged_for_train_and_eval(composite_run):
    summary, rows = composite_run
    train = [r for r in rows if "train/reward_mean" in r]
    evals = [r for r in rows if "eval/reward_mean" in r]
    assert len(train) == 2 and len(evals) == 2
    for r in train:
        for part in ("sentiment", "length", "sentiment/positive_frac"):
            assert f"train/reward/{part}" in r
        # the reward is the weighted sum of the parts (weights 1.0 and 0.5 in conf/reward_model/composite.yaml)
        assert r["train/reward_mean"] == pytest.approx(
            r["train/reward/sentiment"] + 0.5 * r["train/reward/length"], abs=1e-4)
        assert -1.0 <= r["train/reward/length"] <= 0.0
    for r in evals:
        assert r["eval/reward_mean"] == pytest.approx(r["eval/reward/sentiment"] + 0.5 * r["eval/reward/length"],
                                                      abs=1e-4)
    assert "eval/reward/length_end" in summary and "eval/reward/sentiment_start" in summary


def test_hacking_monitors_are_logged_for_train_and_eval(composite_run):
    _, rows = composite_run
    for prefix, group in (("train", [r for r in rows if "train/reward_mean" in r]),
                          ("eval", [r for r in rows if "eval/reward_mean" in r])):
        for r in group:
            for k in MONITORS:
                assert f"{prefix}/{k}" in r, f"{prefix}/{k} missing"
            assert 0.0 <= r[f"{prefix}/truncated_frac"] <= 1.0
            assert 0.0 <= r[f"{prefix}/repetition_rate"] <= 1.0
            assert 0.0 < r[f"{prefix}/distinct_1"] <= 1.0


def test_per_token_composite_with_reward_shaping_runs(tmp_path):
    """Per-token classifier part + sequence-level length part, normalised and clipped, under token_reinforce."""
    cfg = compose(["objective=token_reinforce", "reward_model=composite",
                   "reward_model@reward_model.parts.sentiment=tiny_sentiment_tokens", "reward.normalize=true",
                   "reward.clip=1.0", *TINY, "train.steps=1"])
    summary = run(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/reward_mean" in r]
    assert len(train) == 1 and "train/reward/length" in train[0] and "train/reward_processed_mean" in train[0]
    assert summary["status"] == "finished"
