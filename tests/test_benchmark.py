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
