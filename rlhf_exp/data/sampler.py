"""The training prompt stream of the online loop."""
from __future__ import annotations

import random
from typing import Sequence

from rlhf_exp.data.types import Prompt


class PromptSampler:
    """Endless batches of training prompts: a seeded shuffle per pass over the data, no prompt repeated in a pass.

    Each prompt of a batch is repeated ``group_size`` times in a row (for GRPO/RLOO groups).
    """

    def __init__(self, prompts: Sequence[Prompt], seed: int):
        self.prompts = list(prompts)
        self.rng = random.Random(seed)
        self._order: list[int] = []

    def next(self, n: int) -> list[Prompt]:
        out = []
        while len(out) < n:
            if not self._order:
                self._order = list(range(len(self.prompts)))
                self.rng.shuffle(self._order)
            out.append(self.prompts[self._order.pop()])
        return out
