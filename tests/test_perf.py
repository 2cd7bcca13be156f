"""The analytic FLOP count (rlhf_exp.perf): the embedded policy's shape counted by hand, one forward against
PyTorch's FlopCounterMode, the phase formulas against hand counts, and the per-step perf/ rates of a real run."""
import dataclasses

import pytest
import torch

from rlhf_exp.config import resolve_asset
from rlhf_exp.perf import LMShape, forward_flops, generation_flops, scoring_flops, step_metrics, update_flops


def _embedded():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_asset("tiny_reviews/policy")).eval()


def test_shape_of_the_embedded_policy_by_hand():
    # GPT-2 block, d = 128: c_attn 128x384 + 384, attn c_proj 128x128 + 128, c_fc 128x512 + 512,
    # mlp c_proj 512x128 + 128, ln_1 and ln_2 (weight + bias) 4 x 128; 4 blocks and ln_f (256). The token and
    # position embeddings and the tied head are not counted.
    block = 128 * 384 + 384 + 128 * 128 + 128 + 128 * 512 + 512 + 512 * 128 + 128 + 4 * 128
    assert block == 198_272
    assert LMShape.of(_embedded()) == LMShape(n_layer=4, d_model=128, d_attn=128, vocab=1536,
                                              non_embedding_params=4 * block + 256)


def test_forward_count_equals_flop_counter_on_one_forward():
    """FlopCounterMode counts the matrix products (weights without their biases, both attention products over the
    full score matrix, the head); the formula with N = the blocks' weight matrices and the query x key pairs the
    products compute gives the same number exactly. (Eager attention: PyTorch has no FLOP formula for the CPU
    flash-attention kernel that sdpa runs.) N with biases and norms (Kaplan's) adds 2 per such parameter and
    token."""
    from torch.utils.flop_counter import FlopCounterMode

    lm = _embedded()
    lm.set_attn_implementation("eager")
    B, n = 3, 10
    ids = torch.randint(1, 1500, (B, n), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        lm(input_ids=ids)
    shape = LMShape.of(lm)
    matrices = sum(p.numel() for name, p in lm.transformer.h.named_parameters() if p.dim() == 2)
    assert matrices == 4 * (128 * 384 + 128 * 128 + 2 * 128 * 512)
    counted = forward_flops(dataclasses.replace(shape, non_embedding_params=matrices), tokens=B * n,
                            pairs=B * n * n, logit_rows=B * n)
    assert fc.get_total_flops() == counted
    other = shape.non_embedding_params - matrices
    assert forward_flops(shape, B * n, B * n * n, B * n) == counted + 2 * other * B * n


def test_phase_counts_by_hand():
    shape = LMShape(n_layer=2, d_model=8, d_attn=8, vocab=10, non_embedding_params=100)
    p, n = torch.tensor([3, 2]), torch.tensor([4, 0])
    # row 0: prefill 3 tokens (pairs 1 + 2 + 3), then 3 one-token steps attending to 4, 5, 6 positions; 4 logit rows;
    # row 1 generated nothing
    want = 2 * 100 * 6 + 4 * 2 * 8 * (6 + 15) + 2 * 8 * 10 * 4
    assert generation_flops(shape, p, n) == want
    # scoring: rows of 7 and 2 positions, pairs 28 + 3, logits of the 4 response tokens
    score = 2 * 100 * 9 + 4 * 2 * 8 * 31 + 2 * 8 * 10 * 4
    assert scoring_flops(shape, p, n) == score
    assert update_flops(shape, p, n, epochs=2) == 6 * score
    # generating n tokens runs the same forward as scoring p + n - 1 positions, with logits for n of them
    p1, n1 = torch.tensor([5]), torch.tensor([7])
    assert generation_flops(shape, p1, n1) == scoring_flops(shape, p1, n1 - 1) + 2 * 8 * 10


def test_step_metrics_rates():
    lm = _embedded()
    pm = torch.tensor([[0, 1, 1], [1, 1, 1]])
    rm = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    m = step_metrics(lm, pm, rm, gen_s=0.5, score_s=0.25, update_s=2.0, score_forwards=2, epochs=1, compile_s=3.0)
    shape = LMShape.of(lm)
    p, n = pm.sum(1), rm.sum(1)
    assert m["perf/gen_flops"] == generation_flops(shape, p, n)
    assert m["perf/gen_flops_per_s"] == pytest.approx(m["perf/gen_flops"] / 0.5)
    assert m["perf/score_flops"] == 2 * scoring_flops(shape, p, n)
    assert m["perf/update_flops_per_s"] == pytest.approx(update_flops(shape, p, n, 1) / 2.0)
    assert m["perf/gen_tokens_per_s"] == 6 / 0.5 and m["perf/score_tokens_per_s"] == 2 * 11 / 0.25
    assert m["perf/update_tokens_per_s"] == 11 / 2.0 and m["perf/compile_s"] == 3.0


def _run(tmp_path, extra=()):
    import json

    from rlhf_exp.__main__ import run
    from tests.conftest import compose

    run(compose(["objective=grpo", "train.steps=2", "train.batch_size=8", "train.mini_batch_size=8", "eval.every=0",
                 "dataset.eval_size=8", "generation.max_new_tokens=6", "logger=none", "train.save_model=false",
                 *extra]), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["step"] >= 1]


def test_online_steps_log_phase_rates(tmp_path):
    """A real run logs each phase's analytic FLOPs and rates at every step; nothing compiles by default."""
    steps = _run(tmp_path)
    assert len(steps) == 2
    for r in steps:
        for k in ("gen", "score", "update"):
            assert r[f"perf/{k}_flops"] > 0 and r[f"perf/{k}_flops_per_s"] > 0 and r[f"perf/{k}_tokens_per_s"] > 0
        assert r["perf/compile_s"] == 0.0


@pytest.mark.slow
def test_compiled_decode_step_in_the_loop_reports_its_compile_time(tmp_path):
    """generation.compile=true: the run's first rollouts compile the decode step (perf/compile_s > 0, counted in
    perf/gen_s), later steps reuse it (the cumulative compile time does not grow)."""
    steps = _run(tmp_path, ["generation.compile=true", "train.steps=3"])
    first, *rest = steps
    assert first["perf/compile_s"] > 0
    assert all(r["perf/compile_s"] == first["perf/compile_s"] for r in rest)
    assert all(r["perf/gen_s"] < first["perf/compile_s"] for r in rest)
