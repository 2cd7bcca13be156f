"""Reward-hacking monitors (rlhf_exp/metrics.py) and the loop's reward preprocessing, against hand-computed values."""
import pytest
import torch

from rlhf_exp.core.advantages import preprocess_scores
from rlhf_exp.metrics import distinct_n, ends_with_eos, repeated_ngrams, repetition_rate, text_monitors


def test_distinct_n_pools_over_texts():
    texts = [["a", "b", "a"], ["a", "b"]]
    # unigrams: a b a a b -> 2 unique / 5; bigrams: ab ba ab -> 2 unique / 3
    assert distinct_n(texts, 1) == pytest.approx(2 / 5)
    assert distinct_n(texts, 2) == pytest.approx(2 / 3)
    assert distinct_n([[], ["x"]], 2) == 0.0


def test_repeated_ngrams_counts_repeats_within_one_text():
    assert repeated_ngrams("a b a b a".split(), 2) == (2, 4)          # ab ba ab ba
    assert repeated_ngrams("great great great great".split(), 2) == (2, 3)
    assert repeated_ngrams("the film was good".split(), 2) == (0, 3)
    assert repeated_ngrams(["one"], 2) == (0, 0)
    assert repeated_ngrams("a a".split(), 1) == (1, 2)
    with pytest.raises(ValueError):
        repeated_ngrams(["a"], 0)


def test_repetition_rate_is_pooled_and_only_within_a_text():
    # a bigram repeated across two texts is not a repetition; within one it is
    assert repetition_rate([["a", "b"], ["a", "b"]]) == 0.0
    # (2 repeats of 3) + (0 of 3) over 6 bigrams
    assert repetition_rate(["great great great great".split(), "the film was good".split()]) == pytest.approx(2 / 6)
    assert repetition_rate([["x"], []]) == 0.0
    assert repetition_rate(["a b a b a".split()], n=1) == pytest.approx(3 / 5)


def test_text_monitors_names_and_values():
    m = text_monitors(["great great great great", "the film was good"])
    assert set(m) == {"distinct_1", "distinct_2", "repetition_rate"}
    assert m["distinct_1"] == pytest.approx(5 / 8)
    assert m["distinct_2"] == pytest.approx(4 / 6)
    assert m["repetition_rate"] == pytest.approx(2 / 6)


def test_ends_with_eos_uses_the_mask_when_pad_is_eos():
    eos = 0  # GPT-2 style: the pad token is the EOS token
    ids = torch.tensor([[5, 6, 0, 0],    # EOS sampled at position 2, then padding (also 0)
                        [5, 6, 7, 8],    # cut at its length limit
                        [5, 6, 0, 0],    # cut at length 2: the trailing 0s are padding, not an EOS
                        [0, 0, 0, 0]])   # empty response
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    assert ends_with_eos(ids, mask, eos).tolist() == [True, False, False, False]


def test_preprocess_scores_sequence_level():
    x = torch.tensor([1.0, -3.0, 5.0])
    s, ts = preprocess_scores(x)
    assert torch.equal(s, x) and ts is None
    s, _ = preprocess_scores(x, scale=2.0, clip=4.0)
    assert s.tolist() == [2.0, -4.0, 4.0]
    s, _ = preprocess_scores(x, scale=0.5, mean=1.0, std=2.0)
    assert s.tolist() == pytest.approx([0.0, -1.0, 1.0])


def test_preprocess_scores_per_token_applies_the_same_map_to_the_total():
    scores = torch.tensor([0.0, 0.0])
    tok = torch.tensor([[1.0, 2.0, 0.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    s, ts = preprocess_scores(scores, scale=2.0, mean=1.0, std=4.0, token_scores=tok, mask=mask)
    # a = 2/4 = 0.5: tokens * 0.5, and -1 * 0.5 on the last real token
    assert ts.tolist() == [[0.5, 0.5, 0.0], [1.5, 0.0, 0.0]]
    totals = (tok * mask).sum(1)
    assert (ts * mask).sum(1).tolist() == pytest.approx(((totals - 1.0) / 4.0 * 2.0).tolist())
    _, ts = preprocess_scores(scores, clip=1.5, token_scores=tok, mask=mask)
    assert ts.tolist() == [[1.0, 1.5, 0.0], [1.5, 0.0, 0.0]]
    with pytest.raises(ValueError, match="mask"):
        preprocess_scores(scores, token_scores=tok)
