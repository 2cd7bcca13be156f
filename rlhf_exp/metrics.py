"""Text statistics logged for every online run (diversity, length), tokenizer-independent."""
from __future__ import annotations

from typing import Sequence


def distinct_n(texts_words: Sequence[Sequence[str]], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams / all n-grams over a set of texts (words). 0 when there are none."""
    total, unique = 0, set()
    for words in texts_words:
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0
