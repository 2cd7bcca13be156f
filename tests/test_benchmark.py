"""The benchmark script runs and records what it measured, with the command's overrides."""
import json

import pytest

from rlhf_exp.benchmark import main


def test_benchmark_reports_speed_and_memory(tmp_path):
    out = tmp_path / "b.jsonl"
    result = main(["--steps", "1", "--out", str(out), "train.batch_size=8", "train.mini_batch_size=4",
                   "generation.max_new_tokens=6", "dataset.eval_size=8"])
    saved = json.loads(out.read_text())
    assert saved["overrides"] == ["train.batch_size=8", "train.mini_batch_size=4", "generation.max_new_tokens=6",
                                  "dataset.eval_size=8"]
    assert result["perf/samples_per_s"] > 0 and result["cpu_peak_rss_mb"] > 0
    # the reported rate is the configured batch over the measured step time (1 step: the median is that step)
    assert result["batch_size"] == 8
    assert result["perf/samples_per_s"] == pytest.approx(8 / result["perf/step_s"], rel=1e-6)
    assert result["perf/gen_s"] > 0 and result["perf/update_s"] > 0 and result["cpu_s_per_step"] > 0
    assert result["update_gflop"] > 0 and result["matmul_gflop_per_s"] > 0 and result["matmul_dtype"] == "float32"
    assert result["step_gflop_per_s"] * result["perf/step_s"] > result["update_gflop"]   # the step holds the update
    # the phase table: analytic FLOPs and achieved rates of each phase, read against an isolated product
    for phase in ("gen", "score", "update"):
        row = result["phases"][phase]
        assert row["gflop"] > 0 and row["gflop_per_s"] > 0 and row["matmul_gflop_per_s"] > 0 and row["tokens_per_s"] > 0
        assert row["of_matmul"] == pytest.approx(row["gflop_per_s"] / row["matmul_gflop_per_s"])
    # PPO: 4 epochs of forward + backward (12 forwards) against the rollout's policy and reference forwards (2)
    assert result["phases"]["update"]["gflop"] == pytest.approx(6 * result["phases"]["score"]["gflop"], rel=1e-9)
    assert result["compile_s"] == 0.0                        # generation.compile=false: nothing compiled


def test_random_init_copies_the_architecture_and_tokenizer(tmp_path):
    """--random-init benchmarks a random-weight copy of model.path: same config and tokenizer, other weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rlhf_exp.benchmark import build_random_copy
    from rlhf_exp.task import POLICY_DIR

    d = build_random_copy(POLICY_DIR, tmp_path / "r")
    a, b = AutoModelForCausalLM.from_pretrained(POLICY_DIR), AutoModelForCausalLM.from_pretrained(d)
    assert AutoConfig.from_pretrained(d).to_dict()["n_layer"] == a.config.n_layer
    assert not torch.equal(a.transformer.h[0].mlp.c_fc.weight, b.transformer.h[0].mlp.c_fc.weight)
    assert AutoTokenizer.from_pretrained(d)("a great film")["input_ids"] == \
        AutoTokenizer.from_pretrained(POLICY_DIR)("a great film")["input_ids"]


def test_flop_count_of_the_update_is_its_passes(tmp_path):
    """The counted update operations are those of its forward + backward passes: with one mini-batch of the whole
    batch per epoch and 2 epochs, the update counts 2 x 3 times the operations of one forward of the batch (a
    backward pass is two matrix products per product of the forward)."""
    import torch
    from hydra import compose, initialize_config_dir
    from torch.utils.flop_counter import FlopCounterMode

    from rlhf_exp.benchmark import count_step_flops
    from rlhf_exp.config import CONFIG_DIR
    from rlhf_exp.modeling import score_responses
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.online import OnlineTrainer

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", "train.save_model=false", "objective=reinforce", "kl=fixed",
                                           "train.batch_size=8", "train.mini_batch_size=8", "train.epochs=2",
                                           "generation.max_new_tokens=6", "dataset.eval_size=8"])
    trainer = OnlineTrainer(cfg, tmp_path, Tracker(tmp_path, cfg.logger, {}, "t", enabled=False))
    forward = []
    inner = trainer.update

    def update(batch, *args, **kwargs):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            score_responses(trainer.policy, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                            batch["response_mask"])
        forward.append(fc.get_total_flops())
        return inner(batch, *args, **kwargs)

    trainer.update = update
    step, upd = count_step_flops(trainer, 1)
    assert forward[0] > 0 and step > upd
    assert upd - forward[0] == 2 * 3 * forward[0]   # (the test's own forward runs inside the counted update)


def test_qwen2_shaped_model_for_real_vocabulary_benchmarks(tmp_path):
    """--qwen2-shaped writes a Qwen2-architecture policy and a tokenizer of the requested sizes (here small; by
    default Qwen2.5's 151,936 rows and 151,665 tokens) and benchmarks it as model.path."""
    from transformers import AutoConfig

    from rlhf_exp.benchmark import QWEN2_TOKENIZER, QWEN2_VOCAB, build_qwen2_shaped
    from rlhf_exp.modeling import load_tokenizer

    assert (QWEN2_VOCAB, QWEN2_TOKENIZER) == (151_936, 151_665)
    d = build_qwen2_shaped(tmp_path / "q", vocab_size=4096, tokenizer_size=3900, hidden=32)
    cfg = AutoConfig.from_pretrained(d)
    assert cfg.model_type == "qwen2" and cfg.vocab_size == 4096 and cfg.num_hidden_layers == 2
    tok = load_tokenizer(str(d), "model.path")
    assert len(tok) == 3900 and tok.decode(tok("a great film")["input_ids"]) == "a great film"
    out = tmp_path / "b.jsonl"
    result = main(["--qwen2-shaped", str(d), "--steps", "1", "--out", str(out), "train.batch_size=4",
                   "train.mini_batch_size=4", "train.epochs=1", "generation.max_new_tokens=4", "dataset.eval_size=4"])
    assert result["model"] == str(d) and f"model.path={d}" in json.loads(out.read_text())["overrides"]


def test_peer_mode_runs_trl_grpo_on_the_same_work(tmp_path):
    """--peer: a tiny interleaved run of our GRPO step and TRL's GRPOTrainer step (1 timed step each after a
    warm-up); both times are recorded with their ratio, and a config TRL cannot run the same way is refused."""
    pytest.importorskip("trl")
    out = tmp_path / "peer.jsonl"
    result = main(["--peer", "--steps", "1", "--out", str(out), "train.batch_size=8", "generation.max_new_tokens=4",
                   "generation.min_new_tokens=4", "dataset.eval_size=8", "kl.kl_coef=0.04"])
    saved = json.loads(out.read_text())
    assert saved["batch_size"] == 8 and saved["group_size"] == 4 and saved["beta"] == 0.04
    assert len(saved["ours_step_s_all"]) == len(saved["trl_step_s_all"]) == 2   # warm-up + 1, interleaved
    assert result["ours_step_s"] > 0 and result["trl_step_s"] > 0 and result["ours_cpu_s"] > 0
    assert result["trl_over_ours"] == pytest.approx(result["trl_step_s"] / result["ours_step_s"])
    assert result["peer"].startswith("trl ") and "GRPOTrainer" in result["peer"] and result["ours_gen_s"] > 0
    with pytest.raises(ValueError, match="generation.min_new_tokens=2 != max_new_tokens=4"):
        main(["--peer", "--steps", "1", "--out", str(out), "train.batch_size=8", "generation.max_new_tokens=4",
              "generation.min_new_tokens=2"])
