"""Reward functions that ship with rlhf_exp, in the TRL GRPO signature ``f(completions, **kwargs) -> list[float]``.

Use them by name, ``reward_model=function reward_model.fn=target_length reward_model.kwargs.target=12``, as parts of
a composite (``conf/reward_model/composite.yaml``), or pass them to TRL's ``GRPOTrainer(reward_funcs=[...])``
unchanged (their parameters beyond ``completions`` have defaults, so bind them with ``functools.partial`` there).
"""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

from rlhf_exp.metrics import repeated_ngrams

UNITS = ("tokens", "words", "chars")


def target_length(completions: Sequence[str], completion_ids: Optional[Sequence[Sequence[int]]] = None,
                  target: float = 16, unit: str = "tokens", **kwargs: Any) -> list[float]:
    """``-|n - target| / target``: 0 at the target length, -1 for an empty completion, linear in between and beyond.

    ``n`` is the completion's length in ``unit``: ``tokens`` (policy tokens, from ``completion_ids``; EOS counts),
    ``words`` (whitespace-separated) or ``chars``. With ``target`` at least the longest possible response it is a
    plain "longer is better" reward: the classic length hack, useful to watch a monitor catch it.
    """
    if target <= 0:
        raise ValueError(f"target_length: target must be > 0, got {target}.")
    if unit not in UNITS:
        raise ValueError(f"target_length: unit={unit!r} is not one of {', '.join(UNITS)}.")
    if unit == "tokens":
        if completion_ids is None:
            raise ValueError("target_length with unit=tokens needs completion_ids (the online loop passes them); use "
                             "unit=words or unit=chars otherwise.")
        lengths = [len(ids) for ids in completion_ids]
    elif unit == "words":
        lengths = [len(c.split()) for c in completions]
    else:
        lengths = [len(c) for c in completions]
    return [-abs(n - target) / target for n in lengths]


def repetition_penalty(completions: Sequence[str], n: int = 2, **kwargs: Any) -> list[float]:
    """Minus the share of a completion's word n-grams that repeat an earlier one of the same completion, in ``[-1, 0]``.

    The per-completion version of :func:`rlhf_exp.metrics.repetition_rate` (the logged monitor): 0 without repeats,
    ``-2/3`` for ``great great great great`` with ``n=2``, 0 for completions shorter than ``n`` words.
    """
    out = []
    for c in completions:
        r, t = repeated_ngrams(c.split(), n)
        out.append(-r / t if t else 0.0)
    return out


def regex_match(completions: Sequence[str], pattern: str = r".*", mode: str = "search", match_reward: float = 1.0,
                miss_reward: float = 0.0, flags: str = "", **kwargs: Any) -> list[float]:
    """A format check: ``match_reward`` where the completion matches ``pattern``, else ``miss_reward``.

    ``mode``: ``search`` (anywhere), ``match`` (at the start) or ``fullmatch`` (the whole completion, after stripping
    surrounding whitespace). ``flags``: letters of ``re`` flags, e.g. ``"is"`` for IGNORECASE and DOTALL.
    """
    if mode not in ("search", "match", "fullmatch"):
        raise ValueError(f"regex_match: mode={mode!r} is not one of search, match, fullmatch.")
    table = {"i": re.IGNORECASE, "s": re.DOTALL, "m": re.MULTILINE, "x": re.VERBOSE}
    unknown = set(flags) - set(table)
    if unknown:
        raise ValueError(f"regex_match: unknown flag letter(s) {sorted(unknown)}; use any of {''.join(table)}.")
    f = 0
    for ch in flags:
        f |= table[ch]
    rx = re.compile(pattern, f)
    find = getattr(rx, mode)
    return [float(match_reward) if find(c.strip() if mode == "fullmatch" else c) else float(miss_reward)
            for c in completions]
