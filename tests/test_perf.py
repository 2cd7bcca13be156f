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
