"""The loops' own stateful pieces that have no better home: their named random generators and a prompt sampler
that says where it is in the data (see :mod:`rlhf_exp.core.state` for what a state may hold)."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from rlhf_exp.core.state import check_keys, random_state, set_random_state
from rlhf_exp.data import PromptSampler


class RandomStreams:
    """A loop's named ``torch.Generator``\\ s. A stream that must agree across processes (the length draws of the
    global batch) is seeded identically on every rank; one that is each process's own (its minibatch shuffles) is
    seeded from the seed and the rank. Checkpointed by name."""

    def __init__(self) -> None:
        self.generators: dict[str, torch.Generator] = {}

    def add(self, name: str, seed: int) -> torch.Generator:
        """A new stream ``name`` seeded with ``seed``."""
        if name in self.generators:
            raise ValueError(f"random stream {name!r} exists already")
        g = self.generators[name] = torch.Generator().manual_seed(int(seed))
        return g

    def __getitem__(self, name: str) -> torch.Generator:
        return self.generators[name]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: g.get_state() for name, g in self.generators.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_keys(state, self.generators, "the loop's random generators")
        for name, g in self.generators.items():
            g.set_state(state[name])


class ResumablePromptSampler(PromptSampler):
    """:class:`rlhf_exp.data.PromptSampler` with its checkpoint state: the order of the current pass over the data
    (what is left of it) and the random state that shuffles the next passes."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": random_state(self.rng), "order": list(self._order)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_keys(state, ("rng", "order"), "the prompt sampler")
        order = [int(i) for i in state["order"]]
        if any(not 0 <= i < len(self.prompts) for i in order):
            raise ValueError(f"the checkpoint's prompt sampler points past this run's {len(self.prompts)} examples: "
                             f"the data differs from the run that wrote it.")
        set_random_state(self.rng, state["rng"])
        self._order[:] = order
