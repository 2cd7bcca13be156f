"""The decode loop of ``generation.backend=hf`` (rlhf_exp.rollout.sampling.decode): greedy tokens equal Hugging Face
``generate``'s (left padding, per-row length limits, EOS, rows leaving the batch), sampled tokens follow the policy's
distribution, the inverse-CDF sampler draws the right index, and two processes in synced mode step together."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlhf_exp.config import resolve_asset
from rlhf_exp.rollout import SamplingSettings, generate, generation_config, pad_left, truncate_responses
from rlhf_exp.rollout.sampling import Decoder, decode, sample_categorical, static_cache_supported


def test_sample_categorical_hand_computed():
    probs = torch.tensor([[0.25, 0.25, 0.5]] * 5 + [[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    u = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.999, 0.7, 0.5])
    # cumulative 0.25, 0.5, 1.0: the first index whose cumulative probability exceeds u
    assert sample_categorical(probs, u).tolist() == [0, 0, 1, 2, 2, 1, 2]


def test_sample_categorical_frequencies_and_zeros():
    torch.manual_seed(0)
    p = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0, 1e-3])
    n = 40000
    draws = sample_categorical(p.expand(n, -1).contiguous())
    counts = torch.bincount(draws, minlength=6).double()
    assert counts[1] == 0 and counts[4] == 0                      # zero probability: never
    sd = (n * p * (1 - p)).double().sqrt()
    assert ((counts - n * p).abs() <= 4 * sd + 1).all(), counts   # every frequency within 4 binomial sd


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def _embedded():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_asset("tiny_reviews/policy")).eval()


def _force_dynamic(monkeypatch):
    """Decode on the model's own growing cache (the path of models without static-cache support)."""
    import rlhf_exp.rollout.sampling as sampling

    monkeypatch.setattr(sampling, "static_cache_supported", lambda lm: False)


@pytest.mark.parametrize("arch,path", [("embedded_gpt2", "static"), ("random_llama", "static"),
                                       ("embedded_gpt2_eager", "static"), ("embedded_gpt2", "dynamic"),
                                       ("random_llama", "dynamic"), ("embedded_gpt2", "static-whole"),
                                       pytest.param("embedded_gpt2", "static-compiled", marks=pytest.mark.slow)])
def test_greedy_decode_equals_hf_generate(arch, path, monkeypatch):
    lm = _tiny_llama() if arch == "random_llama" else _embedded()
    if arch.endswith("_eager"):       # the eager attention's additive mask instead of sdpa's booleans
        lm.set_attn_implementation("eager")
    if path == "dynamic":
        _force_dynamic(monkeypatch)
    decoder = Decoder(compile=path == "static-compiled")
    decoder.whole_buffer = path == "static-whole"   # the CUDA-graph path's layout: the whole buffer, bucketed
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 90, (int(n),), generator=g).tolist() for n in (2, 7, 4, 5, 1, 6)]
    ids, mask = pad_left(prompts, 0)
    lengths = torch.tensor([12, 3, 12, 7, 1, 9])
    greedy = SamplingSettings(max_new_tokens=12, min_new_tokens=1, do_sample=False)
    # a stop id the model actually produces in some row, so that EOS ends rows before their limit
    free = lm.generate(input_ids=ids, attention_mask=mask,
                       generation_config=generation_config(greedy, 12, [lm.config.eos_token_id], 0))[:, ids.shape[1]:]
    stops = [int(free[0, 4]), int(lm.config.eos_token_id)]
    ref = lm.generate(input_ids=ids, attention_mask=mask, generation_config=generation_config(greedy, 12, stops, 0))
    want = truncate_responses(ref[:, ids.shape[1]:], lengths, stops, 0)
    got = generate(lm, ids, mask, greedy, lengths, stops, 0, decoder=decoder)
    assert decoder.last_path == path.replace("-whole", "")        # no silent fallback to another path
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    ended_by_eos = [bool(r[m.bool()][-1].item() in stops) for r, m in zip(*got)]
    assert any(ended_by_eos) and not all(ended_by_eos)          # both ways of ending occur
    assert len(set(got[1].sum(1).tolist())) > 2                    # rows leave the batch at different steps


def test_sampled_tokens_follow_the_policy():
    """First tokens ~ softmax(logits / T) of the prompt; second tokens, after the rows with limit 1 left the batch,
    ~ the conditional distribution given the first token."""
    lm = _embedded()
    T, n = 0.8, 6000
    prompt = torch.tensor([[5, 17, 42]])
    ids, mask = prompt.expand(n, -1), torch.ones(n, 3, dtype=torch.long)
    lengths = torch.tensor([1, 2] * (n // 2))
    torch.manual_seed(0)
    out = decode(lm, ids, mask, SamplingSettings(max_new_tokens=2, min_new_tokens=1, temperature=T), lengths,
                 [-1], pad_id=0)
    with torch.no_grad():
        p1 = torch.softmax(lm(prompt).logits[0, -1] / T, -1)
    counts = torch.bincount(out[:, 0], minlength=p1.numel()).double()
    top = p1.argsort(descending=True)[:8]
    sd = (n * p1[top] * (1 - p1[top])).double().sqrt()
    assert ((counts[top] - n * p1[top]).abs() <= 4.5 * sd + 1).all()
    assert (out[0::2, 1] == 0).all()                                # limit 1: pad after the first token
    first = int(out[1::2, 0].mode().values)
    rows = out[1::2][out[1::2, 0] == first]
    with torch.no_grad():
        p2 = torch.softmax(lm(torch.tensor([[5, 17, 42, first]])).logits[0, -1] / T, -1)
    m = rows.shape[0]
    c2 = torch.bincount(rows[:, 1], minlength=p2.numel()).double()
    top2 = p2.argsort(descending=True)[:5]
    sd2 = (m * p2[top2] * (1 - p2[top2])).double().sqrt()
    assert m > 300 and ((c2[top2] - m * p2[top2]).abs() <= 4.5 * sd2 + 1).all()


def test_samples_do_not_depend_on_compaction(monkeypatch):
    import rlhf_exp.rollout.sampling as sampling

    lm = _embedded()
    ids, mask = pad_left([[5, 6, 7], [8, 9], [10, 11, 12, 13]] * 4, 0)
    lengths = torch.tensor([1, 8, 3, 5, 2, 8, 4, 6, 7, 2, 8, 5])
    settings = SamplingSettings(max_new_tokens=8, min_new_tokens=1)
    outs = []
    for every in (1, 8, 10**9):                      # drop ended rows at once, per eighth, never
        monkeypatch.setattr(sampling, "COMPACT_EVERY", every)
        torch.manual_seed(3)
        outs.append(generate(lm, ids, mask, settings, lengths, [0], 0))
    for got in outs[1:]:
        assert torch.equal(got[0], outs[0][0]) and torch.equal(got[1], outs[0][1])


def test_static_cache_is_used_for_the_shipped_policy_and_llama():
    """The embedded policy (GPT-2) and a Llama/Qwen2-style model decode on the preallocated cache; a model with a
    sliding-window layer (not a plain full-attention cache) takes the dynamic path."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    lm = _embedded()
    assert static_cache_supported(lm) and static_cache_supported(_tiny_llama())
    decoder = Decoder()
    ids, mask = pad_left([[5, 6, 7], [8, 9]], 0)
    generate(lm, ids, mask, SamplingSettings(max_new_tokens=4, min_new_tokens=4), torch.tensor([4, 4]), [0], 0,
             decoder=decoder)
    assert decoder.last_path == "static"
    cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, use_sliding_window=True, sliding_window=4, max_window_layers=0,
                      layer_types=["sliding_attention", "sliding_attention"])
    windowed = Qwen2ForCausalLM(cfg).eval()
    assert not static_cache_supported(windowed)
    generate(windowed, ids, mask, SamplingSettings(max_new_tokens=4, min_new_tokens=4), torch.tensor([4, 4]), [0],
             0, decoder=decoder)
    assert decoder.last_path == "dynamic"


def test_static_decode_step_concatenates_nothing():
    """The number of ``cat`` operations of a static-path decode does not grow with the number of new tokens (the
    dynamic path concatenates keys, values and the mask at every step)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountCat(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.cat:
                CountCat.n += 1
            return func(*args, **(kwargs or {}))

    lm = _embedded()
    ids, mask = pad_left([[5, 6, 7], [8, 9]], 0)
    counts = []
    for n in (3, 12):
        CountCat.n = 0
        with CountCat():
            decode(lm, ids, mask, SamplingSettings(max_new_tokens=n, min_new_tokens=n), torch.tensor([n, n]), [-1], 0)
        counts.append(CountCat.n)
    assert counts[0] == counts[1]


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_samples_do_not_depend_on_the_cache_path(compiled, monkeypatch):
    """The same draws on the static path (eager or compiled) and on the dynamic path: one uniform per row of the
    whole batch per step, whatever the cache."""
    lm = _embedded()
    ids, mask = pad_left([[5, 6, 7], [8, 9], [10, 11, 12, 13]] * 4, 0)
    lengths = torch.tensor([1, 8, 3, 5, 2, 8, 4, 6, 7, 2, 8, 5])
    settings = SamplingSettings(max_new_tokens=8, min_new_tokens=1)
    torch.manual_seed(3)
    static = generate(lm, ids, mask, settings, lengths, [0], 0, decoder=Decoder(compile=compiled))
    _force_dynamic(monkeypatch)
    torch.manual_seed(3)
    dynamic = generate(lm, ids, mask, settings, lengths, [0], 0)
    assert torch.equal(static[0], dynamic[0]) and torch.equal(static[1], dynamic[1])


def test_top_k_uses_hf_generate(monkeypatch):
    lm = _embedded()
    calls = []
    real = lm.generate
    monkeypatch.setattr(lm, "generate", lambda **kw: calls.append(kw) or real(**kw))
    ids, mask = pad_left([[5, 6, 7]], 0)
    generate(lm, ids, mask, SamplingSettings(max_new_tokens=4, min_new_tokens=4, top_k=5), torch.tensor([4]), [0], 0)
    assert len(calls) == 1
    generate(lm, ids, mask, SamplingSettings(max_new_tokens=4, min_new_tokens=4), torch.tensor([4]), [0], 0)
    assert len(calls) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _synced_worker(rank: int, port: int, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    lm = _embedded()
    forwards = []
    lm.register_forward_hook(lambda *a: forwards.append(1))
    ids, mask = pad_left([[5, 6, 7], [8, 9]], 0)
    lengths = torch.tensor([2, 3]) if rank == 0 else torch.tensor([9, 4])   # rank 0 ends first
    settings = SamplingSettings(max_new_tokens=9, min_new_tokens=1)
    torch.manual_seed(rank)
    synced = decode(lm, ids, mask, settings, lengths, [-1], 0, synced=True)
    n_synced = len(forwards)
    torch.manual_seed(rank)
    alone = decode(lm, ids, mask, settings, lengths, [-1], 0)
    out[rank] = (synced, alone, n_synced)
    dist.destroy_process_group()


def test_synced_decode_steps_together_over_two_processes():
    out = mp.Manager().dict()
    mp.spawn(_synced_worker, args=(_free_port(), out), nprocs=2, join=True)
    for rank in (0, 1):
        synced, alone, _ = out[rank]
        assert torch.equal(synced[:, :alone.shape[1]], alone) and (synced[:, alone.shape[1]:] == 0).all()
    assert out[0][2] == out[1][2] == 9                              # 1 prefill + 8 steps on both processes
