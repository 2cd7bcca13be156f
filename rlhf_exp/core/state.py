"""Checkpoint state of the stateful objects: what ``state_dict()`` may hold, and the key check of
``load_state_dict()``.

Every stateful object of a run (a KL controller, a moving-average baseline, running reward moments, a prompt
sampler, the loop's random generators, the metric history, the trainer composing them) declares its state with
``state_dict()`` and takes it back with ``load_state_dict()``. A state holds only tensors, numbers, strings, None,
lists and dicts, so a checkpoint loads with ``torch.load(..., weights_only=True)`` and runs no code. A state whose
keys differ from what the object holds is an error naming the key: a checkpoint of another configuration is never
loaded in part.
"""
from __future__ import annotations

import random
from typing import Any, Iterable, Mapping


class StateKeyError(ValueError):
    """A checkpoint state lacks a key the object holds, or holds one the object does not."""


def check_keys(state: Mapping[str, Any], expected: Iterable[str], owner: str) -> None:
    """Raise :class:`StateKeyError` naming the first missing or unexpected key of ``state`` (``owner``: whose state,
    for the message)."""
    expected = list(expected)
    if not isinstance(state, Mapping):
        raise StateKeyError(f"the checkpoint's state of {owner} is a {type(state).__name__}, not a dict of "
                            f"{', '.join(expected)}.")
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing:
        raise StateKeyError(f"the checkpoint's state of {owner} has no {missing[0]!r} (it holds "
                            f"{', '.join(map(repr, state)) or 'nothing'}): it was written by a run of another "
                            f"configuration or version.")
    if extra:
        raise StateKeyError(f"the checkpoint's state of {owner} holds {extra[0]!r}, which this run does not have "
                            f"(this run holds {', '.join(map(repr, expected)) or 'nothing'}): it was written by a run "
                            f"of another configuration or version.")


def random_state(rng: random.Random) -> list:
    """``random.Random.getstate()`` as lists and numbers: ``[version, [625 ints], gauss_next or None]``."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_random_state(rng: random.Random, state: list) -> None:
    """Undo :func:`random_state`."""
    version, internal, gauss = state
    rng.setstate((int(version), tuple(int(x) for x in internal), gauss))
