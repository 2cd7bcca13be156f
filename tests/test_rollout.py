"""The rollout engine component: backend selection and the objects the loops hold."""
import pytest
import torch

from rlhf_exp.config import ConfigError, validate
from tests.conftest import compose


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="generation.backend must be"):
        validate(compose(["generation.backend=sglang"]))


def test_default_backend_is_hf_and_the_loop_holds_engine_scorer_collector(tmp_path):
    from rlhf_exp.rollout.collect import RolloutCollector
    from rlhf_exp.rollout.engine import HFGenerator
    from rlhf_exp.rollout.scoring import Scorer
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.online import OnlineTrainer

    cfg = compose(["logger=none", "train.batch_size=4", "train.mini_batch_size=4", "dataset.eval_size=4",
                   "dataset.train_size=16", "generation.max_new_tokens=4"])
    assert cfg.generation.backend == "hf"
    tr = OnlineTrainer(cfg, tmp_path, Tracker(tmp_path, cfg.logger, {}, "t", enabled=False))
    assert isinstance(tr.engine, HFGenerator) and isinstance(tr.scorer, Scorer)
    assert isinstance(tr.collector, RolloutCollector) and tr.collector.engine is tr.engine
    assert tr.scorer.policy is tr.policy and tr.scorer.ref is tr.ref
    batch, info = tr.rollout(tr.eval_prompts[:4], torch.full((4,), 4), tr.sampling)
    assert "sampler_logprobs" not in batch            # the HF sampler is the scored policy
