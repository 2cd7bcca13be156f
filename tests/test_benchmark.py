"""The benchmark script runs and records what it measured, with the command's overrides."""
import json

from rlhf_exp.benchmark import main


def test_benchmark_reports_speed_and_memory(tmp_path):
    out = tmp_path / "b.jsonl"
    result = main(["--steps", "1", "--out", str(out), "train.batch_size=8", "train.mini_batch_size=4",
                   "generation.max_new_tokens=6", "dataset.eval_size=8"])
    saved = json.loads(out.read_text())
    assert saved["overrides"] == ["train.batch_size=8", "train.mini_batch_size=4", "generation.max_new_tokens=6",
                                  "dataset.eval_size=8"]
    assert result["perf/samples_per_s"] > 0 and result["cpu_peak_rss_mb"] > 0
    assert result["perf/step_s"] >= result["perf/gen_s"]
