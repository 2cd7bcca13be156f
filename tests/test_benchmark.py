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
    assert result["perf/gen_s"] > 0 and result["perf/update_s"] > 0


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
