"""Statistics of the sampled completions, logged for every online run to show reward hacking as it happens.

Text statistics work on whitespace words (``str.split``), so they do not depend on the policy's tokenizer and two
runs with different models stay comparable; the length-limit statistic works on the response tokens.

* ``distinct_n``: unique n-grams / all n-grams, pooled over the batch (diversity across completions).
* ``repetition_rate``: the share of word bigrams that repeat a bigram seen earlier in the *same* completion, pooled
  over the batch (Welleck et al., 2019's seq-rep-n with n = 2). "great great great great" scores 2/3; a completion
  without a repeated bigram scores 0.
* ``ends_with_eos`` / ``truncated_frac``: a response that does not end with EOS was cut at its length limit.
"""
from __future__ import annotations

from typing import Sequence

import torch

REPETITION_N = 2  # the n of repetition_rate as logged by the loop (train/repetition_rate, eval/repetition_rate)


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts_words: Sequence[Sequence[str]], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams / all n-grams over a set of texts (words). 0 when there are none."""
    total, unique = 0, set()
    for words in texts_words:
        grams = _ngrams(words, n)
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def repeated_ngrams(words: Sequence[str], n: int) -> tuple[int, int]:
    """``(repeats, total)``: how many of a text's ``total`` n-grams repeat an n-gram seen earlier in the same text.

    ``repeats = total - unique``. Example: ``a b a b a`` has bigrams ``ab ba ab ba``: 2 of 4 repeat.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    grams = _ngrams(words, n)
    return len(grams) - len(set(grams)), len(grams)


def repetition_rate(texts_words: Sequence[Sequence[str]], n: int = REPETITION_N) -> float:
    """Share of n-grams that repeat an earlier n-gram of the same text, pooled over texts: ``sum repeats / sum total``.

    0 when no text has n words (nothing to repeat). Texts are lists of words.
    """
    repeats = total = 0
    for words in texts_words:
        r, t = repeated_ngrams(words, n)
        repeats += r
        total += t
    return repeats / total if total else 0.0


def ends_with_eos(response_ids: torch.Tensor, response_mask: torch.Tensor, eos_id) -> torch.Tensor:
    """Whether each response's last real token is EOS (``eos_id``: one id or a list). ``(B, T), (B, T) -> (B,)`` bool.

    Uses the mask, not the padding value, so it is right when the pad token is the EOS token (GPT-2). An empty
    response (all-zero mask row) counts as not ending with EOS.
    """
    lengths = response_mask.long().sum(dim=1)
    last = response_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    ids = torch.as_tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), device=last.device)
    return torch.isin(last, ids) & (lengths > 0)


def text_monitors(completions: Sequence[str]) -> dict[str, float]:
    """``distinct_1``, ``distinct_2`` and ``repetition_rate`` of a batch of completions (texts split on whitespace)."""
    words = [c.split() for c in completions]
    return {"distinct_1": distinct_n(words, 1), "distinct_2": distinct_n(words, 2),
            "repetition_rate": repetition_rate(words, REPETITION_N)}
