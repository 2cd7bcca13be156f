"""Pitfalls of scoring and sampling: left padding, the sampler is the policy, dropout, EOS and masks, offline paths."""
import pytest
import torch

from rlhf_exp.core import per_token_kl
from rlhf_exp.modeling import (
    ModelNotAvailableError, PolicyModel, frozen_copy, load_causal_lm, load_tokenizer, resolve_pretrained,
    score_responses,
)
from rlhf_exp.rollout import SamplingSettings, generate, generation_config, pad_left, truncate_responses


@pytest.fixture(scope="module")
def policy_and_tok(tiny_gpt2_dir):
    tok = load_tokenizer(str(tiny_gpt2_dir))
    lm = load_causal_lm(str(tiny_gpt2_dir))
    return PolicyModel(lm, value_head=True).eval(), tok


def _batch(tok, prompts, responses):
    pid, pm = pad_left(prompts, tok.pad_token_id)
    T = max(len(r) for r in responses)
    rid = torch.full((len(responses), T), tok.pad_token_id)
    rm = torch.zeros((len(responses), T), dtype=torch.long)
    for i, r in enumerate(responses):
        rid[i, :len(r)] = torch.tensor(r)
        rm[i, :len(r)] = 1
    return pid, pm, rid, rm


def test_dropout_is_disabled_on_load(tiny_gpt2_dir):
    lm = load_causal_lm(str(tiny_gpt2_dir))
    ps = [m.p for m in lm.modules() if isinstance(m, torch.nn.Dropout)]
    assert ps and all(p == 0.0 for p in ps)
    lm.train()
    x = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(lm(x).logits, lm(x).logits)


def test_left_padded_batch_scores_like_single_sequences(policy_and_tok):
    policy, tok = policy_and_tok
    prompts = [[10, 11], [12, 13, 14, 15, 16, 17], [20, 21, 22]]
    responses = [[30, 31, 32, 33, 34], [40, 41], [50, 51, 52]]
    out = score_responses(policy, *_batch(tok, prompts, responses), temperature=0.7, return_values=True)
    for i in range(3):
        alone = score_responses(policy, *_batch(tok, [prompts[i]], [responses[i]]), temperature=0.7,
                                return_values=True)
        n = len(responses[i])
        assert torch.allclose(out.logprobs[i, :n], alone.logprobs[0, :n], atol=1e-5)
        assert torch.allclose(out.values[i, :n], alone.values[0, :n], atol=1e-5)


def test_sampler_is_the_policy_that_is_scored(policy_and_tok):
    """The processed scores generate() samples from equal the temperature-scaled log-probs the loss uses."""
    policy, tok = policy_and_tok
    settings = SamplingSettings(max_new_tokens=6, min_new_tokens=6, temperature=0.7)
    pid, pm = pad_left([[10, 11], [12, 13, 14, 15]], tok.pad_token_id)
    torch.manual_seed(0)
    gen = policy.lm.generate(input_ids=pid, attention_mask=pm, output_scores=True, return_dict_in_generate=True,
                             generation_config=generation_config(settings, 6, tok.eos_token_id, tok.pad_token_id))
    new = gen.sequences[:, pid.shape[1]:]
    sampler_lp = torch.stack([torch.log_softmax(s.float(), -1) for s in gen.scores], 1)
    sampler_lp = sampler_lp.gather(2, new.unsqueeze(-1)).squeeze(-1)
    rid, rm = truncate_responses(new, torch.tensor([6, 6]), tok.eos_token_id, tok.pad_token_id)
    out = score_responses(policy, pid, pm, rid, rm, temperature=0.7)
    m = rm.bool()
    assert torch.allclose(out.logprobs[m], sampler_lp[:, :rid.shape[1]][m], atol=1e-4)


def test_ratio_is_one_and_reference_kl_zero_before_any_update(policy_and_tok):
    policy, tok = policy_and_tok
    ref = frozen_copy(policy)
    batch = _batch(tok, [[10, 11], [12, 13, 14]], [[30, 31, 32], [40, 41, 42]])
    old = score_responses(policy, *batch).logprobs
    policy.train()   # train mode must not change anything (dropout is off)
    new = score_responses(policy, *[b[:1] for b in batch]).logprobs
    policy.eval()
    assert torch.exp(new[0] - old[0]).sub(1).abs().max().item() < 1e-5
    refl = score_responses(ref, *batch).logprobs
    for est in ("k1", "k2", "k3", "abs"):
        assert per_token_kl(est, old, refl).abs().max().item() == 0.0


def test_truncate_at_first_eos_and_length_limit():
    eos, pad = 0, 99
    toks = torch.tensor([[5, 6, 0, 7, 8], [5, 6, 7, 8, 9], [0, 5, 6, 7, 8]])
    ids, mask = truncate_responses(toks, torch.tensor([5, 3, 5]), eos, pad)
    assert mask.tolist() == [[1, 1, 1], [1, 1, 1], [1, 0, 0]]
    assert ids.tolist() == [[5, 6, 0], [5, 6, 7], [0, pad, pad]]


def test_generate_respects_lengths_and_eos(policy_and_tok):
    policy, tok = policy_and_tok
    pid, pm = pad_left([[10, 11], [12, 13, 14]], tok.pad_token_id)
    torch.manual_seed(0)
    rid, rm = generate(policy.lm, pid, pm, SamplingSettings(max_new_tokens=8, min_new_tokens=2),
                       torch.tensor([2, 8]), tok.eos_token_id, tok.pad_token_id)
    lens = rm.sum(1)
    assert lens[0] <= 2 and 1 <= lens[1] <= 8
    for row, m in zip(rid, rm):
        real = row[m.bool()].tolist()
        assert tok.eos_token_id not in real[:-1]      # EOS only as the last real token


def test_pad_left():
    ids, mask = pad_left([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_missing_local_path_and_uncached_hub_id_fail_fast(tmp_path, monkeypatch):
    with pytest.raises(ModelNotAvailableError, match="model.path"):
        resolve_pretrained(str(tmp_path / "nope"), "model.path")
    with pytest.raises(ModelNotAvailableError, match="config.json"):
        resolve_pretrained(str(tmp_path), "model.path")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="huggingface-cli download lvwerra/gpt2-imdb"):
        resolve_pretrained("lvwerra/gpt2-imdb", "model.path")


def test_sampling_settings_validation():
    with pytest.raises(ValueError, match="min_new_tokens"):
        SamplingSettings(max_new_tokens=2, min_new_tokens=4)
    assert SamplingSettings(top_k=50).truncates and not SamplingSettings().truncates
