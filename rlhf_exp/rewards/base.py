"""The one interface every reward follows.

A reward takes a whole batch of prompts and completions (text; token ids where it wants them) and returns one score
per completion, optionally per-token scores ``(B, T)`` for token-level objectives, and named extras (``(B,)`` each)
that the loop logs beside the reward (the positive-class probability of a classifier, the parts of a composite...).
"""
from __future__ import annotations

import numbers
import threading
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch


class RewardError(ValueError):
    """A reward returned something the loop cannot use (wrong length, NaN/inf, not numbers)."""


class RewardTimeout(RewardError):
    """A reward call took longer than its ``timeout`` (``reward_model.timeout``)."""


def call_with_timeout(fn, timeout: Optional[float], name: str, option: str):
    """``fn()``, or :class:`RewardTimeout` when it has not returned within ``timeout`` seconds (None: no limit).

    The call runs in a daemon thread that the caller joins with that timeout (the main thread waits in ``join``, where
    SIGTERM / SIGINT are still handled). Python cannot stop a thread: a call that never returns stays blocked in its
    thread, holding what it holds (a socket, a lock), until the process exits, which the error ends the run with;
    being a daemon thread, it does not keep the process alive."""
    if timeout is None:
        return fn()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            outcome["error"] = e

    worker = threading.Thread(target=target, daemon=True, name=f"reward {name}")
    worker.start()
    worker.join(float(timeout))
    if worker.is_alive():
        raise RewardTimeout(f"Reward {name!r} did not return within {option}={float(timeout):g} s (a stuck judge or "
                            f"verifier?). The call was abandoned (its thread cannot be stopped and stays blocked until "
                            f"the process exits). Fix the reward, or raise {option}.")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@dataclass
class RewardOutput:
    """scores: ``(B,)`` float32; token_scores: ``(B, T)`` or None; extras: name -> ``(B,)``."""

    scores: torch.Tensor
    token_scores: Optional[torch.Tensor] = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


def to_score_tensor(name: str, values: Any, n: int, what: str = "scores") -> torch.Tensor:
    """Check and convert a reward's output to a ``(n,)`` float32 tensor, or raise :class:`RewardError`.

    The message names the reward, the problem and where to look: wrong length, non-numeric entries, NaN or inf.
    """
    if isinstance(values, torch.Tensor):
        t = values.detach().float().reshape(-1) if values.dim() <= 1 else values.detach().float()
    else:
        try:
            seq = list(values)
        except TypeError:
            raise RewardError(f"Reward {name!r} returned {type(values).__name__} for its {what}; expected a list or "
                              f"tensor of {n} numbers.") from None
        bad = [(i, v) for i, v in enumerate(seq) if isinstance(v, bool) or not isinstance(v, numbers.Real) and not (
            isinstance(v, torch.Tensor) and v.numel() == 1 and not v.dtype == torch.bool)]
        if bad:
            i, v = bad[0]
            raise RewardError(f"Reward {name!r} returned a non-numeric value at index {i}: {v!r} "
                              f"({len(bad)} such entries); each {what[:-1]} must be a float.")
        t = torch.tensor([float(v) for v in seq], dtype=torch.float32)
    if t.dim() != 1 or t.shape[0] != n:
        raise RewardError(f"Reward {name!r} returned {what} of shape {tuple(t.shape)} for a batch of {n} completions; "
                          f"it must return exactly one number per completion.")
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        idx = (~finite).nonzero().flatten().tolist()
        raise RewardError(f"Reward {name!r} returned NaN or inf at indices {idx[:10]}"
                          f"{' ...' if len(idx) > 10 else ''} of {n}; fix the reward (guard divisions, empty texts) "
                          f"or clip it.")
    return t


class RewardModel:
    """Base class: implement :meth:`score`; call the instance to get a checked :class:`RewardOutput`."""

    name: str = "reward"
    per_token: bool = False
    policy_tokenizer: Any = None
    timeout: Optional[float] = None          # seconds per call (``reward_model.timeout``); None = no limit
    timeout_option: str = "reward_model.timeout"

    def bind_policy_tokenizer(self, tokenizer: Any) -> None:
        """Called by the loop with the policy's tokenizer (to decode ``completion_ids`` prefixes, for example)."""
        self.policy_tokenizer = tokenizer

    def score(self, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> RewardOutput | Sequence[float]:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "RewardModel":
        return self

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> RewardOutput:
        n = len(completions)
        if len(prompts) != n:
            raise RewardError(f"Reward {self.name!r} got {len(prompts)} prompts for {n} completions.")
        out = call_with_timeout(lambda: self.score(prompts, completions, **columns), self.timeout, self.name,
                                self.timeout_option)
        if not isinstance(out, RewardOutput):
            out = RewardOutput(scores=out)
        scores = to_score_tensor(self.name, out.scores, n)
        extras = {k: to_score_tensor(self.name, v, n, what=f"extra {k!r}") for k, v in out.extras.items()}
        token_scores = out.token_scores
        if token_scores is not None:
            token_scores = torch.as_tensor(token_scores, dtype=torch.float32)
            if token_scores.dim() != 2 or token_scores.shape[0] != n:
                raise RewardError(f"Reward {self.name!r} returned token scores of shape {tuple(token_scores.shape)}; "
                                  f"expected ({n}, T).")
            if not bool(torch.isfinite(token_scores).all()):
                raise RewardError(f"Reward {self.name!r} returned NaN or inf in its per-token scores.")
        return RewardOutput(scores=scores, token_scores=token_scores, extras=extras)

