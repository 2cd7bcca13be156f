"""The analytic FLOP count (rlhf_exp/perf.py): hand-computed values, identities, and PyTorch's FLOP counter on real
(tiny, random) GPT-2 and Qwen2 models."""
from __future__ import annotations

import pytest
import torch

from rlhf_exp.perf import DecoderShape, attended_positions, forward_flops, generation_flops, training_flops

SHAPE = DecoderShape(n_params=1000, n_layers=2, d_model=8, d_attn=8, vocab_size=50)


def test_forward_flops_by_hand():
    # 3 tokens, nothing cached: 2*1000*3 + 4*2*8*(1+2+3) + 2*8*50*3 = 6000 + 384 + 2400
    assert attended_positions(3) == 6
    assert forward_flops(SHAPE, 3) == 6000 + 384 + 2400
    # 2 tokens after 5 cached: they attend to 6 and 7 positions
    assert attended_positions(2, 5) == 13
    assert forward_flops(SHAPE, 2, 5, logit_tokens=1) == 2 * 1000 * 2 + 4 * 2 * 8 * 13 + 2 * 8 * 50 * 1
    assert training_flops(SHAPE, 3) == 3 * forward_flops(SHAPE, 3)


def test_generation_equals_one_forward_over_the_fed_tokens_and_is_elementwise():
    for p, g in ((4, 1), (4, 6), (1, 9)):
        assert generation_flops(SHAPE, p, g) == forward_flops(SHAPE, p + g - 1, 0, logit_tokens=g)
    # generating token by token: the prefill, then one forward per fed-back token, each attending to all before it
    steps = forward_flops(SHAPE, 4, 0, logit_tokens=1) + sum(forward_flops(SHAPE, 1, 4 + i) for i in range(5))
    assert generation_flops(SHAPE, 4, 6) == steps
    prompts, news = torch.tensor([4.0, 1.0]), torch.tensor([6.0, 9.0])
    per_seq = generation_flops(SHAPE, prompts, news)
    assert per_seq.tolist() == [generation_flops(SHAPE, 4, 6), generation_flops(SHAPE, 1, 9)]


def _matmul_only_params(model, shape: DecoderShape) -> int:
    """The non-embedding parameters that are matrix weights (what FlopCounterMode sees multiplied)."""
    excluded = {id(p) for p in model.get_input_embeddings().parameters()}
    excluded |= {id(p) for p in model.get_output_embeddings().parameters()}
    return sum(p.numel() for n, p in model.named_parameters()
               if id(p) not in excluded and p.dim() == 2 and "wpe" not in n)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_forward_flops_match_pytorch_flop_counter(arch):
    """FlopCounterMode counts matrix products (2 m n k) and the whole L x L attention matrix: ours plus the masked
    half of the attention products, less the biases and norms (counted in N, not multiplied) gives its count."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    else:  # grouped-query attention (4 query heads, 2 key/value heads), untied LM head
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             tie_word_embeddings=False, max_position_embeddings=64))
    model.config._attn_implementation = "eager"
    model.eval()
    shape = DecoderShape.from_model(model)
    assert shape.n_layers == 2 and shape.d_model == 32 and shape.d_attn == 32 and shape.vocab_size == 300
    embeddings = sum(p.numel() for p in model.get_input_embeddings().parameters())
    if arch == "gpt2":
        embeddings += model.transformer.wpe.weight.numel()   # tied LM head: counted once, with the embeddings
    else:
        embeddings += model.lm_head.weight.numel()
    assert shape.n_params == sum(p.numel() for p in model.parameters()) - embeddings
    L = 12
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 300, (1, L)))
    measured = counter.get_total_flops()
    masked_half = 4 * shape.n_layers * shape.d_attn * (L * L - attended_positions(L))
    not_multiplied = 2 * (shape.n_params - _matmul_only_params(model, shape)) * L
    assert forward_flops(shape, L) + masked_half - not_multiplied == measured


# ------------------------------------------------------------------------------ the phases of an online step
def _embedded():
    from transformers import AutoModelForCausalLM

    from rlhf_exp.config import resolve_asset

    return AutoModelForCausalLM.from_pretrained(resolve_asset("tiny_reviews/policy")).eval()


def test_shape_of_the_embedded_policy_by_hand():
    # GPT-2 block, d = 128: c_attn 128x384 + 384, attn c_proj 128x128 + 128, c_fc 128x512 + 512,
    # mlp c_proj 512x128 + 128, ln_1 and ln_2 (weight + bias) 4 x 128; 4 blocks and ln_f (256). The token and
    # position embeddings and the tied head are not counted.
    block = 128 * 384 + 384 + 128 * 128 + 128 + 128 * 512 + 512 + 512 * 128 + 128 + 4 * 128
    assert block == 198_272
    assert DecoderShape.from_model(_embedded()) == DecoderShape(n_params=4 * block + 256, n_layers=4, d_model=128,
                                                                d_attn=128, vocab_size=1536)


def test_phase_counts_by_hand():
    from rlhf_exp.perf import batch_generation_flops, batch_scoring_flops, batch_update_flops

    shape = DecoderShape(n_params=100, n_layers=2, d_model=8, d_attn=8, vocab_size=10)
    p, n = torch.tensor([3.0, 2.0]), torch.tensor([4.0, 0.0])
    # row 0: prefill 3 tokens (pairs 1 + 2 + 3), then 3 one-token steps attending to 4, 5, 6 positions; 4 logit rows;
    # row 1 generated nothing
    assert batch_generation_flops(shape, p, n) == 2 * 100 * 6 + 4 * 2 * 8 * (6 + 15) + 2 * 8 * 10 * 4
    # scoring: rows of 7 and 2 positions, pairs 28 + 3, logits of the 4 response tokens
    score = 2 * 100 * 9 + 4 * 2 * 8 * 31 + 2 * 8 * 10 * 4
    assert batch_scoring_flops(shape, p, n) == score
    assert batch_update_flops(shape, p, n, epochs=2) == 6 * score


def test_step_metrics_rates():
    from rlhf_exp.perf import batch_generation_flops, batch_scoring_flops, batch_update_flops, step_metrics

    lm = _embedded()
    pm = torch.tensor([[0, 1, 1], [1, 1, 1]])
    rm = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    m = step_metrics(lm, pm, rm, gen_s=0.5, score_s=0.25, update_s=2.0, score_forwards=2, epochs=1, compile_s=3.0)
    shape = DecoderShape.from_model(lm)
    p, n = pm.sum(1).double(), rm.sum(1).double()
    assert m["perf/gen_flops"] == batch_generation_flops(shape, p, n)
    assert m["perf/gen_flops_per_s"] == pytest.approx(m["perf/gen_flops"] / 0.5)
    assert m["perf/score_flops"] == 2 * batch_scoring_flops(shape, p, n)
    assert m["perf/update_flops_per_s"] == pytest.approx(batch_update_flops(shape, p, n, 1) / 2.0)
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
