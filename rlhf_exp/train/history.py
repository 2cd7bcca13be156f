"""The metric history of a run: what each step logged, and the ``summary.json`` computed from it."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Mapping, Sequence

from rlhf_exp.core.state import check_keys


class RunHistory:
    """Every logged value by metric name, ``[(step, value), ...]`` in step order, and the tracker the values go to.

    :meth:`record` logs one step's metrics; :meth:`summary` computes the ``summary.json`` entries of a run from the
    history (the first and last evaluation, the final coefficient and throughput). Its state is the history itself,
    so a resumed run's summary covers the steps before the interruption.
    """

    # Metrics whose first and last values every run summarises; ``eval/reward/<part>`` (composite rewards) too.
    START_END = ("eval/reward_mean", "eval/kl")
    END = ("train/kl_coef", "perf/samples_per_s")

    def __init__(self, tracker):
        self.tracker = tracker
        self.metrics: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def record(self, metrics: Mapping[str, float], step: int) -> None:
        """Keep one step's metrics and log them."""
        for k, v in metrics.items():
            self.metrics[k].append((step, float(v)))
        self.tracker.log(metrics, step)

    def steps_done(self) -> int:
        """Training steps completed: the last step with logged metrics (steps are logged 1, 2, ... in order)."""
        return max((s for h in self.metrics.values() for s, _ in h), default=0)

    def first_last(self, key: str) -> tuple[float, float]:
        """The first and the last value of ``key`` (NaN, NaN when it was never logged)."""
        h = self.metrics.get(key) or [(0, math.nan)]
        return h[0][1], h[-1][1]

    def summary(self, status: str, objective: str, kl_controller: str, wall_s: float, world: int,
                extra_keys: Sequence[str] = ()) -> dict[str, Any]:
        """The ``summary.json`` entries the history gives: ``status``, ``objective``, ``kl_controller``, ``steps``,
        ``wall_s``, ``num_processes``, ``<key>_start``/``<key>_end`` of the evaluation metrics and of
        ``extra_keys`` (an offline objective's held-out losses), ``<key>_end`` of the final coefficient and
        throughput."""
        out: dict[str, Any] = {"status": status, "objective": objective, "kl_controller": kl_controller,
                               "steps": self.steps_done(), "wall_s": wall_s, "num_processes": world}
        for key in self.START_END + tuple(k for k in self.metrics if k.startswith("eval/reward/")):
            out[f"{key}_start"], out[f"{key}_end"] = self.first_last(key)
        for key in self.END:
            if key in self.metrics:
                out[f"{key}_end"] = self.metrics[key][-1][1]
        for key in extra_keys:
            if key in self.metrics:
                out[f"{key}_start"], out[f"{key}_end"] = self.first_last(key)
        return out

    # ---------------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"metrics": {k: [[int(s), float(v)] for s, v in rows] for k, rows in self.metrics.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_keys(state, ("metrics",), "the run history")
        self.metrics.clear()
        for k, rows in state["metrics"].items():
            self.metrics[k] = [(int(s), float(v)) for s, v in rows]
